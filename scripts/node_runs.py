"""What a tracking server holds, for scripts/reference_runs.sh on a GPU node (stdlib + MLflow's client).

    python scripts/node_runs.py experiments            names of the experiments that have runs
    python scripts/node_runs.py show EXPERIMENT        one line per run (role, status, variant, shape,
                                                       device, the node's GPU, gpu_model_mismatch, delivery)
                                                       and a last line: runs by status, job keys seen twice
    python scripts/node_runs.py wait EXPERIMENT N [S]  wait up to S seconds (default 300) until N child runs
                                                       are FINISHED; exit 1 if they are not

The server is MLFLOW_TRACKING_URI's. `show` exits 1 when a run is left RUNNING or a job was logged twice:
the two things the fault drills of issue 23 must never leave behind.
"""

from __future__ import annotations

import collections
import sys
import time

from mlflow.tracking import MlflowClient


def _runs(client: MlflowClient, name: str, most: int = 5000) -> list:
    exp = client.get_experiment_by_name(name)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=most)


def experiments(client: MlflowClient) -> int:
    for exp in client.search_experiments():
        if _runs(client, exp.name, most=1):
            print(exp.name)
    return 0


def show(client: MlflowClient, name: str) -> int:
    runs = _runs(client, name)
    fields = ("variant", "shape", "device")
    tags = ("node_gpu_model", "node_gpu_name", "gpu_model_mismatch", "dispatch", "dsconv.delivery")
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        role = run.data.tags.get("dsconv.role", "?")
        row = [role, run.info.status, run.data.tags.get("status", "-")]
        row += [run.data.params.get(f, "-") for f in fields] + [run.data.tags.get(t, "-") for t in tags]
        print("  ".join(row))
    children = [r for r in runs if r.data.tags.get("dsconv.role") == "child"]
    keys = collections.Counter(r.data.tags.get("job_key") for r in children)
    twice = sorted(k for k, n in keys.items() if n > 1)
    by_status = collections.Counter(r.info.status for r in runs)
    print(
        f"{name}: {len(runs)} runs {dict(by_status)}; {len(children)} child runs, {len(keys)} job keys; "
        f"logged twice: {twice or 'none'}"
    )
    return 1 if by_status.get("RUNNING") or twice else 0


def wait(client: MlflowClient, name: str, n: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            done = [
                r for r in _runs(client, name)
                if r.data.tags.get("dsconv.role") == "child" and r.info.status == "FINISHED"
            ]  # fmt: skip
        except Exception:  # the server restarting, or the experiment not there yet
            done = []
        if len(done) >= n:
            print(f"{name}: {len(done)} child run(s) finished")
            return 0
        time.sleep(0.5)
    print(f"{name}: fewer than {n} child run(s) finished after {seconds:.0f} s", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    client = MlflowClient()
    if argv[:1] == ["experiments"]:
        return experiments(client)
    if argv[:1] == ["show"] and len(argv) == 2:
        return show(client, argv[1])
    if argv[:1] == ["wait"] and len(argv) in (3, 4):
        return wait(client, argv[1], int(argv[2]), float(argv[3]) if len(argv) == 4 else 300.0)
    print("usage: node_runs.py experiments | show EXPERIMENT | wait EXPERIMENT N [SECONDS]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
