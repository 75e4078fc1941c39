"""Parameter sets chosen without measuring: the family's heuristic, the nearest valid set to any given
one (`fit`, to reuse another shape's schedule or repair a mutation), and the parameters a build uses
(`from_options`: a recorded or requested set completed by the heuristic, checked)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, overload

from kernels.device import DeviceSpec
from kernels.halide.family.limits import SmLimits, occupancy
from kernels.halide.family.params import (
    CPU_MAX_VECTORS,
    GPU_DW_ROWS,
    LATER_DEFAULTS,
    MAX_REGISTERS,
    WARP,
    CpuParams,
    GpuParams,
    Params,
    ParamsError,
    params_class,
)
from kernels.halide.family.space import (
    GPU_REGISTERS_PER_BLOCK,
    canonical,
    check,
    device_limits,
    divisors,
    shared_bytes,
    space,
    split_k_values,
)
from kernels.halide.targets import host_threads, host_vector
from kernels.halide.tiling import channel_block, cpu_accumulators, micro_tile, plan_blocks, tail_waste
from kernels.layer import LayerShape

# Input channels from which the GPU heuristic gives the depthwise its own kernel (`_wide_heuristic`):
# a 32 KiB shared tile of every channel holds 32 pixels at 256 channels.
WIDE_CHANNELS = 256


def from_options(value: Any, shape: LayerShape, device: DeviceSpec, base: Params | None = None) -> Params:
    """The parameter set of `options["params"]` (a mapping of field -> value; fields left out take the
    values of `base`, by default the heuristic's, except the later parameters, `LATER_DEFAULTS`: those
    take their defaults, since `as_dict` leaves them out at their defaults, and so a recorded set reads
    back as itself whatever the heuristic chooses), checked; raises ParamsError naming the valid
    values."""
    cls = params_class(device)
    base = base or heuristic(shape, device)
    if value is None:
        return base
    if isinstance(value, cls):
        params = value
    else:
        if not isinstance(value, Mapping):
            raise ParamsError(f"options['params'] must be a mapping of parameter -> value, got {value!r}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise ParamsError(
                f"unknown {device.kind} schedule parameter {unknown[0]!r}; "
                f"valid parameters: {', '.join(fields)}"
            )
        later = LATER_DEFAULTS if cls is GpuParams else {}
        given = {**later, **value}
        if given.get("gemm") == "warp":  # a warp's lanes lay out its channels: threads_co goes with it
            given.setdefault("threads_co", WARP)
        params = dataclasses.replace(base, **given)
    reason = check(params, shape, device)
    if reason:
        raise ParamsError(f"invalid {device.kind} schedule for {shape.label}: {reason}")
    return canonical(params, shape)


def resolve(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Params:
    """The parameter set a `halide_family` build uses: options["params"] completed by the heuristic."""
    return from_options(options.get("params"), shape, device)


def heuristic(shape: LayerShape, device: DeviceSpec) -> Params:
    """A good parameter set chosen without measuring: on the CPU, `schedules_cpu`'s own cost model
    (the micro-tile and block plan of `fused_tile`); on the GPU, the rules below."""
    s = shape
    if not device.is_gpu:
        natural, registers = host_vector()
        t = micro_tile(s, natural, registers)
        plan = plan_blocks(s, t, host_threads(), depthwise_in_task=True)
        p = CpuParams(
            dw_at="tile",
            lanes=t.lanes,
            vectors=t.vectors,
            tx=t.tx,
            ty=t.ty,
            row_tiles=max(1, plan.rows // t.ty),
            chunks=plan.chunks,
            kc=channel_block(s.c, natural),
            dw_unroll=2,
        )
        return canonical(fit_cpu(p, s), s)
    lim = device_limits(device)
    p = _wide_heuristic(s, device) if s.c >= WIDE_CHANNELS else _narrow_heuristic(s, lim)
    p = _fill_device(split_reduction(p, s, device), s, device)
    p = dataclasses.replace(p, max_registers=_register_cap(p, s, lim))
    return canonical(fit(p, s, device), s)


def _narrow_heuristic(s: LayerShape, lim: SmLimits) -> GpuParams:
    """The heuristic below `WIDE_CHANNELS`: a block covers up to 128 output channels, 4 a thread (one
    float4), so that the depthwise of its pixels is computed once for all of them; 2 x 2 pixels a thread
    and 4 channels a reduction step stay within 128 registers without spilling (ptxas, sm_90); 128-256
    threads a block; the block's depthwise tile of every channel in shared memory when it fits the
    budget (`_shared_budget`: 32 KiB, less where the SM holds too little for two blocks' worth of half
    its threads), else per channel block inside the reduction (cblock)."""
    lanes = max(v for v in (1, 2, 4) if v <= s.co)  # a vector of 1, 2 or 4 channels (`space`)
    threads_co = max(1, min(32, s.co // lanes))
    tx, ty = min(2, s.wo), min(2, s.ho)
    budget = _shared_budget(lim, 256)
    pixels = max(1, budget // (4 * s.c))  # block pixels whose depthwise fits the budget
    want = min(max(1, 256 // threads_co), max(1, pixels // (tx * ty)))  # pixel threads a block
    threads_x = max(1, min(16, s.wo // tx, 2 ** (int(math.log2(want)) // 2)))  # square-ish pixel tiles
    threads_y = max(1, min(16, s.ho // ty, want // threads_x))
    fits = tx * ty * threads_x * threads_y >= 4 and 4 * s.c * tx * ty * threads_x * threads_y <= budget
    return GpuParams(
        dw_at="block" if fits else "cblock",
        lanes=lanes,
        tx=tx,
        ty=ty,
        threads_co=threads_co,
        threads_x=threads_x,
        threads_y=threads_y,
        k=max(divisors(s.c, (1, 2, 4))),
        weights="global",
        stage_input=False,
        max_registers=128,
    )


def _shared_budget(lim: SmLimits, threads: int) -> int:
    """Shared memory a block of `threads` threads may give its depthwise tile: 32 KiB, or less where the
    SM's shared memory would not hold the blocks that fill half its threads (`limits`)."""
    blocks = max(1, math.ceil(lim.threads_per_sm / 2 / threads))
    return min(32 * 1024, lim.shared_per_sm // blocks - lim.reserved_shared)


MIN_OCCUPANCY = 0.125  # of an SM's warps that a GPU heuristic's register cap leaves resident at least
# The parallelism `_fill_device` asks of a grid: this many threads an SM (four warps: one a scheduler).
FILL_THREADS_PER_SM = 128


def _fill_device(p: GpuParams, s: LayerShape, device: DeviceSpec) -> GpuParams:
    """`p` with smaller register tiles (the block's threads kept), then smaller blocks, until the grid has
    `FILL_THREADS_PER_SM` threads for every SM and a block for every SM, where the output allows it: a
    small layer (a few thousand outputs) otherwise runs on a handful of SMs, each thread reducing a large
    tile alone (the old heuristic was 2.5-3x slower than the official app's schedule of one to four
    outputs a thread on such shapes on the H200, issue 24)."""
    sms = max(1, device.sm_count)
    r = dataclasses.replace

    def blocks(q: GpuParams) -> int:
        return q.tile.blocks(s) * q.split_k

    for _ in range(32):
        if blocks(p) * p.tile.threads >= FILL_THREADS_PER_SM * sms:
            break
        if p.ty > 1 and p.ty >= p.tx:
            p = r(p, ty=p.ty // 2)
        elif p.tx > 1:
            p = r(p, tx=p.tx // 2)
        elif p.lanes > 1:
            p = r(p, lanes=p.lanes // 2)
        else:
            break
    for _ in range(32):
        if blocks(p) >= sms or p.tile.threads <= 32:
            break
        if p.threads_y > 1:
            p = r(p, threads_y=p.threads_y // 2)
        elif p.threads_x > 1:
            p = r(p, threads_x=p.threads_x // 2)
        elif p.threads_co > 1:
            p = r(p, threads_co=p.threads_co // 2)
        else:
            break
    return p


# The channels a part of the heuristic's split reduction keeps at least: its steps amortise the part's
# partial sums (written once, read once) and the kernel that adds them.
SPLIT_K_PART_CHANNELS = 128


def split_reduction(p: GpuParams, s: LayerShape, device: DeviceSpec) -> GpuParams:
    """`p` with the fewest `split_k` parts (of at least `SPLIT_K_PART_CHANNELS` channels each) that give
    the grid `FILL_THREADS_PER_SM` threads and a block for every SM, where the depthwise is a kernel of
    its own and the grid alone is short of that; the most such parts where none is enough
    (`_fill_device` shrinks the tiles then). A layer with few outputs and a long reduction (960 -> 160
    channels on 7 x 7 pixels) keeps its register tiles this way, where shrinking them would cut each
    thread's reuse."""
    if p.dw_at != "root" or p.gemm != "thread":
        return p
    sms = max(1, device.sm_count)
    blocks = p.tile.blocks(s)

    def fills(parts: int) -> bool:
        return blocks * parts * p.tile.threads >= FILL_THREADS_PER_SM * sms and blocks * parts >= sms

    if fills(1):
        return p
    splits = [
        v
        for v in split_k_values(s.c)
        if v > 1 and s.c // v >= SPLIT_K_PART_CHANNELS and (s.c // v) % p.k == 0
    ]
    if not splits:  # too few channels to split
        return p
    return dataclasses.replace(p, split_k=next((v for v in splits if fills(v)), max(splits)))


def split_alternative(p: Params, s: LayerShape, device: DeviceSpec) -> GpuParams | None:
    """The same GPU schedule with its reduction the other way: unsplit where `p` splits it, split
    (`split_reduction`) where its grid does not fill the device; None where there is no other (a CPU
    schedule, or one that fills the device or has too few channels to split). `halide_tuned`'s candidates
    and a search's seeds carry both, so that the timing, not the heuristic, decides."""
    if not isinstance(p, GpuParams):
        return None
    if p.split_k > 1:
        return dataclasses.replace(p, split_k=1)
    split = split_reduction(p, s, device)
    return split if split != p else None


def _register_cap(p: GpuParams, s: LayerShape, lim: SmLimits) -> int:
    """The register cap (`MAX_REGISTERS`) for `p` on an SM of `lim`: its own where blocks at that cap
    still fill `MIN_OCCUPANCY` of the SM's warps, else the highest cap that does; 64 (Halide's default)
    when none does. The searches' best wide tiles run at 7 warps an SM of 64 (sm_90) with 128 registers
    or more (docs/evidence/kernels.md, "wide heuristic"): a register tile's own accumulators hide the
    FMA latency that more warps would otherwise."""
    threads = p.tile.threads
    smem = shared_bytes(p, s)
    for cap in sorted((m for m in MAX_REGISTERS if m <= p.max_registers), reverse=True):
        if occupancy(threads, cap, smem, lim).fraction >= MIN_OCCUPANCY:
            return cap
    return MAX_REGISTERS[0]


def _wide_heuristic(s: LayerShape, device: DeviceSpec) -> GpuParams:
    """The heuristic where the channels are wide (`WIDE_CHANNELS`): the block's depthwise tile of every
    channel would hold too few pixels to feed a pointwise tile, so the depthwise gets its own kernel
    (4 output rows a thread) and the pointwise is a GEMM of register tiles: 4 output channels by a row
    of up to 8 pixels a thread (a divisor of the width where one of 4 or more exists), 16 channels a
    step, 128 registers; up to a warp of 32 threads over the channels, as many as waste least (a
    block of channels that does not divide co recomputes the tail: 32 x 4 of co = 160 computes 256;
    a block of threads not a whole number of warps leaves lanes idle), the block's rows a divisor of the
    height, so no block recomputes its neighbour's pixels (`whole_blocks`). It is the tile the searches
    kept for the widest blocks (docs/evidence/kernels.md, "wide heuristic")."""
    lanes = max(v for v in (1, 2, 4) if v <= s.co)
    widest = max(divisors(s.wo, tuple(range(1, 9))))
    tx = widest if widest >= 4 else min(7, s.wo)

    def rows(threads_co: int) -> int:
        most = max(1, min(16, 256 // threads_co))
        threads_y = max(divisors(s.ho, tuple(range(1, most + 1))))
        return threads_y if threads_y >= 4 else min(4, s.ho)  # a prime height: a tail, not a sliver

    def waste(threads_co: int) -> float:  # work done per useful work: the channels' tail, idle lanes
        threads = threads_co * rows(threads_co)
        return tail_waste(s.co, lanes * threads_co) * math.ceil(threads / WARP) * WARP / threads

    threads_co = min(
        range(1, max(1, min(WARP, s.co // lanes)) + 1),
        key=lambda t: (waste(t), tail_waste(s.co, lanes * t), -t * rows(t), -t),
    )
    threads_y = rows(threads_co)
    p = GpuParams(
        dw_at="root",
        lanes=lanes,
        tx=tx,
        ty=1,
        threads_co=threads_co,
        threads_x=1,
        threads_y=threads_y,
        k=max(divisors(s.c, (1, 2, 4, 8, 16))),
        weights="global",
        stage_input=False,
        max_registers=128,
        dw_rows=max(v for v in GPU_DW_ROWS if v <= s.ho),
    )
    return canonical(fit(p, s, device), s)


def _nearest(value: int, valid: tuple[int, ...]) -> int:
    """The valid value closest to `value` on a log scale (ties: the smaller)."""
    return min(valid, key=lambda v: (abs(math.log2(v) - math.log2(max(value, 1))), v))


def fit_cpu(p: CpuParams, s: LayerShape) -> CpuParams:
    values = space(s, _CPU)
    lanes = _nearest(p.lanes, values["lanes"])
    vectors = max(1, min(p.vectors, s.co // lanes, CPU_MAX_VECTORS))
    tx, ty = min(p.tx, s.wo, 8), min(p.ty, s.ho, 4)
    _, registers = host_vector()
    budget = cpu_accumulators(registers)
    while vectors * tx * ty > budget:
        if tx >= ty and tx > 1:
            tx -= 1
        elif ty > 1:
            ty -= 1
        else:
            vectors -= 1
    chunks = min(_nearest(p.chunks, values["chunks"]), math.ceil(s.co / (lanes * vectors)))
    chunks = max(v for v in values["chunks"] if v <= max(1, chunks))
    kc = p.kc if p.kc in values["kc"] else _nearest(p.kc, values["kc"])
    row_tiles = max(1, min(p.row_tiles, s.ho))
    return CpuParams(p.dw_at, lanes, vectors, tx, ty, row_tiles, chunks, kc, p.dw_unroll)


_CPU = DeviceSpec("cpu", "cpu", "host CPU", 1.0, 1.0)


@overload
def fit(params: CpuParams, shape: LayerShape, device: DeviceSpec) -> CpuParams: ...
@overload
def fit(params: GpuParams, shape: LayerShape, device: DeviceSpec) -> GpuParams: ...
def fit(params: Params, shape: LayerShape, device: DeviceSpec) -> Params:
    """`params` moved to the nearest valid parameter set for `shape` (to reuse another shape's tuned
    schedule, or to repair a mutation); always returns a valid set."""
    if isinstance(params, CpuParams):
        return canonical(fit_cpu(params, shape), shape)
    s, p = shape, params
    values = space(s, device)
    lanes = _nearest(p.lanes, values["lanes"])
    tx, ty = _nearest(p.tx, values["tx"]), _nearest(p.ty, values["ty"])
    tco = max(v for v in values["threads_co"] if v * lanes <= s.co) if lanes <= s.co else 1
    tco = min(_nearest(p.threads_co, values["threads_co"]), tco)
    most_x = max(v for v in values["threads_x"] if v * tx <= s.wo)
    most_y = max(v for v in values["threads_y"] if v * ty <= s.ho)
    txx = min(_nearest(p.threads_x, values["threads_x"]), most_x)
    tyy = min(_nearest(p.threads_y, values["threads_y"]), most_y)
    k = _nearest(p.k, values["k"])
    dw_vec, dw_rows = _nearest(p.dw_vec, values["dw_vec"]), _nearest(p.dw_rows, values["dw_rows"])
    split_k = max(v for v in values["split_k"] if v <= p.split_k)
    q = dataclasses.replace(  # the choices (dw_at, weights, staging, registers, gemm) are kept as given
        p,
        lanes=lanes,
        tx=tx,
        ty=ty,
        threads_co=tco,
        threads_x=txx,
        threads_y=tyy,
        k=k,
        dw_vec=dw_vec,
        dw_rows=dw_rows,
        split_k=split_k,
    )
    q = canonical(q, s)
    # Repair what still fails, in an order that keeps the tile's shape as far as possible.
    for _ in range(64):
        reason = check(q, s, device)
        if reason is None:
            return q
        q = _repair(q, s, device, reason)
    fallback = canonical(heuristic_fallback(s, device), s)
    reason = check(fallback, s, device)
    if reason:  # never: the fallback is valid by construction (tests/test_heuristic_fit.py checks a grid)
        raise ParamsError(f"no valid GPU schedule found for {s.label}: {reason}")
    return fallback


def _repair(q: GpuParams, s: LayerShape, device: DeviceSpec, reason: str) -> GpuParams:
    """One step towards validity for the failed constraint named in `reason`."""
    r = dataclasses.replace
    if reason.startswith("gemm=warp"):
        return r(q, gemm="thread")
    if reason.startswith("split_k"):
        return r(q, split_k=1)
    if "channels of a split_k" in reason:
        return r(q, k=q.k // 2) if q.k > 1 else r(q, split_k=1)
    if q.gemm == "warp" and "block tile" in reason and q.tile.block_co > s.co:
        return r(q, lanes=q.lanes // 2) if q.lanes > 1 else r(q, gemm="thread")
    if "registers exceed" in reason:
        return r(q, max_registers=64) if q.max_registers > 64 else r(q, threads_y=max(1, q.threads_y // 2))
    if "threads per block exceed" in reason:
        if q.threads_y > 1:
            return r(q, threads_y=q.threads_y // 2)
        return r(q, threads_x=max(1, q.threads_x // 2))
    if "fewer than a warp" in reason:
        if q.threads_co * 2 * q.lanes <= s.co and q.threads_co < 32:
            return r(q, threads_co=q.threads_co * 2)
        if q.threads_x * 2 * q.tx <= s.wo and q.threads_x < 16:
            return r(q, threads_x=q.threads_x * 2)
        if q.threads_y * 2 * q.ty <= s.ho and q.threads_y < 16:
            return r(q, threads_y=q.threads_y * 2)
        if q.tx > 1:
            return r(q, tx=q.tx // 2)
        if q.ty > 1:
            return r(q, ty=q.ty // 2)
        return r(q, lanes=max(1, q.lanes // 2))
    if "far above the cap" in reason:
        if q.k > 1:
            return r(q, k=q.k // 2)
        higher = [
            m for m in MAX_REGISTERS if m > q.max_registers and q.tile.threads * m <= GPU_REGISTERS_PER_BLOCK
        ]
        if higher:
            return r(q, max_registers=higher[0])
        return r(q, ty=q.ty // 2) if q.ty > 1 else r(q, tx=max(1, q.tx // 2), lanes=max(1, q.lanes // 2))
    if reason.startswith("dw_rows"):
        return r(q, dw_rows=max(v for v in GPU_DW_ROWS if v <= q.tile.block_y))
    if "accumulators" in reason:
        return r(q, ty=q.ty // 2) if q.ty > 1 else r(q, tx=max(1, q.tx // 2))
    if "shared memory" in reason:
        if q.weights == "shared":
            return r(q, weights="global")
        if q.stage_input:
            return r(q, stage_input=False)
        if q.threads_y > 1:
            return r(q, threads_y=q.threads_y // 2)
        if q.threads_x > 1:
            return r(q, threads_x=q.threads_x // 2)
        return r(q, dw_at="cblock")
    if "block tile" in reason:
        if q.tile.block_co > s.co:
            return r(q, threads_co=max(1, q.threads_co // 2)) if q.threads_co > 1 else r(q, lanes=1)
        if q.tile.block_x > s.wo:
            return r(q, threads_x=max(1, q.threads_x // 2)) if q.threads_x > 1 else r(q, tx=1)
        return r(q, threads_y=max(1, q.threads_y // 2)) if q.threads_y > 1 else r(q, ty=1)
    return heuristic_fallback(s, device)


def heuristic_fallback(s: LayerShape, device: DeviceSpec) -> GpuParams:
    """The smallest sensible GPU schedule, valid on every shape and capability (`check`): one output a
    thread, the depthwise computed by each thread inside its reduction (no shared memory), a reduction
    step that divides c, 64 registers; the block a warp of threads over the output channels, then the
    pixels, or the whole output where it has fewer than 32 elements a batch image."""
    k = max(divisors(s.c, (1, 2, 4)))
    tco = min(32, s.co)
    need = math.ceil(32 / tco)  # pixel threads that fill a warp with the channel threads
    txx = max(1, min(16, s.wo, need))
    tyy = max(1, min(16, s.ho, math.ceil(need / txx)))
    return GpuParams("cblock", 1, 1, 1, tco, txx, tyy, k, "global", False, 64)
