"""The family's cost model: a time estimate for a schedule on a shape and a device, without measuring.

It ranks the candidates of `halide_tuned` on a miss (`tuned.on_miss` = rank, and the order in which
`quick` times them), and its choice between the named unfused schedule and the best named fused one is
the project's rule for question 3 (`fusion_choice`). An estimate is never reported as a measurement.

GPU (per kernel): the larger of the compute time and the memory time, plus a fixed cost a kernel.
Compute: the FMAs a schedule does (the pointwise over its blocks, tails included; the depthwise as often
as the schedule recomputes it: once a block of output channels at `block`, once a register tile's
channels at `cblock` / `inline`, once at `root`) at the device's FMA rate, derated by the load
instructions and cache bytes the tile asks per FMA (`seeds.traffic`), by latency (too few independent
FMAs a scheduler: resident warps x accumulators a thread) and by the grid (blocks that do not fill the
SMs, or a last wave that fills them partly; occupancy from `limits`; a `split_k` reduction is that many
times the blocks, each of 1/split_k the steps, plus the partial sums' round trip through the L2 and a
kernel that adds them). Memory: DRAM bytes (the layer's
minimum, plus the depthwise result written and read back at `root`) and L2 bytes (each block's weight
panel and input or depthwise tile), at the device's bandwidth and `L2_TO_DRAM` times it.

CPU: the pointwise at the register tile's FMA issue rate (two FMAs and two loads a cycle, as
`tiling.micro_tile` counts them), the depthwise at `CPU_DEPTHWISE_EFFICIENCY` of peak as often as the
schedule recomputes it, the intermediate's round trip for `root` (from L2 when it fits, else DRAM),
tasks over cores (`plan_blocks`' makespan) and a fixed cost a parallel loop.

What this means for the fusion choice. On a CPU the named `unfused` and `fused_tile` share their pointwise
tile and task plan on most shapes, so their estimates differ only by the intermediate's round trip, the
extra parallel loop and any depthwise recomputed per chunk of output channels: a few percent to about 20%,
in favour of `fused_tile` unless it must recompute. A weights-stay-in-L2 term (a task's weights, depthwise
block and input rows against the core's L2) was tried and moved no verdict. On a GPU two known errors
remain: the named `fused_tile`'s serial stage is charged per input pixel of its tile, although its loop
runs over the tile's output pixels (2-3x too much at stride 1, 4-5x at stride 2), and `unfused`'s
pointwise is estimated 1.3-1.9x too fast a reduction step at full occupancy (its kernel times in the H200
records); they partly cancel, and changing either alone, or the latencies, did not make more choices
right (`orchestrator.report.fusion_rule`). Nsight Compute on the H200 (reports/h200/nsight_fusion_warm)
places the largest `unfused` errors: with a 4 x 2 pixel tile its loads wait about 3x as long an instruction as
with 7 x 1 for the same instruction mix, which the traffic count cannot see; a DRAM wait for an intermediate
that outgrows the L2 was tried and made no more choices right (docs/tuning.md).
"""

from __future__ import annotations

import math
from dataclasses import replace

from kernels.device import DeviceSpec
from kernels.halide.family.limits import occupancy
from kernels.halide.family.params import WARP, CpuParams, GpuParams, Params
from kernels.halide.family.seeds import LSU_TO_L1, named, traffic
from kernels.halide.family.space import device_limits
from kernels.halide.targets import host_threads, host_vector
from kernels.halide.tiling import channel_block, reduction_step, tail_waste
from kernels.layer import KERNEL, LayerShape

TAPS = KERNEL * KERNEL
L2_TO_DRAM = 3.0  # L2 bandwidth over DRAM bandwidth (H100: about 3x)
OVERLAP = 0.25  # of the shorter of compute and memory time that does not hide under the longer
GPU_KERNEL_S = 1.5e-6  # a kernel's fixed cost: launch, ramp-up and drain of its grid
# Seconds a reduction step waits for its operands before its FMAs, by where the depthwise values come
# from: global memory (root: the intermediate; cblock and inline: the input's taps, then the depthwise
# FMAs they feed) or the block's shared tile (block).
GPU_STEP_LATENCY_S = {"root": 0.8e-6, "cblock": 0.8e-6, "inline": 0.8e-6, "block": 0.05e-6}
# Seconds the named fused_tile's depthwise stage waits for each input pixel of its block's tile that a
# thread reads in turn (its threads lie over channels only, so each walks the tile's pixels one by one).
GPU_STAGE_LATENCY_S = 0.4e-6
GPU_DW_EFFICIENCY = 0.5  # a depthwise kernel's FMA rate against peak (one load a tap)
CPU_DEPTHWISE_EFFICIENCY = 0.22  # depthwise FMAs (a load each) against peak (`tiling`: 20 / 90 GFLOP/s)
CPU_LOOP_S = 4e-6  # a parallel loop's fixed cost in Halide's thread pool
CPU_L2_BYTES = 1 << 20  # per core: an intermediate this small per core stays in cache
CPU_CLOCK_HZ = 3.0e9  # for a CPU peak estimated from its vector unit, when not measured
# The official app's GPU tile (schedules_gpu.APP_TILE) as the family's parameters, for ranking only.
GPU_APP = GpuParams("block", 1, 2, 2, 16, 2, 1, 4, "global", False, 64)


def estimate(params: Params, shape: LayerShape, device: DeviceSpec) -> float:
    """Estimated seconds of one run of the family schedule `params` on `shape` and `device`."""
    if isinstance(params, GpuParams):
        return _gpu(params, shape, device)
    return _cpu(params, shape, device)


def estimate_named(name: str, shape: LayerShape, device: DeviceSpec) -> float:
    """Estimated seconds of the named schedule `name` (app, unfused, fused_tile, fused_cblock), through
    the family's parameters that express it (`seeds.named`; the app's as `GPU_APP` on a GPU and as its
    channel-slice fusion on a CPU)."""
    if name == "app":
        return _app_gpu(shape, device) if device.is_gpu else _app_cpu(shape, device)
    params = named(shape, device)[name]
    if isinstance(params, GpuParams):
        return _gpu(params, shape, device, serial_stage=name == "fused_tile")
    return estimate(params, shape, device)


def fusion_choice(shape: LayerShape, device: DeviceSpec) -> str:
    """`fused` or `unfused`: which of the named unfused schedule and the best named fused one (app,
    fused_tile, fused_cblock) the model expects to be faster on `shape` and `device`."""
    fused = min(estimate_named(n, shape, device) for n in ("app", "fused_tile", "fused_cblock"))
    return "fused" if fused < estimate_named("unfused", shape, device) else "unfused"


# --- GPU ----------------------------------------------------------------------------------------------


def _gpu_rates(device: DeviceSpec) -> tuple[float, float]:
    """(FMA/s, DRAM bytes/s) of `device`: its measured fp32 FMA peak and DRAM bandwidth where known, else the
    datasheet's (`DeviceSpec.compute_roof`, `memory_roof`)."""
    gflops, _ = device.compute_roof()
    gbps = device.dram_gbps or device.mem_gbps
    return max(gflops, 1.0) * 1e9 / 2, max(gbps, 1.0) * 1e9


def _gpu(p: GpuParams, s: LayerShape, device: DeviceSpec, serial_stage: bool = False) -> float:
    """`estimate` on a GPU; `serial_stage`: the block's depthwise stage walks its input tile's pixels one
    after the other in each thread (`schedules_gpu.schedule_fused_tile` lays its threads over channels
    only), every pixel waiting on its loads.

    The two latencies (`GPU_STEP_LATENCY_S`, `GPU_STAGE_LATENCY_S`) are not datasheet figures: they are
    the waits that make the named schedules' times on the H100 (results/h100/mobilenet_v1, awkward,
    fusion_ablation: batch 1 and 32) come out within about 2x; a reduction step of `halide_unfused` at
    batch 1, one block an SM, took 0.9-1.5 us there (its kernel time over its steps)."""
    fma_rate, bw = _gpu_rates(device)
    lim = device_limits(device)
    sms = max(1, device.sm_count)
    t = p.tile
    pixels = s.n * s.ho * s.wo
    # each part of a split reduction is as many blocks again, each with 1/split_k of the steps
    blocks = t.blocks(s) * p.split_k
    acc = p.lanes * p.tx * p.ty  # a thread's accumulators: its FMAs a channel
    dw = 0.0  # a thread's depthwise FMAs a channel
    if p.dw_at == "block":
        dw = TAPS * t.block_x * t.block_y / t.threads
    elif p.dw_at in ("cblock", "inline"):
        dw = TAPS * p.tx * p.ty / (WARP if p.gemm == "warp" else 1)
    # L1 bytes and load instructions a lane-FMA (`seeds.Traffic`, binding above 0.5); its L2 bytes are
    # the memory time's
    tr = traffic(p, s)
    issue = min(1.0, 0.5 / max(tr.l1, LSU_TO_L1 * tr.lsu, 1e-9))
    occ = occupancy(t.threads, p.max_registers, _shared(p, s), lim)
    resident = max(1, occ.blocks)
    per_sm = min(resident, math.ceil(blocks / sms))  # blocks an SM runs at once in this grid
    waves = math.ceil(blocks / (sms * resident))
    steps = math.ceil(s.c / p.split_k / p.k)
    # one reduction step of the SM's blocks: its operands' latency, then its FMAs at the SM's rate
    work = per_sm * t.threads * (acc + dw) * p.k / (fma_rate / sms * issue)
    latency = GPU_STEP_LATENCY_S[p.dw_at]
    compute = waves * steps * (latency + work) * _spill(p, s)
    if serial_stage and p.dw_at == "block":
        taps = ((t.block_x - 1) * s.stride + KERNEL) * ((t.block_y - 1) * s.stride + KERNEL)
        compute += waves * math.ceil(s.c / min(t.threads, s.c)) * taps * GPU_STAGE_LATENCY_S
    dram = s.min_bytes + (s.intermediate_bytes if p.dw_at == "root" else 0)
    tile_in = _input_tile(p, s) if p.dw_at != "root" else 4 * s.c * t.block_x * t.block_y
    l2 = blocks * (4 * s.c // p.split_k * t.block_co + tile_in // p.split_k)
    parts = 4 * p.split_k * pixels * s.co if p.split_k > 1 else 0  # the partial sums, written to the L2
    memory = max(dram / bw, (l2 + parts) / (L2_TO_DRAM * bw))
    total = max(compute, memory) + OVERLAP * min(compute, memory) + GPU_KERNEL_S
    if parts:  # the kernel that adds the parts: reads them from the L2, writes the output
        total += (parts + 4 * pixels * s.co) / (L2_TO_DRAM * bw) + GPU_KERNEL_S
    if p.dw_at == "root":  # the depthwise kernel of its own
        dw_bytes = 4 * s.n * s.h * s.w * s.c + 4 * pixels * s.c
        total += max(TAPS * pixels * s.c / (fma_rate * GPU_DW_EFFICIENCY), dw_bytes / bw) + GPU_KERNEL_S
    return total


def _spill(p: GpuParams, s: LayerShape) -> float:
    """How much slower a thread that computes the depthwise itself (cblock, inline) runs when a step's
    input taps and its accumulators do not fit its register cap: (live / cap) squared, each spilled value
    stored and loaded through local memory (the named `fused_cblock` at 64 registers ran 4-9x slower than
    a model without spills on the H100's batch-32 blocks, results/h100/mobilenet_v1)."""
    if p.dw_at not in ("cblock", "inline") or p.gemm == "warp":
        return 1.0
    taps = (p.tx * s.stride + 2) * (p.ty * s.stride + 2)
    live = p.lanes * p.tx * p.ty + min(p.k, 32) * taps
    return max(1.0, live / p.max_registers) ** 2


def _shared(p: GpuParams, s: LayerShape) -> int:
    from kernels.halide.family.space import shared_bytes

    return shared_bytes(p, s)


def _input_tile(p: GpuParams, s: LayerShape) -> int:
    """Bytes of input a block reads for its pixels (its depthwise's taps, halo included)."""
    t = p.tile
    return 4 * s.c * ((t.block_x - 1) * s.stride + KERNEL) * ((t.block_y - 1) * s.stride + KERNEL)


def _app_gpu(s: LayerShape, device: DeviceSpec) -> float:
    """The official app's GPU schedule: its tile (`GPU_APP`) shrunk to the shape as `schedules_gpu`
    shrinks it, its depthwise in the block's shared memory."""
    a = GPU_APP
    lanes = 1
    tx, ty = min(a.tx, s.wo), min(a.ty, s.ho)
    tco = min(a.threads_co, s.co)
    txx = max(1, min(a.threads_x, s.wo // tx))
    tyy = max(1, min(a.threads_y, s.ho // ty))
    p = replace(
        a, lanes=lanes, tx=tx, ty=ty, threads_co=tco, threads_x=txx, threads_y=tyy, k=reduction_step(s.c)
    )
    return _gpu(p, s, device)


# --- CPU ----------------------------------------------------------------------------------------------


def _cpu_fma_rate(device: DeviceSpec) -> float:
    """FMA/s of the host's cores: the measured peak, else its vector unit (2 FMA pipes) at CPU_CLOCK_HZ."""
    gflops, _ = device.compute_roof()
    if gflops > 0:
        return gflops * 1e9 / 2
    lanes, _ = host_vector()
    return (device.cores or host_threads()) * lanes * 2 * CPU_CLOCK_HZ


def _cpu_tile_efficiency(vectors: int, tx: int, ty: int) -> float:
    """FMA issue rate of a register tile against two vector FMAs a cycle (`tiling.micro_tile`'s count)."""
    acc = vectors * tx * ty
    cycles = max(acc / 2, (vectors + tx * ty) / 2, 4.0)
    return acc / (2 * cycles)


def _cpu(p: CpuParams, s: LayerShape, device: DeviceSpec) -> float:
    fma_rate = _cpu_fma_rate(device)
    cores = device.cores or host_threads()
    lanes, _ = host_vector()
    bw = max(device.dram_gbps or device.mem_gbps, 1.0) * 1e9
    pixels = s.n * s.ho * s.wo
    co_tile = p.lanes * p.vectors
    waste = tail_waste(s.co, co_tile) * tail_waste(s.wo, p.tx) * tail_waste(s.ho, p.ty)
    # vectors narrower than the machine's waste the rest of its lanes
    width = min(1.0, p.lanes / lanes)
    pointwise = pixels * s.c * s.co * waste / (fma_rate * width * _cpu_tile_efficiency(p.vectors, p.tx, p.ty))
    recompute = {
        "root": 1,
        "tile": p.chunks,
        "cblock": math.ceil(s.co / co_tile),
        "inline": math.ceil(s.co / co_tile),
    }
    dw_width = min(1.0, min(p.lanes, s.c) / lanes) if p.dw_at in ("root", "tile") else min(1.0, p.kc / lanes)
    depthwise = TAPS * pixels * s.c * recompute[p.dw_at] / (fma_rate * CPU_DEPTHWISE_EFFICIENCY * dw_width)
    rows = min(p.row_tiles, max(1, s.ho // p.ty)) * p.ty
    tasks = s.n * math.ceil(s.ho / rows) * p.chunks
    makespan = math.ceil(tasks / cores) * cores / tasks
    body = pointwise + (0 if p.dw_at == "root" else depthwise)
    total = body * makespan + CPU_LOOP_S
    if p.dw_at == "root":
        inter = s.intermediate_bytes
        rate = bw if inter / cores > CPU_L2_BYTES else 4 * bw
        total += depthwise + inter / rate + CPU_LOOP_S
    return max(total, s.min_bytes / bw)


def _app_cpu(s: LayerShape, device: DeviceSpec) -> float:
    """The official app's CPU schedule (`schedules_cpu.schedule_app`): 16-channel x 6 x 4 register tiles
    on AVX-512, its depthwise recomputed for each slice of the reduction and each tile of output
    channels (as the family's cblock), the tiles' rows in parallel."""
    lanes, registers = host_vector()
    vectors, tx, ty = (1, 6, 4) if (registers, lanes) == (32, 16) else (2, 3, 2)
    co_tile = min(vectors * lanes, s.co)
    tx, ty = min(tx, s.wo), min(ty, s.ho)
    p = CpuParams(
        "cblock", min(lanes, co_tile), max(1, co_tile // lanes), tx, ty, 1, 1, channel_block(s.c, lanes), 1
    )
    return _cpu(p, s, device)
