"""Execute one job: build → verify → time → derive, into one Record. Never raises for a job's problems.

Three stages with their own outcomes, as Kernel Tuner's `compile_and_benchmark` does them:

- a variant that cannot run on the device (or shape) → `skipped`, with the reason;
- a build, verification or timing that raises → `failed`, a one-line `error` and `traceback.txt`;
- an answer further than `job.tolerance` from the float64 reference → `wrong`, and no speed;
- otherwise `ok`, with the harness's timing and the metrics derived from it.

Verification uses its own fresh random inputs (poisoned output, so an unwritten element fails), and
timing uses other fresh sets, so a variant cannot pass by caching a result for one input.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
import traceback
from collections.abc import Mapping
from typing import Any

import numpy as np

from kernels import registry
from kernels.device import DeviceSpec
from kernels.layer import LayerInputs, LayerShape, make_inputs, reference, relative_l2_error
from workers import harness, hostinfo, metrics, roofs, select
from workers.schema import Job, Record
from workers.table import cell

VERIFY, TIMING = 1, 2  # seed streams: verification inputs and timing inputs never coincide
MAX_ERROR_CHARS = 500
MAX_KERNEL_NAMES = 12
MAX_KERNEL_NAME_CHARS = 160


def derive_seed(seed: int, stream: int, index: int = 0) -> int:
    """A seed for input set `index` of `stream`, independent of the others (NumPy SeedSequence)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, stream, index]).generate_state(1)[0])


def one_line(exc: BaseException, stage: str) -> str:
    """`stage: ExcType: first line of the message`, short enough for a tag."""
    message = str(exc).strip().splitlines()
    text = f"{stage}: {type(exc).__name__}" + (f": {message[0]}" if message else "")
    return text[:MAX_ERROR_CHARS]


def base_record(job: Job) -> Record:
    """The Record of `job` before anything ran: params of the job, tags of the host; status failed.

    The CLI also uses it to record a job whose process died, so those records look like the others.
    """
    shape, device, spec = job.shape, job.device, job.timing
    params = {
        "variant": job.variant,
        **shape.as_params(),
        "device": device.name,
        "device_model": device.model,
        "device_kind": device.kind,
        "experiment": job.experiment,
        "tolerance": repr(job.tolerance),
        "seed": str(job.seed),
        **{f"timing.{k}": str(v) for k, v in vars(spec).items()},
        **{f"option.{k}": _param(v) for k, v in sorted(job.options.items())},
    }
    if job.profile:  # the profiler pass observing the job (part of its key)
        params["profile"] = _param(job.profile)
    if "cuda_max_registers" in job.options:
        params["cuda_max_registers"] = _param(job.options["cuda_max_registers"])
    facts = hostinfo.host_facts()
    tags = {
        "status": "failed",
        "job_key": job.key,
        "experiment": job.experiment,
        **facts,
        # what the driver planned with (part of the job key); the *_version tags say what ran here
        **{f"planned.{k}": str(v) for k, v in sorted(job.versions.items())},
    }
    return Record(
        key=job.key,
        params=params,
        tags=tags,
        artifacts={"job.json": json.dumps(job.to_dict(), indent=1, sort_keys=True, default=str)},
    )


def iso_time(seconds: float) -> str:
    """Unix seconds as ISO 8601 in UTC, to the millisecond: `2026-12-03T21:22:15.123Z`."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int(seconds % 1 * 1000):03d}Z"


def kernel_times_tag(kernels: Mapping[str, float]) -> str:
    """The `kernel_times` tag: JSON {kernel name: median ms per launch} in launch order, the slowest
    MAX_KERNEL_NAMES kernels when a launch has more, names cut to MAX_KERNEL_NAME_CHARS (MLflow's tag
    values hold 8,000 characters)."""
    keep = set(sorted(kernels, key=lambda n: -kernels[n])[:MAX_KERNEL_NAMES])
    return json.dumps({n[:MAX_KERNEL_NAME_CHARS]: round(ms, 6) for n, ms in kernels.items() if n in keep})


def _param(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _fail(record: Record, exc: BaseException, stage: str) -> Record:
    record.tags["status"] = "failed"
    record.tags["error"] = one_line(exc, stage)
    record.artifacts["traceback.txt"] = "".join(traceback.format_exception(exc))
    return record


def execute(job: Job) -> Record:
    """Build, verify and time `job`'s variant; the Record says what happened (ok|wrong|failed|skipped)."""
    try:
        record = base_record(job)
    except Exception as exc:  # host facts unreadable: still return a record
        return _fail(Record(key=job.key, tags={"job_key": job.key}), exc, "setup")
    started = time.time()
    try:
        record = _execute(job, record)
    except Exception as exc:  # a stage forgot to catch something: still a record, never a crash
        record = _fail(record, exc, "worker")
    finally:
        verification_case.cache_clear()  # a large layer's reference is hundreds of MB: not kept between jobs
    # Where and when it ran (Unix seconds): the cluster tests check that no two jobs overlap on a GPU.
    ended = time.time()
    record.tags.update(started_at=f"{started:.6f}", ended_at=f"{ended:.6f}")
    record.tags.update(started=iso_time(started), ended=iso_time(ended))  # the same, for people
    if record.status != "skipped":  # the job's own wall time (host measurement, build, verify, time)
        record.metrics["job_s"] = ended - started
    with contextlib.suppress(Exception):
        where = hostinfo.placement(job.device.kind)
        record.params.update(where)
        record.tags.update(hostinfo.gpu_identity(job.device, where))
    return record


def _execute(job: Job, record: Record) -> Record:
    shape = job.shape
    try:
        variant = registry.get(job.variant)
    except Exception as exc:
        return _fail(record, exc, "lookup")
    record.params["framework"] = variant.framework

    reason = variant.skip_reason(shape, job.device)
    if reason:
        record.tags.update(status="skipped", error=reason)
        return record

    try:
        device, peak_source = roofs.resolve_device(job.device)
    except Exception as exc:
        return _fail(record, exc, "host measurement")
    take_device(record, device, peak_source)

    # --- build ---
    t0 = time.perf_counter()
    try:
        built = variant.build(shape, device, job.options)
    except Exception as exc:
        record.metrics["build_s"] = time.perf_counter() - t0
        return _fail(record, exc, "build")
    record.metrics["build_s"] = time.perf_counter() - t0
    alternatives = getattr(built, "alternatives", None)
    if alternatives is not None and alternatives.trials:
        # a short timed search among the variant's candidates (halide_tuned on a miss, on_miss=quick)
        try:
            chosen, found = select.quick_search(
                built, job, device, verify, one_line, derive_seed, record.tags.get("host", "")
            )
        except Exception as exc:
            return _fail(record, exc, "select")
        record.metrics.update(found)
        if chosen is None:
            return _fail(record, RuntimeError("no candidate built and verified"), "select")
        built = chosen
    take_build(record, built)

    # --- verify (a variant with alternatives falls back to its next candidate) ---
    t0 = time.perf_counter()
    while True:
        failure: Exception | None = None
        try:
            error, detail = verify(built, job)
        except Exception as exc:
            failure, error, detail = exc, math.nan, one_line(exc, "verify")
        if failure is None and error <= job.tolerance:
            break
        following = None
        if alternatives is not None:
            try:
                following = alternatives.next_candidate(detail)
            except Exception as exc:  # building the fallback failed unexpectedly: report the first failure
                record.tags["fallback_error"] = one_line(exc, "fallback")
        if following is None:
            record.metrics["verify_s"] = time.perf_counter() - t0
            if failure is not None:
                return _fail(record, failure, "verify")
            if math.isfinite(error):
                record.metrics["rel_error"] = error
            record.tags.update(status="wrong", error=detail)
            return record
        built = following
        take_build(record, built)
    record.metrics["verify_s"] = time.perf_counter() - t0
    if math.isfinite(error):
        record.metrics["rel_error"] = error

    # --- time ---
    t0 = time.perf_counter()
    try:
        timing, n_sets = time_job(built, job, device)
    except Exception as exc:
        return _fail(record, exc, "time")
    finally:
        record.metrics["measure_s"] = time.perf_counter() - t0
    record.params["timing.input_sets_used"] = str(n_sets)
    take_timing(record, timing, shape, device, n_sets * shape.min_bytes, tf32="tf32" in variant.tags)
    record.tags["status"] = "ok"
    return record


def take_build(record: Record, built: Any) -> None:
    """The build's facts into the record: compile time, target, its params, tags and artifacts (again for
    a fallback or a searched candidate, whose facts replace the first's)."""
    record.metrics["compile_s"] = float(built.compile_s)
    record.params["target"] = str(built.target)
    if built.kernel_filter:
        record.params["kernel_filter"] = built.kernel_filter
    record.params.update({str(k): str(v) for k, v in built.build_params.items()})
    record.tags.update({str(k): str(v) for k, v in (getattr(built, "build_tags", None) or {}).items()})
    record.artifacts.update({str(k): str(v) for k, v in built.artifacts.items()})


def take_timing(
    record: Record, timing: harness.Timing, shape: LayerShape, device: DeviceSpec, sets_bytes: int, tf32: bool
) -> None:
    """The harness's timing into the record: the cache treatment (`sets_bytes`: the input sets it timed on),
    clocks, time source, kernel times, the timing metrics, the roof the floor used and the metrics derived
    from them; non-finite metrics are dropped."""
    record_cold_cache(record, timing, sets_bytes, device)
    record.metrics.update(timing.clock_metrics)
    record.tags.update(timing.clock_tags)
    record.tags["time_source"] = timing.time_source
    if timing.note:
        record.tags["time_note"] = timing.note[:MAX_ERROR_CHARS]
    if timing.kernels:
        record.tags["kernel_times"] = kernel_times_tag(timing.kernels)
    record.metrics.update(
        time_ms=timing.time_ms,
        time_min_ms=timing.min_ms,
        time_p25_ms=timing.p25_ms,
        time_p75_ms=timing.p75_ms,
        time_spread=timing.spread,
        call_ms=timing.call_ms,
        samples=float(timing.samples),
        call_samples=float(timing.call_samples),
        stable=float(timing.stable),
        timing_s=timing.elapsed_s,
    )
    roof = metrics.roof_for(device, shape, sets_bytes, cold=timing.cold_cache != "warm", tf32=tf32)
    if roof is not None:
        record.params.update(roof.as_params())
    record.metrics.update(metrics.derive(shape, device, timing.time_ms, roof))
    record.metrics = {k: float(v) for k, v in record.metrics.items() if math.isfinite(v)}


def take_device(record: Record, device: DeviceSpec, peak_source: str) -> None:
    """The device's rates (`device_rates`), where its peak came from, and its cores into the record."""
    record.params.update(device_rates(device), peak_source=peak_source)
    if device.cores:
        record.params["cores"] = str(device.cores)


def device_rates(device: DeviceSpec) -> dict[str, str]:
    """The device's rates as params: datasheet peak_gflops, mem_gbps (the host CPU: measured), and the
    measured ceilings that are known: fma_gflops, sgemm_gflops, cache_gbps, cache_bytes, dram_gbps,
    tf32_gflops (the roofs a record's floor used are its roof_* params, set after timing)."""
    rates = {"peak_gflops": f"{device.peak_gflops:g}", "mem_gbps": f"{device.mem_gbps:g}"}
    for name in ("fma_gflops", "sgemm_gflops", "cache_gbps", "cache_bytes", "dram_gbps", "tf32_gflops"):
        value = getattr(device, name)
        if value:
            rates[name] = f"{value:g}"
    return rates


def record_cold_cache(record: Record, timing: harness.Timing, sets_bytes: int, device: DeviceSpec) -> None:
    """What the timing did to the cache: param `timing.cold_cache_method` (warm, l2_flush,
    input_rotation), tag `cold_cache` (one line with the bytes), metric `cold_cache_bytes` (bytes each L2
    flush wrote, or the rotated input sets spanned; `sets_bytes`) when the cache was kept cold."""
    method = timing.cold_cache
    record.params["timing.cold_cache_method"] = method
    if method == "warm":
        record.tags["cold_cache"] = harness.describe_cold_cache(method, 0, 0)
        return
    if method == "l2_flush":
        nbytes, cache = timing.flush_bytes, timing.l2_bytes
    else:
        nbytes, cache = sets_bytes, harness.last_level_cache_bytes(device)
    record.tags["cold_cache"] = harness.describe_cold_cache(method, nbytes, cache)
    record.metrics["cold_cache_bytes"] = float(nbytes)


@functools.lru_cache(maxsize=1)
def verification_case(shape: LayerShape, seed: int) -> tuple[LayerInputs, np.ndarray]:
    """The verification inputs of (shape, seed) and their float64 reference, kept for the next call: a
    variant's fallbacks and a quick search verify several candidates of one job on the same case."""
    inputs = make_inputs(shape, derive_seed(seed, VERIFY))
    return inputs, reference(shape, inputs)


def verify(built: Any, job: Job) -> tuple[float, str]:
    """Relative L2 error of one run on fresh inputs with a poisoned output, and a line explaining it."""
    inputs, ref = verification_case(job.shape, job.seed)
    placed = built.place(inputs)
    built.poison(placed)
    built.run(placed)
    built.sync()
    out = np.asarray(built.fetch(placed))
    error = relative_l2_error(out, ref)
    if out.shape != ref.shape:
        return error, f"output shape {out.shape}, expected {ref.shape}"
    if not np.all(np.isfinite(out)):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        return error, f"{bad} of {out.size} output elements are NaN/Inf (unwritten or overflowed)"
    return error, f"rel_error {error:.3g} > tolerance {job.tolerance:g}"


def time_job(built: Any, job: Job, device: DeviceSpec, first: int = 0) -> tuple[harness.Timing, int]:
    """Place fresh timing input sets (enough for a cold cache if `job.timing` asks), the `first`-th of
    the job's timing seeds on, and run the one harness on them; returns the timing and how many sets."""
    n_sets = harness.input_sets_needed(job.shape, job.timing, device)
    placed = [
        built.place(make_inputs(job.shape, derive_seed(job.seed, TIMING, first + i))) for i in range(n_sets)
    ]
    return harness.measure(built, placed, job.timing, device), n_sets


def summary_row(record: Record) -> Mapping[str, str]:
    """variant, shape, status, time_ms, gflops, pct_roofline of a record, formatted for a table."""

    def fmt(name: str, spec: str) -> str:
        return cell(record.metrics.get(name), spec)

    return {
        "variant": record.params.get("variant", record.key.split(".")[0]),
        "shape": record.params.get("shape", "?"),
        "status": record.status,
        "time_ms": fmt("time_ms", ".4g"),
        "gflops": fmt("gflops", ".1f"),
        "pct_roofline": fmt("pct_roofline", ".1f"),
    }
