"""One analytics module (orchestrator.analytics): the summary, the parent run's metrics and the report agree.

The records are the committed H100 sweep (results/h100/mobilenet_v1: Halide, cuDNN strict fp32 and TF32),
with TensorFlow and cuBLAS records added per shape from its cuDNN ones (TensorFlow never ran on that GPU),
so every kind of baseline group is present: the end-of-run table, `summary_metrics` and findings.md /
speedups.csv are computed from the same records and must show the same figures, strict fp32 and TF32 apart.
The torch.compile and dispatch-path tests derive their records from the committed H200 run
(tests/derived_records.py).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from pathlib import Path

import pytest
from derived_records import cold, committed, derive, dispatched, torch_compile
from rich.console import Console

from kernels import registry
from orchestrator import analytics
from orchestrator.report.build import build_report
from orchestrator.report.load import dataset_from_rows, rows_from_records
from orchestrator.summary import speedup_table, summary_metrics
from workers.bundle import read_bundle
from workers.schema import Record

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "results" / "h100" / "mobilenet_v1"
STRICT_CUDNN = ("cudnn_cl", "cudnn_nchw")


def _derived(record: Record, variant: str, framework: str, scale: float) -> Record:
    """A record of another variant on the same job as `record`, `scale` times its time."""
    metrics = {**record.metrics, "time_ms": record.metrics["time_ms"] * scale}
    params = {**record.params, "variant": variant, "framework": framework}
    return dataclasses.replace(record, key=record.key.replace(record.params["variant"], variant, 1),
                               params=params, metrics=metrics, tags=dict(record.tags))  # fmt: skip


@pytest.fixture(scope="module")
def records() -> list[Record]:
    if not (BUNDLE / "records.jsonl").is_file():
        pytest.skip(f"{BUNDLE.relative_to(ROOT)} is not in this checkout")
    committed = read_bundle(BUNDLE)
    added = []
    for r in committed:
        if r.status != "ok":
            continue
        if r.params["variant"] == "cudnn_cl":
            added += [
                _derived(r, "tf_separable", "tensorflow", 1.25),
                _derived(r, "cublas_mm", "cublas", 0.95),
            ]
        elif r.params["variant"] == "cudnn_cl_tf32":
            added.append(_derived(r, "tf_separable_tf32", "tensorflow", 1.1))
    return committed + added


def test_a_variant_is_tf32_by_its_registry_tag_and_registered_names_say_so() -> None:
    variants = registry.all_variants()
    tf32 = {n for n, v in variants.items() if analytics.TF32 in v.tags}
    assert {"cudnn_cl_tf32", "tf_separable_tf32", "cublas_mm_tf32"} <= tf32
    for name, variant in variants.items():
        assert analytics.is_tf32(name) == (analytics.TF32 in variant.tags), name
        assert (analytics.TF32 in name.split("_")) == (name in tf32), f"{name}: its name and its tag disagree"
    # not registered here (an older record, a module not loaded): the name decides
    assert analytics.is_tf32("torch_compile_max_tf32") and not analytics.is_tf32("halide_tf32ish")
    assert analytics.group("cudnn", "cudnn_cl_tf32") == "cudnn_tf32"
    assert analytics.group("torch_compile", "torch_compile_tf32") == "torch_compile_tf32"
    assert analytics.ordered(["torch_compile", "cudnn_tf32", "tensorflow", "cudnn"]) == [
        "tensorflow", "cudnn", "cudnn_tf32", "torch_compile",
    ]  # fmt: skip
    assert not analytics.is_baseline("halide") and not analytics.is_baseline("numpy")


def test_strict_fp32_and_tf32_baselines_are_kept_apart(records: list[Record]) -> None:
    metrics = summary_metrics(records)
    assert set(metrics) == {
        f"geomean_speedup_halide_vs_{g}"
        for g in ("tensorflow", "tensorflow_tf32", "cudnn", "cudnn_tf32", "cublas")
    }
    # computed here by hand from the variant names: best strict cuDNN / best Halide per shape
    ok = [r for r in records if r.status == "ok"]
    ratios, mixed = [], []
    for shape in dict.fromkeys(r.params["shape"] for r in ok):
        at = [r for r in ok if r.params["shape"] == shape]
        halide = min(r.metrics["time_ms"] for r in at if r.params["framework"] == "halide")
        strict = [r.metrics["time_ms"] for r in at if r.params["variant"] in STRICT_CUDNN]
        every = [r.metrics["time_ms"] for r in at if r.params["framework"] == "cudnn"]
        if strict:
            ratios.append(min(strict) / halide)
            mixed.append(min(every) / halide)
    assert len(ratios) == 10
    by_hand = math.exp(sum(map(math.log, ratios)) / len(ratios))
    assert metrics["geomean_speedup_halide_vs_cudnn"] == pytest.approx(by_hand, rel=1e-12)
    # counting the TF32 variants as cuDNN baselines gives another (smaller) number: the two never mix
    assert by_hand > 1.5 * math.exp(sum(map(math.log, mixed)) / len(mixed))
    assert metrics["geomean_speedup_halide_vs_cudnn_tf32"] == pytest.approx(
        math.exp(sum(map(math.log, mixed)) / len(mixed)), rel=1e-12
    )  # on this GPU every shape's fastest cuDNN variant is a TF32 one


def test_the_summary_the_parent_metrics_and_the_report_agree(records: list[Record], tmp_path: Path) -> None:
    metrics = summary_metrics(records)
    per_where = analytics.speedups(analytics.timed_records(records))

    # the end-of-run table: its geometric-mean row holds the parent run's metrics, column by column
    console = Console(file=io.StringIO(), width=400, color_system=None)
    console.print(speedup_table(records))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    header = next(line for line in text.splitlines() if "┃" in line and "best Halide" in line)
    columns = re.findall(r"vs (\w+) \((fp32|TF32)\)", header)
    labels = {analytics.label(g): g for g in per_where}
    shown = [labels[f"{fw} ({precision})"] for fw, precision in columns]
    assert shown == ["tensorflow", "tensorflow_tf32", "cudnn", "cudnn_tf32", "cublas"]
    row = next(line for line in text.splitlines() if "geometric mean" in line)
    assert re.findall(r"(\d+\.\d\d)x \((\d+) shapes\)", row) == [
        (f"{metrics[analytics.metric_name(g)]:.2f}", str(len(per_where[g]))) for g in shown
    ]

    # the report: speedups.csv holds the same per-shape speedups, findings.md the same geometric means
    build_report(dataset_from_rows("agree", rows_from_records(records)), tmp_path, "test command")
    with open(tmp_path / "speedups.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10
    findings = (tmp_path / "findings.md").read_text()
    for g in ("tensorflow", "tensorflow_tf32", "cudnn", "cudnn_tf32"):
        assert {("h100", e["shape"]): float(e[f"{g}_speedup"]) for e in table} == per_where[g]
        line = next(
            x for x in findings.splitlines() if x.startswith(f"- Against the best {analytics.label(g)} ")
        )
        value = metrics[analytics.metric_name(g)]
        assert f"of {len(per_where[g])} shapes (geometric-mean speedup {value:.2f}x)" in line, line


# --- torch.compile and the two dispatch paths (records derived from the committed H200 run) ----------------
def test_torch_compile_is_a_framework_of_its_own_strict_fp32_and_tf32_apart() -> None:
    base = committed()
    compiled = []
    for r in base:
        if r.params["variant"] in ("cudnn_cl", "cudnn_cl_tf32"):
            tf32 = "_tf32" if r.params["variant"].endswith("_tf32") else ""
            compiled += [torch_compile(r, f"torch_compile{tf32}", 0.9, 10.0),
                         torch_compile(r, f"torch_compile_max{tf32}", 0.8, 40.0)]  # fmt: skip
    assert analytics.label("torch_compile") == "torch.compile (fp32)"
    assert analytics.label("torch_compile_tf32") == "torch.compile (TF32)"
    per_where = analytics.speedups(analytics.timed_records([*base, *compiled]))
    assert list(per_where) == ["cudnn", "cudnn_tf32", "torch_compile", "torch_compile_tf32"]
    halide = {r.params["shape"]: r.metrics["time_ms"] for r in base if r.params["variant"] == "halide_tuned"}
    for r in compiled:
        if r.params["variant"] == "torch_compile_max":  # the faster strict one, never a TF32 one
            assert per_where["torch_compile"][("h200", r.params["shape"])] == pytest.approx(
                r.metrics["time_ms"] / halide[r.params["shape"]]
            )
    metrics = summary_metrics([*base, *compiled])
    assert {"geomean_speedup_halide_vs_torch_compile", "geomean_speedup_halide_vs_torch_compile_tf32"} <= set(
        metrics
    )


def test_the_same_measurement_through_ray_and_the_worker_cli_is_paired() -> None:
    base = [r for r in committed() if r.params["variant"] in ("halide_tuned", "cudnn_cl")]  # 20 jobs
    ray = [dispatched(r, "ray") for r in base]
    cli = [dispatched(r, "worker-cli", 1.01 if i % 2 else 0.97) for i, r in enumerate(base)]
    newer = dispatched(base[0], "worker-cli", 1.002)  # a re-run through the CLI: the newest one counts
    unknown = derive(base[1], scale=1.5)  # no dispatch tag: an older record, of an unknown path
    failed = dispatched(base[2], "ray", 0.5)
    failed.tags["status"] = "failed"  # a failed re-run through Ray has no time and pairs with nothing
    other_timing = derive(base[3], scale=2.0, params={"timing.max_repeats": "7"}, tags={"dispatch": "ray"})
    cold_cli = dispatched(cold(base[4], 1.3), "worker-cli")  # another job key: another measurement
    pairs = analytics.path_pairs(
        [*ray, *cli, newer, unknown, failed, other_timing, cold_cli], analytics.flat_record
    )
    assert len(pairs) == 20 and len({p.ray.item.tags["job_key"] for p in pairs}) == 20
    by_key = {p.ray.item.tags["job_key"]: p for p in pairs}
    # the derived records' keys (job.json rebuilt with today's Job.key), not the committed ones: keys made
    # before timing, tolerance, seed and profile entered them differ
    first = by_key[ray[0].tags["job_key"]]
    assert first.cli.item is newer and first.diff == pytest.approx(0.002)
    assert by_key[ray[2].tags["job_key"]].ray.item is ray[2]  # the ok record, not the failed re-run
    assert by_key[ray[3].tags["job_key"]].ray.item is ray[3]  # other timing settings: not the same
    assert (first.variant, first.shape, first.device) == (
        base[0].params["variant"],
        base[0].params["shape"],
        "h200",
    )

    every = analytics.path_agreement(pairs)
    diffs = sorted(abs(p.cli.time_ms / p.ray.time_ms - 1) for p in pairs)
    assert every.pairs == 20 and every.per_framework == {"halide": 10, "cudnn": 10}
    assert every.median_abs_diff == pytest.approx((diffs[9] + diffs[10]) / 2)
    assert every.max_abs_diff == pytest.approx(0.03)
    halide = analytics.path_agreement(pairs, ["halide"])
    assert halide.pairs == 10 and halide.per_framework == {"halide": 10}
    assert analytics.path_agreement([]).median_abs_diff is None
