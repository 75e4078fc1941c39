"""Question 4, can we do better: the room left under the roofline, faster implementations in the records,
searched schedules against hand-written ones, and the stated goals (conf/report/goals.yaml)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import analytics
from orchestrator.report import analysis
from orchestrator.report.findings.common import Inputs, source_line
from orchestrator.report.findings.format import fp, ft, fx, md_table, of_shapes, value_range
from orchestrator.report.findings.goals import Goal, load_goals
from orchestrator.report.load import REPO_ROOT, Row, device_facts, ok_rows


def section(inp: Inputs) -> str:
    """## 4: per device, the room under the roofline, faster peers, searched schedules and the goals."""
    rows = inp.dataset.rows
    out = ["## 4. Can we do better?"]
    for device in analysis.devices(rows):
        entries = [e for e in inp.speed if e["device"] == device]
        facts = device_facts(rows, device)
        out.append(f"### `{device}` ({facts['model']})\n\n{source_line(inp, device)}")
        if not entries:
            out.append(f"Missing: no ok Halide record on `{device}`.")
            continue
        lines = []
        hr = [e["halide_pct_roofline"] for e in entries if e["halide_pct_roofline"] is not None]
        if hr:
            gap = analytics.geomean(e["halide_ms"] / e["floor_ms"] for e in entries if e.get("floor_ms"))
            lines.append(
                f"- The best Halide schedule reaches {value_range(hr, fp)} of the roofline floor over "
                f"{len(hr)} "
                f"shape(s) (geometric mean {fp(analytics.geomean(hr))}); at the geometric mean it takes "
                f"{fx(gap)} the floor's time, which is the room left on this device by the roofline model."
            )
        else:
            lines.append(f"- Missing: no peak and bandwidth for `{device}`, so no roofline floor.")
        faster = []
        for e in entries:
            at = [r for r in rows if r["device_key"] == device and r["shape_key"] == e["shape"]]
            other = analysis.best([r for r in at if analytics.is_baseline(str(r.get("framework")))])
            if other and other["time_ms"] < e["halide_ms"]:
                faster.append((e, other))
        if faster:
            items = "; ".join(
                f"`{e['shape']}`: `{o['variant']}` {ft(o['time_ms'])}, {fx(e['halide_ms'] / o['time_ms'])} "
                "faster"
                for e, o in faster
            )
            caveat = ""
            if any(analytics.is_tf32_group(o["group"]) for _, o in faster):
                caveat = (
                    " (a TF32 variant rounds the pointwise inputs and uses tensor cores, which Halide 21 "
                    "does "
                    "not emit, so it bounds what fp32 Halide can match only loosely)"
                )
            lines.append(
                f"- A faster implementation of the same layer on the same device is in these records for "
                f"{of_shapes(len(faster), len(entries))}: {items}. On those shapes at least that time is "
                "attainable "
                f"on this device{caveat}."
            )
        else:
            lines.append(
                f"- No {_peer_names(inp, device)} variant in these records is faster than the best Halide "
                "schedule on "
                f"`{device}`; the roofline floor is the remaining reference."
            )
        above = [
            r for r in ok_rows(rows) if r["device_key"] == device and (analysis.pct_roofline(r) or 0) > 100
        ]
        if above:
            top = max(above, key=lambda r: analysis.pct_roofline(r) or 0)
            lines.append(
                f"- {len(above)} record(s) on `{device}` run faster than the roofline floor (up to "
                f"{fp(analysis.pct_roofline(top))}, `{top['variant']}` on `{top['shape_key']}`): the peak or "
                "bandwidth these records carry is below what that kernel reached (on a CPU both are measured "
                "practical ceilings, not hardware limits), so percentages near 100 there are not a hard wall."
            )
        lines.append(_search_variants(rows, device))
        lines.append(_goals(inp, device))
        out.append("\n".join(line for line in lines if line))
        out.append(_peers(inp, device))
    return "\n\n".join(p for p in out if p)


def _extra_peers(inp: Inputs, device: str) -> list[str]:
    """The baseline groups on `device` beyond question 1's (cuBLAS, torch.compile, ...)."""
    entries = [e for e in inp.peers if e["device"] == device]
    return [g for g in analysis.peer_groups(entries) if g not in analysis.BASELINES]


def _peer_names(inp: Inputs, device: str) -> str:
    """`TensorFlow or cuDNN`, with the other peer frameworks on the device: `TensorFlow, cuDNN or cuBLAS`."""
    extra = dict.fromkeys(analytics.framework_of(g) for g in _extra_peers(inp, device))
    names = [analytics.framework_label(fw) for fw in (*analysis.COMPARED, *extra)]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _peer_cell(e: Mapping[str, Any], g: str) -> str:
    """`0.67x (`variant`, 46.5 us)`, with the compile mode and compile time of a variant built in one."""
    if f"{g}_speedup" not in e:
        return "-"
    what = [f"`{e[f'{g}_variant']}`", ft(e[f"{g}_ms"])]
    if e.get(f"{g}_compile_mode"):
        what.insert(1, f"mode {e[f'{g}_compile_mode']}")
        if e.get(f"{g}_compile_s") is not None:
            what.append(f"compiled in {e[f'{g}_compile_s']:.3g} s")
    return f"{fx(e[f'{g}_speedup'])} ({', '.join(what)})"


def _peers(inp: Inputs, device: str) -> str:
    """The best Halide against the best of every peer on the device, strict fp32 and TF32 apart; only where
    peers beyond question 1's ran (there, question 1's table is already this one)."""
    if not _extra_peers(inp, device):
        return ""
    entries = [e for e in inp.peers if e["device"] == device]
    groups = analysis.peer_groups(entries)
    table = [
        [
            f"`{e['shape']}`",
            f"`{e['halide_variant']}` {ft(e['halide_ms'])}",
            *(_peer_cell(e, g) for g in groups),
        ]
        for e in entries
    ]
    lines = [
        f"The best Halide against the best variant of every peer on `{device}`, strict fp32 and TF32 apart "
        "(speedup = the peer's time / the best Halide time, above 1: Halide is faster; `peers.csv`):",
        md_table(["shape", "best Halide", *(f"vs best {analytics.label(g)}" for g in groups)], table),
    ]
    said = []
    for g in groups:
        with_g = [e for e in entries if f"{g}_speedup" in e]
        wins = sum(e[f"{g}_speedup"] > 1 for e in with_g)
        gm = analytics.geomean(e[f"{g}_speedup"] for e in with_g)
        line = (
            f"- Against the best {analytics.label(g)}: the best Halide is faster on "
            f"{of_shapes(wins, len(with_g))} (geometric-mean speedup {fx(gm)})"
        )
        modes = Counter(str(e[f"{g}_compile_mode"]) for e in with_g if e.get(f"{g}_compile_mode"))
        if modes:
            won = ", ".join(f"`{m}` on {of_shapes(n, len(with_g))}" for m, n in modes.most_common())
            times = [e[f"{g}_compile_s"] for e in with_g if e.get(f"{g}_compile_s") is not None]
            line += f"; the faster compile mode: {won}"
            if times:
                line += f"; the winning variant compiled in {value_range(times, lambda v: f'{v:.3g} s')}"
        said.append(line + ".")
    lines.append("\n".join(said))
    return "\n\n".join(lines)


def _search_variants(rows: Sequence[Row], device: str) -> str:
    """Autoscheduled and tuned Halide variants against the best hand-written schedule of the ablation."""
    mine = [r for r in rows if r["device_key"] == device and r.get("framework") == "halide"]
    others = sorted({r["variant"] for r in mine if r["variant"] not in analysis.ABLATION})
    if not others:
        return (
            "- Missing: no autoscheduled or tuned Halide record on this device (variants `halide_auto_*`, "
            "`tuned`), so searched schedules cannot be compared with the hand-written ones here."
        )
    lines = []
    for v in others:
        ratios, runs = [], 0
        for shape in analysis.shapes(mine):
            at = [r for r in mine if r["shape_key"] == shape]
            found, hand = analysis.best(at, variant=v), analysis.best(at, variant=analysis.ABLATION)
            runs += any(r["variant"] == v for r in at)
            if found and hand:
                ratios.append(hand["time_ms"] / found["time_ms"])
        bad = sum(r["variant"] == v and r["status"] in ("wrong", "failed") for r in mine)
        if ratios:
            lines.append(
                f"- `{v}`: faster than the best hand-written schedule on "
                f"{of_shapes(sum(x > 1 for x in ratios), len(ratios))}"
                f" (geometric-mean speedup {fx(analytics.geomean(ratios))})"
                + (f"; {bad} wrong or failed" if bad else "")
                + "."
            )
        else:
            lines.append(
                f"- `{v}`: {runs} record(s), none comparable with a hand-written schedule ({bad} wrong or "
                "failed)."
            )
    return "\n".join(lines)


def _goals(inp: Inputs, device: str) -> str:
    stated = inp.goals if inp.goals is not None else load_goals()
    goals = [g for g in stated.goals if device.startswith(g.device_prefix)]
    if not goals:
        return ""
    lines = [
        f"- Goals of {stated.source} for `{device}` (the goal as the issue states it; the value computed "
        "here):"
    ]
    for g in goals:
        if g.experiment and inp.dataset.experiment != g.experiment:
            lines.append(
                f"  - {g.text}: not evaluated, the goal is defined over experiment `{g.experiment}`."
            )
            continue
        lines.append(f"  - {g.text}: {_goal_value(inp, device, g)}.")
    return "\n".join(lines)


def _goal_inputs(inp: Inputs, device: str, g: Goal) -> tuple[dict[str, float], list[str]]:
    """The per-shape values a goal is computed from on `device`, and the shapes it needs that lack one."""
    entries = [e for e in inp.speed if e["device"] == device and g.batch in (None, e.get("n"))]
    names = g.shapes or experiment_shapes(g.experiment) or tuple(dict.fromkeys(e["shape"] for e in entries))
    per_shape: dict[str, float] = {}
    for e in entries:
        name = e["shape"].split("@")[0]
        if name not in names:
            continue
        if g.kind in ("speedup_geomean", "not_slower"):
            value = e.get(f"{g.baseline}_speedup")
        elif g.kind == "roofline_geomean":
            value = e["halide_pct_roofline"]
        else:
            value = e["halide_ms"]
        if value is not None:
            per_shape[name] = value
    return per_shape, [s for s in names if s not in per_shape]


def goal_number(inp: Inputs, device: str, g: Goal) -> float | None:
    """The goal's value on `device` (a geometric mean, the lowest speedup or the best time in ms), None
    without data."""
    values = list(_goal_inputs(inp, device, g)[0].values())
    if not values:
        return None
    if g.kind in ("speedup_geomean", "roofline_geomean"):
        return analytics.geomean(values) or 0.0
    return min(values)


def _goal_value(inp: Inputs, device: str, g: Goal) -> str:
    """`<value> -> met|not met`, with the shapes the goal needs and the records lack."""
    per_shape, lacking = _goal_inputs(inp, device, g)
    batch = f" at batch {g.batch}" if g.batch else ""
    missing = f"; no comparable record{batch} for {', '.join(f'`{s}`' for s in lacking)}" if lacking else ""
    value = goal_number(inp, device, g)
    if value is None:
        return f"no data{missing}"
    n = len(per_shape)
    if g.kind == "speedup_geomean":
        shown, ok = f"{fx(value)} over {n} shape(s)", value >= g.threshold
    elif g.kind == "roofline_geomean":
        shown, ok = f"{fp(value)} over {n} shape(s)", value >= g.threshold
    elif g.kind == "not_slower":
        shown, ok = f"lowest speedup {fx(value)} over {n} shape(s)", value >= g.threshold
    else:
        shown, ok = f"best Halide {ft(value)}", value <= g.threshold
    verdict = "met" if ok else "not met"
    if lacking:
        verdict += " on the shapes present only (incomplete)"
    return f"{shown} -> {verdict}{missing}"


def experiment_shapes(experiment: str) -> tuple[str, ...]:
    """The shapes an experiment's config lists (conf/experiment/<name>.yaml), or () without one."""
    path = REPO_ROOT / "conf" / "experiment" / f"{experiment}.yaml"
    if not experiment or not path.is_file():
        return ()
    from omegaconf import OmegaConf

    return tuple(str(s) for s in OmegaConf.load(path).get("shapes", []))
