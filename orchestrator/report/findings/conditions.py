"""The sections on how the timings were taken: warm against cold cache, GPU clocks, and the same jobs
through both dispatch paths (Ray and the worker CLI). Each is left out when the records hold nothing for
it (records from before these fields were recorded), so an older report reads as it did."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator import analytics
from orchestrator.report import conditions
from orchestrator.report.findings.common import MAX_LISTED, Inputs
from orchestrator.report.findings.format import clip, fp, ft, fx, md_table, num, short, value_range
from orchestrator.report.findings.goals import load_goals
from orchestrator.report.load import Row, cache_method, is_cold


def cache_section(inp: Inputs) -> str:
    """## Warm and cold cache: per job timed both ways, the two times and their ratio."""
    if not inp.cache:
        return ""
    table = [
        [f"`{e['device']}`", f"`{e['shape']}`", f"`{e['variant']}`", ft(e["warm_ms"]), ft(e["cold_ms"]),
         fx(e["cold_over_warm"]), e["method"]]
        for e in inp.cache
    ]  # fmt: skip
    lines = [
        "## Warm and cold cache",
        "Each job below was timed twice: warm (the same inputs every call, so whatever of the layer's data "
        "fits in the L2 cache stays there) and cold, the cache emptied before every timed call (`l2_flush`: "
        "a write to a buffer at least twice the L2 size, outside the timed region) or the inputs rotated "
        "through sets larger than the last cache (`input_rotation`). Cold / warm above 1: the warm time "
        "owes that much to the cache (`cache.csv`).",
        md_table(["device", "shape", "variant", "warm", "cold", "cold / warm", "method"], table),
    ]
    per = []
    for fw in analytics.ordered({str(e["framework"]) for e in inp.cache}):
        ratios = [e["cold_over_warm"] for e in inp.cache if e["framework"] == fw]
        per.append(
            f"{analytics.framework_label(fw)} {value_range(ratios, fx)} over {len(ratios)} job(s) "
            f"(geometric mean {fx(analytics.geomean(ratios))})"
        )
    lines.append("Cold / warm by framework: " + "; ".join(per) + ".")
    if inp.set_aside:
        lines.append(
            f"The questions above compare warm timings only: {len(inp.set_aside)} cold-cache record(s) on "
            "devices that also have warm ones are shown here and in `records.csv`, not there."
        )
    return "\n\n".join(lines)


def clocks_section(rows: Sequence[Row]) -> str:
    """## GPU clocks: the throttled records named, and the GPU records whose clocks could not be read."""
    read = [r for r in rows if r.get("clock_source") == "nvml"]
    hot, blind = conditions.throttled(rows), conditions.without_clocks(rows)
    if not (read or hot or blind):
        return ""
    lines = ["## GPU clocks"]
    if hot:
        lines.append(
            f"{len(hot)} GPU record(s) throttled: during the timing a sample taken while the GPU was busy "
            "found the SM clock well below its maximum (the note says by how much), so their times are "
            "slower than the GPU runs at its full clock:"
        )
        lines.append(md_table(
            ["variant", "shape", "device", "lowest SM clock", "max SM clock", "clock event reasons", "note"],
            [[_variant(r), f"`{r['shape_key']}`", f"`{r['device_key']}`",
              _mhz(r.get("sm_clock_mhz_min")), _mhz(r.get("sm_clock_max_mhz")),
              str(r.get("clock_event_reasons") or "none reported"), clip(str(r.get("throttle_note", "")))]
             for r in hot],
        ))  # fmt: skip
    elif read:
        lows = [r["sm_clock_mhz_min"] for r in read if r.get("sm_clock_mhz_min") is not None]
        tops = [r["sm_clock_max_mhz"] for r in read if r.get("sm_clock_max_mhz") is not None]
        lowest = f": the lowest busy SM clock was {_mhz(min(lows))} of a maximum of {_mhz(max(tops))}"
        lines.append(
            f"No GPU record throttled: {len(read)} record(s) read the SM clock during their timing"
            + (lowest if lows and tops else "")
            + "."
        )
    if blind:
        lines.append(f"{len(blind)} GPU record(s) have no clock reading (`clock_source` none):")
        items = [
            f"- {_variant(r)} on `{r['shape_key']}` (`{r['device_key']}`): "
            + clip(str(r.get("clock_note", "")))
            for r in blind[:MAX_LISTED]
        ]
        if len(blind) > MAX_LISTED:
            items.append(f"- ... and {len(blind) - MAX_LISTED} more (records.csv).")
        lines.append("\n".join(items))
    return "\n\n".join(lines)


def _variant(r: Row) -> str:
    """The variant of a row, with its cache condition when it was timed cold."""
    return f"`{r['variant']}`" + (f" (cold: {cache_method(r)})" if is_cold(r) else "")


def _mhz(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MHz"


def paths_section(inp: Inputs) -> str:
    """## Same jobs, both paths: each measurement timed through Ray and through the worker CLI, their
    difference, and the stated agreement goal."""
    counts = conditions.dispatch_counts(inp.dataset.all_rows)
    if not inp.paths and not all(counts.get(p) for p in analytics.DISPATCH_PATHS):
        return ""
    ray, cli = analytics.DISPATCH_PATHS
    lines = [
        "## Same jobs, both paths",
        f"The same measurement (one job key: variant, shape, device model, options, cache condition and "
        f"versions; with the same timing settings, tolerance and seed) run through Ray (tag `dispatch` = "
        f"`{ray}`, the orchestrator's live path) and through `python -m workers run` (`{cli}`). Difference = "
        "worker-CLI time / Ray time - 1; the newest ok record of each path is used (`paths.csv`).",
    ]
    if not inp.paths:
        lines.append(
            f"Missing: {counts[ray]} record(s) came through Ray and {counts[cli]} through the worker CLI, "
            "but no measurement has an ok record through both (a job key holds the code and library "
            "versions the job was planned with: jobs planned at two commits are two measurements)."
        )
        return "\n\n".join(lines)
    table = [
        [f"`{p.variant}`", f"`{p.shape}`", f"`{p.device}`", ft(p.ray.time_ms), ft(p.cli.time_ms),
         f"{100 * p.diff:+.2f}%", _runs(p)]
        for p in inp.paths
    ]  # fmt: skip
    lines.append(
        md_table(["variant", "shape", "device", "via Ray", "via the worker CLI", "difference", "runs"], table)
    )
    every = analytics.path_agreement(inp.paths)
    counted = every.per_framework
    per = ", ".join(f"{counted[fw]} {analytics.framework_label(fw)}" for fw in analytics.ordered(counted))
    lines.append(
        f"{every.pairs} pair(s) ({per}): median absolute difference {fp(_pct(every.median_abs_diff))}, "
        f"largest {fp(_pct(every.max_abs_diff))}."
    )
    lines.append(_goal_line(inp))
    return "\n\n".join(line for line in lines if line)


def _runs(p: analytics.PathPair[Row]) -> str:
    """The two records' runs (MLflow run ids' first characters; empty from bundles)."""
    ray, cli = p.ray.item.get("run_id"), p.cli.item.get("run_id")
    return f"`{short(ray)}` / `{short(cli)}`" if ray or cli else "-"


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _goal_line(inp: Inputs) -> str:
    """The stated agreement goal (goals.yaml `dispatch`) against these pairs."""
    goal = (inp.goals if inp.goals is not None else load_goals()).dispatch
    if goal is None:
        return ""
    chosen = analytics.path_agreement(inp.paths, goal.frameworks)
    names = " and ".join(analytics.framework_label(f) for f in goal.frameworks)
    median = _pct(chosen.median_abs_diff)
    enough = chosen.pairs >= goal.min_pairs
    close = median is not None and median <= goal.max_median_diff_pct
    verdict = "met" if enough and close else "not met"
    why = []
    if not enough:
        why.append(f"{chosen.pairs} of the {goal.min_pairs} {names} pairs it needs")
    if median is not None and not close:
        why.append(f"median above {num(goal.max_median_diff_pct, 'g')}%")
    return (
        f"Goal of {goal.source}: {goal.text}. Here: {chosen.pairs} {names} pair(s), median absolute "
        f"difference {fp(median)} -> {verdict}"
        + (f" ({'; '.join(why)})" if why else "")
        + "."
        + (
            ""
            if enough
            else " A node's runs spread their pairs over several experiments: "
            "`python -m orchestrator.report.paths` counts them over every committed bundle."
        )
    )
