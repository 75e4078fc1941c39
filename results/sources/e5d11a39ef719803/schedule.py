# kernels.halide.schedules_cpu.schedule_app
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
    slice_c = channel_block(s.c, tile_d)
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


# kernels.halide.targets
def vector_lanes(target: Any) -> int:
    """fp32 lanes of the target's natural vector (16 with AVX-512, 8 with AVX2)."""
    import halide as hl

    return target.natural_vector_size(hl.Float(32))


# kernels.halide.targets
def vector_registers(target: Any) -> int:
    """Vector registers of the target's register file."""
    import halide as hl

    wide = target.has_feature(hl.TargetFeature.AVX512_Skylake) or (
        target.arch == hl.TargetArch.ARM and target.bits == 64
    )
    return 32 if wide else 16


# kernels.halide.tiling
def channel_block(c: int, lanes: int) -> int:
    """Channels per block of the pointwise reduction: `lanes` when it divides c, else the largest
    divisor of c not above it (an exact block keeps the depthwise inside the input's channels)."""
    if c % lanes == 0:
        return lanes
    return max(d for d in range(1, min(lanes, c) + 1) if c % d == 0)
