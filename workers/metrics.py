"""Derived metrics: what a measured time means for this shape on this device (throughput, roofline).

The roofline floor is the time the layer cannot beat on the device: its FLOPs at the fp32 rate or its
minimum traffic (each input read once, the output written once; `LayerShape.min_bytes`) at the DRAM
bandwidth, whichever is longer, with the device's measured ceilings where the catalog has them
(`DeviceSpec.roofs`). `pct_roofline` = floor / measured time, in percent; `pct_peak` is against the
datasheet peak.
"""

from __future__ import annotations

import math

from kernels.device import DeviceSpec
from kernels.layer import LayerShape


def roofline_floor_ms(shape: LayerShape, peak_gflops: float, mem_gbps: float) -> float:
    """max(flops / peak, min_bytes / bandwidth), in milliseconds; needs both rates positive."""
    if peak_gflops <= 0 or mem_gbps <= 0:
        raise ValueError(
            f"roofline needs a positive peak and bandwidth, got {peak_gflops} GFLOP/s and {mem_gbps} GB/s"
        )
    return max(shape.flops / (peak_gflops * 1e9), shape.min_bytes / (mem_gbps * 1e9)) * 1e3


def derive(shape: LayerShape, device: DeviceSpec, time_ms: float) -> dict[str, float]:
    """Metrics of one measurement: gflops, gbps (effective, minimum bytes / time), arithmetic_intensity,
    and, where the device's peak and bandwidth are known (positive), pct_peak, floor_ms, pct_roofline.

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
    roof_gflops, roof_gbps = device.roofs
    if roof_gflops > 0 and roof_gbps > 0:
        floor = roofline_floor_ms(shape, roof_gflops, roof_gbps)
        out["floor_ms"] = floor
        out["pct_roofline"] = floor / time_ms * 100
    return out
