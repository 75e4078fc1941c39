"""Question 2, what keeps Halide from higher GPU utilisation: % of the roofline, Nsight Compute's units and
stalls, and the pointwise product's kernel against cuDNN's and cuBLAS's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import analytics
from orchestrator.report import analysis
from orchestrator.report.findings.common import Inputs, problems, source_line
from orchestrator.report.findings.format import clip, fp, ft, fx, md_table, mean, num, short, value_range
from orchestrator.report.load import device_facts

LIMITER_PCT = 60.0  # reading rule of question 2: a unit at or above this % of its peak is the limiter


def section(inp: Inputs) -> str:
    """## 2: per GPU, % of the roofline, Nsight Compute's reading and the pointwise kernel alone."""
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
        out.append(f"### `{device}` ({facts['model']})\n\n{source_line(inp, device)}")
        entries = [e for e in inp.speed if e["device"] == device]
        if entries:
            hr = [e["halide_pct_roofline"] for e in entries if e["halide_pct_roofline"] is not None]
            line = (
                f"The best Halide schedule runs at {value_range(hr, fp)} of the roofline floor over "
                f"{len(hr)} shape(s) (geometric mean {fp(analytics.geomean(hr))})"
            )
            cr = [e["cudnn_pct_roofline"] for e in entries if e.get("cudnn_pct_roofline") is not None]
            if cr:
                gm = fp(analytics.geomean(cr))
                line += f"; the best strict-fp32 cuDNN at {value_range(cr, fp)} (geometric mean {gm})"
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
        out.append(problems(rows, device, "halide"))
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
        "(tag `kernel_times`; `pointwise.csv`; a product split over kernels, split-K's parts and their "
        "sum, counts them together): its time, the rate of the pointwise's 2 n ho wo c co "
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
            f"{value_range(ratios, fx)} cuBLAS's SGEMM time on the same product (geometric mean "
            f"{fx(analytics.geomean(ratios))}); cuBLAS's SGEMM itself reaches "
            f"{value_range(shares, fp)} of the "
            "fp32 roof on these products."
        )
    return text


def _longest(e: Mapping[str, Any]) -> str:
    if not e.get("longest_kernel"):
        return "-"
    return f"`{clip(e['longest_kernel'], 60)}` ({fp(100 * e['longest_kernel_share'])})"


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
            f"`{e['shape']}`", _variant(e), ft(e["time_ms"]), num(e["ncu_us"], ".1f"),
            num(e["kernels"], ".0f"), fp(e["dram_pct"]), fp(e["sm_pct"]), fp(e["occupancy_pct"]),
            num(e["registers"], ".0f"), fx(e.get("dram_vs_min_bytes")), _longest(e), stalls or "-",
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
            f"- {_variant(e)} on `{e['shape']}`: {num(e['kernels'], '.0f')} kernel(s), DRAM {fp(d)} and "
            "SM "
            f"{fp(s)} of peak: {reading}"
        )
        if e.get("occupancy_pct") is not None:
            registers = num(e["registers"], ".0f")
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
        summary = f"- {analytics.framework_label(fw)}, {len(mine)} profiled record(s): "
        summary += f"mean DRAM {fp(mean(mine, 'dram_pct'))}, "
        summary += f"mean SM {fp(mean(mine, 'sm_pct'))}, mean occupancy {fp(mean(mine, 'occupancy_pct'))}"
        if tops:
            reason, n = tops.most_common(1)[0]
            summary += f"; most frequent top stall `{reason}` ({n} of {len(mine)})"
        lines.append(summary + ".")
    if not halide:
        lines.append("Missing: no profiled Halide record on this device.")
    return "\n".join(lines)
