"""Faults a user meets on a GPU node and around a cluster, each answered in one line with nothing lost.

- a worker declaring a model the catalog lacks: one line naming the valid models, exit 2;
- a worker declaring a model that is not the GPU it has: the comparison of the catalog's model name with
  the driver's GPU name (real catalog entries, real driver names), the one-line warning, and the tags each
  job carries (`node_gpu_name`, `gpu_model_mismatch`; on this CPU-only machine, `unknown`/`none`);
- a cluster address nobody listens on, or where something that is not Ray listens: one line naming the
  address and what to check, exit 2, in seconds, no MLflow run;
- `python -m orchestrator.cluster status` (make ray-status) without a cluster: one line;
- SIGTERM sent to a running `python -m orchestrator`: it ends as on Ctrl-C (parent run KILLED, nothing
  left RUNNING, every finished job recorded, exit 143, no traceback).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from kernels.device import DeviceSpec
from orchestrator.cluster import gpu_models, model_note, probe
from workers import hostinfo
from workers.hostinfo import gpu_identity, gpu_model_check, same_gpu_model

ROOT = Path(__file__).resolve().parents[1]
CATALOG = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "catalog" / "devices.yaml"))


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "RAY_ADDRESS")
    }
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[
        -3000:
    ]
    return lines[0]


# --- item 5: the declared GPU model against the GPU the node has ------------------------------------------
@pytest.mark.parametrize(
    ("key", "driver_name", "same"),
    [
        ("h200", "NVIDIA H200", True),  # the catalog says `NVIDIA H200 (SXM)`
        ("h200", "NVIDIA H200 NVL", False),  # the PCIe card with NVLink bridges: another product
        ("h200", "NVIDIA H100 80GB HBM3", False),
        ("h100", "NVIDIA H100 80GB HBM3", True),  # the catalog says `NVIDIA H100 80GB HBM3 (SXM5)`
        ("h100", "NVIDIA H100 PCIe", False),
        ("h100_pcie", "NVIDIA H100 PCIe", True),
        ("rtx2060", "NVIDIA GeForce RTX 2060", True),
        ("rtx2060", "GeForce RTX 2060", True),  # older drivers leave out the vendor
        ("rtx2060", "NVIDIA GeForce RTX 2060 SUPER", False),
        ("rtx2060s", "NVIDIA GeForce RTX 2060 SUPER", True),
        ("rtx2060s", "NVIDIA GeForce RTX 2060", False),
        ("rtx2080ti", "NVIDIA GeForce RTX 2080 Ti", True),
        ("rtx3070", "NVIDIA GeForce RTX 3070 Laptop GPU", False),
        ("rtx3070", "NVIDIA GeForce RTX 3070", True),
    ],
)
def test_the_declared_model_is_compared_with_the_driver_name(key: str, driver_name: str, same: bool) -> None:
    model = CATALOG[key]["model"]  # type: ignore[index]
    assert same_gpu_model(model, driver_name) is same, (model, driver_name)
    assert gpu_model_check(model, [driver_name, driver_name]) == ("false" if same else "true")


def test_every_catalog_gpu_matches_only_itself_and_a_cpu_node_has_nothing_to_compare() -> None:
    models = gpu_models()
    assert set(models) == {k for k, v in CATALOG.items() if v["kind"] == "cuda"}  # type: ignore[union-attr]
    for key, name in models.items():
        assert [k for k, other in models.items() if same_gpu_model(other, name)] == [key]
        assert gpu_model_check(name, []) == "unknown"  # no GPU name: a CPU-only node
    assert gpu_model_check(models["h100"], ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]) == "true"


def test_the_warning_names_the_gpu_and_the_model_it_looks_like() -> None:
    models = gpu_models()
    warning = model_note("h200", 1, ["NVIDIA GeForce RTX 2060"], models)
    assert warning is not None and warning.startswith("warning: this node declares GPU=h200")
    assert "NVIDIA GeForce RTX 2060" in warning and "gpu_model_mismatch=true" in warning
    assert "declare GPU=rtx2060" in warning and "\n" not in warning
    assert model_note("h200", 1, ["NVIDIA H200"], models) is None  # the GPU it declared: nothing to say
    note = model_note("h200", 0, [], models)
    assert note is not None and note.startswith("note:") and "nothing to compare" in note


def test_make_worker_says_in_one_line_what_it_could_not_compare_and_refuses_unknown_models() -> None:
    cli = [sys.executable, "-m", "orchestrator.cluster", "worker", "--head=10.0.0.1:6379", "--dry-run"]
    env = _env(RAY_AUTH_MODE="disabled", CUDA_VISIBLE_DEVICES="")  # this machine has no GPU anyway
    ok = subprocess.run([*cli, "--gpu=h200"], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "gpu_model=h200,gpu_count=0,gpu_model_mismatch=unknown" in ok.stdout
    assert ok.stderr.strip().splitlines() == [ok.stderr.strip()] and "nothing to compare" in ok.stderr
    bad = subprocess.run([*cli, "--gpu=nope"], env=env, capture_output=True, text=True, timeout=60)
    line = _one_error_line(bad)
    assert "unknown GPU model 'nope'; valid models: " + ", ".join(gpu_models()) in line


def test_each_job_says_which_gpu_its_node_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tags of gpu_identity with the driver's answers given (no GPU here), then as they are here."""
    h200 = DeviceSpec("h200", "cuda", CATALOG["h200"]["model"], 66900, 4800)  # type: ignore[index]
    cpu = DeviceSpec("cpu", "cpu", "host CPU", 0, 0)
    monkeypatch.setattr(hostinfo, "gpu_names", lambda: {"0": "NVIDIA H200", "1": "NVIDIA GeForce RTX 2060"})
    assert gpu_identity(h200, {"gpu_index": "0", "node_gpu_model": "h200"}) == {
        "node_gpu_name": "NVIDIA H200", "gpu_model_mismatch": "false"}  # fmt: skip
    assert gpu_identity(h200, {"gpu_index": "1", "node_gpu_model": "h200"}) == {
        "node_gpu_name": "NVIDIA GeForce RTX 2060", "gpu_model_mismatch": "true"}  # fmt: skip
    tags = gpu_identity(cpu, {"gpu_index": "none", "node_gpu_model": "none"})
    assert tags == {"node_gpu_name": "NVIDIA GeForce RTX 2060,NVIDIA H200", "gpu_model_mismatch": "none"}
    monkeypatch.setattr(hostinfo, "gpu_names", dict)  # as on this machine: no driver answers
    assert gpu_identity(h200, {"gpu_index": "0", "node_gpu_model": "h200"}) == {
        "node_gpu_name": "none", "gpu_model_mismatch": "unknown"}  # fmt: skip


# --- item 6: an address nobody (or no Ray) listens on; ray-status; SIGTERM --------------------------------
@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A loopback port that accepts TCP connections and never says anything (not a Ray head)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_an_address_where_nothing_listens_is_one_line_within_30_s(
    tmp_path: Path, silent_listener: str
) -> None:
    not_ray = "something listens there but does not answer as Ray's GCS"
    for address, why in (("127.0.0.1:1", "connection refused"), (silent_listener, not_ray)):
        t0 = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "+experiment=smoke", "cluster=ray",
             f"cluster.address={address}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
             f"tracking.journal={tmp_path}/journal", f"hydra.run.dir={tmp_path}/out"],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
        line = _one_error_line(result)
        assert f"cannot reach a Ray cluster at {address}: {why}" in line and "make ray-status" in line, line
        assert elapsed < 30, f"{address}: {elapsed:.0f} s"
        db = tmp_path / "mlflow.db"  # the tracking store may be created; no run is opened in it
        if db.exists():
            client = MlflowClient(f"sqlite:///{db}")
            assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert probe(silent_listener, timeout=1) is not None and probe("127.0.0.1:1") == "connection refused"


def test_ray_status_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    status = [sys.executable, "-m", "orchestrator.cluster", "status"]
    env = _env(RAY_TMPDIR=str(tmp_path))  # no cluster was started from here: no ray_current_cluster file
    none = subprocess.run(status, env=env, capture_output=True, text=True, timeout=60)
    assert "no Ray cluster to ask" in _one_error_line(none) and none.stdout == ""
    gone = subprocess.run(
        [*status, "--address=127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in _one_error_line(gone)


def _children(db: Path) -> int:
    """Child runs in the store so far (sqlite3 read-only: no second schema migration while the driver's)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            query = "SELECT COUNT(*) FROM tags WHERE key = 'dsconv.role' AND value = 'child'"
            return int(con.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_records_say_how_they_were_dispatched(tmp_path: Path) -> None:
    """`python -m workers run` records carry dispatch=worker-cli and what the node's GPU is (none here);
    records through Ray carry dispatch=ray (tests/test_cluster.py checks those on a cluster)."""
    export = tmp_path / "export"
    subprocess.run(
        [sys.executable, "-m", "orchestrator", "+experiment=smoke", "variants=[numpy_ref]",
         "shapes=[tiny_s1]", "dispatch=export", f"dispatch.out={export}", f"hydra.run.dir={tmp_path}/out"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    run = [sys.executable, "-m", "workers", "run", str(export / "jobs.json"), "--out", str(tmp_path / "b")]
    subprocess.run(run, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=True)
    from workers.bundle import read_records

    (record,) = read_records(tmp_path / "b")
    assert record.status == "ok" and record.tags["dispatch"] == "worker-cli"
    assert record.params["node_gpu_model"] == "none" and record.tags["gpu_model_mismatch"] == "none"
    expected = ",".join(sorted(set(hostinfo.gpu_names().values()))) or "none"
    assert record.tags["node_gpu_name"] == expected


def test_sigterm_during_a_run_ends_it_as_ctrl_c_does(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "orchestrator", "+experiment=smoke", "variants=[numpy_ref]", "timing=default",
        "shapes=[tiny_s1,app,mbv1_112_32_s1,mbv1_56_128_s1,mbv1_28_256_s1]", "retries=0",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts",
        f"tracking.journal={tmp_path}/journal", f"hydra.run.dir={tmp_path}/out",
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not _children(tmp_path / "mlflow.db") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert _children(tmp_path / "mlflow.db"), "no job finished before the deadline"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr, stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert runs and all(r.info.status in ("FINISHED", "FAILED", "KILLED") for r in runs)  # none RUNNING
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    done = len(runs) - 1
    assert 1 <= done < 5 and parents[0].data.metrics["jobs"] == done  # every finished job is recorded
