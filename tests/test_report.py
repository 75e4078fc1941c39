"""The report, read as a user would, from real records.

A tiny job list (numpy_ref, halide_app, halide_unfused, tf_separable on two tiny shapes, plus one job
made `wrong` by a zero tolerance, one `skipped` cuDNN job and one `failed` unknown variant) runs
through `python -m workers run`, is ingested into a temporary MLflow store with `orchestrator.ingest`,
and `python -m orchestrator.report` reads it back. The checks recompute numbers from the bundle's
records and look for them in findings.md and the CSVs.

The multi-device test adds GPU rows made from the real H100 Nsight Compute captures in
tests/fixtures/ncu (their kernel time is ncu's measured duration), fed to the pure layer directly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from orchestrator.report.analysis import pointwise_table, roofline_points
from orchestrator.report.build import build_report
from orchestrator.report.load import dataset_from_rows, row_from_parts, rows_from_records
from workers.bundle import read_bundle
from workers.schema import Job, Record, TimingSpec

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ncu"
EXPERIMENT = "report_test"
CPU = DeviceSpec(name="cpu", kind="cpu", model="host CPU", peak_gflops=0, mem_gbps=0)
H100 = DeviceSpec(
    "h100", "cuda", "NVIDIA H100 80GB HBM3 (SXM5)", 66900, 3350, sm_count=132, cuda_capability=90
)
QUICK = TimingSpec(warmup=1, min_repeats=3, max_repeats=10, min_time_s=0.0, max_time_s=0.5, stable_spread=0.2)
TINY_S1 = LayerShape("tiny_s1", 1, 9, 11, 5, 7, 1)
TINY_S2 = LayerShape("tiny_s2", 2, 10, 7, 6, 13, 2)
APP = LayerShape("app", 4, 112, 112, 32, 16, 1)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _jobs() -> list[Job]:
    jobs = [
        Job(EXPERIMENT, v, s, CPU, QUICK)
        for s in (TINY_S1, TINY_S2)
        for v in ("numpy_ref", "halide_app", "halide_unfused", "tf_separable")
    ]
    jobs.append(Job(EXPERIMENT, "halide_fused_tile", TINY_S1, CPU, QUICK, tolerance=0.0))  # -> wrong
    jobs.append(Job(EXPERIMENT, "cudnn_cl", TINY_S1, CPU, QUICK))  # -> skipped: GPU only
    jobs.append(Job(EXPERIMENT, "halide_no_such_schedule", TINY_S1, CPU, QUICK))  # -> failed: unknown
    return jobs


class Store:
    """The bundle, the MLflow store it was ingested into, and the report made from it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bundle = root / "bundle"
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.out = root / "report"
        self.records: list[Record] = []
        self.report: subprocess.CompletedProcess[str] | None = None

    def by(self, variant: str, shape: str) -> Record:
        return next(r for r in self.records if r.params["variant"] == variant and r.params["shape"] == shape)

    def findings(self) -> str:
        return (self.out / "findings.md").read_text()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    from orchestrator.ingest import ingest

    s = Store(tmp_path_factory.mktemp("report"))
    (s.root / "jobs.json").write_text(json.dumps([j.to_dict() for j in _jobs()]))
    _run([sys.executable, "-m", "workers", "run", str(s.root / "jobs.json"), "--out", str(s.bundle)], s.root)
    s.records = read_bundle(s.bundle)
    assert [r.status for r in s.records].count("ok") == 8, [(r.key, r.tags.get("error")) for r in s.records]
    ingest(s.bundle, s.uri, str(s.root / "artifacts"), summary=False)
    s.report = _run(
        [sys.executable, "-m", "orchestrator.report", "--experiment", EXPERIMENT, "--tracking-uri", s.uri,
         "--out", str(s.out)], s.root,
    )  # fmt: skip
    return s


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_writes_its_figures_tables_and_findings(store: Store) -> None:
    for name in ("findings.md", "records.csv", "speedups.csv", "fusion.csv"):
        assert (store.out / name).is_file(), name
    for kind in ("roofline", "fusion", "speedups"):
        png = store.out / f"{kind}_cpu.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({kind}_cpu.png)" in store.findings()
    assert not (store.out / "ncu.csv").exists()  # nothing was profiled
    text = store.findings()
    for heading in (
        "## 1. Why is Halide slow",
        "## 2. What keeps it",
        "## 3. Does fusing",
        "## 4. Can we do better",
    ):
        assert heading in text
    parent = store.report.stdout.split("parent run ")[1].split()[0]
    assert f"`{parent}`" in text and f"--experiment {EXPERIMENT}" in text  # source and command named


def test_records_csv_has_every_record_and_times_only_for_ok_ones(store: Store) -> None:
    rows = _csv(store.out / "records.csv")
    assert len(rows) == len(store.records) == 11
    for row in rows:
        record = store.by(row["variant"], row["shape"])
        assert row["status"] == record.status
        if record.status == "ok":
            assert float(row["time_ms"]) == record.metrics["time_ms"]
            assert math.isclose(float(row["gflops"]), record.metrics["gflops"], rel_tol=1e-12)
        else:
            assert row["time_ms"] == "" and row["gflops"] == "", row
            assert row["error"]


def test_findings_numbers_are_the_records_numbers(store: Store) -> None:
    text = store.findings()
    for shape in ("tiny_s1", "tiny_s2"):
        unfused = store.by("halide_unfused", shape).metrics["time_ms"]
        app = store.by("halide_app", shape).metrics["time_ms"]
        tf = store.by("tf_separable", shape).metrics["time_ms"]
        best_halide = min(unfused, app)
        assert f"({unfused / app:.2f}x)" in text, f"fusion speedup of halide_app on {shape}"
        assert f"{tf / best_halide:.2f}x (tf_separable," in text, f"speedup over TensorFlow on {shape}"
        fastest = "halide_app" if app < unfused else "halide_unfused"
        assert f"`{shape}`: `{fastest}`" in text  # which schedule wins per shape
    ratios = [store.by("halide_unfused", s).metrics["time_ms"] / store.by("halide_app", s).metrics["time_ms"]
              for s in ("tiny_s1", "tiny_s2")]  # fmt: skip
    assert f"geometric-mean speedup {math.sqrt(ratios[0] * ratios[1]):.2f}x" in text
    speed = {r["shape"]: r for r in _csv(store.out / "speedups.csv")}
    for shape, row in speed.items():
        pct = store.by(row["halide_variant"], shape).metrics["pct_roofline"]
        assert math.isclose(float(row["halide_pct_roofline"]), pct, rel_tol=1e-9)


def test_wrong_failed_and_skipped_records_are_named_never_timed(store: Store) -> None:
    text = store.findings()
    assert "`halide_fused_tile` on `tiny_s1`: wrong: `rel_error" in text
    assert "wrong (no time)" in text
    assert "halide_no_such_schedule" in (store.out / "records.csv").read_text()
    fusion = {r["shape"]: r for r in _csv(store.out / "fusion.csv")}
    assert fusion["tiny_s1"]["halide_fused_tile_ms"] == ""
    assert "8 ok, 1 wrong, 1 failed, 1 skipped" in text


def test_missing_framework_and_device_are_stated(store: Store) -> None:
    text = store.findings()
    assert "- `cpu`: no ok cuDNN record (1 skipped: `cudnn_cl has no cpu implementation" in text
    assert "Missing: this experiment has no records from a GPU (devices present: `cpu`)" in text
    assert "Missing: no autoscheduled or tuned Halide record" in text


def test_the_report_is_logged_on_the_parent_run(store: Store) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`dsconv.role` = 'parent'")
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"findings.md", "records.csv", "roofline_cpu.png", "fusion_cpu.png"} <= logged


def test_bad_input_is_one_line_naming_the_choices(store: Store) -> None:
    base = [
        sys.executable,
        "-m",
        "orchestrator.report",
        "--tracking-uri",
        store.uri,
        "--out",
        str(store.root / "x"),
    ]
    wrong = _run([*base, "--experiment", "nope"], store.root, check=False)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == f"error: unknown experiment 'nope' in {store.uri}; valid: {EXPERIMENT}"
    missing = _run([*base, "--experiment", EXPERIMENT, "--tracking-uri", f"sqlite:///{store.root}/none.db"],
                   store.root, check=False)  # fmt: skip
    assert (
        missing.returncode == 2 and "no MLflow store" in missing.stderr and "Traceback" not in missing.stderr
    )


# --- the pure layer: rows fed directly ------------------------------------------------------------
def _h100_row(variant: str, framework: str, capture: str) -> dict[str, Any]:
    """A GPU record from a real Nsight Compute capture: its time is ncu's measured kernel duration."""
    from workers import metrics
    from workers.profiling import parse

    profile = parse.summarize(parse.read_raw_csv((FIXTURES / capture).read_text()), runs=2)
    time_ms = profile.metrics["ncu.sum.duration_us"] / 1e3
    params = {
        "variant": variant,
        "framework": framework,
        **APP.as_params(),
        "device": "h100",
        "device_kind": "cuda",
        "device_model": H100.model,
        "peak_gflops": str(H100.peak_gflops),
        "mem_gbps": str(H100.mem_gbps),
    }
    values = {"time_ms": time_ms, **metrics.derive(APP, H100, time_ms), **profile.metrics}
    return row_from_parts(params, values, {"status": "ok", **profile.tags}, run_id=f"{variant}-run")


def test_several_devices_with_nsight_metrics(store: Store, tmp_path: Path) -> None:
    halide = _h100_row("halide_unfused", "halide", "halide_unfused.csv")
    cudnn = _h100_row("cudnn_cl", "cudnn", "cudnn.csv")
    rows = [*rows_from_records(store.records), halide, cudnn]
    files = build_report(dataset_from_rows("mixed", rows), tmp_path, "test command")
    names = {p.name for p in files}
    assert {"roofline_cpu.png", "roofline_h100.png", "ncu.csv", "speedups_h100.png"} <= names
    text = (tmp_path / "findings.md").read_text()
    assert "### `h100` (NVIDIA H100 80GB HBM3 (SXM5))" in text
    assert "- `h100`: no TensorFlow record at all." in text
    assert f"{cudnn['time_ms'] / halide['time_ms']:.2f}x (cudnn_cl," in text  # speedup over cuDNN fp32
    dram, sm = halide["ncu.sum.dram_pct"], halide["ncu.sum.sm_pct"]
    assert f"DRAM {dram:.1f}% and SM {sm:.1f}% of peak" in text
    assert f"top stall `{halide['ncu.stall1.reason']}` ({100 * halide['ncu.stall1.share']:.1f}%" in text
    ncu = {r["variant"]: r for r in _csv(tmp_path / "ncu.csv")}
    assert float(ncu["halide_unfused"]["dram_vs_min_bytes"]) == pytest.approx(
        halide["ncu.sum.dram_bytes"] / APP.min_bytes
    )
    assert (
        "Halide kernel time at the app shape (N=4) <= 8 us: best Halide" in text
    )  # the goal, checked


def _split_row(variant: str, framework: str, kernels: dict[str, float]) -> dict[str, Any]:
    """A GPU record whose launch ran `kernels` (name -> ms, as the harness's `kernel_times` tag)."""
    params = {
        "variant": variant,
        "framework": framework,
        **APP.as_params(),
        "device": "h100",
        "device_kind": "cuda",
        "device_model": H100.model,
        "peak_gflops": str(H100.peak_gflops),
        "mem_gbps": str(H100.mem_gbps),
    }
    tags = {"status": "ok", "kernel_times": json.dumps(kernels)}
    return row_from_parts(params, {"time_ms": sum(kernels.values())}, tags, run_id=f"{variant}-run")


def test_the_pointwise_kernel_is_set_beside_cublas(tmp_path: Path) -> None:
    flops = 2 * APP.n * APP.ho * APP.wo * APP.c * APP.co
    unfused = _split_row(
        "halide_unfused", "halide", {"_kernel_depthwise_s0": 0.004, "_kernel_output_s0": 0.010}
    )
    fused = _split_row("halide_app", "halide", {"_kernel_output_s0": 0.015})  # slower: not the best Halide
    cublas = _split_row(
        "cublas_mm", "cublas", {"conv2d_c1_k1_nhwc": 0.005, "sm80_xmma_gemm_f32": 0.008, "relu": 0.002}
    )
    cudnn = _split_row("cudnn_cl", "cudnn", {"conv2d_c1_k1_nhwc": 0.005, "xmma_fprop_implicit_gemm": 0.012})
    dataset = dataset_from_rows("split", [unfused, fused, cublas, cudnn])
    [entry] = pointwise_table(dataset.rows)
    assert (entry["halide_variant"], entry["halide_kernel"], entry["halide_kernel_alone"]) == (
        "halide_unfused", "_kernel_output_s0", True,
    )  # fmt: skip
    assert entry["cublas_kernel"] == "sm80_xmma_gemm_f32" and entry["cudnn_kernel_ms"] == pytest.approx(0.012)
    assert entry["halide_kernel_gflops"] == pytest.approx(flops / 0.010 / 1e6)
    assert entry["cublas_kernel_pct_roof"] == pytest.approx(100 * flops / 0.008 / 1e6 / H100.peak_gflops)
    assert entry["halide_over_cublas"] == pytest.approx(0.010 / 0.008)
    fused_only = pointwise_table(dataset_from_rows("fused", [fused, cublas]).rows)[0]
    assert fused_only["halide_kernel_alone"] is False  # the output kernel also holds the depthwise
    build_report(dataset, tmp_path, "test command")
    text = (tmp_path / "findings.md").read_text()
    assert "it takes 1.25x cuBLAS's SGEMM time on the same product" in text
    assert [r["shape"] for r in _csv(tmp_path / "pointwise.csv")] == ["app"]
    bare = dataset_from_rows("bare", [_split_row("halide_app", "halide", {})])
    assert pointwise_table(bare.rows) == []  # no kernel times: no entry


def test_a_pointwise_product_split_over_kernels_is_timed_as_their_sum() -> None:
    # a split reduction: Halide's partial sums and the output kernel that adds them; cuBLAS's split-K GEMM
    # and the kernel that reduces its parts. Either kernel alone would put the product at a rate it never ran.
    halide = _split_row(
        "halide_family",
        "halide",
        {
            "_kernel_depthwise__7_s0_y_y_block_id_z": 0.004,
            "_kernel_pointwise__7_intm_global_wrapper__0_s0_y_y_n_n_block_id_z": 0.020,
            "_kernel_output__7_s0_c_cb_t_t_t_to_block_id_x__2": 0.003,
        },
    )
    cublas = _split_row(
        "cublas_mm",
        "cublas",
        {"conv2d_c1_k1_nhwc": 0.005, "sm90_xmma_gemm_f32f32_splitK": 0.016, "splitKreduce_kernel": 0.002},
    )
    [entry] = pointwise_table(dataset_from_rows("split", [halide, cublas]).rows)
    assert entry["halide_kernel_ms"] == pytest.approx(0.023) and entry["halide_kernel_alone"] is True
    assert (
        entry["halide_kernel"].startswith("_kernel_pointwise__7_intm")
        and " + _kernel_output" in entry["halide_kernel"]
    )
    assert entry["cublas_kernel_ms"] == pytest.approx(0.018)
    assert entry["halide_over_cublas"] == pytest.approx(0.023 / 0.018)


def test_a_wrong_record_with_a_time_is_never_a_speed(store: Store, tmp_path: Path) -> None:
    fast = store.by("halide_app", "tiny_s1")
    bogus = Record(
        key="halide_fused_cblock.tiny_s1.cpu.x",
        params={**fast.params, "variant": "halide_fused_cblock"},
        metrics={**fast.metrics, "time_ms": 1e-9, "gflops": 1e9},
        tags={**fast.tags, "status": "wrong", "error": "rel_error 1 > tolerance 0.0001"},
    )
    rows = rows_from_records([*store.records, bogus])
    ds = dataset_from_rows(EXPERIMENT, rows)
    assert all(p["variant"] != "halide_fused_cblock" for p in roofline_points(ds.rows, "cpu"))
    build_report(ds, tmp_path, "test command")
    speed = {r["shape"]: r for r in _csv(tmp_path / "speedups.csv")}
    assert speed["tiny_s1"]["halide_variant"] != "halide_fused_cblock"
    row = next(r for r in _csv(tmp_path / "records.csv") if r["variant"] == "halide_fused_cblock")
    assert row["status"] == "wrong" and row["time_ms"] == "" and row["gflops"] == ""
    assert "1e-09" not in (tmp_path / "findings.md").read_text()


def test_the_newest_run_of_a_measurement_wins() -> None:
    shape = TINY_S1.as_params()
    common = {"variant": "halide_app", "framework": "halide", **shape, "device": "cpu", "device_kind": "cpu"}
    old = row_from_parts(common, {"time_ms": 2.0}, {"status": "ok"}, run_id="old", start_time=1.0)
    new = row_from_parts(
        common, {}, {"status": "failed", "error": "build: boom"}, run_id="new", start_time=2.0
    )
    other = row_from_parts({**common, "option.cuda_max_registers": "128"}, {"time_ms": 3.0}, {"status": "ok"},
                           run_id="opt", start_time=0.5)  # fmt: skip
    ds = dataset_from_rows("x", [new, old, other])
    assert {r["run_id"] for r in ds.rows} == {"new", "opt"} and ds.superseded == 1


# --- several GPUs of one node (orchestrator.report.gpus) ---------------------------------------------
def _gpu_row(key: str, gpu: str, start: float, end: float, time_ms: float, source: str, spread: float = 0.01):
    return {
        "job_key": key, "variant": key.split(".")[0], "framework": "halide", "shape": "s", "shape_key": "s",
        "device": "h200", "device_key": "h200", "node": "n1", "gpu_index": gpu, "status": "ok",
        "started_at": str(start), "ended_at": str(end), "time_ms": time_ms, "time_spread": spread,
        "source": source,
    }  # fmt: skip


def test_gpu_concurrency_and_agreement_are_computed_from_the_spans_and_times() -> None:
    from orchestrator.report import gpus

    sweep = [
        _gpu_row("a.s.h200", "0", 0, 4, 1.00, "sweep"),
        _gpu_row("b.s.h200", "1", 0, 3, 2.00, "sweep"),
        _gpu_row("c.s.h200", "0", 4, 6, 3.00, "sweep"),
        _gpu_row("d.s.h200", "1", 3, 6, 4.00, "sweep"),
    ]
    rerun = [
        _gpu_row("a.s.h200", "1", 10, 11, 1.10, "rerun"),  # across GPUs: 10% apart, spreads 1%
        _gpu_row("c.s.h200", "0", 11, 12, 3.003, "rerun"),  # same GPU: 0.1% apart, within spread
    ]
    [c_sweep, c_rerun] = gpus.concurrency(sweep + rerun)
    assert c_sweep["gpus"] == "n1:0,n1:1" and c_sweep["jobs_per_gpu"] == "n1:0=2,n1:1=2"
    assert c_sweep["wall_s"] == 6 and c_sweep["jobs_s"] == 12 and c_sweep["jobs_running_mean"] == 2
    assert c_sweep["jobs_running_max"] == 2 and c_sweep["same_gpu_overlaps"] == 0
    assert c_rerun["jobs_running_mean"] == 1 and c_rerun["jobs_running_max"] == 1
    assert (
        gpus.concurrency([*sweep, _gpu_row("e.s.h200", "0", 1, 2, 1.0, "sweep")])[0]["same_gpu_overlaps"] == 1
    )

    pairs = {p["job_key"]: p for p in gpus.agreement(sweep + rerun)}
    assert set(pairs) == {"a.s.h200", "c.s.h200"}
    assert pairs["a.s.h200"]["kind"] == "across GPUs" and math.isclose(pairs["a.s.h200"]["rel_diff"], 0.10)
    assert pairs["c.s.h200"]["kind"] == "same GPU, re-run" and math.isclose(
        pairs["c.s.h200"]["rel_diff"], 0.001
    )
    summary = {(s["kind"], s["framework"]): s for s in gpus.agreement_summary(list(pairs.values()))}
    assert summary[("across GPUs", "all")]["within_spread"] == 0
    assert summary[("same GPU, re-run", "halide")]["within_spread"] == 1
    assert gpus.used_several_gpus(sweep) and not gpus.used_several_gpus(sweep[::2])


def test_the_committed_two_gpu_run_reports_both_gpus_at_once(tmp_path: Path) -> None:
    """results/h200x2 (issue #7): the sweep ran on both GPUs at once, never two jobs on one GPU, and
    the report says so, with the across-GPU agreement, from the bundles alone."""
    bundles = [ROOT / "results" / "h200x2" / b for b in ("mobilenet_v1", "agree_gpu0", "agree_gpu1")]
    h100 = ROOT / "results" / "h100" / "mobilenet_v1"
    if not all((b / "records.jsonl").is_file() for b in [*bundles, h100]):
        pytest.skip("results/h200x2 or results/h100 is not in this checkout")
    args = ["--bundle", str(h100), *map(str, bundles), "--out", str(tmp_path)]
    _run([sys.executable, "-m", "orchestrator.report", *args], ROOT)
    text = (tmp_path / "findings.md").read_text()
    assert "## Several GPUs of one machine" in text and "| across GPUs | halide |" in text
    assert "## Across GPU models" in text and "| shape | variant | h100 | h200 | h200 / h100 |" in text
    rows = list(csv.DictReader((tmp_path / "gpus_concurrency.csv").open()))
    sweep = next(r for r in rows if r["run"].endswith("h200x2/mobilenet_v1"))
    assert sweep["gpus"].count(",") == 1 and float(sweep["jobs_running_mean"]) > 1.5
    assert all(r["same_gpu_overlaps"] == "0" for r in rows)
    keys = [r.key for r in read_bundle(bundles[0])]
    assert len(keys) == len(set(keys)) == 230  # every job of the sweep recorded once


def test_across_gpu_models_marks_a_tuned_schedule_that_came_from_the_heuristic() -> None:
    from orchestrator.report.findings.devices import across_devices

    shape = APP.as_params()
    rows = []
    for device, t, source in (("h100", 1.0, "db"), ("h200", 2.0, "heuristic")):
        params = {"variant": "halide_tuned", "framework": "halide", **shape, "device": device,
                  "device_kind": "cuda", "peak_gflops": "50000", "mem_gbps": "3000",
                  "schedule_source": source}  # fmt: skip
        rows.append(row_from_parts(params, {"time_ms": t}, {"status": "ok"}, run_id=device))
    text = across_devices(dataset_from_rows("x", rows).rows)
    assert "| app | halide_tuned | 1 ms | 2 ms (h) | 2.00 |" in text and "used the family's heuristic" in text


# --- the goals question 4 checks (conf/report/goals.yaml) -------------------------------------------------
def test_the_goals_are_read_from_conf_and_a_bad_goals_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.report import __main__ as report_cli
    from orchestrator.report.findings import goals

    stated = goals.load_goals()
    assert stated.source == "issue #6" and [g.kind for g in stated.goals] == [
        "speedup_geomean", "roofline_geomean", "not_slower", "max_time_ms", "speedup_geomean",
    ]  # fmt: skip
    first = stated.goals[0]
    assert (first.device_prefix, first.baseline, first.threshold, first.batch) == ("h100", "cudnn", 2.0, 32)
    assert first.shapes == stated.goals[1].shapes and len(first.shapes) == 5  # one YAML anchor, two goals

    good = goals.GOALS_FILE.read_text()
    cases = {
        "treshold": (good.replace("threshold: 2.0", "treshold: 2.0"),
                     "goal 1: unknown key 'treshold'; valid keys: device_prefix, text, kind, threshold, "
                     "baseline, shapes, batch, experiment"),
        "kind": (good.replace("kind: not_slower", "kind: faster"),
                 "goal 3: unknown kind 'faster'; valid kinds: speedup_geomean, roofline_geomean, not_slower, "
                 "max_time_ms"),
        "baseline": (good.replace("baseline: cudnn_tf32", "baseline: halide"),
                     "goal 3: kind not_slower needs a baseline group"),
        "top": (good.replace("source:", "origin:"), "unknown key 'origin'; valid keys: source, goals"),
    }  # fmt: skip
    for name, (text, expected) in cases.items():
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(text)
        with pytest.raises(goals.GoalsError) as caught:
            goals.load_goals(bad)
        assert expected in str(caught.value) and "\n" not in str(caught.value), name

    # the report's command line: one line on stderr, exit code 2, when the goals file is bad
    bundle = ROOT / "results" / "h100" / "nsight_cublas"
    if not (bundle / "records.jsonl").is_file():
        pytest.skip(f"{bundle.relative_to(ROOT)} is not in this checkout")
    monkeypatch.setattr(goals, "GOALS_FILE", tmp_path / "treshold.yaml")
    assert report_cli.main(["--bundle", str(bundle), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "valid keys: device_prefix" in err
    monkeypatch.setattr(goals, "GOALS_FILE", tmp_path / "missing.yaml")
    assert report_cli.main(["--bundle", str(bundle), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read the goals file" in capsys.readouterr().err
