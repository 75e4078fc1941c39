# kernels.halide.schedules_cpu.schedule_unfused
def schedule_unfused(L: Layer, target: hl.Target) -> dict[str, object]:
    """Depthwise for the whole batch into its own buffer (parallel over rows), then the pointwise."""
    t = target_micro_tile(L, target)
    threads = host_threads()
    rows = depthwise_root(L, threads, t.lanes, unroll_x=2)
    plan = plan_blocks(L.shape, t, threads, depthwise_in_task=False)
    _, xo = tile_output(L, t, plan)
    pointwise_in_registers(L, xo, t)
    return {"micro_tile": t, "blocks": plan, "depthwise_rows_per_task": rows}


def target_micro_tile(L: Layer, target: hl.Target) -> MicroTile:
    """The pointwise register tile `micro_tile` chooses for the layer's shape on `target`."""
    return micro_tile(L.shape, vector_lanes(target), vector_registers(target))


# kernels.halide.tiling
def micro_tile(s: LayerShape, lanes: int, registers: int) -> MicroTile:
    """The pointwise register tile for shape `s` on a target with `lanes` fp32 lanes a vector and
    `registers` vector registers: enough accumulators to hide FMA latency, few loads per FMA, and
    little work wasted on tails (tiles are shifted inwards, so a tail redoes pixels)."""
    lanes = min(lanes, s.co)
    budget = cpu_accumulators(registers)
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


# kernels.halide.tiling
def cpu_accumulators(registers: int) -> int:
    """The accumulators a CPU register tile may keep with `registers` vector registers."""
    return CPU_ACCUMULATORS.get(registers, 12)


# kernels.halide.tiling
def tail_waste(extent: int, tile: int) -> float:
    """Work done per useful work along one axis: tiles never exceed an extent, so the tail tile
    shifts inwards and recomputes what its neighbour already did."""
    return math.ceil(extent / tile) * tile / extent


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


# kernels.halide.targets
def host_threads() -> int:
    """Threads Halide's pool will use (HL_NUM_THREADS, else every core): sets the parallel grain."""
    env = os.environ.get("HL_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1


# kernels.halide.blocks
def depthwise_root(L: Layer, threads: int, lanes: int, unroll_x: int) -> int:
    """The depthwise for the whole batch into its own buffer, in parallel tasks of output rows (about
    four a thread), vectorized; returns the rows a task covers."""
    d = L.depthwise
    dyo, dyi = hl.Var("dyo"), hl.Var("dyi")
    rows = depthwise_rows_per_task(L.shape, threads)
    d.compute_root().split(L.y, dyo, dyi, rows, hl.TailStrategy.ShiftInwards)
    d.reorder(L.c, L.x, dyi, dyo, L.n).fuse(dyo, L.n, dyo).parallel(dyo)
    depthwise_vectorized(L, lanes, unroll_x)
    return rows


# kernels.halide.tiling
def depthwise_rows_per_task(s: LayerShape, threads: int) -> int:
    """Output rows a parallel task of a depthwise computed on its own (`compute_root`) covers: about
    four tasks a thread over the batch."""
    return max(1, math.ceil(s.ho / max(1, math.ceil(4 * threads / s.n))))


# kernels.halide.blocks
def depthwise_vectorized(L: Layer, lanes: int, unroll_x: int) -> None:
    """Vectorize the depthwise stage over channels; tails shift inwards, never past channel c-1."""
    d = L.depthwise
    d.vectorize(L.c, min(lanes, L.shape.c))
    if unroll_x > 1 and L.shape.wo >= unroll_x:
        d.unroll(L.x, unroll_x)


# kernels.halide.tiling
def plan_blocks(s: LayerShape, t: MicroTile, threads: int, depthwise_in_task: bool) -> BlockPlan:
    """Choose rows per block and co chunks with a small cost model: the makespan over `threads` of
    tasks that each run their share of the pointwise, recompute their block's depthwise (when it is
    computed in the task) and stream their co chunk's weights (free when they stay in L2)."""
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


# kernels.halide.blocks
def tile_output(L: Layer, t: MicroTile, plan: BlockPlan) -> tuple[hl.Var, hl.Var]:
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


# kernels.halide.blocks
def pointwise_in_registers(L: Layer, at: hl.Var, t: MicroTile) -> hl.Stage:
    """Compute `pointwise` for one register tile at the output's loop `at`: co vectors x pixels.

    The channel reduction runs outermost inside the tile, so the accumulators stay in registers
    while each step loads `t.vectors` weight vectors and broadcasts one depthwise value per pixel.
    Returns the pointwise's update stage.
    """
    c, x, y = L.c, L.x, L.y
    p = L.pointwise
    p.compute_at(L.output, at).vectorize(c, t.lanes).unroll(c).unroll(x).unroll(y)
    u = p.update()
    u.reorder(c, x, y, L.rc.x).vectorize(c, t.lanes).unroll(c).unroll(x).unroll(y)
    return u
