"""findings.md: the four questions answered from the records, in prose templates filled with computed numbers.

Nothing here is typed in except the wording and the stated reading rules: every figure is computed from
the rows and tables handed in, and a question the data cannot answer says exactly what is missing.
Judgements are phrased as conditions on the numbers ("faster on 3 of 5 shapes"), never as verdicts
that the data does not carry. The only constants are the issue's stated goals (GOALS), printed as goals.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.report import analysis, gpus
from orchestrator.report.load import (
    BASELINE_LABELS,
    BASELINES,
    REPO_ROOT,
    Dataset,
    Row,
    device_facts,
    ok_rows,
)
from orchestrator.summary import by_shape_variant_device

FRAMEWORK_LABELS = {"halide": "Halide", "tensorflow": "TensorFlow", "cudnn": "cuDNN"}
LIMITER_PCT = 60.0  # reading rule of question 2: a unit at or above this % of its peak is the limiter
MAX_LISTED = 12  # wrong/failed records listed per device and question


@dataclass(frozen=True)
class Goal:
    """A target stated in issue #6, checked where the records cover it."""

    device_prefix: str  # device keys starting with this (cpu, h100)
    text: str
    kind: str  # speedup_geomean | roofline_geomean | not_slower | max_time_ms
    threshold: float
    baseline: str = ""  # baseline group for speedups
    shapes: tuple[str, ...] = ()  # shape names it is defined on (empty: every shape)
    batch: int | None = None  # the batch it is defined at (None: any)
    experiment: str = ""  # the experiment it is defined over ("" any)


MBV1_FIVE = ("mbv1_112_32_s1", "mbv1_56_128_s1", "mbv1_28_256_s1", "mbv1_14_512_s1", "mbv1_7_1024_s1")
MEMORY_BOUND_TWO = ("mbv1_112_32_s1", "mbv1_56_128_s1")
GOALS = (  # issue #6, "Goals"
    Goal("h100", "geomean speedup of the best Halide over cuDNN strict fp32 >= 2.0 (five blocks, batch 32)",
         "speedup_geomean", 2.0, "cudnn", MBV1_FIVE, 32),
    Goal("h100", "geomean % of roofline of the best Halide >= 70 (five blocks, batch 32)", "roofline_geomean",
         70.0, "", MBV1_FIVE, 32),
    Goal("h100", "best Halide no slower than cuDNN TF32 on the 112² and 56² blocks (batch 32)", "not_slower",
         1.0, "cudnn_tf32", MEMORY_BOUND_TWO, 32),
    Goal("h100", "Halide kernel time at the app shape (N=4) <= 8 us", "max_time_ms", 0.008, "", ("app",), 4),
    Goal("cpu", "geomean speedup of the best Halide over the best TensorFlow >= 2.5", "speedup_geomean", 2.5,
         "tensorflow", experiment="fusion_ablation"),
)  # fmt: skip


# --- formatting -----------------------------------------------------------------------------------
def ft(ms: float | None) -> str:
    """A time: `812 us` under a millisecond, `1.23 ms` above."""
    if ms is None:
        return "-"
    return f"{ms * 1e3:.3g} us" if ms < 1 else f"{ms:.3g} ms"


def fx(ratio: float | None) -> str:
    """A ratio: `2.43x`."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def fp(pct: float | None) -> str:
    """A percentage: `41.2%`."""
    return "-" if pct is None else f"{pct:.1f}%"


def short(run_id: str | None) -> str:
    """The first 8 characters of a run id (records.csv has the whole one)."""
    return (run_id or "")[:8] or "-"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _range(values: Sequence[float], fmt: Any) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)} to {fmt(hi)}"


def _of(count: int, total: int) -> str:
    return f"{count} of {total} shape{'s' if total != 1 else ''}"


# --- the document ---------------------------------------------------------------------------------
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


def findings_text(inp: Inputs) -> str:
    """The whole findings.md."""
    ds = inp.dataset
    parts = [
        f"# Findings: {ds.experiment}",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} by `{inp.command}`. Every number below is "
        "computed from the records of this report (all of them in `records.csv`); none is typed in, except "
        "the issue's goals, quoted as goals in question 4. Speeds come only from records with status `ok`: "
        "`wrong` and `failed` records are counted and named, never quoted as times. Times are the medians "
        "the harness measured (the Timing line below says with which clock).",
        _source(inp),
        _devices(ds.rows),
        _figures(inp),
        _question1(inp),
        _question2(inp),
        _question3(inp),
        _question4(inp),
        _across_devices(ds.rows),
        _gpus_section(inp.dataset.all_rows),
    ]
    if inp.files:
        parts.append("## Files\n\n" + "\n".join(f"- `{f}`" for f in inp.files))
    return "\n\n".join(p.strip() for p in parts if p) + "\n"


def _across_devices(rows: Sequence[Row]) -> str:
    """Per shape and variant, the time on each GPU model the rows hold and the ratio to the first."""
    gpu_devices = [d for d in analysis.devices(rows) if device_facts(rows, d)["kind"] == "cuda"]
    if len(gpu_devices) < 2:
        return ""
    gpu_rows = [r for r in ok_rows(rows) if r["device_key"] in gpu_devices]
    _, cells = by_shape_variant_device(gpu_rows, lambda r: (r["shape_key"], r["variant"], r["device_key"]))
    # halide_tuned cells that any of their rows says were served by the family's heuristic, not the db
    heuristic = {
        (r["shape_key"], r["variant"], r["device_key"])
        for r in gpu_rows
        if r.get("schedule_source") == "heuristic"
    }
    first, others = gpu_devices[0], gpu_devices[1:]
    table = []
    for (shape, variant), by_device in sorted(cells.items()):
        times = {d: float(r["time_ms"]) for d, r in by_device.items()}
        ratios = [times[d] / times[first] if d in times and first in times else None for d in others]
        shown = [ft(times.get(d)) + (" (h)" if (shape, variant, d) in heuristic else "") for d in gpu_devices]
        table.append([shape, variant, *shown, *(_num(x, ".2f") for x in ratios)])
    note = (
        " (h): `halide_tuned` found no tuning-database entry for that GPU model and used the family's "
        "heuristic, so its ratio compares two different schedules."
        if heuristic
        else ""
    )
    return (
        "## Across GPU models\n\n"
        f"Time of each ok job on each GPU model and its ratio to `{first}` (below 1: faster).{note}\n\n"
        + md_table(["shape", "variant", *gpu_devices, *(f"{d} / {first}" for d in others)], table)
    )


def _run_label(run: str) -> str:
    """A parent run id's first 8 characters; a bundle path's last two parts."""
    if "/" in run:
        return "/".join(Path(run).parts[-2:])
    return short(run)


def _gpus_section(rows: Sequence[Row]) -> str:
    """Several GPUs of one node: did they work at once, one job each, and do they agree (gpus.py)."""
    if not gpus.used_several_gpus(rows):
        return ""
    runs = gpus.concurrency(rows)
    parts = [
        "## Several GPUs of one machine",
        "Each record names the node and GPU it ran on (`node`, `gpu_index`) and when it started and ended. "
        "Per run: the wall time from its first job's start to its last job's end against the sum of its "
        "jobs' times (their ratio is the number of jobs running on average), the most jobs running at "
        "once, and job pairs that overlapped on one GPU (`gpus_concurrency.csv`).",
        md_table(
            [
                "run",
                "device",
                "jobs per GPU",
                "wall",
                "sum of jobs",
                "running on average",
                "most at once",
                "overlaps on one GPU",
            ],
            [
                [
                    _run_label(c["run"]),
                    c["device"],
                    c["jobs_per_gpu"],
                    f"{c['wall_s']:.1f} s",
                    f"{c['jobs_s']:.1f} s",
                    _num(c["jobs_running_mean"], ".2f"),
                    c["jobs_running_max"],
                    c["same_gpu_overlaps"],
                ]
                for c in runs
            ],
        ),
    ]
    pairs = gpus.agreement(rows)
    summary = gpus.agreement_summary(pairs)
    if not summary:
        parts.append("No job was measured on more than one GPU, so the GPUs' agreement cannot be judged.")
        return "\n\n".join(parts)
    parts.append(
        "The same job (one job key: variant, shape, device model, options and versions) measured more than "
        "once: each pair of `ok` medians, from two different GPUs or from one GPU twice (a re-run, the "
        "noise the first kind is judged by). Difference = slower / faster - 1; *within spread* counts pairs "
        "whose difference is no larger than the larger of their two interquartile spreads "
        "(`gpus_agreement.csv` lists every pair)."
    )
    parts.append(
        md_table(
            ["pairs", "framework", "n", "median diff", "90th pct", "largest", "within spread"],
            [
                [
                    s["kind"],
                    s["framework"],
                    s["pairs"],
                    fp(100 * s["median_diff"]),
                    fp(100 * s["p90_diff"]),
                    fp(100 * s["max_diff"]),
                    f"{s['within_spread']} of {s['pairs']}",
                ]
                for s in summary
            ],
        )
    )
    across = sorted((p for p in pairs if p["kind"] == gpus.KINDS[0]), key=lambda p: -p["rel_diff"])[:3]
    if across:
        parts.append(
            "Largest differences across GPUs: "
            + "; ".join(
                f"{p['variant']} on {p['shape']}, {ft(p['time_a_ms'])} ({p['gpu_a']}) against "
                f"{ft(p['time_b_ms'])} ({p['gpu_b']})"
                for p in across
            )
            + "."
        )
    return "\n\n".join(parts)


def _source_line(inp: Inputs, device: str) -> str:
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


def _source(inp: Inputs) -> str:
    ds = inp.dataset
    counts = analysis.status_counts(ds.rows)
    lines = [
        "## Source",
        "",
        f"- Records: {ds.origin}.",
        f"- Selection: {ds.selection}"
        + (f"; {ds.superseded} older run(s) of the same measurement left out." if ds.superseded else "."),
        f"- {len(ds.rows)} records: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "wrong", "failed",
                                                                                        "skipped")) + ".",
    ]  # fmt: skip
    for tag, label in (("version.git", "code commit"), ("halide_version", "Halide"),
                       ("tensorflow_version", "TensorFlow"), ("torch_version", "PyTorch")):  # fmt: skip
        values = sorted({str(r[tag]) for r in ds.rows if r.get(tag)})
        if values:
            lines.append(f"- {label}: {', '.join(values)}.")
    lines.append(_timing_line(ds.rows))
    if ds.bundles:
        lines.append(
            "- Bundles: "
            + ", ".join(f"`{b}`" for b in ds.bundles)
            + " (each made by `python -m workers run`)."
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


def _devices(rows: Sequence[Row]) -> str:
    table, missing = [], []
    for d in analysis.devices(rows):
        f = device_facts(rows, d)
        cov = analysis.coverage(rows, d)
        mine = [r for r in rows if r["device_key"] == d]
        table.append((
            f"`{d}`", f["model"], f["kind"], _num(f["peak_gflops"], ",.0f"), _num(f["mem_gbps"], ",.1f"),
            _num(f["ridge"], ".1f"), ", ".join(f["hosts"]) or "-", f"{len(ok_rows(mine))} / {len(mine)}",
            *(cov[fw]["ok"] for fw in FRAMEWORK_LABELS),
        ))  # fmt: skip
        if f["peak_spread"] > 0.1:
            missing.append(
                f"- `{d}`: its records carry peaks that differ by {fp(100 * f['peak_spread'])}; the median "
                "is used."
            )
        for fw, label in FRAMEWORK_LABELS.items():
            c = cov[fw]
            if c["ok"]:
                continue
            if not c["statuses"]:
                missing.append(f"- `{d}`: no {label} record at all.")
                continue
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(c["statuses"].items()))
            why = "; ".join(f"`{_clip(e)}`" for e in c["reasons"])
            missing.append(f"- `{d}`: no ok {label} record ({statuses}{': ' + why if why else ''}).")
    text = "## Devices\n\n" + md_table(
        ("device", "model", "kind", "fp32 roof GFLOP/s", "DRAM roof GB/s", "ridge FLOP/B", "hosts",
         "ok / records", "Halide ok", "TensorFlow ok", "cuDNN ok"), table)  # fmt: skip
    text += (
        "\n\nThe roofs are the records' own: the ceilings measured on the node where recorded "
        "(`roof_gflops`, `roof_gbps`: SGEMM with TF32 off and a device-to-device copy on a GPU), else "
        "`peak_gflops`, `mem_gbps` (the catalog's datasheet rates for a GPU, measured on the host for a "
        "CPU); the ridge point is their ratio."
    )
    if missing:
        text += "\n\nMissing or incomplete:\n\n" + "\n".join(missing)
    return text


def _figures(inp: Inputs) -> str:
    if not inp.figures:
        return "## Figures\n\nNo figure: no ok record to draw."
    lines = ["## Figures", ""]
    names = {"roofline": "roofline", "fusion": "fusion ablation", "speedups": "speedups against baselines"}
    for device, figs in inp.figures.items():
        for kind, path in figs.items():
            lines.append(f"- `{device}` {names.get(kind, kind)}: ![{kind} {device}]({path.as_posix()})")
    return "\n".join(lines)


# --- question 1 -----------------------------------------------------------------------------------
def _question1(inp: Inputs) -> str:
    rows = inp.dataset.rows
    out = ["## 1. Why is Halide slow on depthwise separable layers?"]
    for device in analysis.devices(rows):
        facts = device_facts(rows, device)
        out.append(f"### `{device}` ({facts['model']})\n\n{_source_line(inp, device)}")
        entries = [e for e in inp.speed if e["device"] == device]
        if not entries:
            out.append(
                f"Missing: no ok Halide record on `{device}`, so this device cannot answer the question."
            )
            out.append(_problems(rows, device, "halide"))
            continue
        groups = [g for g in BASELINES if any(e.get(f"{g}_speedup") for e in entries)]
        headers = ["shape", "geometry", "bound", "best Halide", "time", "% roofline", "halide_app"]
        headers += [f"vs best {BASELINE_LABELS[g]}" for g in groups] + ["run"]
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
            gm = analysis.geomean(e[f"{g}_speedup"] for e in with_g)
            app = [e for e in with_g if e.get(f"{g}_app_speedup")]
            line = (
                f"- Against the best {BASELINE_LABELS[g]} variant, the best Halide schedule is faster on "
                f"{_of(len(wins), len(with_g))} (geometric-mean speedup {fx(gm)})"
            )
            if app:
                app_wins = sum(e[f"{g}_app_speedup"] > 1 for e in app)
                app_gm = analysis.geomean(e[f"{g}_app_speedup"] for e in app)
                line += (
                    f"; the official app schedule (`halide_app`) is faster on {_of(app_wins, len(app))} "
                    f"(geometric mean {fx(app_gm)})"
                )
            text.append(line + ".")
        out.append("\n".join(text))
        out.append(_losses(entries, groups, facts))
        out.append(_problems(rows, device, "halide"))
    return "\n\n".join(p for p in out if p)


def _losses(entries: Sequence[Mapping[str, Any]], groups: Sequence[str], facts: Mapping[str, Any]) -> str:
    """Where the best Halide loses to a strict-fp32 baseline: how those shapes differ from the others."""
    strict = [g for g in groups if not g.endswith("_tf32")]
    if not strict:
        return ""

    def rival(e: Mapping[str, Any]) -> str | None:
        """The strict-fp32 group whose best variant is fastest on this shape."""
        present = [g for g in strict if e.get(f"{g}_ms")]
        return min(present, key=lambda g: e[f"{g}_ms"]) if present else None

    compared = [e for e in entries if rival(e)]
    lost = [e for e in compared if e[f"{rival(e)}_ms"] < e["halide_ms"]]
    won = [e for e in compared if e not in lost]
    names = " or ".join(BASELINE_LABELS[g] for g in strict)
    if not lost:
        return (
            f"In these records the best Halide schedule is not slower than the best {names} variant on any "
            f"of the {len(compared)} shape(s) compared."
        )

    def ais(es: Sequence[Mapping[str, Any]]) -> str:
        return _range([e["arithmetic_intensity"] for e in es], lambda v: f"{v:.1f}")

    compute = [e for e in lost if e["bound"] == "compute"]
    lost_names = ", ".join(f"`{e['shape']}`" for e in lost)
    line = (
        f"- Of the {len(lost)} shape(s) where it loses, {len(compute)} are compute-bound on this device "
        f"(intensity {ais(lost)} FLOP/B against a ridge point of {_num(facts['ridge'], '.1f')} FLOP/B)"
    )
    if won:
        line += f"; on the {len(won)} shape(s) where it wins or ties, the intensity is {ais(won)} FLOP/B"
    lines = [f"Where Halide loses to the fastest {names} variant ({lost_names}):", line + "."]
    bpk = [e[f"{rival(e)}_pct_peak"] for e in lost if e.get(f"{rival(e)}_pct_peak") is not None]
    hpk = [e["halide_pct_peak"] for e in lost if e.get("halide_pct_peak") is not None]
    if bpk and hpk:
        broof = _range([e[f"{rival(e)}_pct_roofline"] for e in lost], fp)
        hroof = _range([e["halide_pct_roofline"] for e in lost], fp)
        lines.append(
            f"- On those shapes the baseline reaches {_range(bpk, fp)} of the fp32 peak ({broof} of the "
            f"roofline floor) where the best Halide reaches {_range(hpk, fp)} ({hroof})."
        )
    line = f"- Input channels where Halide loses: {_range([e['c'] for e in lost if e.get('c')], str)}"
    if won:
        line += f"; where it wins or ties: {_range([e['c'] for e in won if e.get('c')], str)}"
    lines.append(line + ".")
    lines.append(
        "- Reading: if the losses sit on compute-bound shapes where the baseline runs closer to the fp32 "
        "peak, the gap is in how efficiently the pointwise (a matrix product over channels) is computed, "
        "not in memory traffic; if they sit on memory-bound shapes, the gap is in data movement."
    )
    return "\n".join(lines)


def _problems(rows: Sequence[Row], device: str, framework: str) -> str:
    bad = [r for r in analysis.problems(rows, framework) if r["device_key"] == device]
    if not bad:
        return ""
    lines = [
        f"{len(bad)} {FRAMEWORK_LABELS[framework]} record(s) on `{device}` are wrong or failed (no time):"
    ]
    for r in bad[:MAX_LISTED]:
        lines.append(
            f"- `{r['variant']}` on `{r['shape_key']}`: {r['status']}: `{_clip(r.get('error', ''))}`"
        )
    if len(bad) > MAX_LISTED:
        lines.append(f"- ... and {len(bad) - MAX_LISTED} more (records.csv).")
    return "\n".join(lines)


# --- question 2 -----------------------------------------------------------------------------------
def _question2(inp: Inputs) -> str:
    rows = inp.dataset.rows
    out = ["## 2. What keeps it from higher GPU utilisation?"]
    gpus = [d for d in analysis.devices(rows) if device_facts(rows, d)["kind"] == "cuda"]
    if not gpus:
        present = ", ".join(f"`{d}`" for d in analysis.devices(rows))
        out.append(
            f"Missing: this experiment has no records from a GPU (devices present: {present}). Answering "
            "needs "
            "Halide and cuDNN records on a CUDA device, and Nsight Compute metrics (`ncu.*`, from a run with "
            "`profile=ncu`) to say which unit or stall limits the kernels."
        )
        return "\n\n".join(out)
    for device in gpus:
        facts = device_facts(rows, device)
        out.append(f"### `{device}` ({facts['model']})\n\n{_source_line(inp, device)}")
        entries = [e for e in inp.speed if e["device"] == device]
        if entries:
            hr = [e["halide_pct_roofline"] for e in entries if e["halide_pct_roofline"] is not None]
            line = (
                f"The best Halide schedule runs at {_range(hr, fp)} of the roofline floor over "
                f"{len(hr)} shape(s) (geometric mean {fp(analysis.geomean(hr))})"
            )
            cr = [e["cudnn_pct_roofline"] for e in entries if e.get("cudnn_pct_roofline") is not None]
            if cr:
                gm = fp(analysis.geomean(cr))
                line += f"; the best strict-fp32 cuDNN at {_range(cr, fp)} (geometric mean {gm})"
            out.append(line + ".")
        else:
            out.append(f"Missing: no ok Halide record on `{device}`.")
        prof = [e for e in inp.ncu if e["device"] == device]
        if not prof:
            out.append(
                f"Missing: no Nsight Compute metrics on `{device}`: rerun these jobs with `profile=ncu` "
                "for DRAM and SM throughput, occupancy, registers and warp-stall reasons."
            )
        else:
            out.append(_ncu_section(prof))
        out.append(_pointwise_section([e for e in inp.pointwise if e["device"] == device]))
        out.append(_problems(rows, device, "halide"))
    return "\n\n".join(p for p in out if p)


def _pointwise_cell(e: Mapping[str, Any], prefix: str) -> str:
    if f"{prefix}_kernel_ms" not in e:
        return "-"
    fused = "" if e[f"{prefix}_kernel_alone"] else ", with the depthwise"
    rate, share = e[f"{prefix}_kernel_gflops"], e[f"{prefix}_kernel_pct_roof"]
    what = f" ({rate / 1e3:.1f} TFLOP/s, {fp(share)}{fused})" if rate else ""
    return f"{ft(e[f'{prefix}_kernel_ms'])}{what} of {ft(e[f'{prefix}_ms'])} `{e[f'{prefix}_variant']}`"


def _pointwise_section(entries: Sequence[Mapping[str, Any]]) -> str:
    """The pointwise product's kernel alone (CUPTI kernel times): Halide's against cuDNN's and cuBLAS's."""
    if not entries:
        return ""
    table = [
        (
            f"`{e['shape']}`",
            *(_pointwise_cell(e, p) for p in ("halide", "cudnn", "cublas")),
            fx(e.get("halide_over_cublas")),
        )
        for e in entries
    ]
    text = (
        "The pointwise product's kernel alone, from the CUPTI time of each kernel of a launch "
        "(tag `kernel_times`; `pointwise.csv`): its time, the rate of the pointwise's 2 n ho wo c co "
        "FLOPs in it, and that rate's share of the fp32 roof, for the best Halide, the best strict-fp32 "
        "cuDNN, and the same layer with its pointwise as one cuBLAS SGEMM (`cublas_mm`). Halide's output "
        "kernel also holds the "
        "depthwise where the schedule fuses it, and then says so.\n\n"
        + md_table(
            [
                "shape",
                "best Halide",
                "best cuDNN (fp32)",
                "cuBLAS SGEMM (`cublas_mm`)",
                "Halide / cuBLAS kernel",
            ],
            table,
        )
    )
    alone = [e for e in entries if e.get("halide_over_cublas") and e.get("halide_kernel_alone")]
    if alone:
        ratios = [e["halide_over_cublas"] for e in alone]
        shares = [e["cublas_kernel_pct_roof"] for e in alone if e.get("cublas_kernel_pct_roof")]
        text += (
            f"\n\nWhere Halide's pointwise is a kernel of its own ({len(alone)} shape(s)), it takes "
            f"{_range(ratios, fx)} cuBLAS's SGEMM time on the same product (geometric mean "
            f"{fx(analysis.geomean(ratios))}); cuBLAS's SGEMM itself reaches {_range(shares, fp)} of the "
            "fp32 roof on these products."
        )
    return text


def _longest(e: Mapping[str, Any]) -> str:
    if not e.get("longest_kernel"):
        return "-"
    return f"`{_clip(e['longest_kernel'], 60)}` ({fp(100 * e['longest_kernel_share'])})"


def _variant(e: Mapping[str, Any]) -> str:
    """The variant of a profiled record, with the pointwise layout of a family schedule where recorded."""
    return f"`{e['variant']}`" + (f" (gemm={e['gemm']})" if e.get("gemm") else "")


def _ncu_section(prof: Sequence[Mapping[str, Any]]) -> str:
    table = []
    for e in prof:
        stalls = ", ".join(
            f"{e[f'stall{j}']} {fp(100 * e[f'stall{j}_share'])}"
            for j in (1, 2, 3)
            if e.get(f"stall{j}") and e.get(f"stall{j}_share") is not None
        )
        table.append((
            f"`{e['shape']}`", _variant(e), ft(e["time_ms"]), _num(e["ncu_us"], ".1f"),
            _num(e["kernels"], ".0f"), fp(e["dram_pct"]), fp(e["sm_pct"]), fp(e["occupancy_pct"]),
            _num(e["registers"], ".0f"), fx(e.get("dram_vs_min_bytes")), _longest(e), stalls or "-",
            f"`{short(e['run'])}`"
        ))  # fmt: skip
    lines = [
        md_table(
            (
                "shape",
                "variant",
                "time",
                "ncu kernel us",
                "kernels",
                "DRAM % peak",
                "SM % peak",
                "occupancy",
                "registers",
                "DRAM bytes / minimum",
                "longest kernel (share of kernel time)",
                "top stalls (share of stall cycles)",
                "run",
            ),
            table,
        ),
        "",
        f"Reading rule: a unit at or above {LIMITER_PCT:.0f}% of its peak throughput is read as the limiter; "
        "with both below, the kernel is read as latency-bound and its top stall reasons say on what it "
        "waits.",
    ]
    halide = [e for e in prof if e["framework"] == "halide"]
    for e in halide:
        d, s = e.get("dram_pct"), e.get("sm_pct")
        if d is None or s is None:
            continue
        if max(d, s) >= LIMITER_PCT:
            reading = "DRAM-bound" if d >= s else "SM-throughput-bound"
        else:
            reading = "latency-bound by that rule"
        line = (
            f"- {_variant(e)} on `{e['shape']}`: {_num(e['kernels'], '.0f')} kernel(s), DRAM {fp(d)} and "
            "SM "
            f"{fp(s)} of peak: {reading}"
        )
        if e.get("occupancy_pct") is not None:
            registers = _num(e["registers"], ".0f")
            line += f"; achieved occupancy {fp(e['occupancy_pct'])} with {registers} registers/thread"
        if e.get("dram_vs_min_bytes"):
            line += f"; it moved {fx(e['dram_vs_min_bytes'])} the layer's minimum bytes"
        if e.get("stall1"):
            line += f"; top stall `{e['stall1']}` ({fp(100 * e['stall1_share'])} of stall cycles)"
        lines.append(line + ".")
    for fw in ("halide", "cudnn", "tensorflow"):
        mine = [e for e in prof if e["framework"] == fw]
        if not mine:
            continue
        tops = Counter(e["stall1"] for e in mine if e.get("stall1"))
        summary = f"- {FRAMEWORK_LABELS[fw]}, {len(mine)} profiled record(s): "
        summary += f"mean DRAM {fp(_mean(mine, 'dram_pct'))}, "
        summary += f"mean SM {fp(_mean(mine, 'sm_pct'))}, mean occupancy {fp(_mean(mine, 'occupancy_pct'))}"
        if tops:
            reason, n = tops.most_common(1)[0]
            summary += f"; most frequent top stall `{reason}` ({n} of {len(mine)})"
        lines.append(summary + ".")
    if not halide:
        lines.append("Missing: no profiled Halide record on this device.")
    return "\n".join(lines)


# --- question 3 -----------------------------------------------------------------------------------
def _question3(inp: Inputs) -> str:
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
        out.append(f"### `{device}` ({facts['model']})\n\n{_source_line(inp, device)}")
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
            out.append(_problems(rows, device, "halide"))
            continue
        wins = [e for e in compared if e["fusion_speedup"] > 1]
        lines = [
            f"- The best fused schedule is faster than `halide_unfused` on {_of(len(wins), len(compared))} "
            f"(geometric-mean speedup {fx(analysis.geomean(e['fusion_speedup'] for e in compared))})."
        ]
        for v in analysis.FUSED:
            with_v = [e for e in compared if e.get(f"{v}_speedup")]
            if with_v:
                lines.append(
                    f"- `{v}` alone: faster on "
                    f"{_of(sum(e[f'{v}_speedup'] > 1 for e in with_v), len(with_v))}, "
                    f"geometric mean {fx(analysis.geomean(e[f'{v}_speedup'] for e in with_v))}."
                )
        hi = max(compared, key=lambda e: e["fusion_speedup"])
        lo = min(compared, key=lambda e: e["fusion_speedup"])
        lines.append(
            f"- Largest fusion speedup: `{hi['shape']}` ({fx(hi['fusion_speedup'])}, `{hi['best_fused']}`); "
            f"smallest: `{lo['shape']}` ({fx(lo['fusion_speedup'])}, `{lo['best_fused']}`)."
        )
        winners = []
        for e in entries:
            times = {v: e.get(f"{v}_ms") for v in analysis.ABLATION if e.get(f"{v}_ms")}
            if times:
                winners.append(f"`{e['shape']}`: `{min(times, key=times.get)}`")
        lines.append("- Fastest of the four per shape: " + "; ".join(winners) + ".")
        shares = [
            100 * e["saved_traffic_ms"] / e[f"{analysis.UNFUSED}_ms"]
            for e in compared
            if e.get("saved_traffic_ms") and e.get(f"{analysis.UNFUSED}_ms")
        ]
        lines.append(
            f"- Fusion removes {_range([e['extra_traffic_pct'] for e in compared], fp)} of extra traffic on "
            "top of "
            f"the fused minimum; at {_num(facts['mem_gbps'], ',.1f')} GB/s that traffic takes "
            f"{_range([e.get('saved_traffic_ms') for e in compared], ft)}, which is {_range(shares, fp)} of "
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
        out.append(_problems(rows, device, "halide"))
    return "\n\n".join(p for p in out if p)


def _status_lookup(rows: Sequence[Row], device: str) -> dict[tuple[str, str], str]:
    return {(r["variant"], r["shape_key"]): r["status"] for r in rows if r["device_key"] == device}


def _time_or_status(e: Mapping[str, Any], variant: str, status: Mapping[tuple[str, str], str]) -> str:
    if e.get(f"{variant}_ms"):
        return ft(e[f"{variant}_ms"])
    s = status.get((variant, e["shape"]))
    return f"{s} (no time)" if s and s != "ok" else "not run"


# --- question 4 -----------------------------------------------------------------------------------
def _question4(inp: Inputs) -> str:
    rows = inp.dataset.rows
    out = ["## 4. Can we do better?"]
    for device in analysis.devices(rows):
        entries = [e for e in inp.speed if e["device"] == device]
        facts = device_facts(rows, device)
        out.append(f"### `{device}` ({facts['model']})\n\n{_source_line(inp, device)}")
        if not entries:
            out.append(f"Missing: no ok Halide record on `{device}`.")
            continue
        lines = []
        hr = [e["halide_pct_roofline"] for e in entries if e["halide_pct_roofline"] is not None]
        if hr:
            gap = analysis.geomean(e["halide_ms"] / e["floor_ms"] for e in entries if e.get("floor_ms"))
            lines.append(
                f"- The best Halide schedule reaches {_range(hr, fp)} of the roofline floor over {len(hr)} "
                f"shape(s) (geometric mean {fp(analysis.geomean(hr))}); at the geometric mean it takes "
                f"{fx(gap)} the floor's time, which is the room left on this device by the roofline model."
            )
        else:
            lines.append(f"- Missing: no peak and bandwidth for `{device}`, so no roofline floor.")
        faster = []
        for e in entries:
            at = [r for r in rows if r["device_key"] == device and r["shape_key"] == e["shape"]]
            other = analysis.best([r for r in at if r.get("framework") not in ("halide", "numpy")])
            if other and other["time_ms"] < e["halide_ms"]:
                faster.append((e, other))
        if faster:
            items = "; ".join(
                f"`{e['shape']}`: `{o['variant']}` {ft(o['time_ms'])}, {fx(e['halide_ms'] / o['time_ms'])} "
                "faster"
                for e, o in faster
            )
            caveat = ""
            if any(o["group"].endswith("_tf32") for _, o in faster):
                caveat = (
                    " (a TF32 variant rounds the pointwise inputs and uses tensor cores, which Halide 21 "
                    "does "
                    "not emit, so it bounds what fp32 Halide can match only loosely)"
                )
            lines.append(
                f"- A faster implementation of the same layer on the same device is in these records for "
                f"{_of(len(faster), len(entries))}: {items}. On those shapes at least that time is "
                "attainable "
                f"on this device{caveat}."
            )
        else:
            lines.append(
                "- No TensorFlow or cuDNN variant in these records is faster than the best Halide schedule "
                "on "
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
    return "\n\n".join(p for p in out if p)


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
                f"{_of(sum(x > 1 for x in ratios), len(ratios))}"
                f" (geometric-mean speedup {fx(analysis.geomean(ratios))})"
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
    goals = [g for g in GOALS if device.startswith(g.device_prefix)]
    if not goals:
        return ""
    lines = [
        f"- Goals of issue #6 for `{device}` (the goal as the issue states it; the value computed here):"
    ]
    for g in goals:
        if g.experiment and inp.dataset.experiment != g.experiment:
            lines.append(
                f"  - {g.text}: not evaluated, the goal is defined over experiment `{g.experiment}`."
            )
            continue
        lines.append(f"  - {g.text}: {_goal_value(inp, device, g)}.")
    return "\n".join(lines)


def _goal_value(inp: Inputs, device: str, g: Goal) -> str:
    """`<value> -> met|not met`, with the shapes the goal needs and the records lack."""
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
    values = list(per_shape.values())
    lacking = [s for s in names if s not in per_shape]
    batch = f" at batch {g.batch}" if g.batch else ""
    missing = f"; no comparable record{batch} for {', '.join(f'`{s}`' for s in lacking)}" if lacking else ""
    if not values:
        return f"no data{missing}"
    if g.kind == "speedup_geomean":
        value = analysis.geomean(values) or 0.0
        shown, ok = f"{fx(value)} over {len(values)} shape(s)", value >= g.threshold
    elif g.kind == "roofline_geomean":
        value = analysis.geomean(values) or 0.0
        shown, ok = f"{fp(value)} over {len(values)} shape(s)", value >= g.threshold
    elif g.kind == "not_slower":
        value = min(values)
        shown, ok = f"lowest speedup {fx(value)} over {len(values)} shape(s)", value >= g.threshold
    else:
        value = min(values)
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


# --- small helpers --------------------------------------------------------------------------------
def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mean(entries: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [e[key] for e in entries if e.get(key) is not None]
    return statistics.fmean(values) if values else None


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("`", "'")
    return text if len(text) <= n else text[: n - 3] + "..."
