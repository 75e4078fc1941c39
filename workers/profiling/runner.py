"""`profile_job`: the optional profiler pass over one job, after it was timed, in processes of its own.

    describe   python -m workers.profiling.target job.json --describe --no-run   (build only: kernel
               filter, target, NVTX binding, Halide's PTX)
    profile    ncu ... python -m workers.profiling.target job.json --warmup W --runs K
    export     ncu --import report.ncu-rep --csv --page raw
    parse      workers.profiling.parse → ncu.k<i>.*, ncu.sum.*, ncu.stall<j>.*

Every way this can fail on a node (no ncu, no counters permission, no GPU, a variant with no kernels,
nsys without a report) ends as `ProfileResult.status`, never as an exception: the job keeps its timing.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kernels.layer import LayerShape
from workers.profiling import devcode, ncu, nsys, parse, procs
from workers.profiling.settings import (
    EXIT_SKIPPED,
    OK,
    TEXT_SUFFIXES,
    ProfileResult,
    ProfileSettings,
    check_tool,
)
from workers.schema import Job, Record

TARGET_MODULE = "workers.profiling.target"


def profile_job(job: Job, tool: str, settings: ProfileSettings, out_dir: Path) -> ProfileResult:
    """Profile `job` with `tool` (none | ncu | nsys), writing files under `out_dir`.

    An unknown tool is a config error and raises; everything that can go wrong on a node is a status.
    """
    check_tool(tool)
    if tool == "none":
        return ProfileResult(status="off (profile=none)")
    if not job.device.is_gpu:
        return ProfileResult(status=f"no GPU: device {job.device.name} is a {job.device.kind} device")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return _profile(job, tool, settings, out_dir)
    except Exception as exc:  # a profiler pass never breaks the job it observes
        trace = out_dir / "profile_error.txt"
        try:
            trace.write_text("".join(traceback.format_exception(exc)))
            artifacts = {trace.name: trace}
        except OSError:
            artifacts = {}
        return ProfileResult(status=f"profiler error: {type(exc).__name__}: {exc}"[:300], artifacts=artifacts)


def _profile(job: Job, tool: str, settings: ProfileSettings, out_dir: Path) -> ProfileResult:
    exe = _find(tool, settings)
    if exe is None:
        return ProfileResult(status=_not_found(tool, settings))
    job_path = out_dir / "job.json"
    job_path.write_text(json.dumps(job.to_dict(), indent=1, sort_keys=True, default=str))
    modules = [arg for module in settings.variant_modules for arg in ("--module", module)]
    target = procs.python_argv(settings.python, TARGET_MODULE, str(job_path), *modules)
    return profile_target(target, tool, settings, out_dir, job.shape, job.device.cuda_capability)


def _find(tool: str, settings: ProfileSettings) -> str | None:
    return ncu.find_ncu(settings.ncu_path) if tool == "ncu" else nsys.find_nsys(settings.nsys_path)


def _not_found(tool: str, settings: ProfileSettings) -> str:
    explicit = getattr(settings, f"{tool}_path")
    where = f"at {explicit}" if explicit else "on PATH or in the usual install folders"
    return f"{tool} not found {where} (set profile.{tool}_path)"


def profile_target(
    target: list[str],
    tool: str,
    settings: ProfileSettings,
    out_dir: Path,
    shape: LayerShape,
    cuda_capability: int = 0,
) -> ProfileResult:
    """Describe, then profile, the target process `target` (argv taking `add_launch_arguments` options).

    `profile_job` passes `python -m workers.profiling.target job.json`; the fixture capture script
    passes its own target. `shape` gives the derived metrics, `cuda_capability` the SASS architecture.
    """
    check_tool(tool)
    exe = _find(tool, settings)
    if exe is None:
        return ProfileResult(status=_not_found(tool, settings))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ProfileResult(status=OK, tags={"profile_tool": tool})

    # describe: build once, outside any profiler
    described = out_dir / "describe.json"
    done = procs.run(
        [*target, "--describe", str(described), "--artifacts-dir", str(out_dir), "--no-run"],
        settings.timeout_s,
        cwd=out_dir,
        log=out_dir / "describe.log",
    )
    result.artifacts["describe.log"] = out_dir / "describe.log"
    info = json.loads(described.read_text()) if described.is_file() else {}
    if done.returncode == EXIT_SKIPPED or "skipped" in info:
        result.status = f"variant skipped: {info.get('skipped') or procs.last_line(done.output)}"
        return result
    if done.returncode != 0 or not info:
        why = "timed out" if done.timed_out else procs.last_line(done.output)
        result.status = f"could not build the variant for profiling: {why}"
        return result
    kernel_filter = info.get("kernel_filter") or None
    result.tags["profile_kernel_filter"] = kernel_filter or "all"
    kernels_per_run = _device_code(info, settings, cuda_capability, result)

    if tool == "nsys":
        args = ["--warmup", str(settings.warmup), "--runs", str(settings.runs)]
        timeline = nsys.capture(exe, [*target, *args], settings, out_dir)
        result.status = timeline.status
        result.metrics.update(timeline.metrics)
        result.tags.update(timeline.tags)
        for path in (timeline.report, timeline.log):
            if path is not None and path.is_file():
                result.artifacts[path.name] = path
        return result

    version = procs.run([exe, "--version"], 60, cwd=out_dir)
    result.tags["ncu.version"] = procs.last_line(version.output, 100)
    plan = ncu.plan_launches(settings, info.get("nvtx"), kernels_per_run)
    result.tags["ncu.skip_mode"] = plan.mode
    result.tags["ncu.clock_control"] = settings.clock_control
    result.tags["ncu.cache_control"] = settings.cache_control
    cap = ncu.capture(exe, target, kernel_filter, settings, plan, out_dir)
    for path in (cap.report, cap.csv, cap.log):
        if path is not None and path.is_file():
            result.artifacts[path.name] = path
    if cap.note:
        result.tags["ncu.note"] = cap.note
    result.status = cap.status
    if cap.status != OK:
        return result
    parsed = parse.summarize(cap.kernels, runs=plan.runs)
    result.metrics.update(parsed.metrics)
    result.tags.update(parsed.tags)
    result.metrics.update(derived_metrics(shape, parsed.metrics))
    return result


def _device_code(info: dict, settings: ProfileSettings, capability: int, result: ProfileResult) -> int | None:
    """Add the PTX (and SASS) artifacts of a Halide variant; return its kernel count when the PTX says."""
    if info.get("framework") != "halide":
        return None
    ptx = Path(info["device_code"]) if info.get("device_code") else None
    if ptx is None or not ptx.is_file():
        result.tags["profile_device_code"] = str(info.get("device_code_note") or "no device code")[:300]
        return None
    result.artifacts[ptx.name] = ptx
    if settings.sass:
        sass = ptx.with_suffix(".sass")
        cap = info.get("max_registers") or devcode.HALIDE_JIT_MAX_REGISTERS
        why_not = devcode.sass_from_ptx(ptx, capability, sass, max_registers=int(cap))
        if why_not is None:
            result.artifacts[sass.name] = sass
        else:
            result.tags["profile_sass"] = why_not[:300]
    entries = devcode.ptx_entries(ptx.read_text())
    return len(entries) or None


def derived_metrics(shape: LayerShape, metrics: dict[str, float]) -> dict[str, float]:
    """What the counters mean for this layer: achieved GFLOP/s and GB/s, and DRAM traffic vs the minimum.

    `dram_bytes_vs_min` can fall below 1 on GPUs with a large L2 (50 MB on an H100): writes still in
    L2 when the kernel ends are not counted as DRAM traffic of that kernel.
    """
    out: dict[str, float] = {}
    duration_us = metrics.get("ncu.sum.duration_us")
    dram = metrics.get("ncu.sum.dram_bytes")
    if duration_us:
        out["ncu.sum.gflops"] = shape.flops / (duration_us * 1e-6) / 1e9
        if dram is not None:
            out["ncu.sum.dram_gbps"] = dram / (duration_us * 1e-6) / 1e9
    if dram is not None and shape.min_bytes:
        out["ncu.sum.dram_bytes_vs_min"] = dram / shape.min_bytes
    return out


PROFILE_FILE_TAG = "profile_file."  # tag prefix: path of a binary profiler file (the .ncu-rep)


def profile_into(
    job: Job, record: Record, tool: str, raw: Mapping[str, Any], root: Path, modules: Sequence[str] = ()
) -> None:
    """Profile an `ok` job after its timing and merge the result into `record`.

    Metrics, tags and text artifacts go into the Record; each binary file (the report) becomes a
    `profile_file.<name>` tag holding its path, which the MLflow recorder uploads when that path is on
    its machine. Both the Ray task and `python -m workers run --profile` call this, so a job profiled
    on a GPU node without Ray carries the same record as one profiled through Ray.
    """
    if tool == "none" or record.status != "ok" or "profile_status" in record.tags:
        return
    extra = [m for m in modules if m not in raw.get("variant_modules", [])]
    settings = ProfileSettings.from_config(
        {**raw, "variant_modules": [*raw.get("variant_modules", []), *extra]}
    )
    result = profile_job(job, tool, settings, root / re.sub(r"[^\w.\-]", "_", job.key))
    result.apply_to(record)
    for name, path in result.artifacts.items():
        if not name.endswith(TEXT_SUFFIXES):
            record.tags[f"{PROFILE_FILE_TAG}{name}"] = str(Path(path).resolve())
