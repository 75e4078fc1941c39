"""Where a search starts: the heuristic, the named manual schedules' parameters, register tiles ranked
by a simple traffic model (`Traffic`), and the neighbours of a good schedule that one-step moves rarely
reach (its other depthwise tiles and levels, longer reduction steps, other register caps, whole blocks)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from kernels.device import DeviceSpec
from kernels.halide.family.heuristic import fit, fit_cpu, heuristic, split_alternative
from kernels.halide.family.params import (
    CPU_DW_AT,
    GPU_DW_AT,
    GPU_DW_STAGED,
    MAX_REGISTERS,
    WARP,
    CpuParams,
    GpuParams,
    Params,
)
from kernels.halide.family.space import GPU_MAX_ACCUMULATORS, canonical, check, space
from kernels.halide.targets import host_threads, host_vector
from kernels.halide.tiling import (
    DEPTHWISE_SHARED_BYTES,
    PTX_VECTOR,
    channel_block,
    gpu_tile,
    micro_tile,
    plan_blocks,
    reduction_step,
    tail_waste,
)
from kernels.layer import LayerShape

GPU_MODEL_SEEDS = 12  # register tiles from the traffic model that seed a search
GPU_WARP_SEEDS = 6  # ... and warp-striped tiles (gemm=warp) besides
# How many times scarcer L2 bandwidth is than the L1 of all SMs together (docs/evidence/kernels.md,
# "traffic").
L2_TO_L1_BANDWIDTH = 5
LSU_TO_L1 = 2  # Traffic.lsu binds at 0.25 load instructions a FMA, Traffic.l1 at about 0.5 bytes a lane-FMA


def named(shape: LayerShape, device: DeviceSpec) -> dict[str, Params]:
    """The family's parameters of the named manual schedules `unfused`, `fused_tile` and `fused_cblock`
    (schedules_cpu / schedules_gpu), where the family can express them: the same tiles and the same
    place for the depthwise (on the GPU, `fused_tile`'s depthwise is mapped onto the block's threads
    the family's way). Seeds of the search, so that it starts from what is known to work."""
    s = shape
    out: dict[str, Params] = {}
    if not device.is_gpu:
        natural, registers = host_vector()
        t = micro_tile(s, natural, registers)
        for name, dw_at in (("unfused", "root"), ("fused_tile", "tile"), ("fused_cblock", "cblock")):
            plan = plan_blocks(s, t, host_threads(), depthwise_in_task=dw_at == "tile")
            p = CpuParams(
                dw_at, t.lanes, t.vectors, t.tx, t.ty, max(1, plan.rows // t.ty), plan.chunks,
                channel_block(s.c, natural), 2,
            )  # fmt: skip
            out[name] = canonical(fit_cpu(p, s), s)
        return out
    k = reduction_step(s.c, 8)
    shared_pixels = max(1, DEPTHWISE_SHARED_BYTES // (4 * s.c))
    tiles = {
        "unfused": ("root", gpu_tile(s, max_block_co=64, max_block_pixels=1 << 20)),
        "fused_tile": ("block", gpu_tile(s, max_block_co=128, max_block_pixels=shared_pixels)),
        "fused_cblock": ("cblock", gpu_tile(s, max_block_co=64, max_block_pixels=1 << 20)),
    }
    for name, (dw_at, t) in tiles.items():
        p = GpuParams(
            dw_at, t.lanes, t.tx, t.ty, t.threads_co, t.threads_x, t.threads_y, k, "global", False, 64
        )
        out[name] = canonical(p if check(p, s, device) is None else fit(p, s, device), s)
    return out


@dataclass(frozen=True)
class Traffic:
    """What a GPU schedule with the depthwise read from memory (`root`, `block`) asks of the SM's memory
    path per reduction step, by a simple count: `l1`, the L1/shared bytes per lane-FMA of one warp (its
    weight vectors, one 32-byte sector per distinct pixel per `k` channels); `l2`, the bytes per
    lane-FMA a block fetches (its weight panel and depthwise tile); `lsu`, the load instructions per
    FMA instruction of a thread (its weights and depthwise values in .v4 pieces). An SM moves 128 bytes
    of L1 and issues 128 lane-FMAs a clock, so above about 0.5 bytes the loads bind; L2 has about a fifth
    of the L1 bandwidth of all SMs together (`L2_TO_L1_BANDWIDTH`); the LSU issues one warp load a clock
    against four FMAs, so above 0.25 it binds. Used to rank register tiles for seeding,
    never reported as a measurement."""

    l1: float
    l2: float
    lsu: float = 0.0

    @property
    def cost(self) -> float:
        """Load of the part of the memory path that binds, in L1 bytes per lane-FMA."""
        return max(self.l1, L2_TO_L1_BANDWIDTH * self.l2, LSU_TO_L1 * self.lsu)


def traffic(p: GpuParams, shape: LayerShape) -> Traffic:
    """`Traffic` of `p` on `shape` (threads are laid out with `threads_co` fastest, as `apply_gpu` does).
    For `gemm` = warp a step's depthwise values come from other lanes (`shfl`, counted as load
    instructions: they issue on the same memory pipe), and a warp loads a chunk's once, coalesced."""
    block_co, block_px = p.tile.block_co, p.tile.block_x * p.tile.block_y
    l2 = 4 * (block_co + block_px) / (block_co * block_px)
    if p.gemm == "warp":
        px = p.tx * p.ty
        fmas = WARP * p.lanes * px
        l1 = (WARP * 4 * p.lanes + 4 * px) / fmas
        loads = math.ceil(p.lanes / PTX_VECTOR) + px + px / WARP  # a lane's, per channel
        return Traffic(l1=l1, l2=l2, lsu=loads / (p.lanes * px))
    warp_co = min(32, p.threads_co)
    warp_px = max(1, min(32 // warp_co, p.threads_x * p.threads_y)) * p.tx * p.ty
    weights = 32 * math.ceil(4 * warp_co * p.lanes / 32)
    depthwise = warp_px * 32 / min(PTX_VECTOR, p.k)
    fmas = warp_co * p.lanes * warp_px
    loads = math.ceil(p.lanes / PTX_VECTOR) + p.tx * p.ty / min(PTX_VECTOR, p.k)  # a thread's, per channel
    return Traffic(l1=(weights + depthwise) / fmas, l2=l2, lsu=loads / (p.lanes * p.tx * p.ty))


def block_tail_waste(p: GpuParams, s: LayerShape) -> float:
    """Work done per useful work of `p`'s blocks over the whole output."""
    return (
        tail_waste(s.co, p.tile.block_co)
        * tail_waste(s.wo, p.tile.block_x)
        * tail_waste(s.ho, p.tile.block_y)
    )


def model_seeds(
    shape: LayerShape, device: DeviceSpec, count: int = GPU_MODEL_SEEDS, gemm: str = "thread"
) -> list[GpuParams]:
    """The `count` register tiles of `gemm` the `traffic` model ranks best for `shape` on a GPU: the
    depthwise at `root` or `block`, 64-256 threads a block, at least 16 accumulators a thread (fewer only
    where the output is smaller), a block for every SM; ranked by `Traffic.cost` times tail waste, one
    per (dw_at, lanes, tx, ty) so that the seeds differ in their register tile; half of them within 128
    registers a thread, half with 64-128 accumulators and the whole register file."""
    if not device.is_gpu:
        return []
    s = shape
    values = space(s, device)
    pow2 = (1, 2, 4, 8, 16, 32)
    k = max(v for v in values["k"] if v <= 8)
    co_threads = (WARP,) if gemm == "warp" else tuple(v for v in pow2 if v in values["threads_co"])
    ranked: list[tuple[float, GpuParams]] = []
    for dw_at in ("root", "block"):
        for lanes in values["lanes"]:
            for tx in values["tx"]:
                for ty in values["ty"]:
                    acc = lanes * tx * ty
                    if acc < min(16, lanes * s.wo * s.ho):
                        continue
                    regs = 128 if acc <= GPU_MAX_ACCUMULATORS else 255
                    for tco in co_threads:
                        for txx in (v for v in pow2 if v in values["threads_x"]):
                            for tyy in (v for v in pow2 if v in values["threads_y"]):
                                p = GpuParams(
                                    dw_at, lanes, tx, ty, tco, txx, tyy, k, "global", False, regs, gemm
                                )
                                if not 64 <= p.tile.threads <= 256 or check(p, s, device) is not None:
                                    continue
                                if p.tile.blocks(s) < max(1, device.sm_count):
                                    continue
                                ranked.append((traffic(p, s).cost * block_tail_waste(p, s), p))
    ranked.sort(key=lambda r: (r[0], -r[1].tile.threads, r[1].dw_at))
    # The model sees no latency: half the seeds keep a thread within 128 registers (more warps a
    # block's SM can hold), half use the whole register file (more work a warp has in flight).
    out: list[GpuParams] = []
    for whole_file, quota in ((False, count - count // 2), (True, count // 2)):
        tiles: set[tuple[str, int, int, int]] = set()
        for _, p in ranked:
            tile = (p.dw_at, p.lanes, p.tx, p.ty)
            if (p.max_registers == 255) == whole_file and tile not in tiles and len(tiles) < quota:
                tiles.add(tile)
                out.append(canonical(p, s))
    return out


def depthwise_tiles(params: Params, shape: LayerShape, device: DeviceSpec) -> list[Params]:
    """`params` with each other valid thread tile of its depthwise (`dw_vec` x `dw_rows`), when the
    depthwise is a stage of its own (its own kernel, or the block's shared tile): a search tries them on
    its best schedules first, since they change that stage alone."""
    if not isinstance(params, GpuParams) or params.dw_at not in GPU_DW_STAGED:
        return []
    values = space(shape, device)
    out: list[Params] = []
    for vec in values["dw_vec"]:
        for rows in values["dw_rows"]:
            q = dataclasses.replace(params, dw_vec=vec, dw_rows=rows)
            if q != params and check(q, shape, device) is None:
                out.append(q)
    return out


def depthwise_levels(params: Params, shape: LayerShape, device: DeviceSpec) -> list[Params]:
    """`params` with the depthwise at each other level (`dw_at`) where the same tile is valid: the
    fusion ablation of one schedule, which a search tries on its best schedule first (a tile tuned with
    the depthwise in its own kernel may do better with it fused, or the other way round)."""
    levels = CPU_DW_AT if isinstance(params, CpuParams) else GPU_DW_AT
    out = []
    for dw_at in levels:
        q = canonical(dataclasses.replace(params, dw_at=dw_at), shape)
        if dw_at != params.dw_at and check(q, shape, device) is None:
            out.append(q)
    return out


def longer_steps(params: Params, shape: LayerShape, device: DeviceSpec) -> list[Params]:
    """`params` with each longer valid reduction step (`k`, unrolled; the whole register file where its
    own cap no longer fits the step), shortest first. Within a step's unrolled body ptxas issues the
    next channels' loads under this channel's FMAs, but at the loop's back-edge that pipeline drains,
    and each step starts by waiting out its first loads' latency with the register tiles' one or two
    warps a scheduler (one block of 7 warps an SM at 7^2 x 1024): a longer body waits as often for
    more FMAs. A search tries them on its best schedules first, since its one-step moves change `k`
    or the cap, rarely both."""
    if not isinstance(params, GpuParams):
        return []
    out: list[Params] = []
    for k in space(shape, device)["k"]:
        if k <= params.k:
            continue
        for cap in dict.fromkeys((params.max_registers, MAX_REGISTERS[-1])):
            q = dataclasses.replace(params, k=k, max_registers=cap)
            if check(q, shape, device) is None:
                out.append(q)
                break
    return out


def other_caps(params: Params, shape: LayerShape, device: DeviceSpec) -> list[Params]:
    """`params` at each other valid register cap (`max_registers`), lowest first. A cap trades spills
    for occupancy, and the search's one-step moves change it as rarely as any other parameter, so a good
    tile that spills at its cap may never meet its twin at a higher one (docs/evidence/kernels.md,
    "register caps"). A search tries these on its best schedule first."""
    if not isinstance(params, GpuParams):
        return []
    out: list[Params] = []
    for cap in space(shape, device)["max_registers"]:
        q = dataclasses.replace(params, max_registers=cap)
        if cap != params.max_registers and check(q, shape, device) is None:
            out.append(q)
    return out


def whole_blocks(params: Params, shape: LayerShape, device: DeviceSpec) -> list[GpuParams]:
    """`params` with its block's threads laid out again so that the blocks tile the output's pixels
    exactly and fill whole warps, where `params` does not: the same register tile, `threads_x` /
    `threads_y` that divide the extent along an axis with a tail (the others kept), `threads_co` as it
    is or a warp's worth; nearest in thread count first. A tail block shifts inwards and recomputes
    its neighbour's pixels (blocks of 4 rows do 8/7 of the work on a 7 x 7 output), and a part-filled
    warp idles lanes; a search screens these on its best schedule first, since its one-step moves
    rarely reach a divisor (4 -> 7 threads is three)."""
    if not isinstance(params, GpuParams):
        return []
    s, p = shape, params
    tailed_x, tailed_y = tail_waste(s.wo, p.tile.block_x) > 1, tail_waste(s.ho, p.tile.block_y) > 1
    if not (tailed_x or tailed_y or p.tile.threads % WARP):
        return []
    values = space(s, device)

    def along(axis: str, extent: int, tile: int, tailed: bool) -> list[int]:
        if not tailed:
            return [getattr(p, axis)]
        return [t for t in values[axis] if extent % (tile * t) == 0]

    xs = along("threads_x", s.wo, p.tx, tailed_x)
    ys = along("threads_y", s.ho, p.ty, tailed_y)
    out: list[GpuParams] = []
    for tco in dict.fromkeys((p.threads_co, WARP)):
        for txx in xs:
            for tyy in ys:
                q = canonical(dataclasses.replace(p, threads_co=tco, threads_x=txx, threads_y=tyy), s)
                if q != p and q not in out and q.tile.threads % WARP == 0 and check(q, s, device) is None:
                    out.append(q)
    return sorted(out, key=lambda q: abs(math.log(q.tile.threads / p.tile.threads)))


def seeds(shape: LayerShape, device: DeviceSpec) -> list[Params]:
    """Structured starting points: the heuristic, the named manual schedules' parameters (`named`), the
    heuristic's tiles with the depthwise at every other level (the fusion ablation), then on a GPU the
    traffic model's register tiles of both `gemm` layouts (`model_seeds`), the warp tiles also with the
    depthwise computed by the warp (cblock); on a GPU also the heuristic unsplit where it splits its
    reduction, and every other seed split where its grid does not fill the device (`split_reduction`);
    each valid, without duplicates."""
    base = heuristic(shape, device)
    other = split_alternative(base, shape, device)  # the heuristic's reduction the other way, second
    out: list[Params] = [base] if other is None else [base, other]
    for q in named(shape, device).values():
        if q not in out:
            out.append(q)
    for dw_at in CPU_DW_AT if not device.is_gpu else GPU_DW_AT:
        q = fit(dataclasses.replace(base, dw_at=dw_at), shape, device)
        if q not in out:
            out.append(q)
    warp = model_seeds(shape, device, GPU_WARP_SEEDS, gemm="warp")
    fused = [q for p in warp for q in depthwise_levels(p, shape, device) if q.dw_at == "cblock"]
    for q in [*model_seeds(shape, device), *warp, *fused]:
        if q not in out:
            out.append(q)
    for q in list(out):
        other = split_alternative(q, shape, device)
        if other is not None and other not in out:
            out.append(other)
    return out
