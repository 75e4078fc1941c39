"""Nsight Systems: a timeline of the target process (`profile=nsys`), where nsys can make a report.

On some nodes nsys is present but cannot turn its raw stream into a report (it writes a `.qdstrm` and
stops: docs/evidence/kernels.md, "nsys"): that, like a missing nsys, becomes the status, never an
exception.
The kernel summary of a report (`nsys stats -r cuda_gpu_kern_sum`) gives a few metrics; it covers
every launch, warm-ups included, so the per-kernel figures are medians.
"""

from __future__ import annotations

import csv
import glob
import io
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from workers.profiling import procs
from workers.profiling.settings import OK, ProfileSettings

NSYS_GLOBS = (
    "/usr/local/cuda/bin/nsys",
    "/usr/local/cuda*/bin/nsys",
    "/opt/nvidia/nsight-systems/*/bin/nsys",
    "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
)


def find_nsys(explicit: str | None = None) -> str | None:
    """The nsys executable: `explicit` if given (and present), else PATH, else the usual install folders."""
    if explicit:
        return explicit if Path(explicit).is_file() or shutil.which(explicit) else None
    found = shutil.which("nsys")
    if found:
        return found
    for pattern in NSYS_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def nsys_command(nsys: str, target_argv: list[str], report: Path) -> list[str]:
    """`nsys profile --trace cuda,nvtx -o report <target>` (no CPU sampling: the GPU timeline only)."""
    return [
        nsys,
        "profile",
        "--trace",
        "cuda,nvtx",
        "--sample",
        "none",
        "--cpuctxsw",
        "none",
        "--force-overwrite",
        "true",
        "-o",
        str(report),
        *target_argv,
    ]


def stats_command(nsys: str, report: Path) -> list[str]:
    """The kernel summary of a report as CSV on stdout."""
    return [nsys, "stats", "--quiet", "--report", "cuda_gpu_kern_sum", "--format", "csv", str(report)]


@dataclass
class Timeline:
    """One nsys capture: status, files, and metrics from its kernel summary."""

    status: str
    report: Path | None = None
    log: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def capture(nsys: str, target_argv: list[str], settings: ProfileSettings, out_dir: Path) -> Timeline:
    """Record a timeline of `target_argv`; the status says why there is none where nsys cannot make one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / "timeline"
    log = out_dir / "nsys.log"
    done = procs.run(nsys_command(nsys, target_argv, base), settings.timeout_s, cwd=out_dir, log=log)
    report = base.with_suffix(".nsys-rep")
    result = Timeline(status=OK, log=log)
    if done.timed_out:
        result.status = "nsys timed out (profile.timeout_s)"
        return result
    if not report.is_file():
        raw = sorted(p.name for p in out_dir.glob("timeline*.qdstrm"))
        if raw:
            result.status = f"nsys wrote {raw[0]} but could not make a report: {failure_lines(done.output)}"
        else:
            result.status = f"nsys made no report (exit {done.returncode}): {procs.last_line(done.output)}"
        return result
    result.report = report
    if done.returncode:
        result.tags["nsys.note"] = f"exit {done.returncode}: {procs.last_line(done.output)}"
    stats = procs.run(stats_command(nsys, report), settings.timeout_s, cwd=out_dir, log=log)
    if stats.returncode == 0:
        metrics, tags = parse_kernel_summary(stats.output)
        result.metrics.update(metrics)
        result.tags.update(tags)
    else:
        result.tags["nsys.note"] = f"nsys stats failed: {procs.last_line(stats.output)}"
    return result


def failure_lines(output: str) -> str:
    """The lines of nsys's output that say what failed (errors, 'Unable ...'), else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if re.search(r"error|unable|fail", ln, re.IGNORECASE)]
    return " / ".join(lines)[:250] if lines else procs.last_line(output)


def parse_kernel_summary(text: str) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics of `nsys stats -r cuda_gpu_kern_sum --format csv`: launches, total and per-kernel medians."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "Total Time (ns)" in line), None)
    if start is None:
        return {}, {}
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    launches, total_ns = 0.0, 0.0
    for i, row in enumerate(rows):
        try:
            instances = float(row["Instances"].replace(",", ""))
            total = float(row["Total Time (ns)"].replace(",", ""))
            median = float(row["Med (ns)"].replace(",", ""))
        except (KeyError, ValueError):
            continue
        launches += instances
        total_ns += total
        metrics[f"nsys.k{i}.launches"] = instances
        metrics[f"nsys.k{i}.median_us"] = median / 1e3
        tags[f"nsys.k{i}.name"] = row.get("Name", "")[:500]
    if launches:
        metrics["nsys.kernel_launches"] = launches
        metrics["nsys.kernel_time_us"] = total_ns / 1e3
    return metrics, tags
