"""Nsight Compute's raw CSV (`ncu --import R.ncu-rep --csv --page raw`) into MLflow metrics and tags.

The raw page has a header row of metric names, a row of units, then one row per profiled kernel.
Values are converted to base units using the unit row (ncu scales units per column unless told
`--print-units base`: `usecond`, `Kbyte`, `Mbyte/second`...), so output from either setting
gives the same numbers.

What comes out, for kernel position i of one run (`ncu.k<i>.*`, averaged over the profiled runs)
and for the run as a whole (`ncu.sum.*`):

    duration_us          gpu__time_duration                          summed over the run's kernels
    dram_bytes           dram__bytes_read + _write (or the DRAM rate   summed
                         times the duration, as on Hopper)
    dram_pct, sm_pct, mem_pct, occupancy_*_pct, l1/l2_hit_pct, issue_active_pct, eligible_warps
                         % of peak (warps per scheduler per cycle)   duration-weighted mean
    registers, smem_bytes  per thread / per block (static + dynamic)  the largest kernel's
    stall<j>.share       top three warp-stall reasons, share of all stall cycles (the reason is a
                         tag `...stall<j>.reason`); the run's shares weigh each kernel by duration
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# --- units ---------------------------------------------------------------------------------------
TIME_UNITS = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0}
TIME_UNITS |= {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}  # what ncu 2025 prints
PREFIXES = (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40))
PREFIXES += (("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15))
SCALED_BASES = ("byte", "cycle", "inst", "warp", "thread", "block", "sector", "request", "hz", "Hz")


class CsvFormatError(ValueError):
    """Text that is not an Nsight Compute raw-page CSV."""


def unit_scale(unit: str) -> tuple[float, str]:
    """(factor, base unit) of an ncu unit: `usecond` → (1e-6, second), `Kbyte/block` → (1e3, byte/block).

    Times become seconds, SI and binary prefixes are removed; a unit it does not know keeps factor 1.
    """
    unit = unit.strip()
    if not unit:
        return 1.0, ""
    factor, bases = 1.0, []
    for position, atom in enumerate(unit.split("/")):
        scale, base = _atom_scale(atom)
        factor = factor * scale if position == 0 else factor / scale
        bases.append(base)
    return factor, "/".join(bases)


def _atom_scale(atom: str) -> tuple[float, str]:
    if atom in TIME_UNITS:
        return TIME_UNITS[atom], "second"
    for prefix, scale in PREFIXES:
        if atom.startswith(prefix) and atom[len(prefix) :] in SCALED_BASES:
            return float(scale), atom[len(prefix) :]
    return 1.0, atom


def parse_number(text: str) -> float | None:
    """A CSV cell as a float (thousands separators dropped); None for text, `n/a` and lists."""
    cleaned = text.strip().replace(",", "")
    if not cleaned or ";" in cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --- rows ----------------------------------------------------------------------------------------
@dataclass
class KernelProfile:
    """One profiled kernel launch: its name and every numeric metric, in base units."""

    index: int  # launch order in the report (the CSV's ID column)
    name: str
    values: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # metric -> base unit
    text: dict[str, str] = field(default_factory=dict)  # the non-numeric columns (device, grid...)

    def first(self, names: Iterable[str]) -> float | None:
        """The value of the first of `names` present, or None."""
        for name in names:
            if name in self.values:
                return self.values[name]
        return None


def read_raw_csv(text: str) -> list[KernelProfile]:
    """Every kernel row of a raw-page CSV, in launch order. Lines before the header (==PROF==) are skipped."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        if not text.strip() or "No kernels were profiled" in text:
            return []
        raise CsvFormatError('no "ID" header row: not the CSV of `ncu --csv --page raw`')
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header = rows[0]
    units = [""] * len(header)
    body = rows[1:]
    if body and not body[0][0].strip():  # the units row has an empty ID
        units = body[0] + [""] * (len(header) - len(body[0]))
        body = body[1:]
    id_col = header.index("ID")
    name_col = header.index("Kernel Name") if "Kernel Name" in header else None
    kernels: list[KernelProfile] = []
    for row in body:
        if len(row) < len(header) or not row[id_col].strip():
            continue
        kernel = KernelProfile(
            index=int(parse_number(row[id_col]) or 0),
            name=row[name_col].strip() if name_col is not None else f"kernel{len(kernels)}",
        )
        for col, metric in enumerate(header):
            if col in (id_col, name_col):
                continue
            value = parse_number(row[col]) if "__" in metric else None
            if value is None:
                kernel.text[metric] = row[col]
                continue
            factor, base = unit_scale(units[col])
            kernel.values[metric] = value * factor
            kernel.units[metric] = base
        kernels.append(kernel)
    kernels.sort(key=lambda k: k.index)
    return kernels


# --- what we report ------------------------------------------------------------------------------
DURATION = ("gpu__time_duration.sum",)
DRAM_READ, DRAM_WRITE = ("dram__bytes_read.sum",), ("dram__bytes_write.sum",)
DRAM_TOTAL = ("dram__bytes.sum",)
DRAM_RATE = ("dram__bytes.sum.per_second",)  # what MemoryWorkloadAnalysis gives on Hopper
SMEM_STATIC = ("launch__shared_mem_per_block_static",)
SMEM_DYNAMIC = ("launch__shared_mem_per_block_dynamic",)
# name in our keys -> candidate ncu metrics (first present wins; Hopper's SOL names DRAM differently).
# For the whole run these are duration-weighted means over its kernels.
WEIGHTED: dict[str, tuple[str, ...]] = {
    "dram_pct": (
        "dram__throughput.avg.pct_of_peak_sustained_elapsed",
        "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    ),
    "sm_pct": ("sm__throughput.avg.pct_of_peak_sustained_elapsed",),
    "mem_pct": ("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",),
    "occupancy_achieved_pct": ("sm__warps_active.avg.pct_of_peak_sustained_active",),
    "occupancy_theoretical_pct": ("sm__maximum_warps_per_active_cycle_pct",),
    "l1_hit_pct": ("l1tex__t_sector_hit_rate.pct",),
    "l2_hit_pct": ("lts__t_sector_hit_rate.pct",),
    "issue_active_pct": ("smsp__issue_active.avg.pct_of_peak_sustained_active",),
    "eligible_warps": ("smsp__warps_eligible.avg.per_cycle_active",),  # per scheduler per cycle
}
LAUNCH: dict[str, tuple[str, ...]] = {
    "registers": ("launch__registers_per_thread",),
    "block_size": ("launch__block_size",),
    "grid_size": ("launch__grid_size",),
    "waves": ("launch__waves_per_multiprocessor",),
}
# Warp-stall breakdowns, in order of preference. WarpStateStats reports the average number of warps
# stalled for each reason per issued instruction; PC sampling (SourceCounters) counts samples.
STALL_FAMILIES = (
    re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$"),
    re.compile(r"^smsp__average_warp_latency_issue_stalled_(\w+?)\.ratio$"),
    re.compile(r"^smsp__pcsamp_warps_issue_stalled_(\w+?)(?:\.sum)?$"),
)
NOT_STALLS = ("selected",)  # a warp issuing is not stalled
TOP_STALLS = 3


def stall_breakdown(kernel: KernelProfile) -> dict[str, float]:
    """Stall reason -> warps stalled per issued instruction (or samples), from the first family present."""
    for family in STALL_FAMILIES:
        found = {}
        for metric, value in kernel.values.items():
            match = family.match(metric)
            if match and match.group(1) not in NOT_STALLS and not match.group(1).endswith("_not_issued"):
                found[match.group(1)] = value
        if any(v > 0 for v in found.values()):
            return found
    return {}


def kernel_metrics(kernel: KernelProfile) -> dict[str, float]:
    """Our named metrics of one kernel (duration_us, dram_bytes, the percents, launch figures)."""
    out: dict[str, float] = {}
    duration = kernel.first(DURATION)
    if duration is not None:
        out["duration_us"] = duration * 1e6
    dram = dram_bytes(kernel)
    if dram is not None:
        out["dram_bytes"] = dram
    for key, names in {**WEIGHTED, **LAUNCH}.items():
        value = kernel.first(names)
        if value is not None:
            out[key] = value
    static, dynamic = kernel.first(SMEM_STATIC), kernel.first(SMEM_DYNAMIC)
    if static is not None or dynamic is not None:
        out["smem_bytes"] = (static or 0.0) + (dynamic or 0.0)
    return out


def dram_bytes(kernel: KernelProfile) -> float | None:
    """Bytes moved to and from DRAM: read + write where ncu gives them, else the total, else the
    section's rate times the kernel's duration (MemoryWorkloadAnalysis on Hopper gives only the rate)."""
    read, write = kernel.first(DRAM_READ), kernel.first(DRAM_WRITE)
    if read is not None or write is not None:
        return (read or 0.0) + (write or 0.0)
    total = kernel.first(DRAM_TOTAL)
    if total is not None:
        return total
    rate, duration = kernel.first(DRAM_RATE), kernel.first(DURATION)
    if rate is not None and duration is not None:
        return rate * duration
    return None


def top_stalls(breakdown: dict[str, float], n: int = TOP_STALLS) -> list[tuple[str, float]]:
    """The `n` largest stall reasons as (reason, share of all stalls), largest first."""
    total = sum(v for v in breakdown.values() if v > 0)
    if total <= 0:
        return []
    ranked = sorted(((r, v / total) for r, v in breakdown.items() if v > 0), key=lambda rv: (-rv[1], rv[0]))
    return ranked[:n]


@dataclass
class ParsedProfile:
    """The metrics and tags of one profile; `kernels_per_run` and `runs` say how rows were grouped."""

    metrics: dict[str, float]
    tags: dict[str, str]
    kernels_per_run: int
    runs: int


def summarize(kernels: Sequence[KernelProfile], runs: int = 1, prefix: str = "ncu") -> ParsedProfile:
    """Per-kernel (`<prefix>.k<i>.*`) and whole-run (`<prefix>.sum.*`) metrics of `runs` profiled runs.

    `kernels` are the profiled launches in order; they split into `runs` equal runs (when they do
    not, they are taken as one run). Kernel position i is averaged over the runs.
    """
    if not kernels:
        return ParsedProfile({}, {}, 0, 0)
    if runs < 1 or len(kernels) % runs:
        runs = 1
    per_run = len(kernels) // runs
    metrics: dict[str, float] = {f"{prefix}.kernels": float(per_run), f"{prefix}.runs": float(runs)}
    tags: dict[str, str] = {}
    positions = []  # (metrics, stall breakdown) of each kernel position, averaged over runs
    for i in range(per_run):
        launches = [kernels[r * per_run + i] for r in range(runs)]
        averaged = _mean_dicts([kernel_metrics(k) for k in launches])
        stalls = _mean_dicts([stall_breakdown(k) for k in launches])
        positions.append((averaged, stalls))
        tags[f"{prefix}.k{i}.name"] = launches[0].name
        metrics.update({f"{prefix}.k{i}.{k}": v for k, v in averaged.items()})
        for j, (reason, share) in enumerate(top_stalls(stalls), start=1):
            metrics[f"{prefix}.k{i}.stall{j}.share"] = share
            tags[f"{prefix}.k{i}.stall{j}.reason"] = reason

    weights = [m.get("duration_us", 0.0) for m, _ in positions]
    total_time = sum(weights)
    if total_time > 0:
        metrics[f"{prefix}.sum.duration_us"] = total_time
    if any("dram_bytes" in m for m, _ in positions):
        metrics[f"{prefix}.sum.dram_bytes"] = sum(m.get("dram_bytes", 0.0) for m, _ in positions)
    for key in WEIGHTED:
        pairs = [(m[key], w) for (m, _), w in zip(positions, weights, strict=True) if key in m]
        wsum = sum(w for _, w in pairs)
        if pairs and wsum > 0:
            metrics[f"{prefix}.sum.{key}"] = sum(v * w for v, w in pairs) / wsum
    for key in ("registers", "smem_bytes"):
        values = [m[key] for m, _ in positions if key in m]
        if values:
            metrics[f"{prefix}.sum.{key}"] = max(values)
    combined: dict[str, float] = {}
    for (_, stalls), w in zip(positions, weights, strict=True):
        total = sum(v for v in stalls.values() if v > 0)
        for reason, value in stalls.items():
            if total > 0 and value > 0:
                combined[reason] = combined.get(reason, 0.0) + w * value / total
    for j, (reason, share) in enumerate(top_stalls(combined), start=1):
        metrics[f"{prefix}.stall{j}.share"] = share
        tags[f"{prefix}.stall{j}.reason"] = reason
    return ParsedProfile(metrics, tags, per_run, runs)


def keep_last_runs(
    kernels: Sequence[KernelProfile], runs: int, total_runs: int
) -> list[KernelProfile] | None:
    """The kernels of the last `runs` of `total_runs` equal runs, or None when they do not split evenly.

    Used when warm-up launches could be neither marked (NVTX) nor skipped by count: ncu profiled
    every run, and the warm-ups are dropped here.
    """
    if total_runs < 1 or not kernels or len(kernels) % total_runs:
        return None
    per_run = len(kernels) // total_runs
    return list(kernels[len(kernels) - runs * per_run :])


def _mean_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in sorted(keys)}
