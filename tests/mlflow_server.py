"""A real MLflow tracking server for tests, started through `mlflow/server.sh` (what `make mlflow-server`
runs) on 127.0.0.1 and a free port, with its SQLite store and artifacts in a temporary folder.

`start` returns once the script says the server is healthy (it polls /health itself); `stop` sends
SIGTERM to the script, which stops the server, and kills the process group if that takes too long.

The test servers run without MLflow's job execution (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): MLflow 3.17
otherwise starts a job runner and a Huey consumer per GenAI job type beside the server, each a Python
process importing mlflow, which nothing here uses (tracking, artifacts and the UI do not): about 40 CPU-s
a start, measured with a /proc sampler over a full `pytest -n 2` run on the project's 2-core VM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEALTHY = "MLflow tracking server healthy at"
START_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """`mlflow/server.sh` on 127.0.0.1:<port> with the store in `folder`; restartable on the same port."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log = folder / "server.log"

    def start(self) -> MlflowServer:
        """Start the server and wait until server.sh reports /health answered."""
        env = {
            **os.environ,
            "MLFLOW_PORT": str(self.port),
            "MLFLOW_BACKEND_URI": f"sqlite:///{self.folder}/mlflow.db",
            "MLFLOW_ARTIFACTS_DIR": str(self.folder / "artifacts"),
            "MLFLOW_HEALTH_TIMEOUT": str(START_TIMEOUT_S - 10),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        env.pop("MLFLOW_HOST", None)  # the default: 127.0.0.1
        self.folder.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the same log
        log = open(self.log, "a")  # noqa: SIM115 (the server writes it until stopped)
        self.proc = subprocess.Popen(
            [str(ROOT / "mlflow" / "server.sh")], env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if HEALTHY in self.log.read_bytes()[offset:].decode(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow/server.sh exited {self.proc.returncode}: {self.tail()}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the MLflow server did not become healthy in {START_TIMEOUT_S} s: {self.tail()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM to server.sh, which stops it; the whole group killed after 60 s)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # what is left of its process group (server workers)
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _listening(self.port):
            time.sleep(0.5)

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
