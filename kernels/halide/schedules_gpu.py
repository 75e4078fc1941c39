"""Named CUDA schedules for the layer in `algorithm.py`, looked up by name in `GPU_SCHEDULES`.

The same fusion ablation as on the CPU, in GPU terms:
- `unfused`: two kernels, the depthwise into a global buffer, then the pointwise.
- `fused_tile`: one kernel; each thread block computes the depthwise for its pixel tile and every
  input channel into shared memory, then the pointwise of that tile from shared memory.
- `fused_cblock`: one kernel, no shared memory; each thread computes the depthwise of its own
  pixels one block of channels at a time inside its pointwise reduction (in registers), which
  recomputes the depthwise for every thread that shares those pixels.
- `app`: the official app's GPU schedule re-expressed: one fused kernel, the depthwise staged in
  shared memory and read back four channels at a time (float4), a 1 x 2 x 2 register tile per thread.

Tile sizes shrink to fit small extents, and wherever the official schedule rounds a channel tile up
(reading past the input's channels) the tail is guarded instead when the tile does not divide c.
Kernels are named after the Func that owns their block loops: `_kernel_output_...` and, for
`unfused`, `_kernel_depthwise_...`. The register cap is the runtime's (HL_CUDA_JIT_MAX_REGISTERS,
64 by default, the app's `gpu_max_registers(64)`); this Halide's Python API has no per-Func cap.
"""

from __future__ import annotations

from collections.abc import Callable

import halide as hl

from kernels.halide.algorithm import Layer
from kernels.halide.tiling import DEPTHWISE_SHARED_BYTES, GpuTile, gpu_tile, reduction_step

# The official app's tile: 1 x 2 x 2 outputs a thread (co x px x py), blocks of 16 x 2 x 1 threads.
APP_TILE = GpuTile(lanes=1, tx=2, ty=2, threads_co=16, threads_x=2, threads_y=1)

Extents = tuple[int, int, int]  # co x px x py


def _fit(t: GpuTile, L: Layer) -> tuple[Extents, Extents]:
    """The block's and a thread's extents of `t`, shrunk to the shape's (a tile never exceeds an
    extent: tails shift inwards; a shrunk block need not hold a whole number of thread tiles)."""
    s = L.shape
    block = (min(t.block_co, s.co), min(t.block_x, s.wo), min(t.block_y, s.ho))
    return block, (min(t.lanes, block[0]), min(t.tx, block[1]), min(t.ty, block[2]))


def _tile_output(L: Layer, block: Extents, thread: Extents) -> tuple[hl.Var, hl.Var]:
    """Blocks over output tiles, threads over register tiles; returns (block co var, thread co var)."""
    c, x, y, n = L.c, L.x, L.y, L.n
    di, xi, yi = hl.Var("di"), hl.Var("xi"), hl.Var("yi")
    dii, xii, yii = hl.Var("dii"), hl.Var("xii"), hl.Var("yii")
    o = L.output
    o.tile([c, x, y], [di, xi, yi], list(block))
    o.tile([di, xi, yi], [dii, xii, yii], list(thread))
    o.gpu_threads(di, xi, yi).fuse(y, n, n).gpu_blocks(c, x, n)
    o.unroll(xii).unroll(yii).unroll(dii)
    return c, di


def _pointwise_per_thread(L: Layer, thread: hl.Var, unroll: int) -> hl.RVar:
    """Each thread accumulates its register tile of the pointwise, `unroll` channels per step;
    returns the loop over steps."""
    c, x, y = L.c, L.x, L.y
    ro, ri = hl.RVar("ro"), hl.RVar("ri")
    p = L.pointwise
    p.compute_at(L.output, thread).reorder(x, y, c).unroll(x).unroll(y).unroll(c)
    u = p.update()
    u.unroll(x).unroll(y).unroll(c).split(L.rc.x, ro, ri, unroll).reorder(ri, x, y, c, ro).unroll(ri)
    return ro


def schedule_app(L: Layer, target: hl.Target) -> dict[str, object]:
    """The official app's GPU schedule: blocks of 16 co x 4 x 2 pixels, 1 x 2 x 2 per thread, the
    depthwise for the block's pixels and every channel in shared memory (32 x 4 x 2 per pass, 2 x 2
    x 2 per thread), staged into registers four channels at a time for vectorised shared loads."""
    s = L.shape
    c, x, y = L.c, L.x, L.y
    (bco, bx, by), (tco, tx, ty) = _fit(APP_TILE, L)
    block, thread = _tile_output(L, (bco, bx, by), (tco, tx, ty))
    r = reduction_step(s.c)
    _pointwise_per_thread(L, thread, r)

    staged = L.depthwise.in_().in_()
    staged.compute_at(L.pointwise, x).bound_extent(c, r).vectorize(c).unroll(x).unroll(y)

    shared = L.depthwise.in_()
    tail = hl.TailStrategy.RoundUp if s.c % 32 == 0 else hl.TailStrategy.GuardWithIf
    di, xi, yi = hl.Var("sdi"), hl.Var("sxi"), hl.Var("syi")
    dii, xii, yii = hl.Var("sdii"), hl.Var("sxii"), hl.Var("syii")
    shared.compute_at(L.output, block).tile([c, x, y], [di, xi, yi], [min(32, s.c), bx, by], tail)
    shared.tile([di, xi, yi], [dii, xii, yii], [min(2, s.c), tx, ty], tail)
    shared.gpu_threads(di, xi, yi).unroll(xii).unroll(yii).unroll(dii)

    # Each thread's depthwise tile must stay in registers. With the guarded tail (c not a multiple of
    # 32) its channel extent is a min() over the thread's channels, and Halide 21 then moves such a
    # dynamically sized thread allocation to a global heap buffer striped over the block's threads:
    # sized for this stage's threads but indexed with the whole block's thread count, so blocks overlap
    # and race (wrong results at c=5, co=7). Register storage takes the constant upper bound (2 x 2 x 2)
    # and leaves the multiple-of-32 path, which already had that fixed size, unchanged.
    L.depthwise.compute_at(shared, di).store_in(hl.MemoryType.Register).unroll(x).unroll(y).unroll(c)
    decisions = {"block": [bco, bx, by], "thread": [tco, tx, ty], "reduction_unroll": r}
    return {**decisions, "shared_tail": tail.name}


def _gemm_output(L: Layer, t: GpuTile) -> tuple[hl.Var, hl.RVar, int]:
    """Tile the output into blocks and per-thread register tiles and compute the pointwise there,
    `r` channels per reduction step with the step's weights loaded as vectors into registers.
    Returns (block var, reduction-step var, r)."""
    c, x, y, n = L.c, L.x, L.y, L.n
    ci, xi, yi = hl.Var("ci"), hl.Var("xi"), hl.Var("yi")
    cii, xii, yii = hl.Var("cii"), hl.Var("xii"), hl.Var("yii")
    o = L.output
    o.tile([c, x, y], [ci, xi, yi], [t.block_co, t.block_x, t.block_y])
    o.tile([ci, xi, yi], [cii, xii, yii], [t.lanes, t.tx, t.ty])
    o.gpu_threads(ci, xi, yi).fuse(y, n, n).gpu_blocks(c, x, n)
    o.vectorize(cii).unroll(xii).unroll(yii)

    r = reduction_step(L.shape.c, 8)
    ro, ri = hl.RVar("ro"), hl.RVar("ri")
    p = L.pointwise
    p.compute_at(o, ci).vectorize(c).unroll(x).unroll(y)
    u = p.update().reorder(c, x, y, L.rc.x).vectorize(c).unroll(x).unroll(y)
    u.split(L.rc.x, ro, ri, r).reorder(c, x, y, ri, ro).unroll(ri)
    weights = L.pointwise_filter.in_()
    wc, wr = weights.args()
    weights.compute_at(p, ro).vectorize(wc).unroll(wr)
    return c, ro, r


def _stage_depthwise(L: Layer, ro: hl.RVar) -> None:
    """Load each reduction step's depthwise values (r channels x the thread's pixels) into registers."""
    staged = L.depthwise.in_()
    staged.compute_at(L.pointwise, ro).vectorize(L.c).unroll(L.x).unroll(L.y)


def schedule_unfused(L: Layer, target: hl.Target) -> dict[str, object]:
    """Two kernels: the depthwise into global memory (a thread per channel and pixel, coalesced over
    channels), then a register-tiled pointwise reading it back through the caches."""
    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    d = L.depthwise
    co_, ci, xo, xi = hl.Var("dco"), hl.Var("dci"), hl.Var("dxo"), hl.Var("dxi")
    d.compute_root().split(c, co_, ci, min(32, s.c), hl.TailStrategy.GuardWithIf)
    d.split(x, xo, xi, min(8, s.wo), hl.TailStrategy.GuardWithIf)
    d.reorder(ci, xi, co_, xo, y, n).fuse(y, n, y).gpu_blocks(co_, xo, y).gpu_threads(ci, xi)
    t = gpu_tile(L.shape, max_block_co=64, max_block_pixels=1 << 20)
    _, ro, r = _gemm_output(L, t)
    _stage_depthwise(L, ro)
    return {"tile": t, "reduction_step": r}


def schedule_fused_tile(L: Layer, target: hl.Target) -> dict[str, object]:
    """One kernel: each block computes the depthwise of its pixel tile for every channel into shared
    memory (up to 128 output channels a block share it), then the register-tiled pointwise."""
    s = L.shape
    c, x, y = L.c, L.x, L.y
    t = gpu_tile(L.shape, max_block_co=128, max_block_pixels=max(1, DEPTHWISE_SHARED_BYTES // (4 * s.c)))
    block, ro, r = _gemm_output(L, t)
    _stage_depthwise(L, ro)
    threads = t.threads
    dco, dci = hl.Var("sco"), hl.Var("sci")
    d = L.depthwise
    d.compute_at(L.output, block).store_in(hl.MemoryType.GPUShared)
    d.split(c, dco, dci, min(threads, s.c), hl.TailStrategy.GuardWithIf).reorder(dci, x, y, dco)
    d.gpu_threads(dci)
    return {"tile": t, "reduction_step": r, "shared_bytes": 4 * s.c * t.block_x * t.block_y}


def schedule_fused_cblock(L: Layer, target: hl.Target) -> dict[str, object]:
    """One kernel, no shared memory: each thread computes the depthwise of its own pixels for one
    block of channels in registers inside its pointwise reduction (recomputed by every thread
    that shares those pixels, i.e. once per 4 output channels)."""
    t = gpu_tile(L.shape, max_block_co=64, max_block_pixels=1 << 20)
    _, ro, r = _gemm_output(L, t)
    d = L.depthwise
    d.compute_at(L.pointwise, ro).bound_extent(L.c, r).vectorize(L.c).unroll(L.x).unroll(L.y)
    return {"tile": t, "channel_block": r}


# A schedule mutates the Layer's Funcs and returns the decisions it made (tile sizes), for the record.
GpuSchedule = Callable[[Layer, hl.Target], dict[str, object]]

GPU_SCHEDULES: dict[str, GpuSchedule] = {
    "app": schedule_app,
    "unfused": schedule_unfused,
    "fused_tile": schedule_fused_tile,
    "fused_cblock": schedule_fused_cblock,
}
