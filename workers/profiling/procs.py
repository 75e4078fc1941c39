"""Running the profilers' processes: environment, time limit, output kept in a log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Completed:
    """What a profiler process did: its exit status (None when it ran out of time) and its output."""

    argv: list[str]
    returncode: int | None
    output: str  # stdout and stderr together, in order
    timed_out: bool


def target_env() -> dict[str, str]:
    """The worker's environment, with this repository importable and Python's output unbuffered."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def python_argv(python: str | None, module: str, *args: str) -> list[str]:
    """`python -m module args...` with the configured interpreter (the worker's own by default)."""
    return [python or sys.executable, "-m", module, *args]


def run(argv: list[str], timeout_s: float, cwd: Path, log: Path | None = None) -> Completed:
    """Run `argv` in its own process group; on timeout the whole group (the profiled target too) is killed.

    Output goes to `log` (appended, after the command line) as well as into the result.
    """
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=target_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    if log is not None:
        with log.open("a") as f:
            f.write("$ " + " ".join(argv) + "\n" + (output or "") + "\n")
    return Completed(argv, None if timed_out else proc.returncode, output or "", timed_out)


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of `text`, shortened; `(no output)` when there is none."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else "(no output)"
