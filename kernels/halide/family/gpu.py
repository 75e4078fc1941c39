"""The family's CUDA schedules in Halide: the output tiled into thread blocks of register tiles, the
pointwise laid over threads (`gemm` = thread) or striped over a warp's lanes (warp), the depthwise at
`dw_at`, and the block-level stages (shared tiles, weight panels) mapped onto the block's threads."""

from __future__ import annotations

from collections.abc import Callable

import halide as hl

from kernels.halide.algorithm import Layer
from kernels.halide.family.params import WARP, GpuParams, as_dict
from kernels.halide.family.space import shared_bytes
from kernels.halide.tiling import PTX_VECTOR
from kernels.layer import KERNEL


def threads_over(f: hl.Func, dims: list[hl.Var], p: GpuParams, prefix: str) -> hl.Var:
    """Map a block-level stage's loops `dims` (innermost first) onto the block's own threads: the loops
    are fused into one index, split into steps of the block's threads and laid over the same threads_co x
    threads_x x threads_y grid as the output, innermost dimension fastest (coalesced over channels).
    Returns the innermost thread loop: what is computed there, one thread computes for one of its steps."""
    fused = dims[0]
    for i, v in enumerate(dims[1:]):
        nxt = hl.Var(f"{prefix}f{i}")
        f.fuse(fused, v, nxt)
        fused = nxt
    to, ti = hl.Var(f"{prefix}to"), hl.Var(f"{prefix}ti")
    t0, t1, t2, t12 = (hl.Var(f"{prefix}t{i}") for i in ("0", "1", "2", "12"))
    f.split(fused, to, ti, p.tile.threads, hl.TailStrategy.GuardWithIf)
    f.split(ti, t12, t0, p.threads_co).split(t12, t2, t1, p.threads_x)
    f.reorder(t0, t1, t2, to).gpu_threads(t0, t1, t2)
    return t0


def _stage_tile(f: hl.Func, dims: list[hl.Var], vec: int, rows: int, prefix: str) -> list[hl.Var]:
    """Give each thread of a block-level stage over (c, x, y, n) `vec` channels (one vector) by `rows`
    rows (unrolled, the tail shifted inwards), innermost; returns the loops left for `threads_over`.
    At 1 and 1 it changes nothing: one value a thread, as the searches before these axes had it."""
    c, x, y, n = dims
    inner = []
    if vec > 1:  # vec divides c (space), and the stage covers every channel: no channel tail
        ct, cv = hl.Var(f"{prefix}ct"), hl.Var(f"{prefix}cv")
        f.split(c, ct, cv, vec, hl.TailStrategy.RoundUp).vectorize(cv)
        inner.append(cv)
        c = ct
    if rows > 1:  # rows <= the block's rows (check), so shifting the tail inwards stays in the tile
        yo, yi = hl.Var(f"{prefix}yo"), hl.Var(f"{prefix}yi")
        f.split(y, yo, yi, rows, hl.TailStrategy.ShiftInwards).unroll(yi)
        inner.append(yi)
        y = yo
    if inner:
        f.reorder(*inner, c, x, y, n)
    return [c, x, y, n]


def _vector_access(f: hl.Func, v: hl.Var, extent: int) -> hl.Func:
    """Vectorise Func `f` over `v` (of `extent` fp32 lanes) in pieces of at most PTX_VECTOR lanes,
    unrolled, so that each piece is one .v4 load or store. Halide 21's PTX backend splits a wider dense
    vector into .v2 pieces or scalars, multiplying the load/store instructions that share the SM's
    one-a-clock LSU issue with four FMAs a clock (`tests/test_halide_limits.py`). The named schedules
    of `schedules_gpu` keep plain vectors: they run at the JIT's default cap of 64 registers, where
    ptxas hoists the wider loads and spills (docs/evidence/kernels.md, "v4 pieces"), while the
    family's caps are searched."""
    f.vectorize(v, min(PTX_VECTOR, extent))
    return f.unroll(v) if extent > PTX_VECTOR else f


def apply_gpu(p: GpuParams, L: Layer, target: hl.Target) -> dict[str, object]:
    """Schedule the layer `L` (from `algorithm.define`) with GPU parameters `p`; returns the decisions
    (the parameters and derived sizes) for the record."""
    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    o = L.output
    read_depthwise = _warp_pointwise(p, L) if p.gemm == "warp" else _thread_pointwise(p, L)

    d = L.depthwise
    decisions: dict[str, object] = {
        "params": as_dict(p),
        "block": [p.tile.block_co, p.tile.block_x, p.tile.block_y],
        "threads": p.tile.threads,
        "shared_bytes": shared_bytes(p, s),
    }
    if p.dw_at == "root":
        _depthwise_kernel(p, L)
        read_depthwise(d.in_())
    elif p.dw_at == "cblock" and p.gemm == "warp":
        read_depthwise(d)  # each chunk's depthwise, computed by the warp where it is read
    elif p.dw_at == "block":
        read_depthwise(d.in_())
        d.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
        step = threads_over(d, _stage_tile(d, [c, x, y, n], p.dw_vec, p.dw_rows, "d"), p, "d")
        pad = L.padded
        if p.stage_input:
            pad.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
            threads_over(pad, _stage_tile(pad, pad.args(), p.dw_vec, 1, "i"), p, "i")
        if p.dw_rows > 1:
            # The input rows of a thread's step in registers, loaded once for all its rows: read from the
            # shared tile directly, each row's loads would follow the previous row's store into shared
            # memory, which ptxas cannot prove does not alias them, so it loads them again.
            taps = pad.in_(d).compute_at(d, step).store_in(hl.MemoryType.Register)
            tc, tx, ty, tn = taps.args()
            rows = (p.dw_rows - 1) * s.stride + KERNEL
            for v, extent in ((tc, p.dw_vec), (tx, KERNEL), (ty, rows), (tn, 1)):
                taps.bound_extent(v, extent)
            taps.vectorize(tc).unroll(tx).unroll(ty).unroll(tn)
    # cblock of gemm=thread: `_thread_pointwise` computes it inside the reduction; inline: each thread
    # recomputes the depthwise of its pixels inside its reduction.
    return decisions


def _depthwise_kernel(p: GpuParams, L: Layer) -> None:
    """The depthwise in its own kernel (`dw_at` = root): blocks of 32 x 8 threads over channels and
    pixels, each thread `dw_vec` channels (a vector) by `dw_rows` rows (`_stage_tile`)."""
    s, d = L.shape, L.depthwise
    dco, dci, dxo, dxi = hl.Var("dco"), hl.Var("dci"), hl.Var("dxo"), hl.Var("dxi")
    d.compute_root()
    c, x, y, n = _stage_tile(d, [L.c, L.x, L.y, L.n], p.dw_vec, p.dw_rows, "d")
    d.split(c, dco, dci, min(32, s.c // p.dw_vec), hl.TailStrategy.GuardWithIf)
    d.split(x, dxo, dxi, min(8, s.wo), hl.TailStrategy.GuardWithIf)
    d.reorder(dci, dxi, dco, dxo, y, n).fuse(y, n, y)
    d.gpu_blocks(dco, dxo, y).gpu_threads(dci, dxi)


def _thread_pointwise(p: GpuParams, L: Layer) -> Callable[[hl.Func], None]:
    """Schedule the output and the pointwise of `gemm` = thread: each thread a register tile of `lanes`
    channels by `tx` x `ty` pixels, the reduction in unrolled steps of `k` channels; returns how a
    wrapper of the depthwise is read: `k` channels of the thread's pixels a step, into registers (for
    `cblock` it computes the depthwise there itself). With `split_k` > 1, `_split_pointwise`."""
    if p.split_k > 1:
        return _split_pointwise(p, L)
    return _register_tiles(p, L, L.output, L.pointwise, L.rc.x)


def _register_tiles(
    p: GpuParams, L: Layer, out: hl.Func, acc: hl.Func, r: hl.RVar, part: hl.Var | None = None
) -> Callable[[hl.Func], None]:
    """Tile `out` (over the output's channels and pixels, and `part` where given) into thread blocks of
    register tiles, and accumulate `acc` (whose update reduces over `r`) in each thread's registers, `k`
    channels of `r` a step (`ro`); returns how a wrapper of the depthwise is read at each step."""
    c, x, y, n = L.c, L.x, L.y, L.n
    ci, xi, yi = hl.Var("ci"), hl.Var("xi"), hl.Var("yi")
    cii, xii, yii = hl.Var("cii"), hl.Var("xii"), hl.Var("yii")
    out.tile([c, x, y], [ci, xi, yi], [p.tile.block_co, p.tile.block_x, p.tile.block_y])
    out.tile([ci, xi, yi], [cii, xii, yii], [p.lanes, p.tx, p.ty])
    out.gpu_threads(ci, xi, yi).fuse(y, n, n)
    if part is not None:  # the parts of a split reduction are more blocks of the same grid
        out.fuse(n, part, n)
    out.gpu_blocks(c, x, n)
    _vector_access(out, cii, p.lanes).unroll(xii).unroll(yii)

    # Everything a thread keeps to itself is stored in registers, explicitly: a thread-level allocation
    # whose size Halide 21 cannot prove constant would otherwise go to a global buffer striped over the
    # threads (see schedules_gpu.schedule_app); in registers it must be constant, or compiling fails.
    reg = hl.MemoryType.Register
    ro, ri = hl.RVar("ro"), hl.RVar("ri")
    acc.compute_at(out, ci).store_in(reg).vectorize(c).unroll(x).unroll(y)
    u = acc.update().reorder(c, x, y, r).vectorize(c).unroll(x).unroll(y)
    u.split(r, ro, ri, p.k).reorder(c, x, y, ri, ro).unroll(ri)

    # The weights of each reduction step in registers, loaded as vectors; from a shared panel if staged.
    regs = L.pointwise_filter.in_().in_() if p.weights == "shared" else L.pointwise_filter.in_()
    wc, wr = regs.args()
    _vector_access(regs.compute_at(acc, ro).store_in(reg), wc, p.lanes).unroll(wr)
    if p.weights == "shared":
        panel = L.pointwise_filter.in_()
        pc, pr = panel.args()
        panel.compute_at(out, c).store_in(hl.MemoryType.GPUShared)
        threads_over(panel, [pc, pr], p, "w")
    if p.dw_at == "cblock":
        L.depthwise.compute_at(acc, ro).store_in(reg).bound_extent(c, p.k).vectorize(c).unroll(x).unroll(y)

    def read(staged: hl.Func) -> None:
        staged.compute_at(acc, ro).store_in(reg)
        _vector_access(staged, c, p.k).unroll(x).unroll(y)

    return read


SUM_THREADS = 128  # threads a block of the kernel that adds a split reduction's parts


def _split_pointwise(p: GpuParams, L: Layer) -> Callable[[hl.Func], None]:
    """`split_k` > 1: the pointwise's reduction over input channels split into `split_k` parts by
    Halide's `rfactor`. The parts' partial sums (`pointwise_intm`, one more dimension: the part) are a
    kernel of their own, laid out as `_register_tiles` lays out the output, each part more blocks of the
    grid; the output kernel adds the parts to the bias (the pointwise's initial value), a vector of up to
    `lanes` channels a thread, and applies the ReLU."""
    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    ru, rr, part = hl.RVar("ru"), hl.RVar("rr"), hl.Var("part")
    pw = L.pointwise
    pw.update().split(L.rc.x, ru, rr, s.c // p.split_k)
    partial = pw.update().rfactor(ru, part)  # partial(c, x, y, n, part): the sum over its channels
    parts = partial.in_()  # the kernel that stores the partial sums; `partial` accumulates in registers
    parts.compute_root()
    read = _register_tiles(p, L, parts, partial, rr, part)

    o = L.output
    cb, cv, t, to, ti = (hl.Var(v) for v in ("cb", "cv", "t", "to", "ti"))
    vec = min(PTX_VECTOR, p.lanes)
    o.split(c, cb, cv, vec).vectorize(cv)
    o.fuse(cb, x, t).fuse(t, y, t).fuse(t, n, t)
    o.split(t, to, ti, SUM_THREADS, hl.TailStrategy.GuardWithIf).gpu_blocks(to).gpu_threads(ti)
    pw.compute_at(o, ti).store_in(hl.MemoryType.Register).vectorize(c)
    pw.update().vectorize(c).unroll(ru)
    return read


def _warp_pointwise(p: GpuParams, L: Layer) -> Callable[[hl.Func], None]:
    """Schedule the output and the pointwise of `gemm` = warp: lane l of a warp holds output channels
    32 v + l of each `PTX_VECTOR`-wide vector v (so that its stores are .v4 and a warp's are coalesced)
    by `tx` x `ty` pixels; the block's warps tile the pixels. The accumulators are computed at the warp
    (outside its lane loop), where Halide 21 stripes a register allocation over the lanes; at the block
    it gives each thread a copy of the block's tile (`tests/test_halide_limits.py`). Returns how the
    depthwise, or a wrapper of it, is read: a chunk of 32 channels of the warp's pixels, one channel a
    lane (computed there, from the input, when it is the depthwise itself), from which each step's value
    reaches every lane by `shfl`."""
    c, x, y, n = L.c, L.x, L.y, L.n
    o, pw = L.output, L.pointwise
    vec = min(PTX_VECTOR, p.lanes)
    reg = hl.MemoryType.Register
    ci, xi, yi, wx, wy = (hl.Var(v) for v in ("ci", "xi", "yi", "wx", "wy"))
    cio, cii, xii, yii = (hl.Var(v) for v in ("cio", "cii", "xii", "yii"))
    o.tile([c, x, y], [ci, xi, yi], [p.tile.block_co, p.tile.block_x, p.tile.block_y])
    o.split(xi, wx, xii, p.tx).split(yi, wy, yii, p.ty)
    if vec > 1:
        o.vectorize(ci, vec)
    o.split(ci, cio, cii, WARP).reorder(cio, xii, yii, cii, wx, wy, c, x, y, n)
    o.unroll(cio).unroll(xii).unroll(yii).fuse(y, n, n).gpu_blocks(c, x, n).gpu_threads(wx, wy).gpu_lanes(cii)

    pco, pci = hl.Var("pco"), hl.Var("pci")
    rxo, rxi, rxk = hl.RVar("rxo"), hl.RVar("rxi"), hl.RVar("rxk")
    pw.compute_at(o, wx).store_in(reg)
    for stage in (pw, pw.update()):
        stage.split(c, pco, pci, WARP * vec, hl.TailStrategy.RoundUp).unroll(pci, vec).gpu_lanes(pci)
        stage.unroll(pco).unroll(x).unroll(y)
    u = pw.update().split(L.rc.x, rxo, rxi, WARP).split(rxi, rxi, rxk, p.k)
    u.reorder(pci, pco, x, y, rxk, rxi, rxo).unroll(rxk)

    # Each step's weights: a vector of the lane's channels, straight from the caches into registers.
    w = L.pointwise_filter.in_()
    wc, wr = w.args()
    wo, wl = hl.Var("wo"), hl.Var("wl")
    w.compute_at(pw, rxk).store_in(reg)
    if vec > 1:
        w.vectorize(wc, vec)
    w.split(wc, wo, wl, WARP).gpu_lanes(wl).unroll(wo).unroll(wr)

    def read(staged: hl.Func) -> None:
        sc, sx, sy, sn = staged.args()
        so, sl = hl.Var("so"), hl.Var("sl")
        staged.compute_at(pw, rxo).store_in(reg).split(sc, so, sl, WARP).gpu_lanes(sl)
        staged.unroll(so).unroll(sx).unroll(sy).unroll(sn)

    return read
