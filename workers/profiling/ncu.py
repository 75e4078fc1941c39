"""Nsight Compute: the command that profiles a target process, its CSV export, and what went wrong.

Warm-up launches are kept out of the profile in one of three ways, best first (`LaunchPlan.mode`):

- `nvtx`:  the target marks its profiled launches with the NVTX start/end range `dsconv_profile`
           and ncu profiles only kernels inside it (`--nvtx --nvtx-include dsconv_profile`); exact
           whatever a run launches (cuDNN's first call may try several algorithms).
- `count`: kernels per run known (Halide: its PTX's kernels; or `profile.kernels_per_run`):
           `--launch-skip W*k --launch-count K*k`.
- `tail`:  neither: every run is profiled and the parser keeps the last K of the W+K runs.

`--launch-skip` and `--launch-count` count only kernels that pass the name filter, so the unfused
variant's two kernels a run skip as 2 W.
"""

from __future__ import annotations

import glob
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from workers.profiling import parse, procs
from workers.profiling.settings import NVTX_RANGE, OK, ProfileSettings

NCU_GLOBS = (
    "/usr/local/cuda/bin/ncu",
    "/usr/local/cuda*/bin/ncu",
    "/opt/nvidia/nsight-compute/*/ncu",
    "/usr/local/cuda*/nsight-compute*/ncu",
)
MODES = ("nvtx", "count", "tail")


def find_ncu(explicit: str | None = None) -> str | None:
    """The ncu executable: `explicit` if given (and present), else PATH, else the usual install folders."""
    if explicit:
        return explicit if Path(explicit).is_file() or shutil.which(explicit) else None
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in NCU_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


@dataclass(frozen=True)
class LaunchPlan:
    """Which launches of the target ncu profiles (see the module docstring for the modes)."""

    mode: str
    launch_skip: int  # filtered kernels skipped before profiling starts
    launch_count: int  # filtered kernels profiled at most
    warmup: int  # runs the target makes before the profiled ones
    runs: int  # profiled runs


def plan_launches(
    settings: ProfileSettings, nvtx_binding: str | None, kernels_per_run: int | None
) -> LaunchPlan:
    """The best plan the target allows: NVTX when it can mark ranges, else by count, else keep the tail."""
    w, k, cap = settings.warmup, settings.runs, settings.max_kernels_per_run
    if settings.nvtx and nvtx_binding:
        return LaunchPlan("nvtx", 0, k * cap, w, k)
    per_run = settings.kernels_per_run or kernels_per_run
    if per_run:
        return LaunchPlan("count", w * per_run, k * per_run, w, k)
    return LaunchPlan("tail", 0, (w + k) * cap, w, k)


def ncu_command(
    ncu: str,
    target_argv: list[str],
    kernel_filter: str | None,
    settings: ProfileSettings,
    plan: LaunchPlan,
    report: Path,
) -> list[str]:
    """`ncu ... -o report -f <target>`: filter, NVTX range or skip, sections, clock and cache control."""
    cmd = [ncu, "--target-processes", "all"]
    if kernel_filter:
        cmd += ["--kernel-name-base", "demangled", "--kernel-name", f"regex:{kernel_filter}"]
    if plan.mode == "nvtx":
        cmd += ["--nvtx", "--nvtx-include", NVTX_RANGE]
    if plan.launch_skip:
        cmd += ["--launch-skip", str(plan.launch_skip)]
    cmd += ["--launch-count", str(plan.launch_count)]
    for section in settings.sections:
        cmd += ["--section", section]
    cmd += ["--clock-control", settings.clock_control, "--cache-control", settings.cache_control]
    cmd += ["-o", str(report), "-f"]
    return cmd + list(target_argv)


def target_args(plan: LaunchPlan) -> list[str]:
    """The target's launch arguments for `plan` (it marks the NVTX range only in `nvtx` mode)."""
    args = ["--warmup", str(plan.warmup), "--runs", str(plan.runs)]
    return args if plan.mode == "nvtx" else [*args, "--no-nvtx"]


def export_command(ncu: str, report: Path) -> list[str]:
    """`ncu --import report --csv --page raw` in base units, with short kernel names."""
    return [
        ncu,
        "--import",
        str(report),
        "--csv",
        "--page",
        "raw",
        "--print-units",
        "base",
        "--print-kernel-base",
        "function",
    ]


# One-line reasons for the ways ncu fails, first match wins.
FAILURES = (
    ("ERR_NVGPUCTRPERM", "no permission to read GPU performance counters (ERR_NVGPUCTRPERM)"),
    ("LibraryNotLoaded", "ncu could not initialise the profiler (LibraryNotLoaded)"),
    ("Failed to initialize the profiler", "ncu could not initialise the profiler"),
    ("no CUDA-capable device", "no GPU: no CUDA-capable device is detected"),
    ("No CUDA-capable device", "no GPU: no CUDA-capable device is detected"),
    ("CUDA driver version is insufficient", "no GPU: the CUDA driver is too old for the runtime"),
    ("Profiling is not supported on this device", "ncu does not support profiling this GPU"),
)


def classify(done: procs.Completed, plan: LaunchPlan, kernel_filter: str | None) -> str | None:
    """Why this ncu run gave no profile, in one line; None when it looks like it did."""
    out = done.output
    if done.timed_out:
        return "ncu timed out (profile.timeout_s)"
    for needle, reason in FAILURES:
        if needle in out:
            line = next((ln.strip() for ln in out.splitlines() if needle in ln), "")
            return f"{reason}: {line[:200]}" if line and line != needle else reason
    for line in out.splitlines():
        if line.startswith("skipped: "):
            return f"variant skipped: {line[len('skipped: ') :].strip()[:250]}"
    if "No kernels were profiled" in out:
        where = f"matching regex {kernel_filter!r}" if kernel_filter else "at all"
        inside = f" inside NVTX range {NVTX_RANGE!r}" if plan.mode == "nvtx" else ""
        return f"variant has no kernels: none were profiled {where}{inside}"
    errors = [ln.strip() for ln in out.splitlines() if ln.startswith("==ERROR==")]
    if errors:
        return f"ncu error: {errors[0][:250]}"
    if done.returncode:
        return f"profiled process failed (exit {done.returncode}): {procs.last_line(out)}"
    return None


@dataclass
class Capture:
    """One ncu capture: the status, the files written, and the parsed kernels of the profiled runs."""

    status: str
    plan: LaunchPlan
    report: Path | None = None
    csv: Path | None = None
    log: Path | None = None
    kernels: list[parse.KernelProfile] = field(default_factory=list)
    note: str = ""  # how the rows were selected (tail mode)


def capture(
    ncu: str,
    target_argv: list[str],
    kernel_filter: str | None,
    settings: ProfileSettings,
    plan: LaunchPlan,
    out_dir: Path,
    name: str = "report",
) -> Capture:
    """Profile `target_argv` (plus the plan's launch arguments) under ncu and export its raw CSV.

    Never raises for the profiler's problems: the status says what went wrong.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / f"{name}.ncu-rep"
    log = out_dir / f"{name}.log"
    result = Capture(status=OK, plan=plan, log=log)
    cmd = ncu_command(ncu, [*target_argv, *target_args(plan)], kernel_filter, settings, plan, out_dir / name)
    done = procs.run(cmd, settings.timeout_s, cwd=out_dir, log=log)
    reason = classify(done, plan, kernel_filter)
    if reason:
        result.status = reason
        if not report.is_file():
            return result
    if not report.is_file():
        result.status = f"ncu wrote no report: {procs.last_line(done.output)}"
        return result
    result.report = report
    exported = procs.run(export_command(ncu, report), settings.timeout_s, cwd=out_dir)
    if exported.returncode != 0:
        result.status = f"ncu could not export the report: {procs.last_line(exported.output)}"
        return result
    result.csv = out_dir / f"{name}.csv"
    result.csv.write_text(exported.output)
    try:
        kernels = parse.read_raw_csv(exported.output)
    except parse.CsvFormatError as exc:
        result.status = f"ncu export unreadable: {exc}"
        return result
    if plan.mode == "tail":
        kept = parse.keep_last_runs(kernels, plan.runs, plan.warmup + plan.runs)
        if kept is None:
            result.note = f"{len(kernels)} kernels do not split into {plan.warmup + plan.runs} runs: all kept"
        else:
            kernels = kept
    if not kernels and result.status == OK:
        result.status = "variant has no kernels: the report holds no kernel"
    result.kernels = kernels
    return result
