"""A parameterised family of Halide schedules of the layer, for CPU and CUDA: what the search explores.

One frozen dataclass of parameters per device kind (`CpuParams`, `GpuParams`). For a shape and a device,
`space` gives the valid values of each parameter, `check` the constraints between them, `heuristic` a
good guess without measuring, and `apply` schedules the layer of `algorithm.py` with a parameter set.
The `halide_family` variant builds `options["params"]` (fields left out take the heuristic's values,
the later ones their defaults: `from_options`) through the ordinary build path of `variants.py`, so the
CPU compile cache keys on the resolved parameters and every candidate of a search is an ordinary Job.

The parameters, as the issue lists them:
- where the depthwise result lives (`dw_at`): `root` (its own buffer; on the GPU its own kernel), per
  output tile (`tile` on the CPU: the rows of a parallel task, every channel; `block` on the GPU: a
  thread block's pixels, every channel, in shared memory), per channel block inside the pointwise
  reduction (`cblock`: a register tile's pixels, `kc` / `k` channels at a time; with `gemm` = warp, a
  warp's pixels and a chunk of 32 channels, one a lane), or `inline`;
- tile sizes over output channels and pixels: the register tile (`lanes` x `vectors` channels by
  `tx` x `ty` pixels on the CPU; `lanes` x `tx` x `ty` per thread on the GPU) and the task or block
  around it (`row_tiles` and `chunks` on the CPU; `threads_co` x `threads_x` x `threads_y` on the GPU);
- vector width (`lanes`), unrolling (`dw_unroll` on the CPU; the reduction step `k`, fully unrolled,
  on the GPU), rows per parallel task (CPU), thread mapping, shared-memory staging of the input
  (`stage_input`) and of the pointwise weights (`weights`), and the register cap (`max_registers`);
- the pointwise's layout over the threads (`gemm`): a register tile per thread, or a tile striped over a
  warp's lanes with the depthwise values passed between lanes (`shfl`), as Halide's `gpu_lanes` apps do.
- where the depthwise is a GPU stage of its own (its own kernel, or the block's shared tile), that
  stage's thread tile: `dw_vec` channels (a vector) by `dw_rows` output rows a thread.

The CPU code reuses the pointwise micro-kernel of `schedules_cpu` (so `dw_at` = root / tile / cblock
with that module's own choices reproduces its `unfused` / `fused_tile` / `fused_cblock`); the GPU code
generalises `schedules_gpu`'s register-tiled pointwise. Tiles never exceed an extent (tails shift
inwards), so every valid parameter set is correct on any shape; `check` rejects what would not launch
(threads, registers and shared memory per block).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kernels.device import DeviceSpec
from kernels.halide.targets import host_threads, host_vector
from kernels.halide.tiling import (
    DEPTHWISE_SHARED_BYTES,
    PTX_VECTOR,
    BlockPlan,
    GpuTile,
    MicroTile,
    channel_block,
    cpu_accumulators,
    gpu_tile,
    micro_tile,
    plan_blocks,
    reduction_step,
    tail_waste,
)
from kernels.layer import KERNEL, LayerShape

CPU_DW_AT = ("root", "tile", "cblock", "inline")
GPU_DW_AT = ("root", "block", "cblock", "inline")
# where the depthwise is a stage of its own (its own kernel, or the block's shared tile): it can be tiled
GPU_DW_STAGED = ("root", "block")
GPU_WEIGHTS = ("global", "shared")  # pointwise weights: through the caches, or a panel in shared memory
GPU_GEMM = ("thread", "warp")  # the pointwise's register tile: a thread's own, or striped over a warp's lanes
WARP = 32  # lanes of a warp: the output channels a `warp` tile lays over them, the channels of its chunk
MAX_REGISTERS = (64, 128, 255)  # HL_CUDA_JIT_MAX_REGISTERS; 64 is Halide's default
GPU_MAX_THREADS = 1024  # threads per block
GPU_REGISTERS_PER_BLOCK = 65536  # 32-bit registers of one SM, all a block may take (sm_50 .. sm_90)
# Shared memory a block may use without an opt-in; Halide 21's CUDA runtime never opts in (it calls no
# cuFuncSetAttribute), so no Halide kernel may use more, on any GPU (on the H100 a block of 49,156 bytes
# fails to launch: tests/test_halide_limits.py).
GPU_SHARED_BYTES = 48 * 1024
GPU_MAX_ACCUMULATORS = 64  # fp32 accumulators a thread may keep in registers (128 with the whole file)
GPU_MODEL_SEEDS = 12  # register tiles from the traffic model that seed a search
GPU_WARP_SEEDS = 6  # ... and warp-striped tiles (gemm=warp) besides
L2_TO_L1_BANDWIDTH = 5  # how many times scarcer L2 bandwidth is than the L1 of all SMs (H100: ~30/5.5 TB/s)
LSU_TO_L1 = 2  # Traffic.lsu binds at 0.25 load instructions a FMA, Traffic.l1 at about 0.5 bytes a lane-FMA
CPU_MAX_VECTORS = 4
# Input channels a GPU reduction step unrolls (`k`). A longer step waits at its loop's back-edge as often
# for more FMAs (`longer_steps`); 32 won on the H100's widest blocks (tuning/README.md).
GPU_STEPS = (1, 2, 4, 8, 16, 32, 64)
STREAMED_STEP = 32  # of a longer step, `register_demand` counts this many channels' values live
GPU_DW_VEC = (1, 2, 4)  # dw_at=root: channels a thread of the depthwise kernel computes (one vector)
GPU_DW_ROWS = (1, 2, 4)  # dw_at=root: output rows a thread of the depthwise kernel computes (unrolled)
# Input channels from which the GPU heuristic gives the depthwise its own kernel (`_wide_heuristic`):
# a 32 KiB shared tile of every channel holds 32 pixels at 256 channels.
WIDE_CHANNELS = 256
LATER_DEFAULTS = {"gemm": "thread", "dw_vec": 1, "dw_rows": 1}  # GPU parameters added after the first runs


class ParamsError(ValueError):
    """A parameter set that is not in the family's space for the shape and device; names the valid values."""


@dataclass(frozen=True)
class CpuParams:
    """A CPU schedule of the family: a register tile of `lanes` x `vectors` output channels by `tx` x `ty`
    pixels; parallel tasks of `row_tiles` x `ty` output rows by 1/`chunks` of the output channels; the
    depthwise at `dw_at` (with `kc` channels per block for `cblock`), vectorised over channels and
    unrolled `dw_unroll` pixels (root, tile)."""

    dw_at: str = "tile"
    lanes: int = 16
    vectors: int = 1
    tx: int = 1
    ty: int = 1
    row_tiles: int = 1
    chunks: int = 1
    kc: int = 16
    dw_unroll: int = 2

    kind = "cpu"


@dataclass(frozen=True)
class GpuParams:
    """A CUDA schedule of the family: thread blocks of `threads_co` x `threads_x` x `threads_y` threads,
    each accumulating `lanes` output channels (one vector) by `tx` x `ty` pixels in registers, `k` input
    channels per unrolled reduction step; the depthwise at `dw_at`; the block's padded input
    (`stage_input`, block only) and weight panel (`weights` = shared) staged in shared memory; the
    register cap per thread `max_registers`.

    `gemm` = warp lays the pointwise over warps instead (in the manner of the `gpu_lanes` schedules of
    Halide's `conv_layer` and older `cuda_mat_mul` apps): a warp's 32 lanes hold `lanes` output channels
    each (co = 32 x lanes a warp, `threads_co` is 32) by `tx` x `ty` pixels, the blocks' warps
    `threads_x` x `threads_y` tile the pixels; the reduction runs in chunks of 32 input channels, each
    lane loading one channel of the chunk's depthwise values with one coalesced load a pixel, and each
    step broadcasting them from lane to lane (`shfl`) instead of loading them again; `k` steps of a chunk
    are unrolled together. With `dw_at` = cblock the warp computes each chunk's depthwise itself, each
    lane its channel of the warp's pixels, straight from the input: the layer is one kernel and no
    depthwise tile goes through memory, at the cost of computing each chunk once per warp of output
    channels (`co` / (32 x `lanes`) times).

    Where the depthwise is a stage of its own (`dw_at` = root: its own kernel; block: the block's tile
    in shared memory), each thread of that stage computes `dw_vec` adjacent channels (one vector load a
    tap; at block the staged input is copied in the same vectors) of `dw_rows` output rows (unrolled, so
    a stride-1 thread loads each input row once for up to three outputs); 1 and 1 are the
    one-value-a-thread stage of the earlier searches."""

    dw_at: str = "block"
    lanes: int = 4
    tx: int = 2
    ty: int = 2
    threads_co: int = 8
    threads_x: int = 4
    threads_y: int = 4
    k: int = 4
    weights: str = "global"
    stage_input: bool = False
    max_registers: int = 64
    gemm: str = "thread"
    dw_vec: int = 1
    dw_rows: int = 1

    kind = "cuda"

    @functools.cached_property
    def tile(self) -> GpuTile:
        """The thread block of register tiles these parameters lay out (block extents, threads)."""
        return GpuTile(self.lanes, self.tx, self.ty, self.threads_co, self.threads_x, self.threads_y)


Params = CpuParams | GpuParams


def params_class(device: DeviceSpec) -> type[CpuParams] | type[GpuParams]:
    """The parameter dataclass of the device's kind."""
    return GpuParams if device.is_gpu else CpuParams


def as_dict(params: Params) -> dict[str, Any]:
    """The parameters as plain JSON-friendly data (what Job options, the cache key and the db hold).
    Parameters that came after the first searches are left out at their defaults (`gemm` = thread,
    `dw_vec` = `dw_rows` = 1), and so the parameter sets those searches recorded keep their digests and
    job keys."""
    out = asdict(params)
    for name, default in LATER_DEFAULTS.items():
        if out.get(name) == default:
            del out[name]
    return out


def digest(params: Params) -> str:
    """A stable short name of a parameter set (for logs and artifact names)."""
    blob = json.dumps({"kind": params.kind, **as_dict(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# --- the space -------------------------------------------------------------------------------------


def _pow2_upto(limit: int, start: int = 1) -> tuple[int, ...]:
    values, v = [], start
    while v <= limit:
        values.append(v)
        v *= 2
    return tuple(values)


def _divisors(c: int, candidates: tuple[int, ...]) -> tuple[int, ...]:
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
            "k": _divisors(s.c, GPU_STEPS),
            "weights": GPU_WEIGHTS,
            "stage_input": (False, True),
            "max_registers": MAX_REGISTERS,
            "gemm": GPU_GEMM,
            "dw_vec": _divisors(s.c, GPU_DW_VEC),
            "dw_rows": tuple(v for v in GPU_DW_ROWS if v <= s.ho),
        }
    natural, _ = host_vector()
    lanes = sorted({min(v, s.co) for v in (natural, max(1, natural // 2))})
    return {
        "dw_at": CPU_DW_AT,
        "lanes": tuple(lanes),
        "vectors": tuple(range(1, CPU_MAX_VECTORS + 1)),
        "tx": tuple(range(1, min(8, s.wo) + 1)),
        "ty": tuple(range(1, min(4, s.ho) + 1)),
        "row_tiles": _pow2_upto(s.ho),
        "chunks": _pow2_upto(min(8, s.co)),
        "kc": tuple(sorted({*_divisors(s.c, (1, 2, 4, 8, 16, 32, 64)), channel_block(s.c, natural)})),
        "dw_unroll": (1, 2, 4),
    }


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
    if t.threads > GPU_MAX_THREADS:
        return f"{t.threads} threads per block exceed {GPU_MAX_THREADS}"
    if t.threads < min(32, _max_threads(s)):
        return f"{t.threads} threads per block: fewer than a warp"
    if t.threads * p.max_registers > GPU_REGISTERS_PER_BLOCK:
        return f"{t.threads} threads x {p.max_registers} registers exceed {GPU_REGISTERS_PER_BLOCK} per block"
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
    if p.dw_at == "block" and p.dw_rows > t.block_y:
        return f"dw_rows = {p.dw_rows} exceeds the block's {t.block_y} rows (threads_y x ty)"
    smem = shared_bytes(p, s)
    if smem > GPU_SHARED_BYTES:
        return f"{smem} bytes of shared memory per block exceed {GPU_SHARED_BYTES}"
    return None


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
    (255). `ptxas -v` (sm_90) fits most 128-accumulator tiles of the MobileNet blocks without spilling;
    a few spill some dozen bytes, and the measurement judges those."""
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
    # A thread's step is one unrolled body, whose loads ptxas streams into its FMAs: of a longer step it
    # counts 32 channels (the 7² tile of 8 x 7 values, 32 channels a step, loads 480 values a step and
    # won on the H100: tuning/runs/h100-2026-11-24t).
    steps = min(p.k, STREAMED_STEP)
    if p.dw_at in ("cblock", "inline"):
        return accumulators + steps * (p.lanes + taps)
    return accumulators + steps * (p.lanes + p.tx * p.ty)


def _max_threads(s: LayerShape) -> int:
    """The most threads a block can have on this shape (tiny shapes cannot fill a warp)."""
    return min(32, s.co) * min(16, s.wo) * min(16, s.ho)


def canonical(params: Params, shape: LayerShape) -> Params:
    """The same schedule with parameters that make no difference set to fixed values, so that two
    candidates that compile to the same code compare equal (and share a cache entry)."""
    if isinstance(params, CpuParams):
        p = params
        row_tiles = max(v for v in _pow2_upto(shape.ho) if v <= max(1, shape.ho // p.ty))
        row_tiles = min(p.row_tiles, row_tiles)
        kc = p.kc if p.dw_at == "cblock" else max(_divisors(shape.c, (1, 2, 4, 8, 16)))
        dw_unroll = p.dw_unroll if p.dw_at in ("root", "tile") else 1
        return dataclasses.replace(p, row_tiles=row_tiles, kc=kc, dw_unroll=dw_unroll)
    p = params
    stage_input = p.stage_input if p.dw_at == "block" else False
    threads_co = WARP if p.gemm == "warp" else p.threads_co  # a warp's lanes, whatever was asked
    tiled = p.dw_at in GPU_DW_STAGED  # a depthwise thread tile exists only where a stage of its own does
    return dataclasses.replace(
        p,
        stage_input=stage_input,
        threads_co=threads_co,
        dw_vec=p.dw_vec if tiled else 1,
        dw_rows=p.dw_rows if tiled else 1,
    )


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


# --- the heuristic ---------------------------------------------------------------------------------


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
        return canonical(_fit_cpu(p, s), s)
    if s.c >= WIDE_CHANNELS:
        return _wide_heuristic(s, device)
    # A block covers up to 128 output channels, 4 a thread (one float4), so that the depthwise of its
    # pixels is computed once for all of them; 2 x 2 pixels a thread and 4 channels a reduction step
    # stay within 128 registers without spilling (ptxas, sm_90); 128-256 threads a block; the block's
    # depthwise tile of every channel in at most 32 KiB of shared memory, else per channel block.
    lanes = min(4, s.co)
    threads_co = max(1, min(32, s.co // lanes))
    tx, ty = min(2, s.wo), min(2, s.ho)
    pixels = max(1, (32 * 1024) // (4 * s.c))  # block pixels whose depthwise fits in 32 KiB
    want = min(max(1, 256 // threads_co), max(1, pixels // (tx * ty)))  # pixel threads a block
    threads_x = max(1, min(16, s.wo // tx, 2 ** (int(math.log2(want)) // 2)))  # square-ish pixel tiles
    threads_y = max(1, min(16, s.ho // ty, want // threads_x))
    fits = tx * ty * threads_x * threads_y >= 4 and 4 * s.c * tx * ty * threads_x * threads_y <= 32 * 1024
    p = GpuParams(
        dw_at="block" if fits else "cblock",
        lanes=lanes,
        tx=tx,
        ty=ty,
        threads_co=threads_co,
        threads_x=threads_x,
        threads_y=threads_y,
        k=max(_divisors(s.c, (1, 2, 4))),
        weights="global",
        stage_input=False,
        max_registers=128,
    )
    return canonical(fit(p, s, device), s)


def _wide_heuristic(s: LayerShape, device: DeviceSpec) -> GpuParams:
    """The heuristic where the channels are wide (`WIDE_CHANNELS`): the block's depthwise tile of every
    channel would hold too few pixels to feed a pointwise tile, so the depthwise gets its own kernel
    (4 output rows a thread) and the pointwise is a GEMM of register tiles: 4 output channels by a row
    of up to 8 pixels a thread (a divisor of the width where one of 4 or more exists), 16 channels a
    step, 128 registers; a warp of 32 threads over the channels, the block's rows a divisor of the
    height, so no block recomputes its neighbour's pixels (`whole_blocks`). The tile the H100's
    searches kept at 7² and 14² s2 (`tuning/README.md`)."""
    lanes = min(4, s.co)
    widest = max(_divisors(s.wo, tuple(range(1, 9))))
    tx = widest if widest >= 4 else min(7, s.wo)
    threads_co = max(1, min(WARP, s.co // lanes))
    most = max(1, min(16, 256 // threads_co))
    threads_y = max(_divisors(s.ho, tuple(range(1, most + 1))))
    if threads_y < 4:  # a prime height: accept a tail rather than a sliver of a block
        threads_y = min(4, s.ho)
    p = GpuParams(
        dw_at="root",
        lanes=lanes,
        tx=tx,
        ty=1,
        threads_co=threads_co,
        threads_x=1,
        threads_y=threads_y,
        k=max(_divisors(s.c, (1, 2, 4, 8, 16))),
        weights="global",
        stage_input=False,
        max_registers=128,
        dw_rows=max(v for v in GPU_DW_ROWS if v <= s.ho),
    )
    return canonical(fit(p, s, device), s)


def _nearest(value: int, valid: tuple[int, ...]) -> int:
    """The valid value closest to `value` on a log scale (ties: the smaller)."""
    return min(valid, key=lambda v: (abs(math.log2(v) - math.log2(max(value, 1))), v))


def _fit_cpu(p: CpuParams, s: LayerShape) -> CpuParams:
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


def fit(params: Params, shape: LayerShape, device: DeviceSpec) -> Params:
    """`params` moved to the nearest valid parameter set for `shape` (to reuse another shape's tuned
    schedule, or to repair a mutation); always returns a valid set."""
    if isinstance(params, CpuParams):
        return canonical(_fit_cpu(params, shape), shape)
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
    )
    q = canonical(q, s)
    # Repair what still fails, in an order that keeps the tile's shape as far as possible.
    for _ in range(64):
        reason = check(q, s, device)
        if reason is None:
            return q
        q = _repair(q, s, device, reason)
    return canonical(heuristic_fallback(s, device), s)


def _repair(q: GpuParams, s: LayerShape, device: DeviceSpec, reason: str) -> GpuParams:
    """One step towards validity for the failed constraint named in `reason`."""
    r = dataclasses.replace
    if reason.startswith("gemm=warp"):
        return r(q, gemm="thread")
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
    """The smallest sensible GPU schedule: always valid (a warp or fewer threads, no shared memory)."""
    lanes = 4 if s.co >= 4 else 1
    tco = max(1, min(8, s.co // lanes))
    txx = max(1, min(4, s.wo))
    tyy = max(1, min(32 // (tco * txx) or 1, s.ho))
    k = max(_divisors(s.c, (1, 2, 4)))
    return GpuParams("cblock", lanes, 1, 1, tco, txx, tyy, k, "global", False, 64)


# --- sampling and mutation (the search's moves) ----------------------------------------------------


def sample(shape: LayerShape, device: DeviceSpec, rng: random.Random, tries: int = 2000) -> Params:
    """A uniformly drawn valid parameter set (rejection sampling over `space`)."""
    values = space(shape, device)
    cls = params_class(device)
    for _ in range(tries):
        params = canonical(cls(**{name: rng.choice(valid) for name, valid in values.items()}), shape)
        if check(params, shape, device) is None:
            return params
    return fit(cls(**{name: rng.choice(valid) for name, valid in values.items()}), shape, device)


def mutate(
    params: Params, shape: LayerShape, device: DeviceSpec, rng: random.Random, steps: int = 1
) -> Params:
    """A valid neighbour of `params`: `steps` parameters moved to an adjacent (or, for choices, another)
    valid value."""
    values = space(shape, device)
    names = list(values)
    for _ in range(200):
        q = params
        for _ in range(steps):
            name = rng.choice(names)
            valid = list(values[name])
            current = getattr(q, name)
            if len(valid) < 2:
                continue
            if isinstance(current, int) and not isinstance(current, bool) and name not in ("max_registers",):
                ordered = sorted(valid)
                i = ordered.index(current) if current in ordered else 0
                j = min(len(ordered) - 1, max(0, i + rng.choice((-1, 1))))
                new = ordered[j] if j != i else rng.choice([v for v in ordered if v != current])
            else:
                new = rng.choice([v for v in valid if v != current])
            q = dataclasses.replace(q, **{name: new})
        q = canonical(q, shape)
        if q != params and check(q, shape, device) is None:
            return q
    return sample(shape, device, rng)


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
            out[name] = canonical(_fit_cpu(p, s), s)
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
    of the L1 bandwidth of all SMs together (H100: about 5.5 against 30 TB/s); the LSU issues one warp
    load a clock against four FMAs, so above 0.25 it binds. Used to rank register tiles for seeding,
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


def _tail_waste(p: GpuParams, s: LayerShape) -> float:
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
                                blocks = (
                                    math.ceil(s.co / p.tile.block_co)
                                    * math.ceil(s.wo / p.tile.block_x)
                                    * math.ceil(s.ho / p.tile.block_y)
                                    * s.n
                                )
                                if blocks < max(1, device.sm_count):
                                    continue
                                ranked.append((traffic(p, s).cost * _tail_waste(p, s), p))
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
    out = []
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
    out = []
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
    for occupancy, and the search's one-step moves change it as rarely as any other parameter: the 112²
    entry of `h100-2026-11-24v` spilled at its 64 registers (485,184 local-memory requests under Nsight,
    `results/h100/nsight_112`) and its 128-register twin had never been screened. A search tries these
    on its best schedule first."""
    if not isinstance(params, GpuParams):
        return []
    out = []
    for cap in space(shape, device)["max_registers"]:
        q = dataclasses.replace(params, max_registers=cap)
        if cap != params.max_registers and check(q, shape, device) is None:
            out.append(q)
    return out


def whole_blocks(params: Params, shape: LayerShape, device: DeviceSpec) -> list[Params]:
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
    out = []
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
    depthwise computed by the warp (cblock); each valid, without duplicates."""
    base = heuristic(shape, device)
    out: list[Params] = [base]
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
    return out


# --- the schedules ---------------------------------------------------------------------------------


def apply_cpu(p: CpuParams, L: Any, target: Any) -> dict[str, object]:
    """Schedule the layer `L` (from `algorithm.define`) with CPU parameters `p`; returns the decisions
    (the parameters and derived sizes) for the record."""
    from kernels.halide import blocks

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


def _threads_over(f: Any, dims: list[Any], p: GpuParams, prefix: str) -> Any:
    """Map a block-level stage's loops `dims` (innermost first) onto the block's own threads: the loops
    are fused into one index, split into steps of `p.tile.threads` and laid over the same threads_co x
    threads_x x threads_y grid as the output, innermost dimension fastest (coalesced over channels).
    Returns the innermost thread loop: what is computed there, one thread computes for one of its steps."""
    import halide as hl

    fused = dims[0]
    for i, v in enumerate(dims[1:]):
        nxt = hl.Var(f"{prefix}f{i}")
        f.fuse(fused, v, nxt)
        fused = nxt
    to, ti = hl.Var(f"{prefix}to"), hl.Var(f"{prefix}ti")
    t0, t1, t2, t12 = (hl.Var(f"{prefix}t{i}") for i in ("0", "1", "2", "12"))
    f.split(fused, to, ti, p.tile.threads, hl.TailStrategy.GuardWithIf)
    f.split(ti, t12, t0, p.threads_co).split(t12, t2, t1, p.threads_x)
    f.reorder(t0, t1, t2, to).gpu_threads(t0, t1, t2)
    return t0


def _thread_tile(f: Any, dims: list[Any], vec: int, rows: int, prefix: str) -> list[Any]:
    """Give each thread of a block-level stage over (c, x, y, n) `vec` channels (one vector) by `rows`
    rows (unrolled, the tail shifted inwards), innermost; returns the loops left for `_threads_over`.
    At 1 and 1 it changes nothing: one value a thread, as the searches before these axes had it."""
    import halide as hl

    c, x, y, n = dims
    inner = []
    if vec > 1:  # vec divides c (space), and the stage covers every channel: no channel tail
        ct, cv = hl.Var(f"{prefix}ct"), hl.Var(f"{prefix}cv")
        f.split(c, ct, cv, vec, hl.TailStrategy.RoundUp).vectorize(cv)
        inner.append(cv)
        c = ct
    if rows > 1:  # rows <= the block's rows (check), so shifting the tail inwards stays in the tile
        yo, yi = hl.Var(f"{prefix}yo"), hl.Var(f"{prefix}yi")
        f.split(y, yo, yi, rows, hl.TailStrategy.ShiftInwards).unroll(yi)
        inner.append(yi)
        y = yo
    if inner:
        f.reorder(*inner, c, x, y, n)
    return [c, x, y, n]


def _vector_access(f: Any, v: Any, extent: int) -> Any:
    """Vectorise Func `f` over `v` (of `extent` fp32 lanes) in pieces of at most PTX_VECTOR lanes,
    unrolled, so that each piece is one .v4 load or store. Halide 21's PTX backend splits a wider dense
    vector into .v2 pieces or scalars, multiplying the load/store instructions that share the SM's
    one-a-clock LSU issue with four FMAs a clock (`tests/test_halide_limits.py`). The named schedules
    of `schedules_gpu` keep plain vectors: at the JIT's default cap of 64 registers ptxas hoists the
    wider loads and spills (248 bytes a thread for `unfused` at 32x112x112x32->64; 2.0x slower on the
    H100, `results/README.md`), while the family's caps are searched."""
    f.vectorize(v, min(PTX_VECTOR, extent))
    return f.unroll(v) if extent > PTX_VECTOR else f


def apply_gpu(p: GpuParams, L: Any, target: Any) -> dict[str, object]:
    """Schedule the layer `L` (from `algorithm.define`) with GPU parameters `p`; returns the decisions
    (the parameters and derived sizes) for the record."""
    import halide as hl

    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    o = L.output
    read_depthwise = _warp_pointwise(p, L) if p.gemm == "warp" else _thread_pointwise(p, L)

    d = L.depthwise
    decisions: dict[str, object] = {
        "params": as_dict(p),
        "block": [p.tile.block_co, p.tile.block_x, p.tile.block_y],
        "threads": p.tile.threads,
        "shared_bytes": shared_bytes(p, s),
    }
    if p.dw_at == "root":
        _depthwise_kernel(p, L)
        read_depthwise(d.in_())
    elif p.dw_at == "cblock" and p.gemm == "warp":
        read_depthwise(d)  # each chunk's depthwise, computed by the warp where it is read
    elif p.dw_at == "block":
        read_depthwise(d.in_())
        d.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
        step = _threads_over(d, _thread_tile(d, [c, x, y, n], p.dw_vec, p.dw_rows, "d"), p, "d")
        pad = L.padded
        if p.stage_input:
            pad.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
            _threads_over(pad, _thread_tile(pad, pad.args(), p.dw_vec, 1, "i"), p, "i")
        if p.dw_rows > 1:
            # The input rows of a thread's step in registers, loaded once for all its rows: read from the
            # shared tile directly, each row's loads would follow the previous row's store into shared
            # memory, which ptxas cannot prove does not alias them, so it loads them again.
            taps = pad.in_(d).compute_at(d, step).store_in(hl.MemoryType.Register)
            tc, tx, ty, tn = taps.args()
            rows = (p.dw_rows - 1) * s.stride + KERNEL
            for v, extent in ((tc, p.dw_vec), (tx, KERNEL), (ty, rows), (tn, 1)):
                taps.bound_extent(v, extent)
            taps.vectorize(tc).unroll(tx).unroll(ty).unroll(tn)
    # cblock of gemm=thread: `_thread_pointwise` computes it inside the reduction; inline: each thread
    # recomputes the depthwise of its pixels inside its reduction.
    return decisions


def _depthwise_kernel(p: GpuParams, L: Any) -> None:
    """The depthwise in its own kernel (`dw_at` = root): blocks of 32 x 8 threads over channels and
    pixels, each thread `dw_vec` channels (a vector) by `dw_rows` rows (`_thread_tile`)."""
    import halide as hl

    s, d = L.shape, L.depthwise
    dco, dci, dxo, dxi = hl.Var("dco"), hl.Var("dci"), hl.Var("dxo"), hl.Var("dxi")
    d.compute_root()
    c, x, y, n = _thread_tile(d, [L.c, L.x, L.y, L.n], p.dw_vec, p.dw_rows, "d")
    d.split(c, dco, dci, min(32, s.c // p.dw_vec), hl.TailStrategy.GuardWithIf)
    d.split(x, dxo, dxi, min(8, s.wo), hl.TailStrategy.GuardWithIf)
    d.reorder(dci, dxi, dco, dxo, y, n).fuse(y, n, y)
    d.gpu_blocks(dco, dxo, y).gpu_threads(dci, dxi)


def _thread_pointwise(p: GpuParams, L: Any) -> Any:
    """Schedule the output and the pointwise of `gemm` = thread: each thread a register tile of `lanes`
    channels by `tx` x `ty` pixels, the reduction in unrolled steps of `k` channels (`ro`); returns how a
    wrapper of the depthwise is read: `k` channels of the thread's pixels a step, into registers (for
    `cblock` it computes the depthwise there itself)."""
    import halide as hl

    c, x, y, n = L.c, L.x, L.y, L.n
    o = L.output
    ci, xi, yi = hl.Var("ci"), hl.Var("xi"), hl.Var("yi")
    cii, xii, yii = hl.Var("cii"), hl.Var("xii"), hl.Var("yii")
    o.tile([c, x, y], [ci, xi, yi], [p.tile.block_co, p.tile.block_x, p.tile.block_y])
    o.tile([ci, xi, yi], [cii, xii, yii], [p.lanes, p.tx, p.ty])
    o.gpu_threads(ci, xi, yi).fuse(y, n, n).gpu_blocks(c, x, n)
    _vector_access(o, cii, p.lanes).unroll(xii).unroll(yii)

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
    _vector_access(regs.compute_at(pw, ro).store_in(reg), wc, p.lanes).unroll(wr)
    if p.weights == "shared":
        panel = L.pointwise_filter.in_()
        pc, pr = panel.args()
        panel.compute_at(o, c).store_in(hl.MemoryType.GPUShared)
        _threads_over(panel, [pc, pr], p, "w")
    if p.dw_at == "cblock":
        L.depthwise.compute_at(pw, ro).store_in(reg).bound_extent(c, p.k).vectorize(c).unroll(x).unroll(y)

    def read(staged: Any) -> None:
        staged.compute_at(pw, ro).store_in(reg)
        _vector_access(staged, c, p.k).unroll(x).unroll(y)

    return read


def _warp_pointwise(p: GpuParams, L: Any) -> Any:
    """Schedule the output and the pointwise of `gemm` = warp: lane l of a warp holds output channels
    32 v + l of each `PTX_VECTOR`-wide vector v (so that its stores are .v4 and a warp's are coalesced)
    by `tx` x `ty` pixels; the block's warps tile the pixels. The accumulators are computed at the warp
    (outside its lane loop), where Halide 21 stripes a register allocation over the lanes; at the block
    it gives each thread a copy of the block's tile (`tests/test_halide_limits.py`). Returns how the
    depthwise, or a wrapper of it, is read: a chunk of 32 channels of the warp's pixels, one channel a
    lane (computed there, from the input, when it is the depthwise itself), from which each step's value
    reaches every lane by `shfl`."""
    import halide as hl

    c, x, y, n = L.c, L.x, L.y, L.n
    o, pw = L.output, L.pointwise
    vec = min(PTX_VECTOR, p.lanes)
    reg = hl.MemoryType.Register
    ci, xi, yi, wx, wy = (hl.Var(v) for v in ("ci", "xi", "yi", "wx", "wy"))
    cio, cii, xii, yii = (hl.Var(v) for v in ("cio", "cii", "xii", "yii"))
    o.tile([c, x, y], [ci, xi, yi], [p.tile.block_co, p.tile.block_x, p.tile.block_y])
    o.split(xi, wx, xii, p.tx).split(yi, wy, yii, p.ty)
    if vec > 1:
        o.vectorize(ci, vec)
    o.split(ci, cio, cii, WARP).reorder(cio, xii, yii, cii, wx, wy, c, x, y, n)
    o.unroll(cio).unroll(xii).unroll(yii).fuse(y, n, n).gpu_blocks(c, x, n).gpu_threads(wx, wy).gpu_lanes(cii)

    pco, pci = hl.Var("pco"), hl.Var("pci")
    rxo, rxi, rxk = hl.RVar("rxo"), hl.RVar("rxi"), hl.RVar("rxk")
    pw.compute_at(o, wx).store_in(reg)
    for stage in (pw, pw.update()):
        stage.split(c, pco, pci, WARP * vec, hl.TailStrategy.RoundUp).unroll(pci, vec).gpu_lanes(pci)
        stage.unroll(pco).unroll(x).unroll(y)
    u = pw.update().split(L.rc.x, rxo, rxi, WARP).split(rxi, rxi, rxk, p.k)
    u.reorder(pci, pco, x, y, rxk, rxi, rxo).unroll(rxk)

    # Each step's weights: a vector of the lane's channels, straight from the caches into registers.
    w = L.pointwise_filter.in_()
    wc, wr = w.args()
    wo, wl = hl.Var("wo"), hl.Var("wl")
    w.compute_at(pw, rxk).store_in(reg)
    if vec > 1:
        w.vectorize(wc, vec)
    w.split(wc, wo, wl, WARP).gpu_lanes(wl).unroll(wo).unroll(wr)

    def read(staged: Any) -> None:
        sc, sx, sy, sn = staged.args()
        so, sl = hl.Var("so"), hl.Var("sl")
        staged.compute_at(pw, rxo).store_in(reg).split(sc, so, sl, WARP).gpu_lanes(sl)
        staged.unroll(so).unroll(sx).unroll(sy).unroll(sn)

    return read


# --- the variant -----------------------------------------------------------------------------------


def resolve(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Params:
    """The parameter set a `halide_family` build uses: options["params"] completed by the heuristic."""
    return from_options(options.get("params"), shape, device)


def build_options(params: Params, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options `variants.build("family", ...)` gets: the resolved parameters (part of the cache key),
    and on the GPU the register cap as the CUDA runtime option (unless options set one)."""
    out = {**options, "params": as_dict(params)}
    if isinstance(params, GpuParams) and options.get("cuda_max_registers") is None:
        out["cuda_max_registers"] = params.max_registers
    return out
