"""The orchestrator without Ray: bad input on the command line, the MLflow recorder, export, the summary.

Bad input runs the real `python -m orchestrator` in a subprocess and checks what a user sees: exit
code non-zero, ONE line on stderr that names the valid choices, no traceback, and no MLflow store
touched (input is validated before any run exists).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from orchestrator.analytics import geomean, speedups, timed_records
from orchestrator.record import Recorder
from orchestrator.summary import print_summary, summary_metrics
from workers.schema import Job, Record

ROOT = Path(__file__).resolve().parents[1]


def orchestrator(tmp_path: Path, *overrides: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    """Run `python -m orchestrator OVERRIDES` in tmp_path with a temporary MLflow store."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    store = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts"]
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *overrides, *store, f"hydra.run.dir={tmp_path}/out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


BAD_INPUTS = [
    # (overrides, what the one line must contain)
    (["+experiment=nope"], ["unknown experiment 'nope'", "fusion_ablation", "smoke"]),
    ([], ["no experiment chosen", "+experiment=NAME", "fusion_ablation"]),
    (["experiment=smoke"], ["+experiment=smoke", "valid experiments", "mobilenet_v1"]),
    (["+experiment=smoke", "variants=[nope]"], ["unknown variant 'nope'", "valid variants", "numpy_ref"]),
    (["+experiment=smoke", "shapes=[nope]"], ["unknown shape 'nope'", "valid shapes", "mbv1_7_1024_s1"]),
    (["+experiment=smoke", "devices=[tpu]"], ["unknown device 'tpu'", "valid devices", "h100"]),
    (["+experiment=smoke", "shape_catalog.tiny_s1.h=0"], ["h must be a positive integer, got 0"]),
    (["+experiment=smoke", "+shape_catalog.neg={n:1,h:8,w:-4,c:3,co:5}", "shapes=[neg]"],
     ["w must be a positive"]),
    (["+experiment=smoke", "shapes=[0x9x9x3-4]"], ["n must be a positive integer, got 0"]),
    (["+experiment=smoke", "+shape_catalog.s3={n:1,h:8,w:8,c:3,co:5,stride:3}", "shapes=[s3]"],
     ["stride must be one of [1, 2]"]),
    (["+experiment=smoke", "+shape_catalog.cm={n:1,h:8,w:8,c:3,co:5,depth_multiplier:2}", "shapes=[cm]"],
     ["channel mismatch"]),
    (["+experiment=smoke", "shapes=[tiny_s1"], ["malformed override 'shapes=[tiny_s1'", "key=value"]),
    (["+experiment=smoke", "timing.min_repeats=abc"], ["timing.min_repeats=abc", "Integer", "min_repeats"]),
    (["+experiment=smoke", "timing.repeats=3"], ["Key 'repeats' not in 'TimingConf'", "keys of timing"]),
    (["+experiment=smoke", "+timing.repeats=3"], ["Key 'repeats' not in 'TimingConf'", "min_repeats"]),
    (["+experiment=smoke", "tracking=nowhere"], ["unknown tracking option 'nowhere'", "local, server"]),
    (["+experiment=smoke", "dispatch.mode=carrier_pigeon"], ["dispatch.mode", "ray, export"]),
    (["+experiment=smoke", "batch=0"], ["batch must be a positive integer"]),
    (["+experiment=smoke", "profile.tool=perf"], ["profile tool must be one of", "ncu", "nsys"]),
    (["+experiment=smoke", "profile=ncu", "profile.runs=0"], ["profile.runs must be an integer >= 1"]),
    (["+experiment=smoke", "profile=ncu", "+profile.foo=1"], ["unknown profile key(s) ['foo']", "sections"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "expected"), BAD_INPUTS, ids=[" ".join(o) or "none" for o, _ in BAD_INPUTS]
)
def test_bad_input_gives_one_line_and_touches_nothing(
    tmp_path: Path, overrides: list[str], expected: list[str]
) -> None:
    result = orchestrator(tmp_path, *overrides)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "mlflow.db").exists()  # validated before MLflow was touched


def test_dispatch_export_writes_a_valid_job_list(tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = orchestrator(
        tmp_path, "+experiment=smoke", "dispatch=export", f"dispatch.out={out}", "devices=[cpu,h100]"
    )
    assert result.returncode == 0, result.stderr
    jobs = [Job.from_dict(d) for d in json.loads((out / "jobs.json").read_text())]
    assert len(jobs) == 3 * 2 * 2  # variants x shapes x devices
    assert {j.device.name for j in jobs} == {"cpu", "h100"}
    h100 = next(j.device for j in jobs if j.device.name == "h100")
    assert (h100.kind, h100.sm_count, h100.cuda_capability) == ("cuda", 132, 90)
    assert all(j.timing.max_repeats == 10 for j in jobs)  # smoke uses quick timing
    assert "name: smoke" in (out / "config.yaml").read_text()
    assert len({j.key for j in jobs}) == len(jobs)
    assert not (tmp_path / "mlflow.db").exists()  # export touches neither Ray nor MLflow


# --- the recorder, on a real temporary MLflow store -------------------------------------------------
def _job(variant: str = "numpy_ref") -> Job:
    return Job(
        experiment="unit",
        variant=variant,
        shape=LayerShape("tiny", 1, 5, 5, 3, 4),
        device=DeviceSpec("cpu", "cpu", "host CPU", 0, 0),
        versions={"git": "abc"},
    )


def _record(job: Job, status: str, time_ms: float | None = None, framework: str = "numpy") -> Record:
    record = Record(
        key=job.key,
        params={"variant": job.variant, "framework": framework, **job.shape.as_params(), "device": "cpu"},
        tags={"status": status, **({"error": "it broke"} if status != "ok" else {})},
        artifacts={"schedule.py": "# the schedule\n"},
    )
    if time_ms is not None:
        record.metrics.update(time_ms=time_ms, gflops=1.0, pct_roofline=10.0)
    return record


def test_recorder_ends_every_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rec = Recorder(uri, "unit", str(tmp_path / "artifacts"))
    with rec:
        parent = rec.start_parent({"experiment": "unit"}, artifacts={"config.yaml": "name: unit\n"})
        ok = rec.log_child(_record(_job(), "ok", 1.0), _job())
        failed = rec.log_child(_record(_job("app"), "failed"), _job("app"))
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.metrics["jobs_failed"] == 1
    assert client.get_run(ok).info.status == "FINISHED"
    assert client.get_run(failed).info.status == "FAILED"
    assert client.get_run(failed).data.tags["error"] == "it broke"
    assert client.get_run(ok).data.tags["mlflow.parentRunId"] == parent
    assert [a.path for a in client.list_artifacts(ok)] == ["schedule.py"]
    assert rec.existing_keys() == {_job().key, _job("app").key}

    with pytest.raises(KeyboardInterrupt), Recorder(uri, "unit", str(tmp_path / "artifacts")) as rec2:
        killed = rec2.start_parent({"experiment": "unit"})
        raise KeyboardInterrupt
    with pytest.raises(RuntimeError), Recorder(uri, "unit", str(tmp_path / "artifacts")) as rec3:
        crashed = rec3.start_parent({"experiment": "unit"})
        raise RuntimeError("boom")
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(crashed).info.status == "FAILED"
    runs = client.search_runs([rec.experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)


def test_recorder_ignores_mlflow_run_id_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    with Recorder(uri, "unit", str(tmp_path / "artifacts")) as rec:
        parent = rec.start_parent({})
        child = rec.log_child(_record(_job(), "ok", 1.0))
    assert "MLFLOW_RUN_ID" not in os.environ
    assert MlflowClient(uri).get_run(child).data.tags["mlflow.parentRunId"] == parent


# --- the summary --------------------------------------------------------------------------------------
def test_summary_compares_best_halide_with_best_tensorflow_strict_and_tf32_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = []
    for shape, halide_ms, tf_ms in (("a", 1.0, 2.0), ("b", 1.0, 8.0)):
        for variant, fw, t in (
            ("app", "halide", halide_ms),
            ("unfused", "halide", halide_ms * 3),
            ("tf_separable", "tensorflow", tf_ms),
            ("tf_twostep", "tensorflow", tf_ms * 2),
            ("tf_separable_tf32", "tensorflow", tf_ms / 4),  # faster, but TF32: its own baseline
        ):
            r = _record(_job(variant), "ok", t, fw)
            r.params["shape"] = shape
            records.append(r)
    wrong = _record(_job("fused_tile"), "wrong", None, "halide")
    wrong.metrics["time_ms"] = 0.001  # a wrong result never counts, whatever it says
    records.append(wrong)
    found = speedups(timed_records(records))
    assert found == {
        "tensorflow": {("cpu", "a"): 2.0, ("cpu", "b"): 8.0},
        "tensorflow_tf32": {("cpu", "a"): 0.5, ("cpu", "b"): 2.0},
    }
    assert summary_metrics(records) == {
        "geomean_speedup_halide_vs_tensorflow": pytest.approx(4.0),
        "geomean_speedup_halide_vs_tensorflow_tf32": pytest.approx(1.0),
    }
    assert geomean([]) is None
    print_summary(records, "unit")
    out = capsys.readouterr().out
    assert "vs TensorFlow (fp32)" in out and "vs TensorFlow (TF32)" in out and "wrong" in out
    assert "8.00x (tf_separable 8)" in out and "2.00x (tf_separable_tf32 2)" in out
    geomean_row = next(line for line in out.splitlines() if "geometric mean" in line)
    assert geomean_row.index("4.00x") < geomean_row.index("1.00x")  # strict column first


def test_ctrl_c_while_a_child_is_written_logs_it_once_and_counts_it(tmp_path: Path) -> None:
    """A real SIGINT arriving while a child run is being written (the race CI once hit): the child
    is finished, journaled as logged, and not logged a second time when the parent is ended KILLED."""
    import signal

    from orchestrator.journal import Journal
    from orchestrator.sync import Delivery

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    recorder = Recorder(uri, "unit", str(tmp_path / "artifacts"))
    journal = Journal.create(tmp_path / "journal", "unit", uri, str(tmp_path / "artifacts"))
    set_terminated = recorder.client.set_terminated

    def interrupted_set_terminated(
        run_id: str, status: str | None = None, end_time: int | None = None
    ) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands while the child run is being finished
        set_terminated(run_id, status=status, end_time=end_time)

    with pytest.raises(KeyboardInterrupt), Delivery(recorder, journal, say=lambda _: None) as delivery:
        parent = delivery.start({"experiment": "unit"})
        recorder.client.set_terminated = interrupted_set_terminated  # type: ignore[method-assign]
        try:
            delivery.add(_job(), _record(_job(), "ok", 1.0))
        finally:
            recorder.client.set_terminated = set_terminated  # type: ignore[method-assign]
        pytest.fail("the Ctrl-C held during the write was not raised after it")
    client = MlflowClient(uri)
    children = client.search_runs([recorder.experiment_id], filter_string="tags.`dsconv.role` = 'child'")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(parent).data.metrics["jobs"] == 1
    assert delivery.waiting == 0
