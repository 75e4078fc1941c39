"""End to end through a real local Ray and a temporary MLflow store, read back as a user would.

- `smoke` runs through `python -m orchestrator` and its runs are checked in MLflow: one parent, a child
  per job with the params, metrics, tags and artifacts of the record, every run ended;
- a job that kills its worker process (a test-only variant calling os.abort()) is a `failed` child
  naming the cause, and the other jobs are still ok;
- `dispatch=export` → `python -m workers run` → `python -m orchestrator.ingest` twice adds runs once,
  and they look like the runs that went through Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHAPE_PARAMS = ("variant", "framework", "shape", "n", "h", "w", "c", "co", "stride", "device")
OK_METRICS = ("time_ms", "time_min_ms", "gflops", "gbps", "pct_roofline", "rel_error", "compile_s")


def _env() -> dict[str, str]:
    drop = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DSCONV_JOURNAL_DIR")  # each test's own store and journal
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _orchestrate(store: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [sys.executable, "-m", "orchestrator", *overrides, f"tracking.uri=sqlite:///{store}/mlflow.db",
         f"tracking.artifact_root={store}/artifacts", f"hydra.run.dir={store}/out"],
        cwd=store,
    )  # fmt: skip


def _runs(store: Path, experiment: str) -> tuple[MlflowClient, list[Run], list[Run]]:
    """(client, parents, children) of an experiment in the store; asserts none is left RUNNING."""
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert all(r.info.status in ("FINISHED", "FAILED", "KILLED") for r in runs), [r.info.status for r in runs]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module", autouse=True)
def cold_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A compile cache and host measurements of this module's own, as on a fresh clone."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSCONV_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    store = tmp_path_factory.mktemp("smoke")
    return store, _orchestrate(store, "+experiment=smoke")


def test_smoke_records_one_parent_and_a_child_per_job(
    smoke: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    store, result = smoke
    client, parents, children = _runs(store, "smoke")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["experiment"] == "smoke"
    assert parent.data.params["devices"] == "cpu"
    assert len(parent.data.params["git_commit"]) >= 7
    assert parent.data.metrics["jobs"] == 6 and parent.data.metrics["jobs_ok"] == 6
    assert "config.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]

    assert len(children) == 3 * 2  # variants x shapes
    assert {(c.data.params["variant"], c.data.params["shape"]) for c in children} == {
        (v, s) for v in ("numpy_ref", "halide_app", "tf_separable") for s in ("tiny_s1", "tiny_s2")
    }
    for child in children:
        params, metrics, tags = child.data.params, child.data.metrics, child.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["status"] == "ok", tags.get("error")
        assert child.info.status == "FINISHED"
        assert tags["job_key"].startswith(f"{params['variant']}.{params['shape']}.cpu.")
        for key in (*SHAPE_PARAMS, "target"):
            assert params.get(key), f"{params['variant']}: param {key} missing"
        for key in OK_METRICS:
            assert key in metrics, f"{params['variant']}: metric {key} missing"
        assert metrics["time_ms"] > 0 and metrics["rel_error"] <= 1e-4
        assert 0 < metrics["pct_roofline"] < 100  # a roof no ok record passes (tests/test_roofline.py)
        assert params["roof_compute"] == "fp32 FMA peak (measured)"
        assert params["roof_memory"] in ("LLC", "DRAM")
        assert child.info.run_name == f"{params['variant']} · {params['shape']} · cpu"
        assert metrics["job_s"] > 0
        assert client.list_artifacts(child.info.run_id), "no artifacts"
    frameworks = {c.data.params["variant"]: c.data.params["framework"] for c in children}
    assert frameworks == {"numpy_ref": "numpy", "halide_app": "halide", "tf_separable": "tensorflow"}
    app = next(c for c in children if c.data.params["variant"] == "halide_app")
    assert {"schedule.py", "lowered.stmt"} <= {a.path for a in client.list_artifacts(app.info.run_id)}

    assert "best Halide" in result.stdout and "geometric mean" in result.stdout  # the summary table
    assert f"/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_job_that_kills_its_process_is_recorded_failed(tmp_path: Path) -> None:
    _orchestrate(
        tmp_path, "+experiment=smoke", "variants=[numpy_ref,crash_abort]", "shapes=[tiny_s1]",
        "extra_variant_modules=[crashing_variant]", "retries=1", "profile=ncu",
        "allow_failures=true",  # a failed job exits 1 otherwise (tests/test_resume.py)
    )  # fmt: skip
    _, parents, children = _runs(tmp_path, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["jobs_failed"] == 1 and parents[0].data.metrics["jobs_ok"] == 1
    by_variant = {c.data.params["variant"]: c for c in children}
    crashed = by_variant["crash_abort"]
    assert crashed.data.tags["status"] == "failed"
    assert crashed.info.status == "FAILED"
    assert "WorkerCrashedError" in crashed.data.tags["error"]
    assert crashed.data.params["shape"] == "tiny_s1" and crashed.data.params["framework"] == "numpy"
    assert by_variant["numpy_ref"].data.tags["status"] == "ok"
    # profile=ncu observes ok jobs after timing; on the CPU it says why there is no profile
    assert by_variant["numpy_ref"].data.tags["profile_status"].startswith("no GPU")


def test_export_then_workers_run_then_ingest_twice_adds_runs_once(
    tmp_path: Path, smoke: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    export = tmp_path / "export"
    _orchestrate(
        tmp_path, "+experiment=smoke", "variants=[numpy_ref]", "dispatch=export", f"dispatch.out={export}"
    )
    bundle = tmp_path / "bundle"
    _run(
        [sys.executable, "-m", "workers", "run", str(export / "jobs.json"), "--out", str(bundle)],
        cwd=tmp_path,
    )
    assert (bundle / "records.jsonl").is_file()
    ingest = [
        sys.executable, "-m", "orchestrator.ingest", str(bundle), "--experiment", "smoke_ingested",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifact-root", str(tmp_path / "artifacts"),
    ]  # fmt: skip
    first = _run(ingest, cwd=tmp_path)
    assert "logged 2 records" in first.stdout
    second = _run(ingest, cwd=tmp_path)
    assert "nothing logged" in second.stdout
    _, parents, children = _runs(tmp_path, "smoke_ingested")
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.params["experiment"] == "smoke_ingested"
    assert all(c.data.tags["status"] == "ok" for c in children)

    # The ingested runs look like the runs that went through Ray: same params, metrics and tags.
    store, _ = smoke
    _, _, ray_children = _runs(store, "smoke")
    ray_run = next(c for c in ray_children if c.data.params["variant"] == "numpy_ref")
    ingested = children[0]
    assert set(ingested.data.params) == set(ray_run.data.params)
    assert set(ingested.data.metrics) == set(ray_run.data.metrics)
    volatile = {"dsconv.source", "mlflow.runName"}
    assert set(ingested.data.tags) - volatile == set(ray_run.data.tags) - volatile

    # The same jobs measured again (another GPU of the node, a re-run) are new measurements: kept.
    again = tmp_path / "bundle_again"
    _run(
        [sys.executable, "-m", "workers", "run", str(export / "jobs.json"), "--out", str(again)], cwd=tmp_path
    )
    assert "logged 2 records" in _run([*ingest[:3], str(again), *ingest[4:]], cwd=tmp_path).stdout
    assert "nothing logged" in _run([*ingest[:3], str(again), *ingest[4:]], cwd=tmp_path).stdout
    _, parents, children = _runs(tmp_path, "smoke_ingested")
    assert len(parents) == 2 and len(children) == 4 and len({c.data.tags["job_key"] for c in children}) == 2


LOOPBACK_CHECK = """
import json, os, re, subprocess
from orchestrator.dispatch import RayDispatcher
d = RayDispatcher()
d.connect({"cpu": "cpu"})
import ray
resources = ray.cluster_resources()
parents = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        pass
mine, grew = {os.getpid()}, True
while grew:
    new = {p for p, pp in parents.items() if pp in mine} - mine
    grew, mine = bool(new), mine | new
ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
listening = sorted({line.split()[3].rsplit(":", 1)[0] for line in ss
                    if {int(p) for p in re.findall(r"pid=(\\d+)", line)} & mine})
d.close()
print(json.dumps({"timing_cpu": resources.get("timing_cpu"), "listening": listening}))
"""


def test_local_ray_has_one_timing_slot_per_device_and_listens_on_loopback_only(tmp_path: Path) -> None:
    import json

    result = _run([sys.executable, "-c", LOOPBACK_CHECK], cwd=tmp_path, timeout=180)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["timing_cpu"] == 1  # one timing job at a time on the host CPU
    hosts = {ip.strip("[]").removeprefix("::ffff:") for ip in seen["listening"]}
    assert hosts and all(h.startswith("127.") or h == "::1" for h in hosts), seen  # never 0.0.0.0 or *


CLUSTER = """
import os, subprocess, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the test cluster listens on loopback only
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 2, "resources": {"timing_cpu": 1}, "include_dashboard": False})
env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
try:
    for devices in ("[cpu]", "[h100]"):
        r = subprocess.run([sys.executable, "-m", "orchestrator", *sys.argv[1:], "cluster=ray",
                            f"cluster.address={cluster.address}", f"devices={devices}"],
                           env=env, capture_output=True, text=True, timeout=240)
        print(f"rc={r.returncode}")
        print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "")
finally:
    cluster.shutdown()
"""


def test_cluster_address_runs_jobs_on_an_existing_cluster(tmp_path: Path) -> None:
    store = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts",
             f"hydra.run.dir={tmp_path}/out"]  # fmt: skip
    result = _run(
        [sys.executable, "-c", CLUSTER, "+experiment=smoke", "variants=[numpy_ref]", *store], cwd=tmp_path
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "rc=0", result.stdout
    assert lines[2] == "rc=2" and "no node of the Ray cluster" in lines[3] and "timing_h100" in lines[3]
    _, parents, children = _runs(tmp_path, "smoke")
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["status"] == "ok" for c in children)


def _children_logged(journals: Path) -> int:
    """Jobs whose child run is complete in MLflow so far, read from the driver's journal (`logged` lines:
    plain appended files, so a read never waits on the SQLite store's locks)."""
    from orchestrator import journal

    return sum(len(journal.read(path).logged) for path in journals.glob("**/*.jsonl"))


def test_ctrl_c_ends_the_parent_run_killed_and_the_exit_code_is_130(tmp_path: Path) -> None:
    import signal
    import time

    args = [
        sys.executable, "-m", "orchestrator", "+experiment=smoke", "variants=[numpy_ref]", "timing=default",
        # enough jobs that one is logged well before the last (on a loaded machine the poll below is slow)
        "shapes=[tiny_s1,app,mbv1_112_32_s1,mbv1_112_64_s2,mbv1_56_128_s1,mbv1_56_128_s2,mbv1_28_256_s1,"
        "mbv1_28_256_s2,mbv1_14_512_s1,mbv1_14_512_s2,mbv1_7_1024_s1]", "retries=0",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts",
        f"hydra.run.dir={tmp_path}/out",
    ]  # fmt: skip
    # Ctrl-C as a terminal delivers it: the driver starts with SIGINT's default action, whatever this test
    # runner inherited (a shell's background job starts with SIGINT ignored, and Python keeps it so)
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        finished = 0
        while not finished and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            finished = _children_logged(tmp_path / "journal")
        assert finished, "no job finished before the deadline"
        assert proc.poll() is None, "the run ended before a finished job was seen: nothing left to interrupt"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    _, parents, done = _runs(tmp_path, "smoke")  # asserts none is RUNNING
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert 1 <= len(done) < 11 and parents[0].data.metrics["jobs"] == len(done)
