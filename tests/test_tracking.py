"""Tracking across machines: a real `mlflow server` on 127.0.0.1 (started by `mlflow/server.sh`), the
journal that keeps every record when the server is away, and the filter that keeps secrets out.

- jobs are logged over HTTP and read back over HTTP (params, metrics, artifacts);
- the server stopped mid-sweep: the sweep finishes, the journal keeps what the server missed, and once it
  is back `python -m orchestrator.sync` brings every job in exactly once;
- a journal whose driver died (no end line, a torn last line, a half-written run) syncs exactly once;
- no token, password or credential reaches MLflow or the journal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from orchestrator.journal import Journal, open_files, pending_keys, read
from orchestrator.record import RECORD_ID_TAG, Recorder, scrub_record
from orchestrator.sync import sync_all, sync_file
from workers.schema import Job, Record

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SECRET = "hf_QWERTYUIOPasdfghjklZXCVBNM123456"  # looks like a Hugging Face token
PASSWORD = "pa55w0rd-do-not-log"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow/server.sh` on 127.0.0.1 and a free port; stopped at the end whatever happens."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield srv.start()
    finally:
        srv.stop()


def _env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "RAY_ADDRESS")}
    env.update(MLFLOW_TRACKING_URI=uri, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


def _args(tmp: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "+experiment=smoke", "tracking=server",
            "variants=[numpy_ref]", *overrides, f"tracking.journal={tmp}/journal",
            f"hydra.run.dir={tmp}/out"]  # fmt: skip


def _runs(uri: str, experiment: str) -> tuple[MlflowClient, list[Run], list[Run]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} on {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _listening_hosts(port: int) -> set[str]:
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=False).stdout
    return {
        line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.split()[3].endswith(f":{port}")
    }


def test_jobs_are_logged_over_http_and_read_back_without_secrets(
    server: MlflowServer, tmp_path: Path
) -> None:
    assert _listening_hosts(server.port) == {"127.0.0.1"}  # loopback unless a host is given
    assert "healthy" in server.tail(50)  # server.sh waited for /health
    secrets = [f"+options.hf_token={SECRET}", f"+options.db=postgresql://lab:{PASSWORD}@db/mlflow"]
    result = subprocess.run(
        _args(tmp_path, "name=http_smoke", "shapes=[tiny_s1,tiny_s2]", *secrets),
        cwd=tmp_path, env=_env(server.uri), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client, parents, children = _runs(server.uri, "http_smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    seen = []
    for run in (*parents, *children):
        seen += [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
        for artifact in client.list_artifacts(run.info.run_id):  # artifacts come back over HTTP
            if not artifact.is_dir:
                local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))
                seen.append(Path(local).read_text(errors="replace"))
    for child in children:
        assert child.data.tags["status"] == "ok" and child.data.metrics["time_ms"] > 0
        assert child.data.params["option.hf_token"] == "[redacted]"
        assert child.data.params["option.db"] == "postgresql://lab:[redacted]@db/mlflow"
        assert "job.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
    text = "\n".join(seen)
    assert SECRET not in text and PASSWORD not in text
    journal = next((tmp_path / "journal" / "http_smoke").glob("*.done.jsonl"))  # every record logged
    assert SECRET not in journal.read_text() and PASSWORD not in journal.read_text()


def test_server_down_mid_sweep_then_sync_brings_every_job_in_once(
    server: MlflowServer, tmp_path: Path
) -> None:
    shapes = "shapes=[tiny_s1,tiny_s2,1x9x9x3-5,1x12x12x8-8,1x16x16x4-4s2,1x20x20x6-6]"
    slow = ["timing.min_time_s=1.5", "timing.max_time_s=2.0", "timing.max_repeats=100000"]
    proc = subprocess.Popen(
        _args(tmp_path, "name=outage", shapes, *slow), cwd=tmp_path, env=_env(server.uri),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        logged = 0
        while not logged and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            exp = MlflowClient(server.uri).get_experiment_by_name("outage")
            if exp is not None:
                logged = len(MlflowClient(server.uri).search_runs([exp.experiment_id], "tags.status = 'ok'"))
        assert logged, "no job was logged before the deadline"
        server.stop()  # mid-sweep
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "MLflow unreachable" in stderr and "wait in the journal" in stderr, stderr[-3000:]
    assert stderr.count("MLflow unreachable") == 1 and "Traceback" not in stderr  # said once, in one line
    assert "ok: 6" in stdout  # the sweep finished every job
    journal_dir = tmp_path / "journal"
    missed = len(pending_keys(journal_dir, "outage"))  # what the server missed (or half-wrote)
    assert 1 <= missed <= 6

    server.start()  # back, on the same store
    sync = [sys.executable, "-m", "orchestrator.sync", f"--journal={journal_dir}"]
    first = subprocess.run(sync, env=_env(server.uri), capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    found = re.search(
        r"logged (\d+) record\(s\), (\d+) already in MLflow; parent run ended FINISHED", first.stdout
    )
    assert found and int(found[1]) + int(found[2]) == missed, first.stdout
    _, parents, children = _runs(server.uri, "outage")
    assert all(r.info.status != "RUNNING" for r in (*parents, *children))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and parents[0].data.metrics["jobs"] == 6
    assert len(children) == 6 and len({c.data.tags["job_key"] for c in children}) == 6  # each job once
    late = sum(c.data.tags.get("dsconv.delivery") == "journal" for c in children)
    assert late == int(found[1]) >= 1  # the runs sync logged, and only those, say they came late
    assert all(c.data.tags["status"] == "ok" for c in children)
    again = subprocess.run(sync, env=_env(server.uri), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0 and "no journal waiting" in again.stdout, again.stdout + again.stderr
    assert len(_runs(server.uri, "outage")[2]) == 6


# --- the journal on its own, on a SQLite store --------------------------------------------------------
def _record(i: int) -> Record:
    job = Job(
        experiment="journal_unit",
        variant="numpy_ref",
        shape=LayerShape(f"s{i}", 1, 5, 5, 3, 4),
        device=DeviceSpec("cpu", "cpu", "host CPU", 0, 0),
        versions={"git": "abc"},
    )
    params = {"variant": job.variant, "framework": "numpy", **job.shape.as_params(), "device": "cpu"}
    return Record(key=job.key, params=params, metrics={"time_ms": 1.0 + i}, tags={"status": "ok"})


def _parse(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


def test_a_dead_drivers_journal_syncs_exactly_once(tmp_path: Path) -> None:
    uri, root = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "journal"
    recorder = Recorder(uri, "journal_unit", str(tmp_path / "artifacts"))
    journal = Journal.create(root, "journal_unit", uri, str(tmp_path / "artifacts"))
    journal.parent(recorder.start_parent({"experiment": "journal_unit"}))
    records = [_record(i) for i in range(3)]
    ids = [journal.record(r) for r in records]
    journal.logged(ids[0], recorder.log_child(records[0]))  # delivered
    half = recorder.client.create_run(  # the server died while writing the second: a RUNNING stub
        recorder.experiment_id,
        tags={RECORD_ID_TAG: ids[1], "job_key": records[1].key, "dsconv.role": "child"},
    )
    with open(journal.path, "a") as f:  # ... and the driver died mid-line
        f.write('{"kind": "record", "record_id": "torn", "rec')
    assert sync_file(journal.path).busy  # the driver still holds its journal: hands off
    journal.close()  # the driver is gone

    assert pending_keys(root, "journal_unit", uri) == {records[1].key, records[2].key}
    state = read(journal.path)
    assert state.torn == 1 and len(state.pending) == 2 and state.end is None
    results = sync_all(root, "journal_unit", only_uri=uri)
    assert [(r.logged, r.present, r.status) for r in results] == [(2, 0, "FAILED")]  # no end line: it died
    client = MlflowClient(uri)
    runs = client.search_runs([recorder.experiment_id])
    children = [r for r in runs if r.data.tags.get("dsconv.role") == "child"]
    assert len(children) == 3 and {c.data.tags["job_key"] for c in children} == {r.key for r in records}
    assert all(r.info.status != "RUNNING" for r in runs)
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    parent = next(r for r in runs if r.data.tags.get("dsconv.role") == "parent")
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs"] == 3
    assert open_files(root) == [] and sync_all(root) == []  # settled: renamed *.done.jsonl, never again
    done = next((root / "journal_unit").glob("*.done.jsonl"))
    kinds = [e["kind"] for e in map(_parse, done.read_text().splitlines()) if e]
    assert kinds.count("logged") == 3 and kinds[-1] == "ended"


def test_secrets_are_scrubbed_at_the_one_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.job import base_record

    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws)  # in the environment of whatever captures it
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_abcdefghijklmnopqrstuvwxyz0123456789")
    record = base_record(Job(
        experiment="secrets", variant="numpy_ref", shape=LayerShape("s", 1, 5, 5, 3, 4),
        device=DeviceSpec("cpu", "cpu", "host CPU", 0, 0), options={"api_key": "k-123", "hf_token": SECRET},
    ))  # fmt: skip
    record.params.update(AWS_SECRET_ACCESS_KEY=aws, tracking=f"http://lab:{PASSWORD}@127.0.0.1:5000")
    record.tags.update(MY_PASSWORD=PASSWORD, note=f"Authorization: Bearer {SECRET}", job_key=record.key)
    record.artifacts["env.txt"] = (
        f"export GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789\nAWS_KEY={aws}\n"
    )
    record.artifacts["clone.sh"] = (
        "git clone https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/x/y\n"
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with Recorder(uri, "secrets", str(tmp_path / "artifacts")) as rec:
        parent = rec.start_parent(
            {"db": f"postgresql://u:{PASSWORD}@h/db"}, artifacts={"config.yaml": f"key: {aws}\n"}
        )
        child = rec.log_child(record)
    client = MlflowClient(uri)
    texts = []
    for run_id in (parent, child):
        run = client.get_run(run_id)
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
        for a in client.list_artifacts(run_id):
            texts.append(Path(client.download_artifacts(run_id, a.path, str(tmp_path))).read_text())
    text = "\n".join(texts)
    for secret in (aws, PASSWORD, SECRET, "ghp_abcdefghij", "k-123"):
        assert secret not in text, secret
    run = client.get_run(child)
    assert run.data.tags["job_key"] == record.key  # our own `key` names are not secrets
    assert run.data.params["tracking"] == "http://lab:[redacted]@127.0.0.1:5000"
    assert scrub_record(record).params["option.api_key"] == "[redacted]"


def test_an_experiment_is_exported_over_http_as_a_bundle(
    server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m orchestrator.export` against the server: runs and artifacts read over HTTP, several runs
    at a time (the round trip through a SQLite store is in test_export.py)."""
    from orchestrator import export as export_cmd
    from workers.bundle import MANIFEST, read_bundle

    nsight = read_bundle(ROOT / "results" / "h100" / "nsight_tuned")
    records = [r for r in nsight if r.params["variant"] in ("halide_tuned", "cudnn_nchw")][:6]
    binary = b"NVIDIA Nsight Compute report\x00\xff\xfe\x80"
    (tmp_path / "report.ncu-rep").write_bytes(binary)
    records[0].tags["profile_file.report.ncu-rep"] = str(tmp_path / "report.ncu-rep")
    with Recorder(server.uri, "export_http") as rec:
        rec.start_parent({"experiment": "export_http"}, artifacts={"config.yaml": "name: export_http\n"})
        for record in records:
            rec.log_child(record)
    out = tmp_path / "bundle"
    export_cmd.main(["--experiment", "export_http", "--out", str(out), "--tracking-uri", server.uri])
    assert "exported 6 record(s)" in capsys.readouterr().out
    got = {r.key: r for r in read_bundle(out)}
    assert len(got) == 6
    for record in map(scrub_record, records):  # what the Recorder wrote: secrets blanked
        mine = got[record.key]
        assert mine.params == record.params and mine.metrics == record.metrics
        assert mine.artifacts == record.artifacts  # the binary report aside
        assert {k: v for k, v in mine.tags.items() if k != RECORD_ID_TAG} == record.tags
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tracking_uri"] == server.uri
    assert (out / "config.yaml").read_text() == "name: export_http\n"
    assert [e["artifact"] for e in manifest["left_out"]] == ["profile/report.ncu-rep"]


def test_runs_read_well_in_the_ui(tmp_path: Path) -> None:
    """What the MLflow UI shows: the experiment's kind (model training) and description, and child runs
    named variant · shape · device that span the job (the UI's start, end and Duration are the job's); a
    description written in the UI is kept by later runs."""
    from orchestrator.record import EXPERIMENT_KIND_TAG, MODEL_TRAINING, NOTE_TAG

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    began = 1_790_000_000.25
    record = _record(0)
    record.tags.update(started_at=f"{began:.6f}", ended_at=f"{began + 4.5:.6f}")
    with Recorder(uri, "ui_read", str(tmp_path / "artifacts"), "what it is for") as recorder:
        recorder.start_parent({"experiment": "ui_read"})
        child = recorder.log_child(record)
        link = recorder.runs_url()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ui_read")
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING == "custom_model_development"
    assert exp.tags[NOTE_TAG] == "what it is for"
    run = client.get_run(child)
    assert run.info.run_name == "numpy_ref · s0 · cpu"
    assert (run.info.start_time, run.info.end_time) == (1_790_000_000_250, 1_790_000_004_750)
    assert link.startswith(f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=")
    client.set_experiment_tag(exp.experiment_id, NOTE_TAG, "edited in the UI")
    Recorder(uri, "ui_read", str(tmp_path / "artifacts"), "what it is for")
    assert client.get_experiment_by_name("ui_read").tags[NOTE_TAG] == "edited in the UI"
