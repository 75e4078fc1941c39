"""The sections on the devices: each device's roofs and coverage, the same job across GPU models, and
several GPUs of one machine (`report.gpus`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orchestrator import analytics
from orchestrator.report import analysis, gpus
from orchestrator.report.findings.format import clip, fp, ft, md_table, num, short
from orchestrator.report.load import Row, device_facts, ok_rows
from orchestrator.summary import by_shape_variant_device


def devices_section(rows: Sequence[Row]) -> str:
    """## Devices: each device's roofs, hosts and ok records per framework, and what is missing."""
    table, missing = [], []
    frameworks = analysis.covered_frameworks(rows)
    labels = {fw: analytics.framework_label(fw) for fw in frameworks}
    for d in analysis.devices(rows):
        f = device_facts(rows, d)
        cov = analysis.coverage(rows, d, frameworks)
        mine = [r for r in rows if r["device_key"] == d]
        table.append((
            f"`{d}`", f["model"], f["kind"], num(f["peak_gflops"], ",.0f"), num(f["mem_gbps"], ",.1f"),
            num(f["ridge"], ".1f"), ", ".join(f["hosts"]) or "-", f"{len(ok_rows(mine))} / {len(mine)}",
            *(cov[fw]["ok"] for fw in frameworks),
        ))  # fmt: skip
        if f["peak_spread"] > 0.1:
            missing.append(
                f"- `{d}`: its records carry peaks that differ by {fp(100 * f['peak_spread'])}; the median "
                "is used."
            )
        for fw, label in labels.items():
            c = cov[fw]
            if c["ok"]:
                continue
            if not c["statuses"]:
                missing.append(f"- `{d}`: no {label} record at all.")
                continue
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(c["statuses"].items()))
            why = "; ".join(f"`{clip(e)}`" for e in c["reasons"])
            missing.append(f"- `{d}`: no ok {label} record ({statuses}{': ' + why if why else ''}).")
    text = "## Devices\n\n" + md_table(
        ("device", "model", "kind", "fp32 roof GFLOP/s", "DRAM roof GB/s", "ridge FLOP/B", "hosts",
         "ok / records", *(f"{label} ok" for label in labels.values())), table)  # fmt: skip
    text += (
        "\n\nThe roofs are the records' own (`report.roofs`): the fp32 FMA peak measured with a "
        "register-resident Halide FMA kernel on the node and the read bandwidth of the level the working set "
        "lived in (L2 / last-level cache, or DRAM), as each record's floor used them; records older than "
        "those measurements are held to the datasheet's FMA peak (TF32 variants: the TF32 tensor-core "
        "peak) and the DRAM copy they measured. SGEMM is the attainable line of the roofline figure, not a "
        "roof. The ridge point is the fp32 roof over DRAM's."
    )
    if missing:
        text += "\n\nMissing or incomplete:\n\n" + "\n".join(missing)
    return text


def across_devices(rows: Sequence[Row]) -> str:
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
        table.append([shape, variant, *shown, *(num(x, ".2f") for x in ratios)])
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


def gpus_section(rows: Sequence[Row]) -> str:
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
                    num(c["jobs_running_mean"], ".2f"),
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
