"""The roofs a row's roofline floor uses, for records of every generation (see `workers.metrics`).

A record carrying `roof_memory` names the roofs its own floor used: `roof_gflops` (the fp32 FMA peak
measured with Halide's register-resident FMA kernel, or the TF32 tensor-core peak for a TF32 variant)
and `roof_gbps` (the read bandwidth of the level its working set lived in: L2 / LLC or DRAM). The report
takes them as they are, so its `% of roofline` is the worker's.

Older records (before `roof_memory`) carry `roof_gflops` = SGEMM, a rate kernels beat (on the host CPU
the Halide schedules ran at twice NumPy's SGEMM), and `roof_gbps` = a DRAM copy. Their floor is
recomputed: the compute roof becomes the datasheet's fp32 FMA peak (`peak_gflops`, which a GPU record
carries from the catalog), or for a TF32 variant the catalog's TF32 tensor-core peak; the memory roof
stays the measured DRAM copy. A host CPU has no datasheet, and an old CPU record's `peak_gflops` was
SGEMM too: such rows get no floor (no `% of roofline`) rather than a roof that is not one.

Each row ends with: `peak_gflops` (its compute roof), `mem_gbps` (DRAM), `memory_roof_gbps` (the memory
roof of its floor), `roof_compute` / `roof_memory` (what they are), `sgemm_gflops` (the attainable line,
where known), `datasheet_gflops` / `datasheet_gbps` (the record's own peak_gflops / mem_gbps).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from orchestrator import analytics

ROOF_PARAMS = ("fma_gflops", "sgemm_gflops", "cache_gbps", "dram_gbps", "tf32_gflops")  # floats
OLD_COMPUTE = "fp32 FMA peak (datasheet; record older than measured roofs)"


@functools.cache
def catalog_tf32() -> dict[str, float]:
    """Device key -> dense TF32 tensor-core peak (GFLOP/s) of the device catalog, for older records."""
    from omegaconf import OmegaConf

    from orchestrator.config import CONF_DIR

    catalog: Any = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "catalog" / "devices.yaml"))
    return {k: float(v.get("tf32_gflops") or 0) for k, v in catalog.items() if isinstance(v, dict)}


def apply(row: dict[str, Any], is_cpu: bool) -> None:
    """Set the row's roofs (see the module's docstring), in place."""
    row["datasheet_gflops"], row["datasheet_gbps"] = row.get("peak_gflops"), row.get("mem_gbps")
    if row.get("roof_memory"):  # the roofs its own floor used
        compute, memory = row.get("roof_gflops"), row.get("roof_gbps")
        dram = row.get("dram_gbps") or row.get("mem_gbps")
        sgemm = row.get("sgemm_gflops")
    else:
        sgemm = row.get("roof_gflops")
        dram = memory = row.get("roof_gbps") or row.get("mem_gbps")
        compute, what = _old_compute(row, is_cpu)
        row["roof_compute"], row["roof_memory"] = what, "DRAM"
    row["peak_gflops"], row["mem_gbps"], row["memory_roof_gbps"] = compute, dram, memory
    row["sgemm_gflops"] = sgemm


def _old_compute(row: Mapping[str, Any], is_cpu: bool) -> tuple[float | None, str]:
    if is_cpu:
        return None, "unknown (CPU record older than measured roofs: its peak was SGEMM)"
    if analytics.is_tf32(str(row.get("variant", ""))):
        tf32 = catalog_tf32().get(str(row.get("device", "")), 0.0)
        if tf32 > 0:
            return tf32, "TF32 tensor-core peak (catalog datasheet; record older than measured roofs)"
    return row.get("peak_gflops"), OLD_COMPUTE
