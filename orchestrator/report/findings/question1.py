"""Question 1, why is Halide slow on depthwise separable layers: the best Halide against the best of each
baseline group per shape, and where it loses, how those shapes differ."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import analytics
from orchestrator.report import analysis
from orchestrator.report.findings.common import Inputs, problems, source_line
from orchestrator.report.findings.format import fp, ft, fx, md_table, num, of_shapes, short, value_range
from orchestrator.report.load import device_facts


def section(inp: Inputs) -> str:
    """## 1: per device, the best Halide against the best of each baseline group, and where it loses."""
    rows = inp.dataset.rows
    out = ["## 1. Why is Halide slow on depthwise separable layers?"]
    for device in analysis.devices(rows):
        facts = device_facts(rows, device)
        out.append(f"### `{device}` ({facts['model']})\n\n{source_line(inp, device)}")
        entries = [e for e in inp.speed if e["device"] == device]
        if not entries:
            out.append(
                f"Missing: no ok Halide record on `{device}`, so this device cannot answer the question."
            )
            out.append(problems(rows, device, "halide"))
            continue
        groups = [g for g in analysis.BASELINES if any(e.get(f"{g}_speedup") for e in entries)]
        headers = ["shape", "geometry", "bound", "best Halide", "time", "% roofline", "halide_app"]
        headers += [f"vs best {analysis.BASELINE_LABELS[g]}" for g in groups] + ["run"]
        table = []
        for e in entries:
            cells = [f"`{e['shape']}`", e["label"], e["bound"], e["halide_variant"], ft(e["halide_ms"]),
                     fp(e["halide_pct_roofline"]), ft(e["app_ms"])]  # fmt: skip
            for g in groups:
                s = e.get(f"{g}_speedup")
                cells.append(f"{fx(s)} ({e[f'{g}_variant']}, {ft(e[f'{g}_ms'])})" if s else "-")
            table.append([*cells, f"`{short(e['halide_run'])}`"])
        out.append(md_table(headers, table))
        out.append(
            "Speedup = the baseline's time / the best Halide time (above 1: Halide is faster); `bound` "
            "compares "
            "the shape's arithmetic intensity with the device's ridge point."
        )
        if not groups:
            out.append(
                f"Missing: no ok TensorFlow or cuDNN record on `{device}`: nothing to compare Halide with "
                "here."
            )
        text = []
        for g in groups:
            with_g = [e for e in entries if e.get(f"{g}_speedup")]
            wins = [e for e in with_g if e[f"{g}_speedup"] > 1]
            gm = analytics.geomean(e[f"{g}_speedup"] for e in with_g)
            app = [e for e in with_g if e.get(f"{g}_app_speedup")]
            line = (
                f"- Against the best {analysis.BASELINE_LABELS[g]} variant, the best Halide schedule is "
                "faster on "
                f"{of_shapes(len(wins), len(with_g))} (geometric-mean speedup {fx(gm)})"
            )
            if app:
                app_wins = sum(e[f"{g}_app_speedup"] > 1 for e in app)
                app_gm = analytics.geomean(e[f"{g}_app_speedup"] for e in app)
                line += (
                    "; the official app schedule (`halide_app`) is faster on "
                    f"{of_shapes(app_wins, len(app))} "
                    f"(geometric mean {fx(app_gm)})"
                )
            text.append(line + ".")
        out.append("\n".join(text))
        out.append(_losses(entries, groups, facts))
        out.append(problems(rows, device, "halide"))
    return "\n\n".join(p for p in out if p)


def _losses(entries: Sequence[Mapping[str, Any]], groups: Sequence[str], facts: Mapping[str, Any]) -> str:
    """Where the best Halide loses to a strict-fp32 baseline: how those shapes differ from the others."""
    strict = [g for g in groups if not analytics.is_tf32_group(g)]
    if not strict:
        return ""

    def rival(e: Mapping[str, Any]) -> str | None:
        """The strict-fp32 group whose best variant is fastest on this shape."""
        present = [g for g in strict if e.get(f"{g}_ms")]
        return min(present, key=lambda g: e[f"{g}_ms"]) if present else None

    compared = [e for e in entries if rival(e)]
    lost = [e for e in compared if e[f"{rival(e)}_ms"] < e["halide_ms"]]
    won = [e for e in compared if e not in lost]
    names = " or ".join(analysis.BASELINE_LABELS[g] for g in strict)
    if not lost:
        return (
            f"In these records the best Halide schedule is not slower than the best {names} variant on any "
            f"of the {len(compared)} shape(s) compared."
        )

    def ais(es: Sequence[Mapping[str, Any]]) -> str:
        return value_range([e["arithmetic_intensity"] for e in es], lambda v: f"{v:.1f}")

    compute = [e for e in lost if e["bound"] == "compute"]
    lost_names = ", ".join(f"`{e['shape']}`" for e in lost)
    line = (
        f"- Of the {len(lost)} shape(s) where it loses, {len(compute)} are compute-bound on this device "
        f"(intensity {ais(lost)} FLOP/B against a ridge point of {num(facts['ridge'], '.1f')} FLOP/B)"
    )
    if won:
        line += f"; on the {len(won)} shape(s) where it wins or ties, the intensity is {ais(won)} FLOP/B"
    lines = [f"Where Halide loses to the fastest {names} variant ({lost_names}):", line + "."]
    bpk = [e[f"{rival(e)}_pct_peak"] for e in lost if e.get(f"{rival(e)}_pct_peak") is not None]
    hpk = [e["halide_pct_peak"] for e in lost if e.get("halide_pct_peak") is not None]
    if bpk and hpk:
        broof = value_range([e[f"{rival(e)}_pct_roofline"] for e in lost], fp)
        hroof = value_range([e["halide_pct_roofline"] for e in lost], fp)
        lines.append(
            f"- On those shapes the baseline reaches {value_range(bpk, fp)} of the fp32 peak ({broof} of the "
            f"roofline floor) where the best Halide reaches {value_range(hpk, fp)} ({hroof})."
        )
    line = f"- Input channels where Halide loses: {value_range([e['c'] for e in lost if e.get('c')], str)}"
    if won:
        line += f"; where it wins or ties: {value_range([e['c'] for e in won if e.get('c')], str)}"
    lines.append(line + ".")
    lines.append(
        "- Reading: if the losses sit on compute-bound shapes where the baseline runs closer to the fp32 "
        "peak, the gap is in how efficiently the pointwise (a matrix product over channels) is computed, "
        "not in memory traffic; if they sit on memory-bound shapes, the gap is in data movement."
    )
    return "\n".join(lines)
