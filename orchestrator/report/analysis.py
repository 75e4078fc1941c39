"""Tables computed from rows: speedups, the fusion ablation, Nsight metrics, the pointwise kernel, status.

Pure functions over `load.Row`s (plain dicts); every table is a list of dicts, written to CSV as is
and rendered to Markdown by `findings`. Only ok rows with a positive time are read as speeds
(`load.ok_rows`). Best per group, baselines and geometric means are `orchestrator.analytics`'s, the same
the end-of-run summary and the parent run's metrics use.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator import analytics
from orchestrator.report.load import Row, device_facts, ok_rows, shape_of

# Question 1 sets the best Halide against TensorFlow and cuDNN, strict fp32 and TF32 apart: the frameworks
# a reader of this layer compares with. cuBLAS (`cublas_mm`, the pointwise as one GEMM) bounds what a
# pointwise GEMM reaches, so question 2's pointwise table sets it apart rather than counting it a baseline.
# Question 4 sets the best Halide against every peer in the records (`peer_table`: these, cuBLAS,
# torch.compile and any baseline framework registered later).
COMPARED = ("tensorflow", "cudnn")
BASELINES = analytics.groups(COMPARED)
BASELINE_LABELS = {g: analytics.label(g) for g in BASELINES}
COVERED = ("halide", *COMPARED)  # the frameworks every device's coverage names, present or not
UNFUSED = "halide_unfused"  # the depthwise result goes through memory (GPU: two kernels)
FUSED = ("halide_app", "halide_fused_tile", "halide_fused_cblock")  # depthwise computed inside the pointwise
ABLATION = (UNFUSED, *FUSED)
NCU_COLUMNS = (  # (column, metric) of the Nsight table, whole-run values
    ("kernels", "ncu.kernels"),
    ("ncu_us", "ncu.sum.duration_us"),
    ("dram_pct", "ncu.sum.dram_pct"),
    ("sm_pct", "ncu.sum.sm_pct"),
    ("occupancy_pct", "ncu.sum.occupancy_achieved_pct"),
    ("issue_active_pct", "ncu.sum.issue_active_pct"),
    ("eligible_warps", "ncu.sum.eligible_warps"),
    ("registers", "ncu.sum.registers"),
    ("smem_bytes", "ncu.sum.smem_bytes"),
    ("dram_bytes", "ncu.sum.dram_bytes"),
)


# --- helpers ----------------------------------------------------------------------------------------
def devices(rows: Sequence[Row]) -> list[str]:
    """Device keys, CPUs first, then GPUs, each in the order they first appear."""
    order = list(dict.fromkeys(r["device_key"] for r in rows))
    return sorted(order, key=lambda d: (device_facts(rows, d)["kind"] != "cpu", order.index(d)))


def shapes(rows: Sequence[Row], device: str | None = None) -> list[str]:
    """Shape keys in the order they first appear (the experiment's order), optionally on one device."""
    return list(dict.fromkeys(r["shape_key"] for r in rows if device in (None, r["device_key"])))


def best(rows: Iterable[Row], **where: Any) -> Row | None:
    """The fastest ok row matching every `key=value` in `where` (a tuple value means any of them)."""
    found = None
    for r in ok_rows(rows):
        matches = all(r.get(k) in v if isinstance(v, tuple) else r.get(k) == v for k, v in where.items())
        if matches and (found is None or r["time_ms"] < found["time_ms"]):
            found = r
    return found


def bound(row: Mapping[str, Any]) -> str:
    """memory or compute: which roof the layer sits under on its device (intensity vs ridge point)."""
    ridge, ai = row.get("ridge_flop_per_byte"), row.get("arithmetic_intensity")
    if not ridge or ai is None:
        return "?"
    return "compute" if ai >= ridge else "memory"


def pct_roofline(row: Mapping[str, Any] | None) -> float | None:
    """Roofline floor / measured time, in percent (recomputed from the cost model and the device)."""
    if row is None or not row.get("roofline_floor_ms") or not row.get("time_ms"):
        return None
    return row["roofline_floor_ms"] / row["time_ms"] * 100


# --- tables -----------------------------------------------------------------------------------------
def speedup_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per device and shape: the best Halide variant, halide_app, and the best of each baseline group,
    with speedup = baseline time / Halide time (above 1: Halide is faster)."""
    per_group = analytics.best_per_group(analytics.timed_rows(rows))
    table = []
    for device in devices(rows):
        for shape in shapes(rows, device):
            found = per_group.get((device, shape), {})
            if analytics.SUBJECT not in found:
                continue
            h = found[analytics.SUBJECT].item
            at = [r for r in rows if r["device_key"] == device and r["shape_key"] == shape]
            app = best(at, variant="halide_app")
            entry: dict[str, Any] = {
                "device": device,
                "shape": shape,
                "label": _label(h),
                "n": h.get("n"),
                "c": h.get("c"),
                "co": h.get("co"),
                "arithmetic_intensity": h.get("arithmetic_intensity"),
                "bound": bound(h),
                "floor_ms": h.get("roofline_floor_ms"),
                "halide_variant": h["variant"],
                "halide_ms": h["time_ms"],
                "halide_pct_roofline": pct_roofline(h),
                "halide_pct_peak": h.get("pct_peak"),
                "halide_run": h.get("run_id", ""),
                "app_ms": app["time_ms"] if app else None,
                "app_pct_roofline": pct_roofline(app),
            }
            for g in BASELINES:
                b = found[g].item if g in found else None
                entry[f"{g}_variant"] = b["variant"] if b else None
                entry[f"{g}_ms"] = b["time_ms"] if b else None
                entry[f"{g}_pct_roofline"] = pct_roofline(b)
                entry[f"{g}_pct_peak"] = b.get("pct_peak") if b else None
                entry[f"{g}_speedup"] = b["time_ms"] / h["time_ms"] if b else None
                entry[f"{g}_app_speedup"] = b["time_ms"] / app["time_ms"] if b and app else None
            table.append(entry)
    return table


def peer_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per device and shape: the best Halide against the best variant of every baseline group that ran
    beside it (strict fp32 and TF32 apart): the group's variant, time and speedup (its time / Halide's),
    and for a variant built in a compile mode (param `compile_mode`: torch.compile's default or
    max-autotune), that mode and its `compile_s`. Only the groups present at a shape have keys there."""
    per_group = analytics.best_per_group(analytics.timed_rows(rows))
    present = analytics.baselines_present(per_group)
    table = []
    for device in devices(rows):
        for shape in shapes(rows, device):
            found = per_group.get((device, shape), {})
            if analytics.SUBJECT not in found:
                continue
            h = found[analytics.SUBJECT].item
            entry: dict[str, Any] = {"device": device, "shape": shape, "halide_variant": h["variant"],
                                     "halide_ms": h["time_ms"]}  # fmt: skip
            for g in present:
                if g not in found:
                    continue
                b = found[g].item
                entry.update({f"{g}_variant": b["variant"], f"{g}_ms": b["time_ms"],
                              f"{g}_speedup": b["time_ms"] / h["time_ms"]})  # fmt: skip
                if b.get("compile_mode"):
                    entry.update(
                        {f"{g}_compile_mode": b["compile_mode"], f"{g}_compile_s": b.get("compile_s")}
                    )
            table.append(entry)
    return table


def peer_groups(table: Sequence[Mapping[str, Any]], device: str | None = None) -> list[str]:
    """The baseline groups of a peer table (on one device), in display order."""
    found = {k.removesuffix("_speedup") for e in table if device in (None, e["device"]) for k in e
             if k.endswith("_speedup")}  # fmt: skip
    return [g for g in analytics.ordered(found) if analytics.is_baseline(g)]


def covered_frameworks(rows: Iterable[Row]) -> list[str]:
    """COVERED, then every other baseline framework the rows hold (cuBLAS, torch.compile, ...)."""
    present = {str(r.get("framework")) for r in rows}
    extra = [fw for fw in analytics.ordered(present) if analytics.is_baseline(fw) and fw not in COVERED]
    return [*COVERED, *extra]


def fusion_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per device and shape with halide_unfused or a fused schedule ok: each one's time, its speedup
    over halide_unfused (unfused time / its time), and the bytes each must move at least."""
    table = []
    for device in devices(rows):
        for shape in shapes(rows, device):
            at = [r for r in rows if r["device_key"] == device and r["shape_key"] == shape]
            found = {v: best(at, variant=v) for v in ABLATION}
            if not any(found.values()):
                continue
            ref = next((r for r in at if r.get("min_bytes")), None)
            if ref is None:  # no geometry in these records: nothing to weigh the bytes with
                continue
            unfused = found[UNFUSED]
            entry: dict[str, Any] = {
                "device": device,
                "shape": shape,
                "label": _label(ref),
                "c": ref.get("c"),
                "co": ref.get("co"),
                "fused_bytes": ref.get("min_bytes"),
                "unfused_bytes": (ref.get("min_bytes") or 0) + (ref.get("intermediate_bytes") or 0),
                "extra_traffic_pct": 100 * ref["intermediate_bytes"] / ref["min_bytes"]
                if ref.get("min_bytes")
                else None,
            }
            bw = ref.get("mem_gbps")
            if bw:
                entry["fused_traffic_ms"] = entry["fused_bytes"] / (bw * 1e9) * 1e3
                entry["unfused_traffic_ms"] = entry["unfused_bytes"] / (bw * 1e9) * 1e3
                entry["saved_traffic_ms"] = entry["unfused_traffic_ms"] - entry["fused_traffic_ms"]
            for v, r in found.items():
                entry[f"{v}_ms"] = r["time_ms"] if r else None
                entry[f"{v}_run"] = r.get("run_id", "") if r else ""
                if v != UNFUSED:
                    entry[f"{v}_speedup"] = unfused["time_ms"] / r["time_ms"] if r and unfused else None
            fused = [(v, hit) for v in FUSED if (hit := found[v])]
            if fused:
                v, r = min(fused, key=lambda vr: vr[1]["time_ms"])
                entry["best_fused"] = v
                entry["best_fused_ms"] = r["time_ms"]
                entry["fusion_speedup"] = unfused["time_ms"] / r["time_ms"] if unfused else None
                entry["measured_gain_ms"] = unfused["time_ms"] - r["time_ms"] if unfused else None
            table.append(entry)
    return table


def ncu_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One row per ok record with Nsight Compute metrics: whole-run figures, DRAM bytes against the
    layer's minimum, and the top three warp-stall reasons with their share of stall cycles."""
    table = []
    for r in ok_rows(rows):
        if "ncu.sum.duration_us" not in r and "ncu.kernels" not in r:
            continue
        entry: dict[str, Any] = {
            "device": r["device_key"],
            "shape": r["shape_key"],
            "variant": r["variant"],
            "framework": r["framework"],
            "time_ms": r["time_ms"],
            "gemm": r.get("gemm"),  # a Halide family schedule's pointwise layout (thread | warp)
        }
        for column, metric in NCU_COLUMNS:
            entry[column] = r.get(metric)
        if entry["dram_bytes"] and r.get("min_bytes"):
            entry["dram_vs_min_bytes"] = entry["dram_bytes"] / r["min_bytes"]
        durations = {
            int(k.split(".")[1][1:]): v
            for k, v in r.items()
            if k.startswith("ncu.k") and k.endswith(".duration_us") and k.split(".")[1][1:].isdigit()
        }
        if durations and sum(durations.values()) > 0:
            i = max(durations, key=lambda k: durations[k])
            entry["longest_kernel"] = str(r.get(f"ncu.k{i}.name", f"k{i}"))
            entry["longest_kernel_share"] = durations[i] / sum(durations.values())
        for j in (1, 2, 3):
            entry[f"stall{j}"] = r.get(f"ncu.stall{j}.reason")
            entry[f"stall{j}_share"] = r.get(f"ncu.stall{j}.share")
        entry["run"] = r.get("run_id", "")
        table.append(entry)
    order = {d: i for i, d in enumerate(devices(rows))}
    return sorted(table, key=lambda e: (order.get(e["device"], 0), e["shape"], e["time_ms"]))


# The kernels of a launch that hold the pointwise product: cuBLAS/CUTLASS GEMMs and the reduction of a
# split-K GEMM's parts, cuDNN's implicit GEMM (`xmma_fprop`), Halide's output kernel (which also computes
# the depthwise when the schedule fuses it) and its pointwise kernels where the product has its own (a
# split reduction's partial sums, an autoscheduler's update stage).
POINTWISE_KERNEL = re.compile(r"gemm|splitKreduce|_kernel_output|_kernel_pointwise")
# Whose pointwise kernels the table sets side by side: the best Halide, the best strict-fp32 cuDNN, and
# the same layer with its pointwise as one cuBLAS SGEMM (`cublas_mm`).
POINTWISE_GROUPS = (("halide", "halide"), ("cudnn", "cudnn"), ("cublas", "cublas"))


def kernel_times(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's `kernel_times` tag (kernel name -> median ms per launch, CUPTI), {} when absent."""
    try:
        times = json.loads(str(row.get("kernel_times") or "{}"))
    except ValueError:
        return {}
    return {str(k): float(v) for k, v in times.items()} if isinstance(times, dict) else {}


def pointwise_kernel(row: Mapping[str, Any]) -> tuple[str, float, bool] | None:
    """(names, ms, alone) of the kernels that hold the row's pointwise product: their names, longest first
    and joined by ` + `, and their times added (a split reduction's parts and their sum are one product);
    `alone` is False when they are all the launch's kernels, so they also hold the depthwise (a fused
    Halide schedule). None without kernel times."""
    times = kernel_times(row)
    matches = {k: v for k, v in times.items() if POINTWISE_KERNEL.search(k)}
    if not matches:
        return None
    names = sorted(matches, key=lambda k: -matches[k])
    return " + ".join(names), sum(matches.values()), len(times) > len(matches)


def pointwise_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per GPU and shape: the pointwise kernel of the best Halide, best strict-fp32 cuDNN and `cublas_mm`
    records (CUPTI kernel times), with the GFLOP/s of the pointwise product (2 n ho wo c co) in it and its
    share of the device's fp32 roof, and the best Halide's kernel time over cuBLAS's."""
    table = []
    for device in devices(rows):
        if device_facts(rows, device)["kind"] != "cuda":
            continue
        for shape in shapes(rows, device):
            at = [r for r in rows if r["device_key"] == device and r["shape_key"] == shape]
            entry: dict[str, Any] = {"device": device, "shape": shape}
            timed = [(r, k) for r in at if (k := pointwise_kernel(r))]  # each tag parsed once
            for prefix, group in POINTWISE_GROUPS:
                r = best([r for r, _ in timed], group=group)
                if r is None:
                    continue
                geometry = shape_of(r)
                name, ms, alone = next(k for q, k in timed if q is r)
                flops = (
                    2 * geometry.n * geometry.ho * geometry.wo * geometry.c * geometry.co
                    if geometry
                    else None
                )
                gflops = flops / (ms * 1e6) if flops and ms > 0 else None
                roof = r.get("peak_gflops")
                entry.update({
                    f"{prefix}_variant": r["variant"],
                    f"{prefix}_ms": r["time_ms"],
                    f"{prefix}_kernel": name,
                    f"{prefix}_kernel_ms": ms,
                    f"{prefix}_kernel_alone": alone,
                    f"{prefix}_kernel_gflops": gflops,
                    f"{prefix}_kernel_pct_roof": 100 * gflops / roof if gflops and roof else None,
                })  # fmt: skip
            if "halide_kernel_ms" in entry and "cublas_kernel_ms" in entry:
                entry["halide_over_cublas"] = entry["halide_kernel_ms"] / entry["cublas_kernel_ms"]
            if len(entry) > 2:
                table.append(entry)
    return table


def status_counts(rows: Iterable[Row]) -> Counter[str]:
    """How many rows have each status."""
    return Counter(r.get("status", "failed") for r in rows)


def problems(rows: Iterable[Row], framework: str | None = None) -> list[Row]:
    """Rows that are wrong or failed (not skipped), optionally of one framework."""
    return [
        r for r in rows if r.get("status") in ("wrong", "failed") and framework in (None, r.get("framework"))
    ]


def coverage(
    rows: Sequence[Row], device: str, frameworks: Sequence[str] = COVERED
) -> dict[str, dict[str, Any]]:
    """framework → {ok: count, statuses: Counter, reasons: first distinct errors} on one device."""
    out: dict[str, dict[str, Any]] = {}
    mine = [r for r in rows if r["device_key"] == device]
    for fw in frameworks:
        of = [r for r in mine if r.get("framework") == fw]
        reasons = list(dict.fromkeys(r["error"] for r in of if r.get("status") != "ok" and r.get("error")))
        out[fw] = {"ok": len(ok_rows(of)), "statuses": status_counts(of), "reasons": reasons[:3]}
    return out


def roofline_points(rows: Sequence[Row], device: str) -> list[dict[str, Any]]:
    """(variant, framework, shape, intensity, GFLOP/s) of every ok row on one device."""
    return [
        {
            "variant": r["variant"],
            "framework": r["framework"],
            "shape": r["shape_key"],
            "arithmetic_intensity": r["arithmetic_intensity"],
            "gflops": r["flops"] / (r["time_ms"] * 1e-3) / 1e9,
        }
        for r in ok_rows(rows)
        if r["device_key"] == device and r.get("flops") and r.get("arithmetic_intensity")
    ]


def _label(r: Mapping[str, Any]) -> str:
    """`4x112x112x32->16 s1`: the shape's geometry."""
    return f"{r.get('n')}x{r.get('h')}x{r.get('w')}x{r.get('c')}->{r.get('co')} s{r.get('stride')}"


# --- files ------------------------------------------------------------------------------------------
RECORD_COLUMNS = (
    "experiment", "device_key", "device", "device_model", "shape_key", "shape", "n", "h", "w", "c", "co",
    "stride", "variant", "framework", "group", "status", "error", "time_ms", "time_min_ms", "call_ms",
    "gflops", "gbps", "pct_peak", "pct_roofline", "roofline_floor_ms", "arithmetic_intensity", "flops",
    "min_bytes", "intermediate_bytes", "peak_gflops", "mem_gbps", "rel_error", "compile_s", "target",
    "compile_mode", "timing.cold_cache_method", "throttled", "dispatch", "run_id", "parent_run_id", "job_key",
    "source",
)  # fmt: skip


def write_csv(path: Path, table: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> Path:
    """`table` as CSV: the `first` columns that occur, then every other key, sorted."""
    keys = set().union(*(t.keys() for t in table)) if table else set(first)
    columns = [c for c in first if c in keys] + sorted(keys - set(first))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for t in table:
            writer.writerow({c: _cell(t.get(c)) for c in columns})
    return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value
