# kernels.halide.family._apply_gpu
def _apply_gpu(p: GpuParams, L: Any, target: Any) -> dict[str, object]:
    import halide as hl

    from kernels.halide import schedules_gpu as gpu

    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    o = L.output
    ci, xi, yi = hl.Var("ci"), hl.Var("xi"), hl.Var("yi")
    cii, xii, yii = hl.Var("cii"), hl.Var("xii"), hl.Var("yii")
    o.tile([c, x, y], [ci, xi, yi], [p.block_co, p.block_x, p.block_y])
    o.tile([ci, xi, yi], [cii, xii, yii], [p.lanes, p.tx, p.ty])
    o.gpu_threads(ci, xi, yi).fuse(y, n, n).gpu_blocks(c, x, n)
    gpu.vector_access(o, cii, p.lanes).unroll(xii).unroll(yii)

    # Everything a thread keeps to itself is stored in registers, explicitly: a thread-level allocation
    # whose size Halide 21 cannot prove constant would otherwise go to a global buffer striped over the
    # threads (see schedules_gpu.schedule_app); in registers it must be constant, or compiling fails.
    reg = hl.MemoryType.Register
    ro, ri = hl.RVar("ro"), hl.RVar("ri")
    pw = L.pointwise
    pw.compute_at(o, ci).store_in(reg).vectorize(c).unroll(x).unroll(y)
    u = pw.update().reorder(c, x, y, L.rc.x).vectorize(c).unroll(x).unroll(y)
    u.split(L.rc.x, ro, ri, p.k).reorder(c, x, y, ri, ro).unroll(ri)

    # The weights of each reduction step in registers, loaded as vectors; from a shared panel if staged.
    regs = L.pointwise_filter.in_().in_() if p.weights == "shared" else L.pointwise_filter.in_()
    wc, wr = regs.args()
    gpu.vector_access(regs.compute_at(pw, ro).store_in(reg), wc, p.lanes).unroll(wr)
    if p.weights == "shared":
        panel = L.pointwise_filter.in_()
        pc, pr = panel.args()
        panel.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
        _threads_over(panel, [pc, pr], p, "w")

    d = L.depthwise
    decisions: dict[str, object] = {
        "params": asdict(p),
        "block": [p.block_co, p.block_x, p.block_y],
        "threads": p.threads,
        "shared_bytes": shared_bytes(p, s),
    }
    if p.dw_at == "root":
        dco, dci, dxo, dxi = hl.Var("dco"), hl.Var("dci"), hl.Var("dxo"), hl.Var("dxi")
        d.compute_root().split(c, dco, dci, min(32, s.c), hl.TailStrategy.GuardWithIf)
        d.split(x, dxo, dxi, min(8, s.wo), hl.TailStrategy.GuardWithIf)
        d.reorder(dci, dxi, dco, dxo, y, n).fuse(y, n, y).gpu_blocks(dco, dxo, y).gpu_threads(dci, dxi)
        gpu.vector_access(d.in_().compute_at(pw, ro).store_in(reg), c, p.k).unroll(x).unroll(y)
    elif p.dw_at == "block":
        staged = d.in_().compute_at(pw, ro).store_in(reg)  # a step's values
        gpu.vector_access(staged, c, p.k).unroll(x).unroll(y)
        d.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
        _threads_over(d, [c, x, y, n], p, "d")
        if p.stage_input:
            pad = L.padded
            pad.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
            pcv, pxv, pyv, pnv = pad.args()
            _threads_over(pad, [pcv, pxv, pyv, pnv], p, "i")
    elif p.dw_at == "cblock":
        d.compute_at(pw, ro).store_in(reg).bound_extent(c, p.k).vectorize(c).unroll(x).unroll(y)
    # inline: each thread recomputes the depthwise of its pixels inside its reduction.
    return decisions


def _threads_over(f: Any, dims: list[Any], p: GpuParams, prefix: str) -> None:
    """Map a block-level stage's loops `dims` (innermost first) onto the block's own threads: the loops
    are fused into one index, split into steps of `p.threads` and laid over the same threads_co x
    threads_x x threads_y grid as the output, innermost dimension fastest (coalesced over channels)."""
    import halide as hl

    fused = dims[0]
    for i, v in enumerate(dims[1:]):
        nxt = hl.Var(f"{prefix}f{i}")
        f.fuse(fused, v, nxt)
        fused = nxt
    to, ti = hl.Var(f"{prefix}to"), hl.Var(f"{prefix}ti")
    t0, t1, t2, t12 = (hl.Var(f"{prefix}t{i}") for i in ("0", "1", "2", "12"))
    f.split(fused, to, ti, p.threads, hl.TailStrategy.GuardWithIf)
    f.split(ti, t12, t0, p.threads_co).split(t12, t2, t1, p.threads_x)
    f.reorder(t0, t1, t2, to).gpu_threads(t0, t1, t2)


def shared_bytes(p: GpuParams, shape: LayerShape) -> int:
    """Shared memory one thread block of `p` allocates for `shape`."""
    s = shape
    total = 0
    if p.dw_at == "block":
        total += 4 * s.c * p.block_x * p.block_y
        if p.stage_input:
            total += 4 * s.c * ((p.block_x - 1) * s.stride + KERNEL) * ((p.block_y - 1) * s.stride + KERNEL)
    if p.weights == "shared":
        total += 4 * p.block_co * s.c
    return total
