"""Job keys hold every setting that changes a measurement, skips say what was recorded, a resumed run
summarises the whole experiment, and failures are visible in the summary and the exit code.

- keys: each TimingSpec field, tolerance, seed, the profile (and its settings) and options change the key
  of a planned job; the experiment's name does not (the same measurement);
- through `python -m orchestrator` on a real local Ray and a SQLite store: a second run of a larger plan
  runs only the new job, says in one line which run recorded the other, and its summary and parent-run
  metrics cover both; a changed seed runs everything again; a crashing job exits 1 and is listed with
  its reason, and `allow_failures=true` exits 0;
- `python -m workers run --gpus` naming GPUs the machine lacks: one line, exit 2, no records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from orchestrator.config import CONF_DIR
from orchestrator.plan import make_plan
from workers.schema import Job, TimingSpec

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _plan(*overrides: str) -> list[Job]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=smoke", "variants=[numpy_ref]", "shapes=[tiny_s1]",
                                           *overrides])  # fmt: skip
    return make_plan(cfg)


# --- keys ----------------------------------------------------------------------------------------------
def test_every_setting_that_changes_a_measurement_changes_the_key() -> None:
    [base] = _plan()
    changed = {
        "timing=default": _plan("timing=default")[0],
        "tolerance": _plan("tolerance=1e-3")[0],
        "seed": _plan("seed=1")[0],
        "profile=ncu": _plan("profile=ncu")[0],
        "profile setting": _plan("profile=ncu", "profile.runs=2")[0],
        "options": _plan("options.cuda_max_registers=128")[0],
    }
    for name in TimingSpec.__dataclass_fields__:  # every timing field, one at a time
        value = getattr(base.timing, name)
        other = (not value) if isinstance(value, bool) else value + 1
        changed[f"timing.{name}"] = dataclasses.replace(
            base, timing=dataclasses.replace(base.timing, **{name: other})
        )
    keys = {name: job.key for name, job in changed.items()}
    assert base.key not in keys.values(), keys
    assert len(set(keys.values())) == len(keys), keys
    assert _plan("profile=ncu")[0].profile["tool"] == "ncu" and base.profile == {}
    assert dataclasses.replace(base, experiment="other").key == base.key  # the same measurement
    assert _plan()[0].key == base.key  # and stable
    assert Job.from_dict(json.loads(json.dumps(changed["profile=ncu"].to_dict()))) == changed["profile=ncu"]


# --- through python -m orchestrator -------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


def _orchestrate(store: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "+experiment=smoke", *overrides,
         f"tracking.uri=sqlite:///{store}/mlflow.db", f"tracking.artifact_root={store}/artifacts",
         f"hydra.run.dir={store}/out"],
        cwd=store, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _parents(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dsconv.role` = 'parent'")
    return sorted(runs, key=lambda r: r.info.start_time)


@pytest.mark.slow
def test_a_resume_runs_only_new_jobs_says_what_it_skipped_and_summarises_the_whole(tmp_path: Path) -> None:
    first = _orchestrate(tmp_path, "variants=[numpy_ref]", "shapes=[tiny_s1]")
    assert first.returncode == 0, first.stderr[-3000:]
    [parent1] = _parents(tmp_path)

    second = _orchestrate(tmp_path, "variants=[numpy_ref]", "shapes=[tiny_s1,tiny_s2]")
    assert second.returncode == 0, second.stderr[-3000:]
    said = [line for line in second.stderr.splitlines() if "already recorded in experiment" in line]
    assert len(said) == 1, second.stderr[-3000:]
    assert said[0].startswith("1 of 2 jobs already recorded") and f"run {parent1.info.run_id} of " in said[0]
    assert "numpy_ref · tiny_s1 · cpu: ok" in said[0] and "rerun=true" in said[0]
    assert "smoke: 2 jobs" in second.stdout and "tiny_s1" in second.stdout and "tiny_s2" in second.stdout
    parent2 = _parents(tmp_path)[-1]
    counts = [parent2.data.metrics[k] for k in ("jobs", "jobs_ok", "jobs_this_run", "jobs_recorded_before")]
    assert counts == [2, 2, 1, 1]

    reseeded = _orchestrate(tmp_path, "variants=[numpy_ref]", "shapes=[tiny_s1,tiny_s2]", "seed=7")
    assert reseeded.returncode == 0 and "already recorded" not in reseeded.stderr, reseeded.stderr[-3000:]
    assert _parents(tmp_path)[-1].data.metrics["jobs_this_run"] == 2


@pytest.mark.slow
def test_failed_jobs_are_listed_with_their_reason_and_exit_1_unless_allowed(tmp_path: Path) -> None:
    args = (
        "variants=[numpy_ref,crash_abort]",
        "shapes=[tiny_s1]",
        "extra_variant_modules=[crashing_variant]",
    )
    done = _orchestrate(tmp_path, *args)
    assert done.returncode == 1, done.stderr[-3000:]
    listed = done.stdout[done.stdout.index("1 job(s) failed or wrong") :]
    row = next(line for line in listed.splitlines() if "crash_abort" in line)
    assert "tiny_s1" in row and "cpu" in row and "failed" in row and "WorkerCrashedError" in row
    assert "numpy_ref" not in listed
    assert "exit 1" in done.stderr and "Traceback" not in done.stderr

    again = _orchestrate(tmp_path, *args, "allow_failures=true")  # nothing to run: the summary of both
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to run" in again.stdout and "1 job(s) failed or wrong" in again.stdout


# --- python -m workers run --gpus -------------------------------------------------------------------------
def _workers(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env()
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_workers_run_refuses_gpus_the_machine_lacks(tmp_path: Path) -> None:
    from conftest import has_cuda

    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([j.to_dict() for j in _plan()]))
    if not has_cuda():
        done = _workers("run", str(jobs), "--out", str(tmp_path / "none"), "--gpus", "0")
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "no GPU" in done.stderr and not (tmp_path / "none").exists()
    # A machine with two GPUs (nvidia-smi stands in for a driver this machine lacks): GPU 5 is refused.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 570.1\\nNVIDIA H200, 570.1\\n'\n")
    smi.chmod(0o755)
    done = _workers("run", str(jobs), "--out", str(tmp_path / "five"), "--gpus", "0,5",
                    path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no GPU 5" in done.stderr and "GPUs here: 0, 1" in done.stderr and not (tmp_path / "five").exists()
