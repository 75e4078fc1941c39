"""Derived metrics: what a measured time means for this shape on this device (throughput, roofline).

The roofline floor is the time the layer cannot beat on the device: its FLOPs at the compute roof or its
minimum traffic (each input read once, the output written once; `LayerShape.min_bytes`) at the memory
roof, whichever is longer. The roofs (`Roof`, from `DeviceSpec.compute_roof` / `memory_roof`) are the
device's measured ceilings (`workers.roofs`): the fp32 FMA peak (a TF32 variant: the TF32 tensor-core
peak), and the read bandwidth of the level the timed working set lives in (the last cache level when it
fits and stays warm, DRAM otherwise). `pct_roofline` = floor / measured time, in percent, never above
100 unless a roof is wrong; `pct_peak` is against the datasheet peak (the host CPU: the measured one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kernels.device import DeviceSpec
from kernels.layer import LayerShape


@dataclass(frozen=True)
class Roof:
    """The two roofs one measurement sits under: GFLOP/s and GB/s, and what each is."""

    gflops: float
    gbps: float
    compute: str  # e.g. "fp32 FMA peak (measured)"
    memory: str  # the level: L2, LLC or DRAM

    def floor_ms(self, shape: LayerShape) -> float:
        return roofline_floor_ms(shape, self.gflops, self.gbps)

    def as_params(self) -> dict[str, str]:
        """The record's params of the roofs its floor used: roof_gflops, roof_gbps, roof_compute and
        roof_memory."""
        return {
            "roof_gflops": f"{self.gflops:g}",
            "roof_gbps": f"{self.gbps:g}",
            "roof_compute": self.compute,
            "roof_memory": self.memory,
        }


def roof_for(
    device: DeviceSpec, shape: LayerShape, resident_bytes: int = 0, cold: bool = False, tf32: bool = False
) -> Roof | None:
    """The roofs of a measurement of `shape` on `device` whose timed working set is `resident_bytes`
    (0: the layer's minimum bytes), with the cache kept cold or not, by a TF32 variant or not; None when
    the device's rates are unknown (0)."""
    gflops, compute = device.compute_roof(tf32)
    gbps, memory = device.memory_roof(resident_bytes or shape.min_bytes, cold)
    if gflops <= 0 or gbps <= 0:
        return None
    return Roof(gflops, gbps, compute, memory)


def roofline_floor_ms(shape: LayerShape, peak_gflops: float, mem_gbps: float) -> float:
    """max(flops / peak, min_bytes / bandwidth), in milliseconds; needs both rates positive."""
    if peak_gflops <= 0 or mem_gbps <= 0:
        raise ValueError(
            f"roofline needs a positive peak and bandwidth, got {peak_gflops} GFLOP/s and {mem_gbps} GB/s"
        )
    return max(shape.flops / (peak_gflops * 1e9), shape.min_bytes / (mem_gbps * 1e9)) * 1e3


def derive(
    shape: LayerShape, device: DeviceSpec, time_ms: float, roof: Roof | None = None
) -> dict[str, float]:
    """Metrics of one measurement: gflops, gbps (effective, minimum bytes / time), arithmetic_intensity,
    pct_peak where the datasheet peak is known, and floor_ms, pct_roofline under `roof` (by default
    `roof_for(device, shape)`: a warm working set of the minimum bytes, fp32).

    Percentages are in percent (0-100). A non-positive or non-finite time gives only the intensity.
    """
    out = {"arithmetic_intensity": shape.arithmetic_intensity}
    if not (time_ms > 0 and math.isfinite(time_ms)):
        return out
    seconds = time_ms * 1e-3
    out["gflops"] = shape.flops / seconds / 1e9
    out["gbps"] = shape.min_bytes / seconds / 1e9
    if device.peak_gflops > 0:
        out["pct_peak"] = out["gflops"] / device.peak_gflops * 100
    roof = roof or roof_for(device, shape)
    if roof is not None:
        floor = roof.floor_ms(shape)
        out["floor_ms"] = floor
        out["pct_roofline"] = floor / time_ms * 100
    return out
