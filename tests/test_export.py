"""`python -m orchestrator.export`: an experiment's MLflow runs back into a results bundle.

A SQLite store in a temporary folder is filled by the one MLflow writer (`orchestrator.record.Recorder`)
with real records from committed bundles (`results/h100/`: Halide jobs sharing a schedule's source,
cuDNN and skipped TensorFlow jobs, Nsight jobs with profile/ artifacts, one with a binary report), a
second measurement of one job, a sweep still RUNNING and a half-written child run. Then:

- export → ingest into an empty store gives the same runs, field by field (params, metrics, tags,
  status, every artifact's bytes); ingesting twice adds them once; `report --bundle` reads the bundle;
- exporting again gives the same bytes (the manifest's date aside), and exporting the ingested store
  gives the same records and artifacts (a fixed point);
- RUNNING parents only with --include-running, half-written runs never; --run and --filter select;
- bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import export as export_cmd
from orchestrator import ingest as ingest_cmd
from orchestrator.record import RECORD_ID_TAG, Recorder
from workers.bundle import ARTIFACTS, MANIFEST, RECORDS, SHARED_DIR, read_bundle
from workers.schema import Record

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "results" / "h100"
EXPERIMENT = "export_rt"
BINARY = b"NVIDIA Nsight Compute report\x00\xff\xfe\x80 not text"
# Differ between a run and its re-ingested copy by design: the parent run id, and who logged it.
# The run name is left out too: it is the Recorder's to choose (other work changes it), not the record's.
VOLATILE_TAGS = {"mlflow.parentRunId", "dsconv.source", "mlflow.runName"}


def _pick(records: list[Record], variant: str, status: str = "ok", n: int = 1) -> list[Record]:
    found = [r for r in records if r.params.get("variant") == variant and r.status == status][:n]
    assert len(found) == n, f"no {n} {status} {variant} records in the committed bundle"
    return [copy.deepcopy(r) for r in found]


class Store:
    """The source store: its URI, folder and what was logged where."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.uri = f"sqlite:///{folder}/mlflow.db"
        self.artifacts = str(folder / "artifacts")
        self.parents: dict[str, str] = {}  # name -> parent run id
        self.half: str = ""  # the half-written child run
        self.logged: list[Record] = []  # the records of the complete runs, as they were logged


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    src = Store(tmp_path_factory.mktemp("source"))
    mbv1, nsight = read_bundle(H100 / "mobilenet_v1"), read_bundle(H100 / "nsight_tuned")
    sweep = [
        *_pick(mbv1, "halide_app", n=2),  # one schedule.py between them, stored once in the bundle
        *_pick(mbv1, "cudnn_cl"),
        *_pick(mbv1, "tf_separable", "skipped"),
        *_pick(nsight, "halide_tuned", n=2),  # profile/ artifacts in a subfolder
    ]
    report = src.folder / "report.ncu-rep"  # a binary profiler file, uploaded as it is
    report.write_bytes(BINARY)
    sweep[-1].tags["profile_file.report.ncu-rep"] = str(report)
    failed = _pick(mbv1, "cudnn_nchw")[0]  # a job whose worker died: a FAILED child run
    failed.metrics = {}
    failed.tags.update(status="failed", error="WorkerCrashedError: the worker process died (SIGABRT)")
    sweep.append(failed)
    again = copy.deepcopy(sweep[0])  # the same job measured again by a later sweep: kept beside the first
    again.tags["started_at"] = str(float(again.tags["started_at"]) + 3600)
    again.metrics["time_ms"] *= 1.01

    with Recorder(src.uri, EXPERIMENT, src.artifacts) as rec:
        src.parents["sweep"] = rec.start_parent(
            {"experiment": EXPERIMENT}, {"dsconv.source": "ray"}, {"config.yaml": "name: export_rt\n"}
        )
        for record in sweep:
            rec.log_child(record)
    with Recorder(src.uri, EXPERIMENT, src.artifacts) as rec:
        src.parents["rerun"] = rec.start_parent({"experiment": EXPERIMENT}, {"dsconv.source": "ray"})
        rec.log_child(again)
    running = Recorder(src.uri, EXPERIMENT, src.artifacts)  # a sweep in progress: its parent stays RUNNING
    src.parents["running"] = running.start_parent({"experiment": EXPERIMENT}, {"dsconv.source": "ray"})
    running.log_child(_pick(mbv1, "halide_unfused")[0])
    half = running.client.create_run(  # a writer that died while logging a child: left RUNNING
        running.experiment_id,
        tags={"dsconv.role": "child", "job_key": "x.y.cpu.0", "mlflow.parentRunId": src.parents["sweep"]},
    )
    src.half = half.info.run_id
    src.logged = [*sweep, again]
    return src


def _export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    export_cmd.main(["--experiment", EXPERIMENT, *args])
    out = capsys.readouterr()
    return out.out, out.err


def _bad(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export_cmd.main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def _children(uri: str, experiment: str, parents: set[str] | None = None) -> dict[tuple[str, str], object]:
    """Complete child runs by measurement (job key, started_at), of `parents` when given."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`dsconv.role` = 'child'", max_results=1000)
    runs = [r for r in runs if r.info.status != "RUNNING"]
    if parents is not None:
        runs = [r for r in runs if r.data.tags["mlflow.parentRunId"] in parents]
    by = {(r.data.tags["job_key"], r.data.tags.get("started_at", "")): r for r in runs}
    assert len(by) == len(runs), "two runs of one measurement"
    return by


def _artifacts(uri: str, run_id: str, into: Path) -> dict[str, bytes]:
    client, found, todo = MlflowClient(uri), {}, [None]
    while todo:
        for info in client.list_artifacts(run_id, todo.pop()):
            if info.is_dir:
                todo.append(info.path)
            else:
                found[info.path] = Path(client.download_artifacts(run_id, info.path, str(into))).read_bytes()
    return found


def _tree(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.relative_to(folder).as_posix().startswith(skip)
    }


@pytest.fixture(scope="module")
def exported(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """The default export of the source store: (bundle, stdout, stderr)."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    with pytest.MonkeyPatch.context() as mp:  # capsys is per test; this export serves several
        stdout, stderr = StringIO(), StringIO()
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        export_cmd.main(["--experiment", EXPERIMENT, "--out", str(out), "--tracking-uri", store.uri])
    yield out, stdout.getvalue(), stderr.getvalue()


def test_export_then_ingest_into_an_empty_store_gives_the_same_runs(
    store: Store, exported: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, stdout, stderr = exported
    assert "exported 8 record(s)" in stdout and "2 parent run(s)" in stdout, stdout
    warnings = stderr.strip().splitlines()
    assert len(warnings) == 2, stderr  # one line each: the sweep in progress, the half-written run
    assert any(store.parents["running"] in w and "--include-running" in w for w in warnings)
    assert any("half-written" in w for w in warnings)

    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["experiment"] == EXPERIMENT and manifest["records"] == 8
    assert manifest["tracking_uri"] == store.uri and "--experiment export_rt" in manifest["command"]
    assert [p["run_id"] for p in manifest["parent_runs"]] == [store.parents["sweep"], store.parents["rerun"]]
    assert [p["records"] for p in manifest["parent_runs"]] == [7, 1]
    assert len(manifest["runs"]) == 8 and sum("measurement" in r for r in manifest["runs"]) == 2
    assert store.half not in json.dumps(manifest["runs"]) and manifest["skipped_running"] == 2
    assert len(manifest["git_commit"]) >= 7 and manifest["exported_at"].startswith("20")
    [binary] = manifest["left_out"]  # the profiler report: not text, named with how to get it
    assert binary["artifact"] == "profile/report.ncu-rep" and binary["bytes"] == len(BINARY)
    assert binary["download"].startswith(f"mlflow artifacts download -r {binary['run_id']}")
    assert not list(bundle.rglob("*.ncu-rep"))
    assert (bundle / "config.yaml").read_text() == "name: export_rt\n"  # the parent's, for ingest to log

    # The bundle is a worker's bundle: records, artifacts, one copy of a shared schedule source; and
    # its records are those that were logged, field by field (the binary report aside).
    records = read_bundle(bundle)
    assert len(records) == 8 and all(r.artifacts for r in records)
    logged = {(r.key, r.tags["started_at"]): r for r in store.logged}
    for record in records:
        mine = logged[(record.key, record.tags["started_at"])]
        assert (record.params, record.metrics) == (mine.params, mine.metrics), record.key
        assert record.artifacts == mine.artifacts, record.key
        assert {k: v for k, v in record.tags.items() if k != RECORD_ID_TAG} == mine.tags, record.key
    schedules = {r.artifacts["schedule.py"] for r in records if "schedule.py" in r.artifacts}
    assert len(list((bundle / SHARED_DIR).rglob("schedule.py"))) == len(schedules) >= 2
    lines = [json.loads(line) for line in (bundle / RECORDS).read_text().splitlines()]
    assert not any(
        k.startswith("mlflow.") or k in ("dsconv.role", "dsconv.source") for r in lines for k in r["tags"]
    )

    # Into an empty store, twice: the same runs, once.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ingest = [
        str(bundle),
        "--tracking-uri",
        uri,
        "--artifact-root",
        str(tmp_path / "artifacts"),
        "--no-summary",
    ]
    ingest_cmd.main(ingest)
    assert "logged 8 records" in capsys.readouterr().out
    ingest_cmd.main(ingest)
    assert "nothing logged" in capsys.readouterr().out
    before = _children(store.uri, EXPERIMENT, {store.parents["sweep"], store.parents["rerun"]})
    after = _children(uri, EXPERIMENT)
    assert sorted(after) == sorted(before) and len(after) == 8
    for measurement, old in before.items():
        new = after[measurement]
        assert new.data.params == old.data.params, measurement
        assert new.data.metrics == old.data.metrics, measurement
        assert {k: v for k, v in new.data.tags.items() if k not in VOLATILE_TAGS} == {
            k: v for k, v in old.data.tags.items() if k not in VOLATILE_TAGS
        }, measurement
        assert new.info.status == old.info.status, measurement
        assert new.data.tags["dsconv.source"] == "ingest"
        old_files = _artifacts(store.uri, old.info.run_id, tmp_path / "old")
        new_files = _artifacts(uri, new.info.run_id, tmp_path / "new")
        # the binary report comes back only because its file is still where the tag says (this machine)
        assert new_files == old_files, measurement
    assert sum(r.info.status == "FAILED" for r in after.values()) == 1

    # Exporting the ingested store gives the same records and artifacts: export is ingest's inverse.
    again = tmp_path / "again"
    export_cmd.main(["--experiment", EXPERIMENT, "--out", str(again), "--tracking-uri", uri])
    capsys.readouterr()
    assert _tree(again, ("manifest", "parents")) == _tree(bundle, ("manifest", "parents"))

    # The report reads it as any bundle (its records name two experiments: --experiment joins them).
    report = subprocess.run(
        [sys.executable, "-m", "orchestrator.report", "--bundle", str(bundle), "--experiment", EXPERIMENT,
         "--out", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0 and EXPERIMENT in report.stdout, report.stderr[-2000:]
    assert (tmp_path / "r" / "findings.md").is_file()


def test_exporting_again_gives_the_same_bytes(
    store: Store, exported: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, _, _ = exported
    out = tmp_path / "b"
    for _ in range(2):  # the second replaces the first (--force), with the same command line
        _export(capsys, "--out", str(out), "--tracking-uri", store.uri, "--force")
        assert not out.with_name("b.part").exists()
    assert _tree(out, ("manifest",)) == _tree(bundle, ("manifest",))
    first, second = (json.loads(p.read_text()) for p in (bundle / "manifest.json", out / "manifest.json"))
    for m in (first, second):
        m.pop("exported_at"), m.pop("command")  # the date, and the --out each was given
    assert first == second


def test_running_parents_selection_and_filters(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = ["--tracking-uri", store.uri]
    _, err = _export(capsys, "--out", str(tmp_path / "all"), *uri, "--include-running")
    assert len(err.strip().splitlines()) == 1 and "half-written" in err  # never exported
    keys = [r.key for r in read_bundle(tmp_path / "all")]
    assert len(keys) == 9 and "x.y.cpu.0" not in keys and any(k.startswith("halide_unfused.") for k in keys)

    _export(capsys, "--out", str(tmp_path / "rerun"), *uri, "--run", store.parents["rerun"])
    [record] = read_bundle(tmp_path / "rerun")
    assert record.params["variant"] == "halide_app"
    assert not (tmp_path / "rerun" / ARTIFACTS / f"{record.key}_{record.tags[RECORD_ID_TAG]}").exists()

    _export(capsys, "--out", str(tmp_path / "f"), *uri, "--filter", "params.variant = 'halide_tuned'",
            "--filter", "tags.status = 'ok'")  # fmt: skip
    assert [r.params["variant"] for r in read_bundle(tmp_path / "f")] == ["halide_tuned"] * 2


def test_bad_input_is_one_line_and_exit_2(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "out")]
    uri = ["--tracking-uri", store.uri]
    err = _bad(capsys, "--experiment", "nope", *out, *uri)
    assert "unknown experiment 'nope'" in err and EXPERIMENT in err
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, "--tracking-uri", "http://lab:pa55w0rd@127.0.0.1:1")
    assert "does not answer" in err and "pa55w0rd" not in err
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, "--tracking-uri", f"sqlite:///{tmp_path}/none.db")
    assert "no MLflow store" in err and not (tmp_path / "none.db").exists()  # reading creates nothing
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, *uri, "--run", store.half)
    assert "child run" in err and store.parents["sweep"] in err
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, *uri, "--run", "0123")
    assert "no parent run 0123" in err and store.parents["sweep"] in err
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, *uri, "--filter", "params.variant == 'x'")
    assert "bad --filter" in err
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, *uri, "--filter", "params.variant = 'none'")
    assert "no complete job runs" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, *uri)
    assert "not empty" in err and (tmp_path / "out" / "keep.txt").read_text() == "mine"
    err = _bad(capsys, "--experiment", EXPERIMENT, *out, *uri, "--force")  # replaces a bundle, nothing else
    assert "not a results bundle" in err and (tmp_path / "out" / "keep.txt").read_text() == "mine"
