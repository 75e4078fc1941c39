"""The family's space for a shape and a device: the valid values of each parameter (`space`), the
constraints between them (`check`: what would not launch or would spill hopelessly), and one canonical
form of each schedule (`canonical`), so that two parameter sets that compile alike compare equal."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, overload

from kernels.device import DeviceSpec
from kernels.halide.family.limits import THREADS_PER_BLOCK, SmLimits, occupancy, sm_limits
from kernels.halide.family.params import (
    CPU_DW_AT,
    CPU_MAX_VECTORS,
    GPU_DW_AT,
    GPU_DW_ROWS,
    GPU_DW_STAGED,
    GPU_DW_VEC,
    GPU_GEMM,
    GPU_SPLIT_K,
    GPU_STEPS,
    GPU_WEIGHTS,
    MAX_REGISTERS,
    SPLIT_K_MIN_CHANNELS,
    WARP,
    CpuParams,
    GpuParams,
    Params,
    params_class,
)
from kernels.halide.targets import host_vector
from kernels.halide.tiling import channel_block, cpu_accumulators
from kernels.layer import KERNEL, LayerShape

GPU_MAX_THREADS = THREADS_PER_BLOCK  # threads per block, on every capability (`limits`)
GPU_REGISTERS_PER_BLOCK = 65536  # 32-bit registers a block may take (sm_30 .. sm_90: `limits.SM_LIMITS`)
# A GPU whose capability the catalog does not give is held to Turing's SM (7.5), the smallest of the
# capabilities the catalog's GPUs have (1024 threads and 64 KiB of shared memory an SM).
UNKNOWN_CAPABILITY = 75
# Shared memory a block may use without an opt-in; Halide 21's CUDA runtime never opts in (it calls no
# cuFuncSetAttribute), so no Halide kernel may use more, on any GPU (tests/test_halide_limits.py shows a
# block past it failing to launch; docs/evidence/kernels.md, "48 KiB").
GPU_SHARED_BYTES = 48 * 1024
GPU_MAX_ACCUMULATORS = 64  # fp32 accumulators a thread may keep in registers (128 with the whole file)
STREAMED_STEP = 32  # of a longer step, `register_demand` counts this many channels' values live


def pow2_upto(limit: int, start: int = 1) -> tuple[int, ...]:
    """The powers of two from `start` up to `limit`."""
    values, v = [], start
    while v <= limit:
        values.append(v)
        v *= 2
    return tuple(values)


def divisors(c: int, candidates: tuple[int, ...]) -> tuple[int, ...]:
    """The `candidates` that divide `c` (and so never read past its last channel)."""
    return tuple(d for d in candidates if d <= c and c % d == 0)


def space(shape: LayerShape, device: DeviceSpec) -> dict[str, tuple[Any, ...]]:
    """The valid values of each parameter for `shape` on `device` (constraints between parameters are
    `check`'s)."""
    s = shape
    if device.is_gpu:
        return {
            "dw_at": GPU_DW_AT,
            "lanes": tuple(v for v in (1, 2, 4, 8) if v <= s.co),
            "tx": tuple(range(1, min(8, s.wo) + 1)),
            "ty": tuple(range(1, min(8, s.ho) + 1)),
            "threads_co": tuple(range(1, min(32, s.co) + 1)),
            "threads_x": tuple(range(1, min(16, s.wo) + 1)),
            "threads_y": tuple(range(1, min(16, s.ho) + 1)),
            "k": divisors(s.c, GPU_STEPS),
            "weights": GPU_WEIGHTS,
            "stage_input": (False, True),
            "max_registers": MAX_REGISTERS,
            "gemm": GPU_GEMM,
            "dw_vec": divisors(s.c, GPU_DW_VEC),
            "dw_rows": tuple(v for v in GPU_DW_ROWS if v <= s.ho),
            "split_k": split_k_values(s.c),
        }
    natural, _ = host_vector()
    lanes = sorted({min(v, s.co) for v in (natural, max(1, natural // 2))})
    return {
        "dw_at": CPU_DW_AT,
        "lanes": tuple(lanes),
        "vectors": tuple(range(1, CPU_MAX_VECTORS + 1)),
        "tx": tuple(range(1, min(8, s.wo) + 1)),
        "ty": tuple(range(1, min(4, s.ho) + 1)),
        "row_tiles": pow2_upto(s.ho),
        "chunks": pow2_upto(min(8, s.co)),
        "kc": tuple(sorted({*divisors(s.c, (1, 2, 4, 8, 16, 32, 64)), channel_block(s.c, natural)})),
        "dw_unroll": (1, 2, 4),
    }


def split_k_values(c: int) -> tuple[int, ...]:
    """The valid `split_k` for `c` input channels: the `GPU_SPLIT_K` that divide c into parts of at least
    `SPLIT_K_MIN_CHANNELS` channels (1 always)."""
    return tuple(v for v in divisors(c, GPU_SPLIT_K) if v == 1 or c // v >= SPLIT_K_MIN_CHANNELS)


def shared_bytes(p: GpuParams, shape: LayerShape) -> int:
    """Shared memory one thread block of `p` allocates for `shape`."""
    s, t = shape, p.tile
    total = 0
    if p.dw_at == "block":
        total += 4 * s.c * t.block_x * t.block_y
        if p.stage_input:
            total += 4 * s.c * ((t.block_x - 1) * s.stride + KERNEL) * ((t.block_y - 1) * s.stride + KERNEL)
    if p.weights == "shared":
        total += 4 * t.block_co * s.c
    return total


def check(params: Params, shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why `params` is not a valid schedule for `shape` on `device` (one line), or None when it is."""
    want = params_class(device)
    if not isinstance(params, want):
        return f"{type(params).__name__} given for a {device.kind} device (needs {want.__name__})"
    values = space(shape, device)
    for name, valid in values.items():
        value = getattr(params, name)
        if name == "row_tiles":
            if not (isinstance(value, int) and 1 <= value <= shape.ho):
                return f"row_tiles must be an integer in 1..{shape.ho}, got {value!r}"
            continue
        if value not in valid or type(value) is not type(valid[0]):
            return f"{name} must be one of {list(valid)} for {shape.label}, got {value!r}"
    s = shape
    if isinstance(params, CpuParams):
        p = params
        if p.lanes * p.vectors > s.co:
            return f"lanes x vectors = {p.lanes * p.vectors} exceeds co = {s.co}"
        _, registers = host_vector()
        budget = cpu_accumulators(registers)
        if p.vectors * p.tx * p.ty > budget:
            return f"vectors x tx x ty = {p.vectors * p.tx * p.ty} accumulators exceed {budget} registers"
        if p.chunks > math.ceil(s.co / (p.lanes * p.vectors)):
            return f"chunks = {p.chunks} exceeds the {math.ceil(s.co / (p.lanes * p.vectors))} co tiles"
        return None
    p = params
    t = p.tile
    if p.gemm == "warp":
        reason = _check_warp(p, s)
        if reason:
            return reason
    if t.block_co > s.co or t.block_x > s.wo or t.block_y > s.ho:
        return (
            f"block tile {t.block_co}x{t.block_x}x{t.block_y} (co x px x py) exceeds the output "
            f"{s.co}x{s.wo}x{s.ho}"
        )
    lim = device_limits(device)
    most = min(GPU_MAX_THREADS, lim.threads_per_sm)
    if t.threads > most:
        return f"{t.threads} threads per block exceed {most} (sm_{lim.cc})"
    if t.threads < min(32, _max_threads(s)):
        return f"{t.threads} threads per block: fewer than a warp"
    if t.threads * p.max_registers > lim.registers_per_block:
        return (
            f"{t.threads} threads x {p.max_registers} registers exceed {lim.registers_per_block} per block "
            f"(sm_{lim.cc})"
        )
    if p.lanes * p.tx * p.ty > accumulator_cap(p.max_registers):
        return (
            f"lanes x tx x ty = {p.lanes * p.tx * p.ty} accumulators exceed "
            f"{accumulator_cap(p.max_registers)} at max_registers={p.max_registers}"
        )
    demand = register_demand(p, s)
    if demand > 2 * p.max_registers + 64:
        return f"about {demand} registers a thread needed, far above the cap of {p.max_registers}"
    if p.stage_input and p.dw_at != "block":
        return "stage_input applies to dw_at=block only"
    if p.split_k > 1:
        if p.dw_at != "root" or p.gemm != "thread":
            return f"split_k = {p.split_k} needs dw_at=root and gemm=thread (got {p.dw_at}, {p.gemm})"
        if (s.c // p.split_k) % p.k:
            return (
                f"k = {p.k} does not divide the {s.c // p.split_k} channels of a split_k = {p.split_k} part"
            )
    if p.dw_at == "block" and p.dw_rows > t.block_y:
        return f"dw_rows = {p.dw_rows} exceeds the block's {t.block_y} rows (threads_y x ty)"
    smem = shared_bytes(p, s)
    if smem > GPU_SHARED_BYTES:
        return f"{smem} bytes of shared memory per block exceed {GPU_SHARED_BYTES}"
    if occupancy(t.threads, p.max_registers, smem, lim).blocks < 1:
        return f"{t.threads} threads and {smem} bytes of shared memory: no block fits an SM (sm_{lim.cc})"
    return None


def device_limits(device: DeviceSpec) -> SmLimits:
    """The SM limits of `device`'s compute capability (`limits.SM_LIMITS`); Turing's where the catalog
    gives none (`UNKNOWN_CAPABILITY`)."""
    return sm_limits(device.cuda_capability or UNKNOWN_CAPABILITY)


def _check_warp(p: GpuParams, s: LayerShape) -> str | None:
    """Why `p` (gemm = warp) cannot be laid out over warps for `s`, or None."""
    if p.threads_co != WARP:
        return f"gemm=warp lays output channels over a warp's lanes: threads_co must be {WARP}"
    if s.c % WARP:
        return f"gemm=warp reduces in chunks of {WARP} channels: c = {s.c} is not a multiple of {WARP}"
    if p.k > WARP:
        return f"gemm=warp unrolls steps inside its chunks of {WARP} channels: k must be <= {WARP}, got {p.k}"
    if p.dw_at == "inline":
        return (
            "gemm=warp computes the depthwise once a chunk or reads it: dw_at must be root, block or "
            f"cblock, got {p.dw_at!r}"
        )
    if p.weights != "global":
        return f"gemm=warp loads its weights through the caches: weights must be global, got {p.weights!r}"
    return None


def accumulator_cap(max_registers: int) -> int:
    """The fp32 accumulators a thread may keep: 64, or 128 when it may use the whole register file
    (255), where most 128-accumulator tiles fit without spilling and the measurement judges the few that
    spill a little (docs/evidence/kernels.md, "accumulators")."""
    return 2 * GPU_MAX_ACCUMULATORS if max_registers >= 255 else GPU_MAX_ACCUMULATORS


def register_demand(p: GpuParams, s: LayerShape) -> int:
    """A rough count of the registers a thread of `p` keeps live: its accumulators plus a reduction
    step's weights and depthwise values (computed from (tx s + 2) x (ty s + 2) input taps a channel
    when the thread computes the depthwise itself), of at most `STREAMED_STEP` channels; for a warp
    tile, one step's weights and its chunk's depthwise values. Used only to reject hopeless spillers."""
    accumulators = p.lanes * p.tx * p.ty
    taps = (p.tx * s.stride + 2) * (p.ty * s.stride + 2)  # a channel's input taps for the tile's pixels
    if p.gemm == "warp":  # the chunk's depthwise values (one a pixel) and a step's weights, which are
        # loaded at each unrolled step (`_warp_pointwise`): how many steps' weights are live at once is
        # ptxas's choice, within the cap
        own = taps + KERNEL * KERNEL if p.dw_at == "cblock" else 0  # and, computing it, taps and weights
        return accumulators + p.tx * p.ty + p.lanes + own
    # A thread's step is one unrolled body, whose loads ptxas streams into its FMAs as they are used, not
    # all at once: of a longer step it counts `STREAMED_STEP` channels, so long steps of large tiles stay
    # in the space (docs/evidence/kernels.md, "reduction steps").
    steps = min(p.k, STREAMED_STEP)
    if p.dw_at in ("cblock", "inline"):
        return accumulators + steps * (p.lanes + taps)
    return accumulators + steps * (p.lanes + p.tx * p.ty)


def _max_threads(s: LayerShape) -> int:
    """The most threads a block can have on this shape (tiny shapes cannot fill a warp)."""
    return min(32, s.co) * min(16, s.wo) * min(16, s.ho)


@overload
def canonical(params: CpuParams, shape: LayerShape) -> CpuParams: ...
@overload
def canonical(params: GpuParams, shape: LayerShape) -> GpuParams: ...
def canonical(params: Params, shape: LayerShape) -> Params:
    """The same schedule with parameters that make no difference set to fixed values, so that two
    candidates that compile to the same code compare equal (and share a cache entry)."""
    if isinstance(params, CpuParams):
        p = params
        row_tiles = max(v for v in pow2_upto(shape.ho) if v <= max(1, shape.ho // p.ty))
        row_tiles = min(p.row_tiles, row_tiles)
        kc = p.kc if p.dw_at == "cblock" else max(divisors(shape.c, (1, 2, 4, 8, 16)))
        dw_unroll = p.dw_unroll if p.dw_at in ("root", "tile") else 1
        return dataclasses.replace(p, row_tiles=row_tiles, kc=kc, dw_unroll=dw_unroll)
    p = params
    stage_input = p.stage_input if p.dw_at == "block" else False
    threads_co = WARP if p.gemm == "warp" else p.threads_co  # a warp's lanes, whatever was asked
    tiled = p.dw_at in GPU_DW_STAGED  # a depthwise thread tile exists only where a stage of its own does
    splits = p.dw_at == "root" and p.gemm == "thread"  # only there is the reduction split (`check`)
    return dataclasses.replace(
        p,
        stage_input=stage_input,
        threads_co=threads_co,
        dw_vec=p.dw_vec if tiled else 1,
        dw_rows=p.dw_rows if tiled else 1,
        split_k=p.split_k if splits else 1,
    )
