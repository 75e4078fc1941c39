# kernels.halide.schedules_gpu.schedule_app
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


# kernels.halide.tiling
def reduction_step(c: int, most: int = 4) -> int:
    """Channels per step of the pointwise reduction: a divisor of c, so no step reads past it."""
    return next(r for r in range(most, 0, -1) if c % r == 0)


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
