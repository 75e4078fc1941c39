"""What every section of findings.md reads: the inputs, the source line of a device, its problems."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import analytics
from orchestrator.analytics import PathPair
from orchestrator.report import analysis
from orchestrator.report.findings.format import clip, short
from orchestrator.report.findings.goals import Goals
from orchestrator.report.load import Dataset, Row

MAX_LISTED = 12  # wrong/failed records listed per device and question


@dataclass
class Inputs:
    """What the findings are written from: the dataset, its tables, the figures and the command."""

    dataset: Dataset
    command: str
    speed: list[dict[str, Any]]
    fusion: list[dict[str, Any]]
    ncu: list[dict[str, Any]]
    figures: Mapping[str, Mapping[str, Path]]  # device -> figure kind -> path (relative to findings.md)
    files: Sequence[str] = ()
    pointwise: Sequence[Mapping[str, Any]] = ()  # analysis.pointwise_table
    goals: Goals | None = None  # what question 4 checks; None: conf/report/goals.yaml
    peers: Sequence[Mapping[str, Any]] = ()  # analysis.peer_table: the best Halide against every peer
    cache: Sequence[Mapping[str, Any]] = ()  # conditions.cache_table: warm against cold
    paths: Sequence[PathPair[Row]] = ()  # conditions.path_pairs: one measurement via Ray and the worker CLI
    set_aside: Sequence[Row] = ()  # cold-cache rows left out of the questions (conditions.split_cold)
    title: str = ""  # a line under the heading (a published report's title, conf/reports.yaml)
    stamp: bool = True  # name the time it was generated (False: a published report, the same every run)


def source_line(inp: Inputs, device: str) -> str:
    """The italic line under a device heading: experiment, device, parent runs or bundles, command."""
    rows = [r for r in inp.dataset.rows if r["device_key"] == device]
    parents = sorted({short(r.get("parent_run_id")) for r in rows if r.get("parent_run_id")})
    sources = sorted({str(r["source"]) for r in rows if r.get("source")})
    if parents:
        where = "parent run(s) " + ", ".join(f"`{p}`" for p in parents)
    elif sources:
        where = "bundle(s) " + ", ".join(f"`{b}`" for b in sources)
    else:
        where = inp.dataset.origin
    return f"*Source: experiment `{inp.dataset.experiment}`, device `{device}`, {where}; `{inp.command}`.*"


def problems(rows: Sequence[Row], device: str, framework: str) -> str:
    """The wrong or failed records of one framework on one device, named with their one-line errors."""
    bad = [r for r in analysis.problems(rows, framework) if r["device_key"] == device]
    if not bad:
        return ""
    lines = [
        f"{len(bad)} {analytics.framework_label(framework)} record(s) on `{device}` are wrong or failed "
        "(no time):"
    ]
    for r in bad[:MAX_LISTED]:
        lines.append(f"- `{r['variant']}` on `{r['shape_key']}`: {r['status']}: `{clip(r.get('error', ''))}`")
    if len(bad) > MAX_LISTED:
        lines.append(f"- ... and {len(bad) - MAX_LISTED} more (records.csv).")
    return "\n".join(lines)
