"""Tile arithmetic of the layer's schedules, without importing Halide: the sizes the named schedules
and the search family choose for a shape. The family's parameters are read, checked and seeded where
Halide is not installed (the driver plans and records tuning jobs), so nothing here may need it.

CPU: a pointwise register tile (`MicroTile`) and parallel tasks of output rows (`BlockPlan`), chosen by
`micro_tile` and `plan_blocks`. GPU: a thread block of register tiles (`GpuTile`), chosen for the named
ablation schedules by `gpu_tile`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kernels.layer import LayerShape

# The widest dense load or store a CUDA schedule asks for, in fp32 lanes: one PTX ld/st .v4.
PTX_VECTOR = 4
# Bytes to which every input's host and device pointers are aligned (NumPy and cuMemAlloc give at least
# that; `builder` copies an input that is a view off that alignment). `algorithm` declares it for the
# input and the filters, which lets the PTX backend load two fp32 lanes as one 8-byte access: at the
# default (the element's 4 bytes) a 2-lane vector is split into scalar loads
# (`tests/test_halide_limits.py`). Halide checks it on each call.
HOST_ALIGNMENT = 16
# Bytes of shared memory a named GPU schedule gives its block's depthwise tile: under the 48 KiB a
# block may use without an opt-in, with room for the rest of the kernel.
DEPTHWISE_SHARED_BYTES = 32 * 1024

# Accumulators the CPU pointwise micro-kernel may keep in registers, by vector registers of the target:
# 24 of 32 zmm leave room for the weight vectors (28 spilled on AVX-512), 12 of 16 ymm on AVX2.
CPU_ACCUMULATORS = {32: 24, 16: 12}
# Bytes of depthwise output one block of rows may hold: it is re-read for every co tile, from L2.
_BLOCK_BYTES = 256 * 1024
# Bytes of pointwise weights a core can keep in its L2 between tasks.
_L2_WEIGHT_BYTES = 512 * 1024
# Rough per-core rates for the block planner (only their ratios matter).
_POINTWISE_FLOPS = 90e9  # register-blocked FMA
_DEPTHWISE_FLOPS = 20e9  # 9 taps, one load per FMA
_L3_BYTES = 25e9  # weights streamed from L3 or memory


def tail_waste(extent: int, tile: int) -> float:
    """Work done per useful work along one axis: tiles never exceed an extent, so the tail tile
    shifts inwards and recomputes what its neighbour already did."""
    return math.ceil(extent / tile) * tile / extent


def cpu_accumulators(registers: int) -> int:
    """The accumulators a CPU register tile may keep with `registers` vector registers."""
    return CPU_ACCUMULATORS.get(registers, 12)


def channel_block(c: int, lanes: int) -> int:
    """Channels per block of the pointwise reduction: `lanes` when it divides c, else the largest
    divisor of c not above it (an exact block keeps the depthwise inside the input's channels)."""
    if c % lanes == 0:
        return lanes
    return max(d for d in range(1, min(lanes, c) + 1) if c % d == 0)


def reduction_step(c: int, most: int = 4) -> int:
    """Channels per step of the pointwise reduction: a divisor of c, so no step reads past it."""
    return next(r for r in range(most, 0, -1) if c % r == 0)


# --- CPU -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MicroTile:
    """The pointwise register tile: `vectors` vectors of `lanes` output channels by `tx` x `ty` pixels."""

    lanes: int
    vectors: int
    tx: int
    ty: int

    @property
    def co(self) -> int:
        return self.lanes * self.vectors


@dataclass(frozen=True)
class BlockPlan:
    """How the output splits into parallel tasks: blocks of `rows` output rows x `chunks` of co tiles."""

    rows: int
    chunks: int


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


def depthwise_rows_per_task(s: LayerShape, threads: int) -> int:
    """Output rows a parallel task of a depthwise computed on its own (`compute_root`) covers: about
    four tasks a thread over the batch."""
    return max(1, math.ceil(s.ho / max(1, math.ceil(4 * threads / s.n))))


# --- GPU -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuTile:
    """A register-tiled CUDA thread block: each thread accumulates `lanes` output channels (one vector)
    by `tx` x `ty` pixels in registers; a block is `threads_co` x `threads_x` x `threads_y` threads and
    covers `block_co` x `block_x` x `block_y` outputs. The one name for a GPU tile: the named ablation
    schedules choose one (`gpu_tile`), the official app's schedule has a fixed one, and the family's
    `GpuParams` carry one (`GpuParams.tile`)."""

    lanes: int
    tx: int
    ty: int
    threads_co: int
    threads_x: int
    threads_y: int

    @property
    def threads(self) -> int:
        return self.threads_co * self.threads_x * self.threads_y

    @property
    def block_co(self) -> int:
        return self.lanes * self.threads_co

    @property
    def block_x(self) -> int:
        return self.tx * self.threads_x

    @property
    def block_y(self) -> int:
        return self.ty * self.threads_y

    def blocks(self, s: LayerShape) -> int:
        """The thread blocks that cover the output of `s` (a tail block shifts inwards: it still counts)."""
        return (
            math.ceil(s.co / self.block_co)
            * math.ceil(s.wo / self.block_x)
            * math.ceil(s.ho / self.block_y)
            * s.n
        )


def gpu_tile(
    s: LayerShape, max_block_co: int, max_block_pixels: int, pixels: int = 8, threads: int = 64
) -> GpuTile:
    """Up to `pixels` pixels x 4 channels per thread with little tail waste, and enough pixel
    threads for `threads` threads a block, without exceeding any extent or `max_block_pixels`
    (a shared-memory budget)."""
    lanes = min(4, s.co)
    threads_co = max(1, min(max_block_co // lanes, s.co // lanes))
    px = max(1, min(pixels, max_block_pixels))
    best, best_score = (1, 1), 0.0
    for tx in range(1, min(px, s.wo) + 1):
        ty = max(1, min(px // tx, s.ho))
        score = tx * ty / (tail_waste(s.wo, tx) * tail_waste(s.ho, ty)) - 0.01 * ty
        if score > best_score:
            best, best_score = (tx, ty), score
    tx, ty = best
    want = max(1, threads // threads_co)
    budget = max(1, max_block_pixels // (tx * ty))
    threads_y = max(1, min(want, s.ho // ty, budget))
    threads_x = max(1, min(want // threads_y, s.wo // tx, budget // threads_y))
    return GpuTile(lanes, tx, ty, threads_co, threads_x, threads_y)
