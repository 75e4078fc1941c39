# kernels.halide.schedules_gpu.schedule_fused_tile
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


# kernels.halide.tiling
def gpu_tile(
    s: LayerShape, max_block_co: int, max_block_pixels: int, pixels: int = 8, threads: int = 64
) -> GpuTile:
    """Up to `pixels` pixels x 4 channels per thread with little tail waste, and enough pixel
    threads for `threads` threads a block, without exceeding any extent or `max_block_pixels`
    (a shared-memory budget)."""
    lanes = min(4, s.co)
    threads_co = max(1, min(max_block_co // lanes, s.co // lanes))
    px = max(1, min(pixels, max_block_pixels))
    best, best_score = (1, 1), 0.0
    for tx in range(1, min(px, s.wo) + 1):
        ty = max(1, min(px // tx, s.ho))
        score = tx * ty / (tail_waste(s.wo, tx) * tail_waste(s.ho, ty)) - 0.01 * ty
        if score > best_score:
            best, best_score = (tx, ty), score
    tx, ty = best
    want = max(1, threads // threads_co)
    budget = max(1, max_block_pixels // (tx * ty))
    threads_y = max(1, min(want, s.ho // ty, budget))
    threads_x = max(1, min(want // threads_y, s.wo // tx, budget // threads_y))
    return GpuTile(lanes, tx, ty, threads_co, threads_x, threads_y)


# kernels.halide.tiling
def tail_waste(extent: int, tile: int) -> float:
    """Work done per useful work along one axis: tiles never exceed an extent, so the tail tile
    shifts inwards and recomputes what its neighbour already did."""
    return math.ceil(extent / tile) * tile / extent


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


# kernels.halide.tiling
def reduction_step(c: int, most: int = 4) -> int:
    """Channels per step of the pointwise reduction: a divisor of c, so no step reads past it."""
    return next(r for r in range(most, 0, -1) if c % r == 0)


def _stage_depthwise(L: Layer, ro: hl.RVar) -> None:
    """Load each reduction step's depthwise values (r channels x the thread's pixels) into registers."""
    staged = L.depthwise.in_()
    staged.compute_at(L.pointwise, ro).vectorize(L.c).unroll(L.x).unroll(L.y)
