"""What one streaming multiprocessor of each CUDA compute capability holds, and the theoretical occupancy
of a thread block there: the limits the family's GPU checks and heuristic fit a schedule to.

The values are those of NVIDIA's CUDA C++ Programming Guide, "Compute Capabilities", table "Technical
Specifications per Compute Capability" (resident threads, warps and blocks per SM, 32-bit registers per
SM, the largest shared memory carveout per SM), with the allocation granularities of NVIDIA's occupancy
calculator (registers: 256 a warp; shared memory: 256 bytes on 7.x and earlier, 128 from 8.0, plus 1 KiB
the runtime reserves for each block from 8.0). A block may use at most 1024 threads, 64 K registers and,
without an opt-in that Halide 21's CUDA runtime never makes, 48 KiB of shared memory, on every capability
here (`space.GPU_SHARED_BYTES`).

A capability newer than the table's last row (a Blackwell card: 10.0, 12.0) takes its closest older
row: the PTX Halide writes for it is JIT-compiled by the driver anyway (`targets.CUDA_CAPABILITIES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WARP_THREADS = 32
THREADS_PER_BLOCK = 1024
REGISTERS_PER_THREAD = 255
REGISTER_UNIT = 256  # registers are allocated a warp at a time, in units of 256
REGISTER_CAP_MIN = 16  # the smallest per-thread cap ptxas takes (--maxrregcount)


def register_cap(value: object) -> int | None:
    """The `cuda_max_registers` option checked: None (the runtime's default) or an integer cap of registers a
    thread, REGISTER_CAP_MIN..REGISTERS_PER_THREAD; ValueError naming the valid range otherwise."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not REGISTER_CAP_MIN <= value <= REGISTERS_PER_THREAD
    ):
        raise ValueError(
            f"cuda_max_registers must be an integer in {REGISTER_CAP_MIN}..{REGISTERS_PER_THREAD} or null, "
            f"got {value!r}"
        )
    return value


@dataclass(frozen=True)
class SmLimits:
    """One SM of compute capability `cc` (75 for 7.5)."""

    cc: int
    threads_per_sm: int
    blocks_per_sm: int
    shared_per_sm: int  # bytes: the largest shared memory carveout
    registers_per_sm: int = 65536
    registers_per_block: int = 65536

    @property
    def warps_per_sm(self) -> int:
        return self.threads_per_sm // WARP_THREADS

    @property
    def shared_unit(self) -> int:
        """Granularity of a block's shared memory allocation, bytes."""
        return 128 if self.cc >= 80 else 256

    @property
    def reserved_shared(self) -> int:
        """Bytes of shared memory the runtime reserves for each resident block (from 8.0)."""
        return 1024 if self.cc >= 80 else 0


KIB = 1024
# CUDA C++ Programming Guide, table "Technical Specifications per Compute Capability" (cc: threads per
# SM, blocks per SM, shared memory per SM). Turing (7.5) holds 1024 threads an SM, GA10x Ampere (8.6)
# 1536, Hopper (9.0) 2048; registers per SM are 64 K on all of these (128 K on 3.7).
SM_LIMITS: dict[int, SmLimits] = {
    row.cc: row
    for row in (
        SmLimits(30, 2048, 16, 48 * KIB),
        SmLimits(32, 2048, 16, 48 * KIB),
        SmLimits(35, 2048, 16, 48 * KIB),
        SmLimits(37, 2048, 16, 112 * KIB, registers_per_sm=131072),
        SmLimits(50, 2048, 32, 64 * KIB),
        SmLimits(52, 2048, 32, 96 * KIB),
        SmLimits(53, 2048, 32, 64 * KIB),
        SmLimits(60, 2048, 32, 64 * KIB),
        SmLimits(61, 2048, 32, 96 * KIB),
        SmLimits(62, 2048, 32, 64 * KIB),
        SmLimits(70, 2048, 32, 96 * KIB),
        SmLimits(72, 2048, 32, 96 * KIB),
        SmLimits(75, 1024, 16, 64 * KIB),
        SmLimits(80, 2048, 32, 164 * KIB),
        SmLimits(86, 1536, 16, 100 * KIB),
        SmLimits(87, 1536, 16, 164 * KIB),
        SmLimits(89, 1536, 24, 100 * KIB),
        SmLimits(90, 2048, 32, 228 * KIB),
    )
}


def sm_limits(cc: int) -> SmLimits:
    """The SM of compute capability `cc` (the closest older row for one newer than the table); raises
    ValueError naming the table's capabilities for one older than its first."""
    known = sorted(SM_LIMITS)
    if cc < known[0]:
        raise ValueError(
            f"CUDA capability {cc} is below the SM table's lowest ({known[0]}); "
            f"known capabilities: {', '.join(map(str, known))}"
        )
    return SM_LIMITS[max(k for k in known if k <= cc)]


@dataclass(frozen=True)
class Occupancy:
    """Theoretical occupancy of a block on one SM: resident blocks and warps, their share of the SM's
    warps, and the resource that limits them (threads | blocks | registers | shared)."""

    blocks: int
    warps: int
    fraction: float
    limiter: str


def occupancy(threads: int, registers: int, shared: int, lim: SmLimits) -> Occupancy:
    """How many blocks of `threads` threads using `registers` registers a thread and `shared` bytes of
    shared memory one SM of `lim` holds at once (0 when one block does not fit), as NVIDIA's occupancy
    calculator counts them."""
    warps = math.ceil(threads / WARP_THREADS)
    per_warp = math.ceil(max(1, registers) * WARP_THREADS / REGISTER_UNIT) * REGISTER_UNIT
    limits = {
        "blocks": lim.blocks_per_sm,
        "threads": lim.warps_per_sm // warps if warps else 0,
        "registers": (lim.registers_per_sm // per_warp) // warps if warps else 0,
    }
    if registers * threads > lim.registers_per_block or threads > THREADS_PER_BLOCK:
        limits["registers" if threads <= THREADS_PER_BLOCK else "threads"] = 0
    if shared > 0:
        unit = lim.shared_unit
        need = math.ceil((shared + lim.reserved_shared) / unit) * unit
        limits["shared"] = lim.shared_per_sm // need
    limiter = min(limits, key=lambda k: limits[k])
    blocks = max(0, limits[limiter])
    return Occupancy(blocks, blocks * warps, blocks * warps / lim.warps_per_sm, limiter)
