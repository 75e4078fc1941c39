"""Several GPUs of one node: how a run's jobs were spread over them, and whether they agree.

Two questions a multi-GPU sweep must answer before its numbers are trusted:
- did the GPUs work at the same time, each on its own job? From each record's `started_at` /
  `ended_at` tags and its `gpu_index`: per run, the wall time against the sum of its jobs, the most jobs
  running at once, and the number of job pairs that overlapped on one GPU (it must be 0);
- does the same job time the same on each GPU? Every pair of `ok` measurements of one job key (the
  key fixes variant, shape, device model, options and versions) is compared, split into pairs from
  different GPUs and pairs from the same GPU (a re-run): the second are the noise the first is judged by.

The rows are every record before the report keeps the newest per measurement (`Dataset.all_rows`).
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

Row = dict[str, Any]
KINDS = ("across GPUs", "same GPU, re-run")


def _span(row: Mapping[str, Any]) -> tuple[float, float] | None:
    try:
        start, end = float(row["started_at"]), float(row["ended_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (start, end) if end >= start else None


def _gpu(row: Mapping[str, Any]) -> str | None:
    """`node:gpu` for a job that ran on a GPU, None on a CPU (gpu_index `none`) or when not recorded."""
    index = str(row.get("gpu_index", "none"))
    return None if index in ("none", "", "None") else f"{row.get('node', '?')}:{index}"


def run_of(row: Mapping[str, Any]) -> str:
    """The invocation a row came from: its MLflow parent run, else its bundle."""
    return str(row.get("parent_run_id") or row.get("source") or "?")


def _peak(spans: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t opens)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def _overlapping_pairs(spans: Sequence[tuple[float, float]]) -> int:
    ordered = sorted(spans)
    return sum(1 for a, b in itertools.combinations(ordered, 2) if b[0] < a[1])


def concurrency(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per run (parent run or bundle) and device that used a GPU: the GPUs, jobs, wall time from the
    first job's start to the last one's end, the jobs' summed time, their ratio (jobs running on
    average), the most at once, and job pairs that overlapped on one GPU."""
    groups: dict[tuple[str, str], list[tuple[str, tuple[float, float]]]] = defaultdict(list)
    for r in rows:
        gpu, span = _gpu(r), _span(r)
        if gpu and span:
            groups[(run_of(r), str(r.get("device_key", r.get("device", "?"))))].append((gpu, span))
    table = []
    for (run, device), members in groups.items():
        spans = [span for _, span in members]
        per_gpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for gpu, span in members:
            per_gpu[gpu].append(span)
        wall = max(e for _, e in spans) - min(s for s, _ in spans)
        busy = sum(e - s for s, e in spans)
        table.append(
            {
                "run": run,
                "device": device,
                "gpus": ",".join(sorted(per_gpu)),
                "jobs": len(members),
                "jobs_per_gpu": ",".join(f"{g}={len(v)}" for g, v in sorted(per_gpu.items())),
                "wall_s": wall,
                "jobs_s": busy,
                "jobs_running_mean": busy / wall if wall > 0 else None,
                "jobs_running_max": _peak(spans),
                "same_gpu_overlaps": sum(_overlapping_pairs(v) for v in per_gpu.values()),
            }
        )
    return table


def agreement(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Every pair of ok measurements of one job key on GPUs: its kind (across GPUs, or the same GPU
    re-run), both times and spreads, and the relative difference (slower / faster - 1)."""
    by_key: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and (r.get("time_ms") or 0) > 0 and _gpu(r) and r.get("job_key"):
            by_key[str(r["job_key"])].append(r)
    pairs = []
    for key, members in by_key.items():
        for a, b in itertools.combinations(members, 2):
            ta, tb = float(a["time_ms"]), float(b["time_ms"])
            pairs.append(
                {
                    "job_key": key,
                    "variant": a.get("variant"),
                    "framework": a.get("framework"),
                    "shape": a.get("shape_key", a.get("shape")),
                    "kind": KINDS[0] if _gpu(a) != _gpu(b) else KINDS[1],
                    "gpu_a": _gpu(a),
                    "gpu_b": _gpu(b),
                    "time_a_ms": ta,
                    "time_b_ms": tb,
                    "spread_a": a.get("time_spread"),
                    "spread_b": b.get("time_spread"),
                    "rel_diff": max(ta, tb) / min(ta, tb) - 1,
                }
            )
    return pairs


def agreement_summary(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per kind of pair and framework (and all frameworks): pairs, median, 90th percentile and largest
    relative difference, and how many pairs differ by no more than their own interquartile spread."""
    out = []
    frameworks = sorted({str(p["framework"]) for p in pairs})
    for kind in KINDS:
        for framework in [*frameworks, "all"]:
            chosen = [p for p in pairs if p["kind"] == kind and framework in ("all", p["framework"])]
            if not chosen:
                continue
            diffs = sorted(float(p["rel_diff"]) for p in chosen)
            within = sum(
                1
                for p in chosen
                if p["rel_diff"] <= max(float(p["spread_a"] or 0), float(p["spread_b"] or 0))
            )
            out.append(
                {
                    "kind": kind,
                    "framework": framework,
                    "pairs": len(chosen),
                    "median_diff": statistics.median(diffs),
                    "p90_diff": diffs[min(len(diffs) - 1, int(0.9 * len(diffs)))],
                    "max_diff": diffs[-1],
                    "within_spread": within,
                }
            )
    return out


def used_several_gpus(rows: Sequence[Row]) -> bool:
    """True when the rows hold jobs of one device model on more than one GPU (the sections apply)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        gpu = _gpu(r)
        if gpu:
            seen[str(r.get("device_key", r.get("device")))].add(gpu)
    return any(len(g) > 1 for g in seen.values())
