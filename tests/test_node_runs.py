"""scripts/node_runs.py, the fault drills' inspector on a GPU node: `show` fails on a run left RUNNING or a
job logged twice, `wait` on too few finished child runs, and bad usage is one line with exit 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def _node_runs():
    spec = importlib.util.spec_from_file_location("node_runs", ROOT / "scripts" / "node_runs.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _child(client: MlflowClient, exp: str, key: str, end: bool = True) -> None:
    run = client.create_run(exp, tags={"dsconv.role": "child", "job_key": key, "status": "ok"})
    if end:
        client.set_terminated(run.info.run_id, "FINISHED")


def test_show_and_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("drill")
    _child(client, exp, "a")
    _child(client, exp, "b")
    nr = _node_runs()
    assert nr.main(["show", "drill"]) == 0
    assert "logged twice: none" in capsys.readouterr().out
    assert nr.main(["wait", "drill", "2", "5"]) == 0
    assert nr.main(["wait", "drill", "3", "1"]) == 1  # only two finished
    assert nr.main(["experiments"]) == 0 and capsys.readouterr().out.splitlines()[-1] == "drill"
    _child(client, exp, "a")  # the same job logged again
    _child(client, exp, "c", end=False)  # and one left RUNNING
    assert nr.main(["show", "drill"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert "'RUNNING': 1" in last and "logged twice: ['a']" in last
    assert nr.main(["show"]) == 2 and len(capsys.readouterr().err.splitlines()) == 1
