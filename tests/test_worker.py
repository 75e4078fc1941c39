"""One job end to end: execute() gives ok / wrong / failed / skipped; the offline CLI survives crashes.

Test-only variants live here, registered under names starting with `_test_`. They are registered only
inside a fixture (and removed after) or, in the CLI's child process, when this file is passed with
`--import` and DSCONV_WORKER_TEST_VARIANTS=1 is set, so that tests which iterate over the registry
never meet them. They exist for the paths a correct variant cannot take: a wrong answer, a build that
raises, a native abort, a hang.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kernels import registry
from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from kernels.reference_variant import NumpyReference
from workers import bundle, runner
from workers.job import derive_seed, execute, iso_time
from workers.schema import STATUSES, Job, Record, TimingSpec

ROOT = Path(__file__).resolve().parents[1]
ENV = "DSCONV_WORKER_TEST_VARIANTS"
TRACE = "DSCONV_WORKER_TEST_TRACE"  # where _test_traced notes its GPU and time
CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=0, mem_gbps=0)  # measured, as in the catalog
RATED = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100, mem_gbps=10)  # configured: nothing to measure
FAST = TimingSpec(warmup=1, min_repeats=3, max_repeats=5, min_time_s=0, max_time_s=1)
ODD = LayerShape("odd", n=1, h=9, w=11, c=5, co=7, stride=2)
SMALL = LayerShape("small", n=2, h=8, w=8, c=16, co=8, bias=False, relu=False)
METRIC_NAME = re.compile(r"^[/\w.\- ]*$")
SPEED_METRICS = {"time_ms", "time_min_ms", "call_ms", "gflops", "gbps", "pct_peak", "pct_roofline"}


# --- test-only variants ------------------------------------------------------------------------------


class Perturbed(NumpyReference):
    """Returns the right answer plus 1% noise: must come out `wrong`."""

    def fetch(self, placed) -> np.ndarray:
        out = super().fetch(placed)
        return out + 0.01 * np.abs(out).mean() * np.random.default_rng(0).standard_normal(out.shape)


class Lazy(NumpyReference):
    """Never writes its output: the poisoned NaNs must make it `wrong`."""

    def run(self, placed) -> None:
        pass


class Aborting(NumpyReference):
    """Kills its process with SIGABRT on the first run, as a native abort in Halide or CUDA would."""

    def run(self, placed) -> None:
        print("Error: deliberate native abort from the test variant", file=sys.stderr, flush=True)
        os.abort()


class Hanging(NumpyReference):
    """Never returns from a run."""

    def run(self, placed) -> None:
        time.sleep(3600)


def _traced(shape, device, options):
    """Builds slowly (1.5 s) and notes which GPU its process was given, and when, in the trace file."""
    start = time.time()
    time.sleep(1.5)
    line = {
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "start": start,
        "end": time.time(),
    }
    with open(os.environ[TRACE], "a") as f:
        f.write(json.dumps(line) + "\n")
    return NumpyReference(shape)


def _raising(shape, device, options):
    raise RuntimeError("deliberate build failure\nsecond line that must not reach the tag")


TEST_VARIANTS = {
    "_test_perturbed": (lambda s, d, o: Perturbed(s), ("cpu",)),
    "_test_lazy": (lambda s, d, o: Lazy(s), ("cpu",)),
    "_test_build_raises": (_raising, ("cpu",)),
    "_test_abort": (lambda s, d, o: Aborting(s), ("cpu",)),
    "_test_hang": (lambda s, d, o: Hanging(s), ("cpu",)),
    "_test_cuda_only": (lambda s, d, o: NumpyReference(s), ("cuda",)),
    "_test_traced": (_traced, ("cpu",)),
}


def register_test_variants() -> None:
    for name, (build, kinds) in TEST_VARIANTS.items():
        registry.register(name, framework="numpy", kinds=kinds, description=f"test only: {name}")(build)


def unregister_test_variants() -> None:
    for name in TEST_VARIANTS:
        registry._REGISTRY.pop(name, None)  # the registry has no public removal: tests only


if os.environ.get(ENV) == "1":  # imported by the CLI's child process through --import
    register_test_variants()


@pytest.fixture
def test_variants():
    register_test_variants()
    yield
    unregister_test_variants()


def job(variant: str, shape: LayerShape = ODD, device: DeviceSpec = CPU, **kw) -> Job:
    return Job(experiment="test_worker", variant=variant, shape=shape, device=device, timing=FAST, **kw)


# --- execute() --------------------------------------------------------------------------------------


def test_ok_record_has_the_contract() -> None:
    r = execute(job("numpy_ref"))
    assert r.status == "ok", r.tags.get("error")
    assert r.key == job("numpy_ref").key == r.tags["job_key"]
    for p in ("variant", "framework", "shape", "n", "h", "w", "c", "co", "stride", "bias", "relu", "device"):
        assert p in r.params
    assert r.params["target"].startswith("numpy") and r.params["framework"] == "numpy"
    assert r.params["peak_source"] == "measured" and float(r.params["peak_gflops"]) > 0  # host measured
    wanted = {"time_ms", "time_min_ms", "time_p25_ms", "time_p75_ms", "call_ms", "gflops", "gbps", "pct_peak"}
    wanted |= {"pct_roofline", "floor_ms", "rel_error", "compile_s", "arithmetic_intensity", "samples"}
    wanted |= {"build_s", "verify_s", "measure_s", "job_s"}  # where a job's seconds went, stage by stage
    assert wanted <= set(r.metrics)
    assert r.metrics["measure_s"] >= r.metrics["timing_s"] > 0
    assert r.metrics["job_s"] >= r.metrics["build_s"] + r.metrics["verify_s"] + r.metrics["measure_s"]
    assert r.tags["started"] == iso_time(float(r.tags["started_at"])) and r.tags["ended"].endswith("Z")
    assert all(METRIC_NAME.match(k) and math.isfinite(v) for k, v in r.metrics.items())
    assert r.metrics["rel_error"] < 1e-12 and 3 <= r.metrics["samples"] <= 5
    assert r.metrics["time_min_ms"] <= r.metrics["time_ms"] and r.metrics["time_ms"] > 0
    assert r.tags["time_source"] == "wall" and r.tags["halide_version"] and r.tags["numpy_version"]
    assert {"job.json", "reference.py"} <= set(r.artifacts)
    assert Job.from_dict(json.loads(r.artifacts["job.json"])) == job("numpy_ref")
    assert Record.from_json(r.to_json()) == r


def test_wrong_answer_records_no_speed(test_variants) -> None:
    r = execute(job("_test_perturbed"))
    assert r.status == "wrong"
    assert r.metrics["rel_error"] > 1e-4 and "> tolerance" in r.tags["error"]
    assert not SPEED_METRICS & set(r.metrics)
    assert "verify_s" in r.metrics and "measure_s" not in r.metrics  # never timed


def test_unwritten_output_is_wrong(test_variants) -> None:
    r = execute(job("_test_lazy"))
    assert r.status == "wrong" and "NaN" in r.tags["error"]
    assert "rel_error" not in r.metrics and not SPEED_METRICS & set(r.metrics)


def test_build_that_raises_is_failed(test_variants) -> None:
    r = execute(job("_test_build_raises"))
    assert r.status == "failed"
    assert r.tags["error"] == "build: RuntimeError: deliberate build failure"
    assert "deliberate build failure" in r.artifacts["traceback.txt"]
    assert not SPEED_METRICS & set(r.metrics)


def test_cuda_only_variant_is_skipped_on_cpu(test_variants) -> None:
    cuda_only = [v.name for v in registry.all_variants().values() if "cpu" not in v.kinds]
    assert "_test_cuda_only" in cuda_only
    for name in cuda_only:  # every real cuda-only variant (cuDNN, ...) too
        r = execute(job(name))
        assert r.status == "skipped" and "no cpu implementation" in r.tags["error"], name
        assert not r.metrics


def test_unknown_variant_is_failed_with_the_valid_names() -> None:
    r = execute(job("no_such_variant"))
    assert r.status == "failed" and "valid variants:" in r.tags["error"] and "numpy_ref" in r.tags["error"]


def test_seeds_of_verification_and_timing_differ() -> None:
    seeds = {derive_seed(0, 1), derive_seed(0, 2, 0), derive_seed(0, 2, 1), derive_seed(1, 1)}
    assert len(seeds) == 4


def test_seeds_are_the_same_in_another_process() -> None:
    """A job run again (a retry, another node) verifies and times on the same inputs: its seeds depend
    on nothing of the process (hash randomisation, global random state)."""
    code = "from workers.job import derive_seed; print(derive_seed(0, 1), derive_seed(7, 2, 3))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert other.returncode == 0, other.stderr[-2000:]
    assert other.stdout.split() == [str(derive_seed(0, 1)), str(derive_seed(7, 2, 3))]


def test_statuses_are_the_ones_execute_gives(test_variants) -> None:
    """STATUSES (the parent run's jobs_<status> counts) is exactly what execute() returns: ok, a wrong
    answer, a failed build, a variant with no implementation for the device."""
    jobs = ["numpy_ref", "_test_perturbed", "_test_build_raises", "_test_cuda_only"]
    assert sorted(execute(job(name)).status for name in jobs) == sorted(STATUSES)


# --- child workers ----------------------------------------------------------------------------------


def test_parallel_children_share_the_cores_among_their_blas_pools(monkeypatch) -> None:
    assert runner.thread_limits(1, cores=16) == {}  # one child: its pools get every core
    assert set(runner.thread_limits(12, cores=16).values()) == {"1"}
    assert runner.thread_limits(4, cores=16)["OPENBLAS_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stays
    assert "OMP_NUM_THREADS" not in runner.thread_limits(4, cores=16)


def test_a_child_has_its_environment_from_its_start(tmp_path) -> None:
    # numpy sizes OpenBLAS's pool when it is imported, before any job: the variable must be there at exec
    env = {"OPENBLAS_NUM_THREADS": "1", "DSCONV_TEST_MARK": "from-birth"}
    before = dict(os.environ)
    with runner.ChildRunner([], tmp_path / "w.log", 120, env) as child:
        assert child.run(job("numpy_ref")).status == "ok"
        born = Path(f"/proc/{child._proc.pid}/environ").read_bytes().split(b"\0")
    assert b"OPENBLAS_NUM_THREADS=1" in born and b"DSCONV_TEST_MARK=from-birth" in born
    assert dict(os.environ) == before  # the parent's environment is left as it was


# --- the bundle -------------------------------------------------------------------------------------


def test_bundle_round_trip_resume_and_truncation(tmp_path) -> None:
    files = {"job.json": "{}", "x/y.txt": "hi"}
    a = Record("a.k", {"variant": "a"}, {"time_ms": 1.0}, {"status": "ok"}, files)
    b = Record("b/k", {"variant": "b"}, {}, {"status": "failed", "error": "boom"}, {"traceback.txt": "tb"})
    bundle.append_record(tmp_path, a)
    bundle.append_record(tmp_path, b)
    line = json.loads((tmp_path / bundle.RECORDS).read_text().splitlines()[0])
    assert "artifacts" not in line and line["key"] == "a.k"  # artifacts are files, not inline
    assert bundle.recorded_keys(tmp_path) == {"a.k", "b/k"}
    with open(tmp_path / bundle.RECORDS, "a") as f:
        f.write('{"key": "c", "par')  # a crash mid-write
    assert [r.key for r in bundle.read_bundle(tmp_path)] == ["a.k", "b/k"]
    a2 = Record("a.k", {"variant": "a"}, {"time_ms": 2.0}, {"status": "ok"}, {"job.json": "{}"})
    bundle.append_record(tmp_path, a2)  # a rerun: the last line wins, stale artifacts go
    records = {r.key: r for r in bundle.read_bundle(tmp_path)}
    assert records["a.k"].metrics == {"time_ms": 2.0} and records["a.k"].artifacts == {"job.json": "{}"}
    assert records["b/k"].artifacts == {"traceback.txt": "tb"}
    with pytest.raises(bundle.BundleError, match="not a results bundle"):
        bundle.read_bundle(tmp_path / "nothing")
    # a records file alone, plain or gzipped as tuning/runs keeps them: every line, no artifacts
    packed = tmp_path / "kept" / "records.jsonl.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress((tmp_path / bundle.RECORDS).read_bytes()))
    for source in (tmp_path, tmp_path / bundle.RECORDS, packed):
        assert [r.key for r in bundle.read_records(source)] == ["a.k", "b/k", "a.k"]
        assert all(not r.artifacts for r in bundle.read_records(source))
    with pytest.raises(bundle.BundleError, match="not a results bundle"):
        bundle.read_bundle(packed)  # a file has no artifacts to restore
    with open(tmp_path / bundle.RECORDS, "a") as f:
        f.write('{"key": "d", "unknown_field": 1}\n')  # complete but not a Record: an error, not skipped
    with pytest.raises(bundle.BundleError, match=r"records.jsonl:\d+: not a record"):
        bundle.read_bundle(tmp_path)


def test_a_schedule_source_shared_by_jobs_is_stored_once(tmp_path) -> None:
    source, other = "# the schedule\ndef f(): ...\n", "# another schedule\n"
    records = [
        Record(f"j{i}", {}, {}, {"status": "ok"}, {"schedule.py": text, "decisions.json": f'{{"i": {i}}}'})
        for i, text in enumerate([source, source, other])
    ]
    for r in records:
        bundle.append_record(tmp_path, r)
    stored = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / bundle.SHARED_DIR).rglob("*"))
    assert len([p for p in stored if p.endswith("schedule.py")]) == 2  # one file per distinct source
    assert not any(".part" in p for p in stored)
    assert not (bundle.artifact_dir(tmp_path, "j0") / "schedule.py").exists()
    assert [r.artifacts for r in bundle.read_bundle(tmp_path)] == [r.artifacts for r in records]
    lines = [json.loads(x) for x in (tmp_path / bundle.RECORDS).read_text().splitlines()]
    assert lines[0]["shared"] == lines[1]["shared"] != lines[2]["shared"]
    bundle.append_record(tmp_path, records[0])  # a rerun of j0 keeps j1's copy of the shared source
    assert bundle.read_bundle(tmp_path)[0].artifacts["schedule.py"] == source
    for path in (tmp_path / bundle.SHARED_DIR).rglob("schedule.py"):
        path.unlink()  # a bundle that lost a shared file says so
    with pytest.raises(bundle.BundleError, match=r"names .*schedule\.py, which is missing"):
        bundle.read_bundle(tmp_path)
    with open(tmp_path / bundle.RECORDS, "a") as f:
        f.write('{"key": "x", "shared": {"schedule.py": "../../etc"}}\n')
    with pytest.raises(bundle.BundleError, match=r"not a record \('shared' must map .* 16 hex digits"):
        bundle.read_bundle(tmp_path)


# --- the CLI ----------------------------------------------------------------------------------------


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_cli_survives_an_abort_and_a_hang_and_resumes(tmp_path) -> None:
    jobs = [
        job("numpy_ref", device=RATED),
        job("_test_abort", device=RATED),
        job("numpy_ref", SMALL, RATED),  # runs in the replacement child
        job("_test_hang", SMALL, RATED),
        job("_test_cuda_only", device=RATED),
        job("_test_perturbed", SMALL, RATED),
    ]
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps({"experiment": "test", "jobs": [j.to_dict() for j in jobs]}))
    out = tmp_path / "bundle"
    args = ("run", str(jobs_file), "--out", str(out), "--import", __file__, "--job-timeout", "10")
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (out / bundle.RECORDS).read_text().splitlines()
    assert len(lines) == len(jobs)
    by_key = {r.key: r for r in bundle.read_bundle(out)}
    status = {k: r.status for k, r in by_key.items()}
    assert status == {
        jobs[0].key: "ok",
        jobs[1].key: "failed",
        jobs[2].key: "ok",
        jobs[3].key: "failed",
        jobs[4].key: "skipped",
        jobs[5].key: "wrong",
    }
    crashed = by_key[jobs[1].key]
    assert "killed by signal SIGABRT (6)" in crashed.tags["error"]
    assert crashed.tags["error"].endswith("Error: deliberate native abort from the test variant")
    assert "deliberate native abort" in crashed.artifacts["stderr.txt"]
    assert crashed.params["variant"] == "_test_abort" and "job.json" in crashed.artifacts
    assert "exceeded 10 s" in by_key[jobs[3].key].tags["error"]
    assert by_key[jobs[2].key].metrics["time_ms"] > 0
    assert "reference.py" in by_key[jobs[0].key].artifacts
    assert "variant" in done.stdout and "pct_roofline" in done.stdout  # the closing table

    again = cli(*args, "--only", "numpy_ref")  # resume: nothing left to do
    assert again.returncode == 0 and "2 job(s) already in" in again.stdout
    assert len((out / bundle.RECORDS).read_text().splitlines()) == len(jobs)


def test_cli_gpus_time_different_jobs_at_once_never_two_on_one_gpu(tmp_path, monkeypatch) -> None:
    """`--gpus 0,1`: one child per GPU index (CUDA_VISIBLE_DEVICES set in it) takes jobs from one
    queue. On this CPU machine the jobs are CPU jobs; what is checked is the pool: both workers ran
    jobs, their jobs overlapped in time, one worker's jobs never did, and every job is recorded once."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE, str(trace))
    fake = tmp_path / "bin"  # a machine with two GPUs: nvidia-smi stands in for the driver this one lacks
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nprintf 'NVIDIA H200, 570.1\\nNVIDIA H200, 570.1\\n'\n")
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    shapes = [LayerShape(f"s{i}", n=1, h=6, w=6, c=4, co=4) for i in range(6)]
    jobs = [job("_test_traced", s, RATED) for s in shapes]
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps([j.to_dict() for j in jobs]))
    out = tmp_path / "bundle"
    done = cli("run", str(jobs_file), "--out", str(out), "--import", __file__, "--gpus", "0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    records = bundle.read_bundle(out)
    assert sorted(r.key for r in records) == sorted(j.key for j in jobs)
    assert all(r.status == "ok" for r in records)
    spans = [json.loads(line) for line in trace.read_text().splitlines()]  # builds: one per job
    assert len(spans) == len(jobs)
    by_gpu = {g: sorted((s["start"], s["end"]) for s in spans if s["gpu"] == g) for g in ("0", "1")}
    assert by_gpu["0"] and by_gpu["1"] and len(by_gpu["0"]) + len(by_gpu["1"]) == len(jobs)
    for intervals in by_gpu.values():  # one job at a time per GPU
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals))
    assert any(a[0] < b[1] and b[0] < a[1] for a in by_gpu["0"] for b in by_gpu["1"])  # at the same time
    assert {s["pid"] for s in spans if s["gpu"] == "0"}.isdisjoint(
        {s["pid"] for s in spans if s["gpu"] == "1"}
    )
    assert "on GPUs 0,1" in done.stdout and (out / "logs" / "worker-gpu1.log").is_file()

    bad = cli("run", str(jobs_file), "--out", str(out), "--gpus", "0,zero")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "distinct GPU indices" in bad.stderr
    bad = cli("run", str(jobs_file), "--out", str(out), "--gpus", "0,1", "--profile", "ncu")
    assert bad.returncode == 2 and "one GPU at a time" in bad.stderr


def test_cli_bad_input_is_one_line(tmp_path) -> None:
    bad = tmp_path / "jobs.json"
    bad.write_text("{not json")
    done = cli("run", str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and done.stderr.startswith("error:") and len(done.stderr.splitlines()) == 1
    bad.write_text(json.dumps([{"variant": "x"}]))
    done = cli("run", str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "job 0 is not a valid Job" in done.stderr
    done = cli("run", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_cli_info_prints_host_facts() -> None:
    done = cli("info", timeout=60)
    assert done.returncode == 0 and "cpu_model" in done.stdout and "halide_version" in done.stdout


def test_gpu_without_measurable_ceilings_keeps_datasheet_rates_and_says_so() -> None:
    """Where the GPU's ceilings cannot be measured (no CUDA here), the roofline uses the datasheet, and
    the source names why; a GPU must never be given the host CPU's measurements."""
    from kernels.device import DeviceSpec
    from tests.conftest import has_cuda
    from workers.roofs import resolve_device

    if has_cuda():
        pytest.skip("a CUDA GPU is present: its ceilings are measurable")
    h100 = DeviceSpec("h100", "cuda", "NVIDIA H100", 66900, 3350, sm_count=132, cuda_capability=90)
    device, source = resolve_device(h100)
    assert device == h100
    assert device.compute_roof() == (66900, "fp32 FMA peak (datasheet)")
    assert device.memory_roof(10**6) == (3350, "DRAM")
    assert source.startswith("datasheet (GPU ceilings not measured")


@pytest.mark.parametrize("rich_installed", [True, False], ids=["rich", "plain"])
def test_closing_tables_print_every_row_with_or_without_rich(
    rich_installed: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.table import print_rows

    if not rich_installed:  # as where only the GPU nodes' bundle (Halide, Hydra) is installed
        monkeypatch.setitem(sys.modules, "rich", None)
        monkeypatch.setitem(sys.modules, "rich.console", None)
    rows = [
        {"shape": "mbv1_7_1024_s1", "time_us": "97.0"},
        {"shape": "app", "time_us": "6.8"},
    ]
    print_rows(rows)
    lines = capsys.readouterr().out.splitlines()
    cells = [re.findall(r"[\w.]+", line) for line in lines]
    assert ["shape", "time_us"] in cells
    assert ["mbv1_7_1024_s1", "97.0"] in cells and ["app", "6.8"] in cells
    if not rich_installed:  # aligned: each column starts at the same place on every line
        assert lines == ["shape           time_us", "mbv1_7_1024_s1  97.0", "app             6.8"]
    print_rows([], empty="no jobs were run")
    assert capsys.readouterr().out == "no jobs were run\n"
