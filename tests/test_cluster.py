"""Across machines, on one machine: a real multi-node Ray cluster (ray.cluster_utils.Cluster) whose nodes
declare GPU models the way `make worker GPU=...` does, with CPU kernels standing in for the GPUs.

- the sweep on every declared model (devices=[auto]): every job ran on a node of its model, recorded as
  a CPU stand-in, no two jobs overlapped on one timing slot, one parent run, a cross-device table; run
  again, every job is skipped as already recorded;
- a model the cluster lacks: one error line, in seconds, naming what is missing and what there is;
- a node killed mid-sweep and a job that aborts its process: the sweep completes, every job once;
- `make head` / `make worker` (orchestrator.cluster): the nodes join, declare, and listen on loopback.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from orchestrator.cluster import LOCAL_MODE_ENV, declaration

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
MODELS = ("rtx2060", "rtx2060", "rtx2080ti", "rtx3070")  # two rtx2060 nodes: one can die
SLEEP_S = 4  # how long a sleepy_ref job sleeps in its build: the window for killing its node


@dataclass
class Lab:
    """The test cluster: Cluster object, address, node id → declared model, the started-jobs folder."""

    cluster: Any
    address: str
    models: dict[str, str]
    started: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A head (host CPU only) and four nodes declared with `orchestrator.cluster.declaration(model, 0)`:
    one stand-in slot each, no GPU. Worker processes inherit this environment: tests/ importable, and
    the sleepy variant's settings."""
    started = tmp_path_factory.mktemp("started")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LOCAL_MODE_ENV, "0")  # the cluster listens on loopback only
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        mp.setenv("DSCONV_TEST_STARTED", str(started))
        mp.setenv("DSCONV_TEST_SLEEP_S", str(SLEEP_S))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "resources": declaration(None, 0)[0],
                "include_dashboard": False,
                # notice a killed node within seconds, not the default half minute
                "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
            },
        )
        try:
            models = {}
            for model in MODELS:
                resources, labels, gpus = declaration(model, 0)
                node = cluster.add_node(num_cpus=1, num_gpus=gpus, resources=resources, labels=labels)
                models[node.node_id] = model
            yield Lab(cluster, cluster.address, models, started)
        finally:
            cluster.shutdown()


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", LOCAL_MODE_ENV)
    }
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


def _args(lab: Lab, store: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "orchestrator", "+experiment=sweep", "cluster=ray",
        f"cluster.address={lab.address}", "timing=quick", *overrides,
        f"tracking.uri=sqlite:///{store}/mlflow.db", f"tracking.artifact_root={store}/artifacts",
        f"tracking.journal={store}/journal", f"hydra.run.dir={store}/out",
    ]  # fmt: skip


def _orchestrate(
    lab: Lab, store: Path, *overrides: str, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _args(lab, store, *overrides), cwd=store, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _runs(store: Path, experiment: str = "sweep") -> tuple[MlflowClient, list[Run], list[Run]]:
    """(client, parents, children); asserts no run is left RUNNING."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert all(r.info.status in ("FINISHED", "FAILED", "KILLED") for r in runs), [r.info.status for r in runs]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _no_overlap(children: list[Run]) -> None:
    """No two jobs held one timing slot (a GPU of a node; the node itself for a stand-in) at once."""
    slots: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for c in children:
        slot = (c.data.params["node_id"], c.data.params["gpu_index"])
        start, end = float(c.data.tags["started_at"]), float(c.data.tags["ended_at"])
        assert start <= end
        slots.setdefault(slot, []).append((start, end, c.data.tags["job_key"]))
    for slot, spans in slots.items():
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            assert end <= start, f"{a} and {b} overlapped on slot {slot}"


def test_sweep_on_every_declared_model_runs_each_job_on_its_model(lab: Lab, tmp_path: Path) -> None:
    variants = "variants=[numpy_ref,halide_app]"
    result = _orchestrate(
        lab, tmp_path, "devices=[auto]", "stand_in=cpu", variants, "shapes=[tiny_s1,tiny_s2]"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client, parents, children = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["devices"] == "rtx2060,rtx2080ti,rtx3070"
    assert parent.data.params["devices_requested"] == "auto" and parent.data.params["stand_in"] == "cpu"
    assert parent.data.metrics["jobs"] == 12 and parent.data.metrics["jobs_ok"] == 12
    assert len(children) == 3 * 2 * 2 and len({c.data.tags["job_key"] for c in children}) == 12
    for child in children:
        params, tags = child.data.params, child.data.tags
        assert tags["status"] == "ok", tags.get("error")
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        model = params["device"]
        assert lab.models.get(params["node_id"]) == model, f"{model} job ran on {params['node_id']}"
        assert params["node_gpu_model"] == model and params["node_ip"] == "127.0.0.1"
        assert tags["dispatch"] == "ray"  # how it came: through Ray, not the worker CLI
        # no GPU here to compare the declared model with: said so on every job (and at `make worker`)
        assert tags["gpu_model_mismatch"] == "unknown" and tags["node_gpu_name"] == "none"
        assert params["node"] == socket.gethostname() and params["gpu_index"] == "none"
        # the stand-in is recorded as what it is: CPU kernels, never GPU time
        assert params["device_kind"] == "cpu" and params["option.stand_in"] == "cpu"
        assert params["stand_in_for"] == model and "not GPU time" in tags["stand_in"]
        assert params["device_model"].startswith("host CPU standing in for NVIDIA")
    _no_overlap(children)

    # the comparison table: printed, and logged on the parent run
    assert "time on each device" in result.stdout and "rtx2080ti ms (cpu stand-in)" in result.stdout
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "cross_device.txt", "cross_device.csv"} <= artifacts
    csv = Path(client.download_artifacts(parent.info.run_id, "cross_device.csv", str(tmp_path))).read_text()
    header, *rows = [line for line in csv.splitlines() if not line.startswith("#")]
    assert header.startswith("shape,variant,rtx2060_ms,rtx2060_status,rtx2080ti_ms")
    assert len(rows) == 4 and all(row.count(",ok") == 3 for row in rows)
    assert "not GPU time" in csv

    # the journal holds every record, settled
    journals = list((tmp_path / "journal" / "sweep").glob("*.jsonl"))
    assert len(journals) == 1 and journals[0].name.endswith(".done.jsonl")
    lines = [json.loads(line) for line in journals[0].read_text().splitlines()]
    assert sum(e["kind"] == "record" for e in lines) == 12 and sum(e["kind"] == "logged" for e in lines) == 12

    # run again: every job is already recorded, nothing runs
    again = _orchestrate(
        lab, tmp_path, "devices=[auto]", "stand_in=cpu", variants, "shapes=[tiny_s1,tiny_s2]"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "12 of 12 jobs already recorded" in again.stderr and "nothing to run" in again.stdout
    assert len(_runs(tmp_path)[2]) == 12


def test_a_model_the_cluster_lacks_is_one_error_line_in_seconds(lab: Lab, tmp_path: Path) -> None:
    t0 = time.monotonic()
    result = _orchestrate(lab, tmp_path, "devices=[rtx2060,h100]", "variants=[numpy_ref]", "shapes=[tiny_s1]")
    elapsed = time.monotonic() - t0
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    line = lines[0]
    assert "h100 (resource timing_h100)" in line  # missing altogether
    assert "rtx2060 with a GPU" in line  # declared, but on nodes without a GPU (stand-in only)
    for has in ("cpu (5 slots on 5 nodes)", "rtx2060 (2 slots on 2 nodes", "rtx2080ti (1 slot", "rtx3070"):
        assert has in line, line
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded


def test_a_dead_node_and_an_aborting_job_leave_every_other_job_recorded_once(
    lab: Lab, tmp_path: Path
) -> None:
    for marker in lab.started.iterdir():
        marker.unlink()
    shapes = "shapes=[tiny_s1,tiny_s2,1x9x9x3-5]"
    modules = "extra_variant_modules=[cluster_variants,crashing_variant]"
    args = _args(lab, tmp_path, "devices=[rtx2060]", "stand_in=cpu", "variants=[sleepy_ref,crash_abort]",
                 shapes, modules, "retries=1", "allow_failures=true")  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed = None
    try:
        deadline = time.monotonic() + 180
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            busy = [p.name for p in lab.started.iterdir() if lab.models.get(p.name) == "rtx2060"]
            if busy:
                killed = busy[0]
                node = next(n for n in lab.cluster.worker_nodes if n.node_id == killed)
                lab.cluster.remove_node(node, allow_graceful=False)
        assert killed, "no sleepy job started on an rtx2060 node"
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    _, parents, children = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6 and len({c.data.tags["job_key"] for c in children}) == 6  # each job once
    by_variant: dict[str, list[Run]] = {}
    for c in children:
        by_variant.setdefault(c.data.params["variant"], []).append(c)
    sleepy, crashed = by_variant["sleepy_ref"], by_variant["crash_abort"]
    assert all(c.data.tags["status"] == "ok" for c in sleepy), [c.data.tags.get("error") for c in sleepy]
    survivors = {n for n, m in lab.models.items() if m == "rtx2060" and n != killed}
    assert {
        c.data.params["node_id"] for c in sleepy
    } <= survivors  # the killed node's job ran again elsewhere
    assert all(c.data.tags["status"] == "failed" and c.info.status == "FAILED" for c in crashed)
    # a job whose worker died still says how it was dispatched and which model's node it needed
    assert all(
        c.data.tags["dispatch"] == "ray" and c.data.params["node_gpu_model"] == "rtx2060" for c in crashed
    )
    assert all("died" in c.data.tags["error"] or "Crashed" in c.data.tags["error"] for c in crashed)
    _no_overlap(sleepy)
    del lab.models[killed]


# --- make head / make worker ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(root_pids: set[int]) -> set[int]:
    """The pids of `root_pids` and all their descendants."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    mine, grew = set(root_pids), True
    while grew:
        new = {p for p, pp in parents.items() if pp in mine} - mine
        grew, mine = bool(new), mine | new
    return mine


def _listening(pids: set[int]) -> set[str]:
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout.splitlines()
    hosts = set()
    for line in ss:
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            hosts.add(line.split()[3].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:"))
    return hosts


def _status(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_make_head_declares_its_model_and_listens_on_loopback(tmp_path: Path) -> None:
    """`make head GPU=rtx2060 GPUS=0 BLOCK=1` for real: the node declares the model, Ray's servers listen
    on 127.0.0.1 only, and stopping the command stops the node."""
    port = _free_port()
    env = {k: v for k, v in _env().items() if k != "RAY_ADDRESS"}
    cli = [sys.executable, "-m", "orchestrator.cluster"]
    head = subprocess.Popen([*cli, "head", f"--port={port}", "--gpu=rtx2060", "--gpus=0", "--block"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        first = head.stdout.readline()  # type: ignore[union-attr]
        for flag in (
            "--head",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "gpu_model=rtx2060",
        ):
            assert flag in first, first
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline:  # the head is up once `status` answers
            status = _status([*cli, "status", f"--address=127.0.0.1:{port}"], env)
            if status.returncode == 0:
                break
            time.sleep(1)
        assert status is not None and status.returncode == 0, status.stderr if status else "no status"
        assert "model=rtx2060" in status.stdout, status.stdout
        assert "rtx2060 (1 slot on 1 node, no GPU: stand-in only)" in status.stdout, status.stdout
        hosts = _listening(_tree({head.pid}))
        assert hosts and all(h.startswith("127.") or h == "::1" for h in hosts), hosts  # never 0.0.0.0 or *
    finally:
        head.terminate()  # `ray start --block` drains and stops its node on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
    time.sleep(2)
    assert not _tree({head.pid}) - {head.pid}, "processes of the head outlived it"


def test_make_worker_declares_the_visible_gpus_of_its_model(tmp_path: Path) -> None:
    """The `ray start` line of `make worker`: CUDA_VISIBLE_DEVICES decides the GPU count, the model gives
    the slots and the label; bad input is one line."""
    cli = [sys.executable, "-m", "orchestrator.cluster", "worker"]
    env = {**_env(), "CUDA_VISIBLE_DEVICES": "0,2"}
    run = subprocess.run([*cli, "--head=10.0.0.1:6379", "--gpu=rtx3070", "--host=10.0.0.5", "--dry-run"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    line = run.stdout.strip()
    for part in ("--num-gpus=2", '"timing_rtx3070": 2', '"timing_cpu": 1', "gpu_model=rtx3070,gpu_count=2",
                 "--address=10.0.0.1:6379", "--node-ip-address=10.0.0.5", "RAY_AUTH_MODE=token"):  # fmt: skip
        assert part in line, line
    for args, expected in (
        (["--head=10.0.0.1:6379", "--gpu=rtx9999"], "unknown GPU model 'rtx9999'; valid models: rtx2060"),
        (["--head=10.0.0.1:6379"], "declare their model with GPU=MODEL"),
        (["--head=127.0.0.1:6379", "--gpu=rtx2060"], "single-machine mode"),
    ):
        bad = subprocess.run([*cli, *args, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and expected in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
