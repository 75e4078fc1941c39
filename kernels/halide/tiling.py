"""Block extents of a register-tiled CUDA schedule, without importing Halide (the search family's
parameters are read where Halide is not installed: the driver plans and records tuning jobs)."""

from __future__ import annotations

import math

# The widest dense load or store a CUDA schedule asks for, in fp32 lanes: one PTX ld/st .v4.
PTX_VECTOR = 4
# Bytes to which every input's host and device pointers are aligned (NumPy and cuMemAlloc give at least
# that; `variants._host_arrays` copies a view that does not). `algorithm` declares it for the input and
# the filters, which lets the PTX backend load two fp32 lanes as one 8-byte access: at the default (the
# element's 4 bytes) a 2-lane vector is split into scalar loads (`tests/test_halide_limits.py`). Halide
# checks it on each call.
HOST_ALIGNMENT = 16


def tail_waste(extent: int, tile: int) -> float:
    """Work done per useful work along one axis: tiles never exceed an extent, so the tail tile
    shifts inwards and recomputes what its neighbour already did."""
    return math.ceil(extent / tile) * tile / extent


class BlockExtents:
    """What a thread block covers, for a tiling whose thread owns `lanes` output channels by `tx` x `ty`
    pixels, in blocks of `threads_co` x `threads_x` x `threads_y` threads: the base of
    schedules_gpu.ThreadTile and of the search family's GpuParams, so both derive the same extents."""

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
