"""Records for the report's tests, derived from a committed GPU run (results/h200/mobilenet_v1_goals: Halide
and cuDNN on the H200, 70 jobs) with the fields the torch.compile variants, cold-L2 timing, clock readings and
dispatch paths add.

Each derived record is its source record with the job changed the way a real run changes it: the job is
rebuilt from the record's own `job.json` artifact (`workers.schema.Job`), altered (another variant, a cold
cache), and its key, params and tags rewritten from it, so that job keys, `timing.*` params and the
identity the report de-duplicates on behave as they would for a record a worker wrote. The clock fields
come from `workers.clocks.summarize` over made-up NVML samples, and the cold-cache tag from
`workers.harness.describe_cold_cache`: the same functions a worker calls.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from workers import clocks, harness
from workers.bundle import read_bundle
from workers.schema import Job, Record

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "results" / "h200" / "mobilenet_v1_goals"
H200_L2_BYTES = 60 * 2**20  # the H200's L2 (NOTES.md)
MAX_MHZ = 1980.0  # the H200's maximum SM clock as NVML reports it


def committed() -> list[Record]:
    """The committed H200 records (skips the test when the bundle is not in this checkout)."""
    if not (H200 / "records.jsonl").is_file():
        pytest.skip(f"{H200.relative_to(ROOT)} is not in this checkout")
    return read_bundle(H200)


def job_of(record: Record) -> Job:
    """The job a record measured, from its `job.json` artifact."""
    return Job.from_dict(json.loads(record.artifacts["job.json"]))


def derive(
    record: Record,
    *,
    variant: str | None = None,
    framework: str | None = None,
    scale: float = 1.0,
    cold: bool | None = None,
    params: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Record:
    """`record` as another job would have written it: another variant and/or cache condition (the key,
    `job_key` and `timing.*` params follow), its times `scale` times the source's, fields added."""
    job = job_of(record)
    job = dataclasses.replace(
        job,
        variant=variant or job.variant,
        timing=job.timing if cold is None else dataclasses.replace(job.timing, cold_cache=cold),
    )
    out = copy.deepcopy(record)
    out.key = job.key
    out.params.update(
        {"variant": job.variant, **{f"timing.{k}": str(v) for k, v in vars(job.timing).items()}}
    )
    if framework:
        out.params["framework"] = framework
    for name in ("time_ms", "time_min_ms", "time_p25_ms", "time_p75_ms", "call_ms"):
        if name in out.metrics:
            out.metrics[name] *= scale
    for name in ("gflops", "gbps", "pct_peak", "pct_roofline"):
        if name in out.metrics:
            out.metrics[name] /= scale
    out.tags["job_key"] = job.key
    out.artifacts["job.json"] = json.dumps(job.to_dict(), indent=1, sort_keys=True, default=str)
    out.params.update(params or {})
    out.metrics.update(metrics or {})
    out.tags.update(tags or {})
    return out


def torch_compile(record: Record, variant: str, scale: float, compile_s: float) -> Record:
    """A torch.compile record from a cuDNN one of the same job (the cuDNN variants' layer, compiled): the
    depthwise an ATen call into cuDNN, the pointwise with bias and ReLU fused by Inductor into Triton."""
    mode = "max-autotune-no-cudagraphs" if "_max" in variant else "default"
    ms = record.metrics["time_ms"] * scale
    kernels = {"conv2d_c1_k1_nhwc_kernel": 0.4 * ms, "triton_poi_fused_convolution_relu_0": 0.6 * ms}
    return derive(
        record,
        variant=variant,
        framework="torch_compile",
        scale=scale,
        params={"compile_mode": mode, "inductor_caches": "fresh (empty, cleared): a cold compile",
                "target": f"torch-2.11.0-inductor-{mode}-triton-3.6.0-cudnn-91002-NVIDIA H200"},
        metrics={"compile_s": compile_s},
        tags={"triton_version": "3.6.0", "kernel_times": json.dumps(kernels)},
    )  # fmt: skip


def cold(record: Record, scale: float, method: str = "l2_flush") -> Record:
    """The same job timed with a cold cache: `method` l2_flush (2x the L2 written before every call) or
    input_rotation (a record from before `timing.cold_cache_method` existed carries no such param)."""
    nbytes = 2 * H200_L2_BYTES
    params = {"timing.cold_cache_method": method} if method == "l2_flush" else {}
    return derive(
        record,
        cold=True,
        scale=scale,
        params=params,
        metrics={"cold_cache_bytes": float(nbytes)},
        tags={"cold_cache": harness.describe_cold_cache(method, nbytes, H200_L2_BYTES)},
    )


def with_clocks(record: Record, low_mhz: float | None = None) -> Record:
    """`record` with the clock fields of a timing: a steady 1980 MHz, or busy samples dropping to
    `low_mhz` under a power cap (throttled when that is below 75% of the maximum)."""
    samples = [clocks.ClockSample(MAX_MHZ, 0) for _ in range(20)]
    if low_mhz is not None:
        samples += [clocks.ClockSample(low_mhz, 0x4 | 0x8) for _ in range(5)]  # sw_power_cap, hw_slowdown
    report = clocks.summarize(samples, MAX_MHZ, (MAX_MHZ, 41.0), (low_mhz or MAX_MHZ, 63.0), [41.0, 63.0])
    out = copy.deepcopy(record)
    out.metrics.update(report.metrics)
    out.tags.update(report.tags)
    return out


def without_clocks(record: Record, reason: str) -> Record:
    """`record` whose clocks could not be read, saying why (as `workers.clocks.watch` does)."""
    out = copy.deepcopy(record)
    out.tags.update(clocks.unavailable(reason).tags)
    return out


def dispatched(record: Record, path: str, scale: float = 1.0) -> Record:
    """`record` as it came back through a dispatch path (tag `dispatch`: ray | worker-cli)."""
    return derive(record, scale=scale, tags={"dispatch": path, "node_gpu_model": "h200"})


def fields(record: Record) -> dict[str, Any]:
    """params, metrics and tags of a record in one mapping (for assertions)."""
    return {**record.tags, **record.params, **record.metrics}
