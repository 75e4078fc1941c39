"""Named CPU schedules for the layer in `algorithm.py`, looked up by name in `CPU_SCHEDULES`.

Every schedule reads the shape baked into the `Layer` and picks its tile sizes from it, so that odd
sizes, stride 2 and channel counts that are not a multiple of the vector width stay correct (tiles
never exceed an extent, tails are shifted inwards, the depthwise stage never reads past the input's
channels) and wide layers get a register-blocked, GEMM-like pointwise.

The fusion ablation, from least to most fused:
- `unfused`: the depthwise result for the whole batch in its own buffer, then the pointwise.
- `fused_tile`: the depthwise for one block of output rows, every channel, computed inside the
  parallel task that then runs the pointwise over that block.
- `fused_cblock`: the depthwise for one register tile of pixels and one block of input channels,
  inside the pointwise's channel reduction, recomputed for every tile of output channels.
- `app`: the official app's schedule (`apps/depthwise_separable_conv`), a channel-block fusion
  tuned for 16 output channels.
`unfused`, `fused_tile` and `fused_cblock` share one pointwise micro-kernel (`MicroTile`), so the
comparison between them isolates where the depthwise is computed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import halide as hl

from kernels.halide.algorithm import Layer
from kernels.halide.tiling import tail_waste

# Accumulators the pointwise micro-kernel may keep in registers: 24 of 32 zmm leave room for the
# weight vectors (28 spilled on AVX-512), 12 of 16 ymm on AVX2.
_ACCUMULATORS = {32: 24, 16: 12}
# Bytes of depthwise output one block of rows may hold: it is re-read for every co tile, from L2.
_BLOCK_BYTES = 256 * 1024
# Bytes of pointwise weights a core can keep in its L2 between tasks.
_L2_WEIGHT_BYTES = 512 * 1024
# Rough per-core rates for the block planner (only their ratios matter).
_POINTWISE_FLOPS = 90e9  # register-blocked FMA
_DEPTHWISE_FLOPS = 20e9  # 9 taps, one load per FMA
_L3_BYTES = 25e9  # weights streamed from L3 or memory


@dataclass(frozen=True)
class MicroTile:
    """The pointwise register tile: `vectors` vectors of `lanes` output channels by `tx` x `ty` pixels."""

    lanes: int
    vectors: int
    tx: int
    ty: int

    @property
    def co(self) -> int:
        return self.lanes * self.vectors


@dataclass(frozen=True)
class BlockPlan:
    """How the output splits into parallel tasks: blocks of `rows` output rows x `chunks` of co tiles."""

    rows: int
    chunks: int


def vector_lanes(target: hl.Target) -> int:
    """fp32 lanes of the target's natural vector (16 with AVX-512, 8 with AVX2)."""
    return target.natural_vector_size(hl.Float(32))


def vector_registers(target: hl.Target) -> int:
    """Vector registers of the target's register file."""
    wide = target.has_feature(hl.TargetFeature.AVX512_Skylake) or (
        target.arch == hl.TargetArch.ARM and target.bits == 64
    )
    return 32 if wide else 16


def host_threads() -> int:
    """Threads Halide's pool will use (HL_NUM_THREADS, else every core): sets the parallel grain."""
    env = os.environ.get("HL_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1


def micro_tile(L: Layer, target: hl.Target) -> MicroTile:
    """The pointwise register tile for this shape: enough accumulators to hide FMA latency, few loads
    per FMA, and little work wasted on tails (tiles are shifted inwards, so a tail redoes pixels)."""
    s = L.shape
    lanes = min(vector_lanes(target), s.co)
    budget = _ACCUMULATORS.get(vector_registers(target), 12)
    best, best_score = MicroTile(lanes, 1, 1, 1), -1.0
    for vectors in range(1, min(4, s.co // lanes) + 1):
        for tx in range(1, min(budget // vectors, s.wo) + 1):
            for ty in range(1, min(budget // (vectors * tx), s.ho) + 1):
                acc = vectors * tx * ty
                # Cycles per channel step at 2 FMAs and 2 loads a cycle, 4 cycles of FMA latency.
                cycles = max(acc / 2, (vectors + tx * ty) / 2, 4.0)
                waste = tail_waste(s.co, lanes * vectors) * tail_waste(s.wo, tx) * tail_waste(s.ho, ty)
                score = acc / (2 * cycles) / waste
                score *= 1 + 0.01 * acc - 0.001 * ty  # ties: bigger tiles, then rows of pixels
                if score > best_score:
                    best, best_score = MicroTile(lanes, vectors, tx, ty), score
    return best


def plan_blocks(L: Layer, t: MicroTile, threads: int, depthwise_in_task: bool) -> BlockPlan:
    """Choose rows per block and co chunks with a small cost model: the makespan over `threads` of
    tasks that each run their share of the pointwise, recompute their block's depthwise (when it is
    computed in the task) and stream their co chunk's weights (free when they stay in L2)."""
    s = L.shape
    co_tiles = math.ceil(s.co / t.co)
    by_bytes = max(t.ty, _BLOCK_BYTES // (s.wo * s.c * 4))
    best, best_cost = BlockPlan(t.ty, 1), math.inf
    for rows in range(t.ty, s.ho + 1, t.ty):
        if rows > by_bytes and rows != t.ty:
            break
        blocks = s.n * math.ceil(s.ho / rows)
        pixel_waste = tail_waste(s.ho, rows)
        for chunks in range(1, co_tiles + 1):
            tasks = blocks * chunks
            co_share = s.co / chunks
            pixels = rows * s.wo
            cost = pixels * s.c * co_share * 2 / _POINTWISE_FLOPS
            if depthwise_in_task:
                cost += pixels * s.c * 18 / _DEPTHWISE_FLOPS
            weight_bytes = s.c * co_share * 4
            # Weights that fit in L2 are mostly re-used from there by the next task on the core.
            cost += weight_bytes / _L3_BYTES * (1.0 if weight_bytes > _L2_WEIGHT_BYTES else 0.25)
            makespan = math.ceil(tasks / threads) * cost * pixel_waste
            if makespan < best_cost * 0.999:
                best, best_cost = BlockPlan(rows, chunks), makespan
    return best


def _pointwise_in_registers(L: Layer, at: hl.Var, t: MicroTile) -> hl.Stage:
    """Compute `pointwise` for one register tile at the output's loop `at`: co vectors x pixels.

    The channel reduction runs outermost inside the tile, so the accumulators stay in registers
    while each step loads `t.vectors` weight vectors and broadcasts one depthwise value per pixel.
    """
    c, x, y = L.c, L.x, L.y
    p = L.pointwise
    p.compute_at(L.output, at).vectorize(c, t.lanes).unroll(c).unroll(x).unroll(y)
    u = p.update()
    u.reorder(c, x, y, L.rc.x).vectorize(c, t.lanes).unroll(c).unroll(x).unroll(y)
    return u


def _tile_output(L: Layer, t: MicroTile, plan: BlockPlan) -> tuple[hl.Var, hl.Var]:
    """Split the output into parallel tasks (row blocks x co chunks) of register tiles.

    Inside a task the co tiles loop outside the pixel tiles, so a panel of pointwise weights serves
    every pixel of the block. Returns (task var, pixel-tile var)."""
    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    o = L.output
    co, ci, xo, xi = hl.Var("co"), hl.Var("ci"), hl.Var("xo"), hl.Var("xi")
    yb, yr, yo, yi, cc = hl.Var("yb"), hl.Var("yr"), hl.Var("yo"), hl.Var("yi"), hl.Var("cc")
    o.split(y, yb, yr, plan.rows, hl.TailStrategy.ShiftInwards)
    o.split(yr, yo, yi, t.ty, hl.TailStrategy.ShiftInwards)
    o.split(c, co, ci, t.co, hl.TailStrategy.ShiftInwards)
    o.split(x, xo, xi, t.tx, hl.TailStrategy.ShiftInwards)
    per_chunk = math.ceil(math.ceil(s.co / t.co) / plan.chunks)
    o.split(co, cc, co, per_chunk, hl.TailStrategy.GuardWithIf)
    o.reorder(ci, xi, yi, xo, yo, co, yb, cc, n)
    o.vectorize(ci, t.lanes).unroll(ci).unroll(xi).unroll(yi)
    o.fuse(yb, cc, yb).fuse(yb, n, yb).parallel(yb)
    return yb, xo


def _depthwise_vectorized(L: Layer, lanes: int, unroll_x: int) -> None:
    """Vectorize the depthwise stage over channels; tails shift inwards, never past channel c-1."""
    d = L.depthwise
    d.vectorize(L.c, min(lanes, L.shape.c))
    if unroll_x > 1 and L.shape.wo >= unroll_x:
        d.unroll(L.x, unroll_x)


def _channel_block(c: int, lanes: int) -> int:
    """Channels per block of the pointwise reduction: `lanes` when it divides c, else the largest
    divisor of c not above it (an exact block keeps the depthwise inside the input's channels)."""
    if c % lanes == 0:
        return lanes
    return max(d for d in range(1, min(lanes, c) + 1) if c % d == 0)


def schedule_unfused(L: Layer, target: hl.Target) -> dict[str, object]:
    """Depthwise for the whole batch into its own buffer (parallel over rows), then the pointwise."""
    s = L.shape
    t = micro_tile(L, target)
    threads = host_threads()
    d = L.depthwise
    dyo, dyi = hl.Var("dyo"), hl.Var("dyi")
    rows = max(1, math.ceil(s.ho / max(1, math.ceil(4 * threads / s.n))))
    d.compute_root().split(L.y, dyo, dyi, rows, hl.TailStrategy.ShiftInwards)
    d.reorder(L.c, L.x, dyi, dyo, L.n).fuse(dyo, L.n, dyo).parallel(dyo)
    _depthwise_vectorized(L, t.lanes, unroll_x=2)
    plan = plan_blocks(L, t, threads, depthwise_in_task=False)
    _, xo = _tile_output(L, t, plan)
    _pointwise_in_registers(L, xo, t)
    return {"micro_tile": t, "blocks": plan, "depthwise_rows_per_task": rows}


def schedule_fused_tile(L: Layer, target: hl.Target) -> dict[str, object]:
    """Depthwise for a block of output rows and every channel, computed in the task that then runs
    the register-blocked pointwise over the block (the block stays in L2 across co tiles)."""
    t = micro_tile(L, target)
    plan = plan_blocks(L, t, host_threads(), depthwise_in_task=True)
    task, xo = _tile_output(L, t, plan)
    _pointwise_in_registers(L, xo, t)
    L.depthwise.compute_at(L.output, task)
    _depthwise_vectorized(L, t.lanes, unroll_x=2)
    return {"micro_tile": t, "blocks": plan}


def schedule_fused_cblock(L: Layer, target: hl.Target) -> dict[str, object]:
    """Depthwise for one register tile of pixels and one block of input channels, inside the
    pointwise reduction: nothing leaves registers and L1, at the price of recomputing the depthwise
    for every tile of output channels."""
    s = L.shape
    t = micro_tile(L, target)
    plan = plan_blocks(L, t, host_threads(), depthwise_in_task=False)
    _, xo = _tile_output(L, t, plan)
    u = _pointwise_in_registers(L, xo, t)
    kc = _channel_block(s.c, t.lanes)
    ro, ri = hl.RVar("rco"), hl.RVar("rci")
    u.split(L.rc.x, ro, ri, kc).reorder(L.c, L.x, L.y, ri, ro)
    d = L.depthwise
    d.compute_at(L.pointwise, ro).store_in(hl.MemoryType.Stack).bound_extent(L.c, kc)
    d.reorder(L.c, L.x, L.y).vectorize(L.c, kc).unroll(L.x).unroll(L.y)
    return {"micro_tile": t, "blocks": plan, "channel_block": kc}


def schedule_app(L: Layer, target: hl.Target) -> dict[str, object]:
    """The official app's CPU schedule, re-expressed: output tiles of 16 channels x 6 x 4 pixels (on
    AVX-512), the pointwise accumulated in registers, the depthwise (and the padded input) computed
    on the stack for each 16-channel slice of the pointwise reduction. Tile sizes shrink to fit
    small extents and the slice becomes a divisor of c when 16 does not divide it; the app's
    `specialize` on channel counts is moot here because the shape is baked in."""
    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    vec = vector_lanes(target)
    regs = vector_registers(target)
    if regs == 32 and vec == 16:
        tile_d, tile_w, tile_h = 1, 6, 4
    elif regs == 32 and vec == 4:
        tile_d, tile_w, tile_h = 4, 3, 2
    elif regs == 16 and vec == 8:
        tile_d, tile_w, tile_h = 2, 3, 2
    else:
        tile_d, tile_w, tile_h = 4, 2, 1
    tile_d *= vec
    slice_c = _channel_block(s.c, tile_d)
    tile_d, tile_w, tile_h = min(tile_d, s.co), min(tile_w, s.wo), min(tile_h, s.ho)

    di, xi, yi = hl.Var("di"), hl.Var("xi"), hl.Var("yi")
    ro, ri = hl.RVar("ro"), hl.RVar("ri")
    o = L.output
    o.tile([c, x, y], [di, xi, yi], [tile_d, tile_w, tile_h]).vectorize(di).unroll(xi).unroll(yi)
    o.fuse(y, n, n).parallel(n)

    p = L.pointwise
    p.compute_at(o, c).vectorize(c).unroll(x).unroll(y)
    p.update().reorder(c, x, y, L.rc.x, n).vectorize(c).unroll(x).unroll(y).split(L.rc.x, ro, ri, slice_c)

    d = L.depthwise
    d.store_in(hl.MemoryType.Stack).bound_extent(c, slice_c).compute_at(p, ro)
    d.vectorize(c).reorder(x, y, c).unroll(x).unroll(y)

    pad_x = min(4, (tile_w - 1) * s.stride + 3)
    pdi, pxi = hl.Var("pdi"), hl.Var("pxi")
    L.padded.store_in(hl.MemoryType.Stack).compute_at(p, ro).tile(
        c, x, pdi, pxi, slice_c, pad_x, hl.TailStrategy.RoundUp
    ).vectorize(pdi).unroll(pxi)
    return {"tile_co": tile_d, "tile_x": tile_w, "tile_y": tile_h, "channel_slice": slice_c}


# A schedule mutates the Layer's Funcs and returns the decisions it made (tile sizes), for the record.
CpuSchedule = Callable[[Layer, hl.Target], dict[str, object]]

CPU_SCHEDULES: dict[str, CpuSchedule] = {
    "app": schedule_app,
    "unfused": schedule_unfused,
    "fused_tile": schedule_fused_tile,
    "fused_cblock": schedule_fused_cblock,
}
