"""How the timings were taken, as tables over rows: warm against cold cache, GPU clocks, dispatch paths.

- Cache. A cold-cache timing (`timing.cold_cache`: the L2 flushed before every call, or inputs rotated
  through sets larger than the last cache) is another measurement than a warm one of the same job, and the
  two are not mixed in one comparison: on a device with warm records, the questions read the warm ones
  (`split_cold`), and `cache_table` sets each variant's warm and cold times side by side.
- Clocks. `throttled` names the GPU records whose SM clock fell well below its maximum during the timing;
  `without_clocks` the GPU records whose clocks could not be read (tag `clock_source` none).
- Dispatch. `path_table` holds each measurement timed both through Ray and through the worker CLI
  (`orchestrator.analytics.path_pairs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import analytics
from orchestrator.report.load import Row, cache_method, device_facts, is_cold, ok_rows


# --- cache --------------------------------------------------------------------------------------------
def split_cold(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """(rows the questions compare, cold-cache rows set aside): a device with an ok warm record keeps its
    warm rows for the comparisons; a device timed only cold keeps its cold ones."""
    warm_devices = {r["device_key"] for r in ok_rows(rows) if not is_cold(r)}
    aside = [r for r in rows if is_cold(r) and r["device_key"] in warm_devices]
    kept = [r for r in rows if not (is_cold(r) and r["device_key"] in warm_devices)]
    return kept, aside


def _job(r: Mapping[str, Any]) -> tuple[Any, ...]:
    """A job whatever its cache condition: device, shape, variant and options."""
    options = tuple(sorted((k, str(v)) for k, v in r.items() if k.startswith("option.")))
    return r["device_key"], r["shape_key"], r["variant"], options


def cache_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per job (device, shape, variant, options) with an ok warm and an ok cold record: both times, cold /
    warm, how the cache was kept cold (`l2_flush`, `input_rotation`) and the bytes that took."""
    warm: dict[tuple[Any, ...], Row] = {}
    cold: dict[tuple[Any, ...], Row] = {}
    for r in ok_rows(rows):
        (cold if is_cold(r) else warm)[_job(r)] = r
    table = []
    for job, c in cold.items():
        w = warm.get(job)
        if w is None:
            continue
        table.append({
            "device": c["device_key"], "shape": c["shape_key"], "variant": c["variant"],
            "framework": c.get("framework"), "warm_ms": w["time_ms"], "cold_ms": c["time_ms"],
            "cold_over_warm": c["time_ms"] / w["time_ms"], "method": cache_method(c),
            "cold_cache_bytes": c.get("cold_cache_bytes"), "cold_cache": c.get("cold_cache", ""),
            "warm_run": w.get("run_id", ""), "cold_run": c.get("run_id", ""),
        })  # fmt: skip
    return table


# --- clocks -------------------------------------------------------------------------------------------
def _on_gpu(rows: Sequence[Row], r: Mapping[str, Any]) -> bool:
    kind = r.get("device_kind")
    return kind == "cuda" if kind else device_facts(rows, r["device_key"])["kind"] == "cuda"


def throttled(rows: Sequence[Row]) -> list[Row]:
    """The GPU rows whose SM clock fell well below its maximum during the timing (tag `throttled`)."""
    return [r for r in rows if analytics.is_throttled(r) and _on_gpu(rows, r)]


def without_clocks(rows: Sequence[Row]) -> list[Row]:
    """The GPU rows that say their clocks could not be read (tag `clock_source` none, `clock_note` why)."""
    return [r for r in rows if r.get("clock_source") == "none" and _on_gpu(rows, r)]


# --- dispatch paths -----------------------------------------------------------------------------------
def path_pairs(rows: Sequence[Row]) -> list[analytics.PathPair[Row]]:
    """The measurements with an ok record through Ray and one through the worker CLI, among every row
    (before the newest-per-measurement rule, which keeps only one of the two), oldest first."""
    ordered = sorted(rows, key=lambda r: (r.get("start_time") is None, r.get("start_time") or 0.0))
    return analytics.path_pairs(ordered, lambda r: r)


def path_table(pairs: Sequence[analytics.PathPair[Row]]) -> list[dict[str, Any]]:
    """One entry per pair: the job, both times and the difference (worker CLI / Ray - 1, in percent)."""
    table = []
    for p in pairs:
        table.append({
            "device": p.device, "shape": p.shape, "variant": p.variant, "framework": p.framework,
            "ray_ms": p.ray.time_ms, "worker_cli_ms": p.cli.time_ms, "diff_pct": 100 * p.diff,
            "job_key": p.ray.item.get("job_key", ""), "ray_run": p.ray.item.get("run_id", ""),
            "worker_cli_run": p.cli.item.get("run_id", ""),
        })  # fmt: skip
    return table


def dispatch_counts(rows: Sequence[Row]) -> dict[str, int]:
    """How many rows came through each dispatch path (`unknown` for rows without the tag); {} when no row
    carries the tag."""
    if not any(r.get(analytics.DISPATCH_TAG) for r in rows):
        return {}
    counts: dict[str, int] = {}
    for r in rows:
        path = str(r.get(analytics.DISPATCH_TAG) or "unknown")
        counts[path] = counts.get(path, 0) + 1
    return counts
