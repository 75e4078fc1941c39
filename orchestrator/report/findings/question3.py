"""Question 3, does fusing depthwise with pointwise make sense: the fusion ablation's times against the
bytes fusion saves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import analytics
from orchestrator.report import analysis, fusion_rule
from orchestrator.report.findings.common import Inputs, problems, source_line
from orchestrator.report.findings.format import fp, ft, fx, md_table, num, of_shapes, value_range
from orchestrator.report.load import Row, device_facts


def section(inp: Inputs) -> str:
    """## 3: per device, the fusion ablation against the bytes fusion saves."""
    rows = inp.dataset.rows
    out = ["## 3. Does fusing depthwise with pointwise make sense?"]
    if not inp.fusion:
        out.append(
            "Missing: no ok record of the ablation's Halide schedules ("
            + ", ".join(f"`{v}`" for v in analysis.ABLATION)
            + ") in this experiment."
        )
        return "\n\n".join(out)
    for device in analysis.devices(rows):
        entries = [e for e in inp.fusion if e["device"] == device]
        if not entries:
            continue
        facts = device_facts(rows, device)
        out.append(f"### `{device}` ({facts['model']})\n\n{source_line(inp, device)}")
        status = _status_lookup(rows, device)
        table = []
        for e in entries:
            cells = [f"`{e['shape']}`", e["label"], _time_or_status(e, analysis.UNFUSED, status)]
            for v in analysis.FUSED:
                cell = _time_or_status(e, v, status)
                if e.get(f"{v}_speedup"):
                    cell += f" ({fx(e[f'{v}_speedup'])})"
                cells.append(cell)
            cells += [
                f"{e['fused_bytes'] / 1e6:.3g} MB -> {e['unfused_bytes'] / 1e6:.3g} MB "
                f"(+{fp(e['extra_traffic_pct'])})",
                ft(e.get("saved_traffic_ms")),
                ft(e.get("measured_gain_ms")) if e.get("measured_gain_ms") is not None else "-",
            ]
            table.append(cells)
        out.append(md_table(
            ("shape", "geometry", "halide_unfused", *analysis.FUSED, "minimum bytes fused -> unfused",
             "DRAM time of the saved bytes", "measured gain (unfused - best fused)"), table))  # fmt: skip
        out.append(
            "In brackets: the fusion speedup, halide_unfused's time / the fused schedule's time (above 1: "
            "the "
            "fused schedule is faster). The saved bytes are the depthwise result written and read back once."
        )
        compared = [e for e in entries if e.get("fusion_speedup")]
        if not compared:
            have = (
                "halide_unfused"
                if any(e.get(f"{analysis.UNFUSED}_ms") for e in entries)
                else "a fused schedule"
            )
            out.append(
                f"Missing: on `{device}` no shape has both an ok `halide_unfused` and an ok fused schedule "
                f"(only {have} ran ok), so fusion cannot be judged here."
            )
            out.append(problems(rows, device, "halide"))
            continue
        wins = [e for e in compared if e["fusion_speedup"] > 1]
        lines = [
            "- The best fused schedule is faster than `halide_unfused` on "
            f"{of_shapes(len(wins), len(compared))} "
            f"(geometric-mean speedup {fx(analytics.geomean(e['fusion_speedup'] for e in compared))})."
        ]
        for v in analysis.FUSED:
            with_v = [e for e in compared if e.get(f"{v}_speedup")]
            if with_v:
                lines.append(
                    f"- `{v}` alone: faster on "
                    f"{of_shapes(sum(e[f'{v}_speedup'] > 1 for e in with_v), len(with_v))}, "
                    f"geometric mean {fx(analytics.geomean(e[f'{v}_speedup'] for e in with_v))}."
                )
        hi = max(compared, key=lambda e: e["fusion_speedup"])
        lo = min(compared, key=lambda e: e["fusion_speedup"])
        lines.append(
            f"- Largest fusion speedup: `{hi['shape']}` ({fx(hi['fusion_speedup'])}, `{hi['best_fused']}`); "
            f"smallest: `{lo['shape']}` ({fx(lo['fusion_speedup'])}, `{lo['best_fused']}`)."
        )
        winners = []
        for e in entries:
            times = {v: e[f"{v}_ms"] for v in analysis.ABLATION if e.get(f"{v}_ms")}
            if times:
                winners.append(f"`{e['shape']}`: `{min(times, key=times.__getitem__)}`")
        lines.append("- Fastest of the four per shape: " + "; ".join(winners) + ".")
        shares = [
            100 * e["saved_traffic_ms"] / e[f"{analysis.UNFUSED}_ms"]
            for e in compared
            if e.get("saved_traffic_ms") and e.get(f"{analysis.UNFUSED}_ms")
        ]
        lines.append(
            f"- Fusion removes {value_range([e['extra_traffic_pct'] for e in compared], fp)} of extra "
            "traffic on "
            "top of "
            f"the fused minimum; at {num(facts['mem_gbps'], ',.1f')} GB/s that traffic takes "
            f"{value_range([e.get('saved_traffic_ms') for e in compared], ft)}, which is "
            f"{value_range(shares, fp)} of "
            "`halide_unfused`'s measured time."
        )
        lines.append(
            "- Reading: where the saved traffic is a small share of the unfused time, the unfused layer is "
            "not "
            "limited by that traffic on this device, and what fusion gains or loses comes from how the fused "
            "schedule computes (recomputed depthwise values, parallelism, vector width), not from the bytes "
            "it "
            "saves; where the share is large, the bytes matter and fusion should pay if the schedule is "
            "sound."
        )
        out.append("\n".join(lines))
        out.append(problems(rows, device, "halide"))
    out.append(_rule_paragraph(rows))
    return "\n\n".join(p for p in out if p)


def _rule_paragraph(rows: Sequence[Row]) -> str:
    """The answer as a rule: how often the family's cost model picks the faster of halide_unfused and the
    best fused schedule on this report's measured pairs (`fusion_rule.score`: a pair's records timed in turns
    where it has any, else its job records), naming its misses."""
    judged = fusion_rule.score(rows)
    if not judged:
        return ""
    in_turns = any(j["source"] == fusion_rule.IN_TURNS for j in judged)
    text = (
        "**As a rule.** The family's cost model (`kernels.halide.family.cost.fusion_choice`, which "
        "`halide_tuned` also ranks its candidates by) "
        + fusion_rule.summary_line(judged, sources=in_turns)
        + " of this report"
    )
    misses = [j for j in judged if not j["agree"]]
    if misses:
        named = ", ".join(
            f"`{j['shape']}` on `{j['device']}` ({fp(100 * j['margin'])} apart)" for j in misses
        )
        text += f"; misses: {named}"
    return text + ". Over every committed bundle: `python -m orchestrator.report.fusion_rule`."


def _status_lookup(rows: Sequence[Row], device: str) -> dict[tuple[str, str], str]:
    return {(r["variant"], r["shape_key"]): r["status"] for r in rows if r["device_key"] == device}


def _time_or_status(e: Mapping[str, Any], variant: str, status: Mapping[tuple[str, str], str]) -> str:
    if e.get(f"{variant}_ms"):
        return ft(e[f"{variant}_ms"])
    s = status.get((variant, e["shape"]))
    return f"{s} (no time)" if s and s != "ok" else "not run"
