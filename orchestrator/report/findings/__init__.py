"""findings.md: the four questions answered from the records, in prose templates filled with computed numbers.

Nothing here is typed in except the wording and the stated reading rules: every figure is computed from
the rows and tables handed in, and a question the data cannot answer says exactly what is missing.
Judgements are phrased as conditions on the numbers ("faster on 3 of 5 shapes"), never as verdicts
that the data does not carry. The only constants are the stated goals (conf/report/goals.yaml), printed
as goals.

One module a part of the document: `sources` (where the records came from, the figures), `devices` (each
device, the same job across GPU models, several GPUs of one machine), `question1` to `question4`,
`conditions` (warm against cold cache, GPU clocks, the same jobs through both dispatch paths), with
`goals` (the goals file, loaded and checked), `common` (the inputs, a device's source line and problems)
and `format` (times, ratios, tables).
"""

from __future__ import annotations

import time

from orchestrator.report.findings import question1, question2, question3, question4
from orchestrator.report.findings.common import Inputs
from orchestrator.report.findings.conditions import cache_section, clocks_section, paths_section
from orchestrator.report.findings.devices import across_devices, devices_section, gpus_section
from orchestrator.report.findings.sources import figures_section, source_section

__all__ = ["Inputs", "findings_text"]


def findings_text(inp: Inputs) -> str:
    """The whole findings.md."""
    ds = inp.dataset
    when = f" {time.strftime('%Y-%m-%d %H:%M %Z')}" if inp.stamp else ""
    parts = [
        f"# Findings: {ds.experiment}" + (f"\n\n**{inp.title}**" if inp.title else ""),
        f"Generated{when} by `{inp.command}`. Every number below is "
        "computed from the records of this report (all of them in `records.csv`); none is typed in, except "
        "the issue's goals, quoted as goals in question 4. Speeds come only from records with status `ok`: "
        "`wrong` and `failed` records are counted and named, never quoted as times. Times are the medians "
        "the harness measured (the Timing line below says with which clock).",
        source_section(inp),
        devices_section(ds.rows),
        figures_section(inp),
        question1.section(inp),
        question2.section(inp),
        question3.section(inp),
        question4.section(inp),
        across_devices(ds.rows),
        gpus_section(inp.dataset.all_rows),
        cache_section(inp),
        clocks_section([*ds.rows, *inp.set_aside]),
        paths_section(inp),
    ]
    if inp.files:
        parts.append("## Files\n\n" + "\n".join(f"- `{f}`" for f in inp.files))
    return "\n\n".join(p.strip() for p in parts if p) + "\n"
