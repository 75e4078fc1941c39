# kernels.halide.family.cpu.apply_cpu
def apply_cpu(p: CpuParams, L: Layer, target: hl.Target) -> dict[str, object]:
    """Schedule the layer `L` (from `algorithm.define`) with CPU parameters `p`; returns the decisions
    (the parameters and derived sizes) for the record."""
    s = L.shape
    t = MicroTile(p.lanes, p.vectors, p.tx, p.ty)
    rows = min(p.row_tiles, max(1, s.ho // p.ty)) * p.ty
    plan = BlockPlan(rows, p.chunks)
    task, xo = blocks.tile_output(L, t, plan)
    u = blocks.pointwise_in_registers(L, xo, t)
    decisions: dict[str, object] = {"params": asdict(p), "rows_per_task": rows}
    if p.dw_at == "root":
        decisions["depthwise_rows_per_task"] = blocks.depthwise_root(L, host_threads(), p.lanes, p.dw_unroll)
    elif p.dw_at == "tile":
        L.depthwise.compute_at(L.output, task)
        blocks.depthwise_vectorized(L, p.lanes, p.dw_unroll)
    elif p.dw_at == "cblock":
        blocks.depthwise_in_reduction(L, u, p.kc)
    # inline: the depthwise is recomputed inside the pointwise reduction, once per register tile.
    return decisions


# kernels.halide.targets
def host_threads() -> int:
    """Threads Halide's pool will use (HL_NUM_THREADS, else every core): sets the parallel grain."""
    env = os.environ.get("HL_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1
