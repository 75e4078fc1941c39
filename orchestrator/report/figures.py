"""The report's figures (matplotlib, Agg backend): roofline, fusion ablation and speedups, per device.

Each function draws from rows or tables of `analysis` and writes one PNG; it returns the path, or
None when the device has nothing to draw. With `draw=False` it only says which path it would write (the
check that committed reports are what the data produces compares everything but the pixels, which
depend on the matplotlib and FreeType versions). Only ok rows reach these functions as speeds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker

from orchestrator import analytics
from orchestrator.report import analysis
from orchestrator.report.load import Row, device_facts

MARKERS = {
    "halide": "o", "tensorflow": "s", "cudnn": "^", "cublas": "v", "torch_compile": "P", "triton": "D",
    "numpy": "X",
}  # fmt: skip
# A baseline framework's bar colours in the speedups figure: (strict fp32, TF32); others take SPARE_COLORS.
GROUP_COLORS = {
    "tensorflow": ("tab:orange", "moccasin"),
    "cudnn": ("tab:green", "palegreen"),
    "cublas": ("tab:blue", "lightskyblue"),
    "torch_compile": ("tab:red", "lightsalmon"),
    "triton": ("tab:purple", "plum"),
}
SPARE_COLORS = (("tab:brown", "tan"), ("tab:cyan", "paleturquoise"), ("tab:olive", "khaki"))
DPI = 130
_UNSAFE = re.compile(r"[^\w.\-]+")


def safe_name(text: str) -> str:
    """A file-name-safe form of a device or shape key."""
    return _UNSAFE.sub("_", text).strip("_") or "x"


def group_colors(groups: Sequence[str]) -> dict[str, Any]:
    """A colour per baseline group: its framework's (GROUP_COLORS), the lighter one for TF32."""
    spare = iter(SPARE_COLORS * (1 + len(groups)))
    frameworks: dict[str, tuple[str, str]] = {}
    for g in groups:
        fw = analytics.framework_of(g)
        if fw not in frameworks:
            frameworks[fw] = GROUP_COLORS.get(fw) or next(spare)
    return {g: frameworks[analytics.framework_of(g)][analytics.is_tf32_group(g)] for g in groups}


def _variant_colors(variants: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab20")
    return {v: cmap(i % 20) for i, v in enumerate(variants)}


def roofline(rows: Sequence[Row], device: str, experiment: str, out: Path, draw: bool = True) -> Path | None:
    """Log-log roofline of one device: every ok (variant, shape) a point under the roofs (`_roofs`)."""
    points = analysis.roofline_points(rows, device)
    if not points:
        return None
    if not draw:
        return out / f"roofline_{safe_name(device)}.png"
    facts = device_facts(rows, device)
    peak, bw = facts["peak_gflops"], facts["mem_gbps"]
    variants = list(dict.fromkeys(p["variant"] for p in points))
    colors = _variant_colors(variants)
    fig, ax = plt.subplots(figsize=(12, 6.5))
    ais = [p["arithmetic_intensity"] for p in points]
    lo, hi = min(ais) / 2.5, max(ais) * 2.5
    if peak and bw:
        lo, hi = min(lo, peak / bw / 4), max(hi, peak / bw * 4)
        _roofs(ax, facts, lo, hi)
    # points of one shape share an intensity: spread them a little sideways so none hides another
    spread = {v: 1.04 ** (i - (len(variants) - 1) / 2) for i, v in enumerate(variants)}
    for v in variants:
        mine = [p for p in points if p["variant"] == v]
        ax.scatter(
            [p["arithmetic_intensity"] * spread[v] for p in mine],
            [p["gflops"] for p in mine],
            marker=MARKERS.get(mine[0]["framework"], "D"),
            color=colors[v],
            edgecolor="black",
            linewidth=0.5,
            s=55,
            zorder=3,
            label=f"{v} ({mine[0]['framework']})",
        )
    ymin = min(p["gflops"] for p in points) / 3
    for ai, names in _shape_labels(points):
        ax.axvline(ai, color="grey", lw=0.6, ls=":", zorder=1)
        ax.annotate(
            ", ".join(names), (ai, ymin), rotation=90, fontsize=7, color="dimgrey", ha="right", va="bottom"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    _plain(ax.xaxis, ax.yaxis)
    ax.set_ylim(bottom=ymin / 1.5)
    ax.set_xlabel("arithmetic intensity (FLOP per byte of the fused layer's minimum traffic)")
    ax.set_ylabel("achieved GFLOP/s (median time)")
    ax.set_title(f"Roofline: {experiment} on {device} ({facts['model']})")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    title = "variant (framework)\nmarker = framework"
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=title, title_fontsize=7)
    return _save(fig, out / f"roofline_{safe_name(device)}.png")


def _roofs(ax: Any, facts: Mapping[str, Any], lo: float, hi: float) -> None:
    """The roofs: the fp32 FMA peak over the cache level's and DRAM's bandwidth (solid), the TF32 peak
    (dotted, where TF32 variants ran), and SGEMM, the attainable line that is not a roof (dashed)."""
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    peak, bw, cache = facts["peak_gflops"], facts["mem_gbps"], facts.get("cache_gbps")
    top = max(peak, facts.get("tf32_gflops") or 0)
    for rate, name, style in ((bw, "DRAM", "-"), (cache, facts.get("cache_level", "cache"), "-.")):
        if rate:
            ax.plot(xs, [min(peak, x * rate) for x in xs], color="black", lw=2 if style == "-" else 1.2,
                    ls=style, label="_roof")  # fmt: skip
            x = lo * 1.15
            ax.annotate(f"{name} {rate:,.0f} GB/s", (x, x * rate * 1.3), ha="left", va="bottom", fontsize=9)
    if top > peak:  # TF32 tensor cores: a roof of their own, over the same memory roof
        ax.plot(
            xs, [min(top, x * (cache or bw)) for x in xs], color="tab:purple", lw=1, ls=":", label="_roof"
        )
        ax.annotate(f"TF32 tensor peak {top:,.0f} GFLOP/s", (hi, top), ha="right", va="bottom", fontsize=9,
                    color="tab:purple")  # fmt: skip
    label = (facts.get("roof_compute") or "fp32 roof").split(";")[0]  # "... (datasheet; older record)"
    label += ")" * (label.count("(") - label.count(")"))
    ax.annotate(f"{label}: {peak:,.0f} GFLOP/s", (hi, peak), ha="right", va="bottom", fontsize=9)
    sgemm = facts.get("sgemm_gflops")
    if sgemm:
        ax.plot(xs, [min(sgemm, x * bw) for x in xs], color="dimgrey", lw=1, ls="--", label="_attainable")
        ax.annotate(f"SGEMM {sgemm:,.0f} GFLOP/s (attainable, not a roof)", (hi, sgemm), ha="right",
                    va="top", fontsize=8, color="dimgrey")  # fmt: skip


def _shape_labels(points: Sequence[Mapping[str, Any]]) -> list[tuple[float, list[str]]]:
    """(intensity, shape names) per vertical guide line; shapes within 3% of each other share one."""
    found = sorted({(p["arithmetic_intensity"], p["shape"]) for p in points})
    groups: list[tuple[float, list[str]]] = []
    for ai, name in found:
        if groups and ai <= groups[-1][0] * 1.03:
            groups[-1][1].append(name)
        else:
            groups.append((ai, [name]))
    return groups


def fusion(
    table: Sequence[Mapping[str, Any]], device: str, experiment: str, model: str, out: Path, draw: bool = True
) -> Path | None:
    """Fused schedules against halide_unfused per shape: times (with each traffic's DRAM floor) and bytes."""
    entries = [e for e in table if e["device"] == device]
    present = [v for v in analysis.ABLATION if any(e.get(f"{v}_ms") for e in entries)]
    if not entries or not present:
        return None
    if not draw:
        return out / f"fusion_{safe_name(device)}.png"
    colors = _variant_colors(list(analysis.ABLATION))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(8, 1.3 * len(entries) + 3), 8), sharex=True, height_ratios=(3, 2)
    )
    width = 0.8 / len(present)
    for i, v in enumerate(present):
        xs = [k + (i - (len(present) - 1) / 2) * width for k in range(len(entries))]
        ys = [e.get(f"{v}_ms") or 0 for e in entries]
        top.bar(xs, ys, width, color=colors[v], edgecolor="black", linewidth=0.4, label=v)
    for k, e in enumerate(entries):
        for key, style, label in (
            ("fused_traffic_ms", "-", "DRAM time of the fused minimum bytes"),
            ("unfused_traffic_ms", "--", "DRAM time of the unfused minimum bytes"),
        ):
            if e.get(key):
                top.hlines(e[key], k - 0.45, k + 0.45, colors="black", linestyles=style, lw=1.2,
                           label=label if k == 0 else None)  # fmt: skip
    top.set_yscale("log")
    _plain(top.yaxis)
    top.set_ylabel("median kernel time (ms, log)")
    top.set_title(f"Fusion ablation: {experiment} on {device} ({model})")
    top.legend(fontsize=7)
    top.grid(True, axis="y", which="both", lw=0.3, alpha=0.5)
    xs = range(len(entries))
    bottom.bar([x - 0.2 for x in xs], [e["fused_bytes"] / 1e6 for e in entries], 0.4, color="tab:green",
               label="fused: min_bytes")  # fmt: skip
    bottom.bar([x + 0.2 for x in xs], [e["unfused_bytes"] / 1e6 for e in entries], 0.4, color="tab:red",
               label="unfused: min_bytes + intermediate_bytes")  # fmt: skip
    bottom.set_ylabel("bytes to move at least (MB)")
    bottom.set_xticks(list(xs))
    bottom.set_xticklabels(
        [f"{e['shape']}\n{e['label']}" for e in entries], fontsize=7, rotation=30, ha="right"
    )
    bottom.legend(fontsize=7)
    bottom.grid(True, axis="y", lw=0.3, alpha=0.5)
    return _save(fig, out / f"fusion_{safe_name(device)}.png")


def speedups(
    table: Sequence[Mapping[str, Any]], device: str, experiment: str, model: str, out: Path, draw: bool = True
) -> Path | None:
    """Best Halide against the best of each baseline group per shape (baseline time / Halide time), from
    `analysis.peer_table`: every peer that ran beside Halide, strict fp32 and TF32 apart."""
    entries = [e for e in table if e["device"] == device]
    groups = analysis.peer_groups(entries)
    if not entries or not groups:
        return None
    if not draw:
        return out / f"speedups_{safe_name(device)}.png"
    colors = group_colors(groups)
    fig, ax = plt.subplots(figsize=(max(9, 1.3 * len(entries) + 4), 5.5))
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        xs = [k + (i - (len(groups) - 1) / 2) * width for k in range(len(entries))]
        ys = [e.get(f"{g}_speedup") for e in entries]
        bars = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
        # bars start at 1 (parity): a win rises, a loss hangs down
        ax.bar([x for x, _ in bars], [y - 1 for _, y in bars], width, bottom=1, color=colors[g],
               edgecolor="black", linewidth=0.4, label=f"vs best {analytics.label(g)}")  # fmt: skip
        for x, y in bars:
            ax.annotate(f"{y:.2f}x", (x, y), ha="center", va="bottom" if y >= 1 else "top", fontsize=6)
    ax.axhline(1.0, color="black", lw=1)
    ax.set_yscale("log")
    values = [e[f"{g}_speedup"] for e in entries for g in groups if e.get(f"{g}_speedup")]
    ax.set_ylim(min(0.8, min(values) / 1.5), max(1.25, max(values) * 2.0))  # room for the labels
    _plain(ax.yaxis)
    ax.set_ylabel(
        "speedup of the best Halide schedule\n(baseline time / Halide time, log)\nabove 1: Halide faster"
    )
    ax.set_xticks(range(len(entries)))
    labels = [f"{e['shape']}\n{e['halide_variant']}" for e in entries]
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_title(f"Best Halide vs best baselines: {experiment} on {device}\n({model})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", which="both", lw=0.3, alpha=0.5)
    return _save(fig, out / f"speedups_{safe_name(device)}.png")


def _plain(*axes: Any) -> None:
    """Log-axis tick labels as plain numbers (0.6, 2, 300) instead of powers of ten."""
    fmt = ticker.FuncFormatter(lambda v, _: f"{v:,.10g}")
    for axis in axes:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(ticker.NullFormatter())


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
