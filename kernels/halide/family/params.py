"""The family's parameters: one frozen dataclass per device kind, the values each parameter may take,
and their plain-data form (what Job options, the cache key and the tuning database hold)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kernels.device import DeviceSpec
from kernels.halide.tiling import GpuTile

CPU_DW_AT = ("root", "tile", "cblock", "inline")
GPU_DW_AT = ("root", "block", "cblock", "inline")
# where the depthwise is a stage of its own (its own kernel, or the block's shared tile): it can be tiled
GPU_DW_STAGED = ("root", "block")
GPU_WEIGHTS = ("global", "shared")  # pointwise weights: through the caches, or a panel in shared memory
GPU_GEMM = ("thread", "warp")  # the pointwise's register tile: a thread's own, or striped over a warp's lanes
WARP = 32  # lanes of a warp: the output channels a `warp` tile lays over them, the channels of its chunk
MAX_REGISTERS = (64, 128, 255)  # HL_CUDA_JIT_MAX_REGISTERS; 64 is Halide's default
CPU_MAX_VECTORS = 4
# Input channels a GPU reduction step unrolls (`k`). A longer step waits at its loop's back-edge as often
# for more FMAs (`longer_steps`), so steps up to 64 channels are searched (docs/evidence/kernels.md,
# "reduction steps").
GPU_STEPS = (1, 2, 4, 8, 16, 32, 64)
GPU_DW_VEC = (1, 2, 4)  # dw_at=root: channels a thread of the depthwise kernel computes (one vector)
GPU_DW_ROWS = (1, 2, 4)  # dw_at=root: output rows a thread of the depthwise kernel computes (unrolled)
# dw_at=root, gemm=thread: parts the pointwise's reduction over input channels is split into (split-K),
# each a grid of its own blocks, summed with the bias by a third kernel; at least this many channels a part
GPU_SPLIT_K = (1, 2, 4, 8, 16)
SPLIT_K_MIN_CHANNELS = 32
# GPU parameters added after the first runs, left out of a record at these values
LATER_DEFAULTS = {"gemm": "thread", "dw_vec": 1, "dw_rows": 1, "split_k": 1}


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
    one-value-a-thread stage of the earlier searches.

    `split_k` > 1 (dw_at = root, gemm = thread) splits the pointwise's reduction over the input channels
    into that many parts (split-K, Halide's `rfactor`): each part is its own set of blocks writing a
    partial sum of every output, and a third kernel adds the parts, the bias and the ReLU. A layer with
    few outputs and many input channels (an inverted residual block's projection: 960 -> 160 channels
    on 7 x 7 pixels) has too few register tiles to fill the GPU; split, each tile stays large and the
    grid has `split_k` times the blocks, for one round trip of the partial sums through the L2."""

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
    split_k: int = 1

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
    `dw_vec` = `dw_rows` = `split_k` = 1), and so the parameter sets those searches recorded keep their
    digests and job keys."""
    out = asdict(params)
    for name, default in LATER_DEFAULTS.items():
        if out.get(name) == default:
            del out[name]
    return out


def digest(params: Params) -> str:
    """A stable short name of a parameter set (for logs and artifact names)."""
    blob = json.dumps({"kind": params.kind, **as_dict(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_options(params: Params, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options `variants.build("family", ...)` gets: the resolved parameters (part of the cache key),
    and on the GPU the register cap as the CUDA runtime option (unless options set one)."""
    out = {**options, "params": as_dict(params)}
    if isinstance(params, GpuParams) and options.get("cuda_max_registers") is None:
        out["cuda_max_registers"] = params.max_registers
    return out
