"""The sections on where the records came from (Source, with the timing used) and the figures drawn."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from orchestrator.report import analysis, conditions
from orchestrator.report.findings.common import Inputs
from orchestrator.report.findings.format import md_table
from orchestrator.report.load import Row, ok_rows


def source_section(inp: Inputs) -> str:
    """## Source: where the records came from, how they were selected and timed, and the versions."""
    ds = inp.dataset
    every = [*ds.rows, *inp.set_aside]
    counts = analysis.status_counts(every)
    lines = [
        "## Source",
        "",
        f"- Records: {ds.origin}.",
        f"- Selection: {ds.selection}"
        + (f"; {ds.superseded} older run(s) of the same measurement left out." if ds.superseded else "."),
        f"- {len(every)} records: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "wrong", "failed",
                                                                                      "skipped")) + ".",
    ]  # fmt: skip
    if inp.set_aside:
        lines.append(
            f"- Cold cache: {len(inp.set_aside)} cold-cache record(s) on devices that also have warm ones "
            "are left out of the questions, which compare warm timings; section Warm and cold cache shows "
            "them."
        )
    paths = conditions.dispatch_counts(every)
    if paths:
        lines.append(
            "- Dispatch (tag `dispatch`): "
            + ", ".join(f"{n} via {p}" for p, n in sorted(paths.items(), key=lambda kv: -kv[1]))
            + "."
        )
    for tag, label in (("version.git", "code commit"), ("halide_version", "Halide"),
                       ("tensorflow_version", "TensorFlow"), ("torch_version", "PyTorch")):  # fmt: skip
        values = sorted({str(r[tag]) for r in ds.rows if r.get(tag)})
        if values:
            lines.append(f"- {label}: {', '.join(values)}.")
    lines.append(_timing_line(every))
    if ds.bundles:
        lines.append(
            "- Bundles: "
            + ", ".join(f"`{b}`" for b in ds.bundles)
            + " (written by `python -m workers run`, or exported from MLflow by"
            " `python -m orchestrator.export`; each bundle's `manifest.json` names the command that made it)."
        )
    if ds.parents:
        table = []
        for p in ds.parents:
            started = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(p.start_time / 1000)) if p.start_time else "?"
            )
            if p.source == "ingest":
                bundle = p.bundle or "BUNDLE"
                made = (
                    f"`python -m workers run JOBS --out {bundle}`; `python -m orchestrator.ingest {bundle}`"
                )
            else:
                made = (
                    f"`python -m orchestrator +experiment={ds.experiment}` (full config: its `config.yaml`)"
                )
            table.append((f"`{p.run_id}`", p.name, started, p.source, p.children, made))
        lines += [
            "",
            md_table(("parent run", "name", "started", "source", "records used", "produced by"), table),
        ]
    return "\n".join(lines)


def _timing_line(rows: Sequence[Row]) -> str:
    """How the ok records were timed: harness settings and clock, with how many records used each."""
    keys = ("warmup", "min_repeats", "max_repeats", "max_time_s", "cold_cache")
    settings = Counter(
        (", ".join(f"{k} {r.get(f'timing.{k}', '?')}" for k in keys), str(r.get("time_source", "?")))
        for r in ok_rows(rows)
    )
    if not settings:
        return "- Timing: no ok record."
    used = "; ".join(f"{s} (clock: {clock}) for {n} record(s)" for (s, clock), n in settings.most_common())
    return f"- Timing: {used}."


def figures_section(inp: Inputs) -> str:
    """## Figures: the figures drawn per device, or why there are none."""
    if not inp.figures:
        return "## Figures\n\nNo figure: no ok record to draw."
    lines = ["## Figures", ""]
    names = {"roofline": "roofline", "fusion": "fusion ablation", "speedups": "speedups against baselines"}
    for device, figs in inp.figures.items():
        for kind, path in figs.items():
            lines.append(f"- `{device}` {names.get(kind, kind)}: ![{kind} {device}]({path.as_posix()})")
    return "\n".join(lines)
