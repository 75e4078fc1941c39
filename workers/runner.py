"""Run jobs in an isolated, long-lived child process, so that a crash becomes a `failed` record.

A native abort or segfault inside Halide or a CUDA driver kills the process it happens in. Jobs
therefore run in a child (multiprocessing, 'spawn': no inherited CUDA or thread state) that is kept
for many jobs, because importing TensorFlow or torch takes seconds, and replaced when it dies. The
child's stdout and stderr go to a log file; when it dies, the tail of what it wrote during the job
(Halide's and CUDA's messages, Python's faulthandler traceback) becomes the record's reason.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import importlib.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kernels import registry
from workers.job import MAX_ERROR_CHARS, base_record, execute
from workers.schema import Job, Record

STDERR_TAIL_BYTES = 20_000  # of the child's log kept as the crashed job's artifact
THREAD_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_SPAWN_LOCK = threading.Lock()  # os.environ is patched around a child's start: one start at a time
START_TIMEOUT_S = 300.0  # a child that cannot import the project in this long is broken


class ChildStartError(RuntimeError):
    """The child process could not start (an --import failed, or it died while importing)."""


def import_extra(spec: str) -> None:
    """Import a module by dotted name, or a Python file by path (registers variants it defines)."""
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).resolve()
        if not path.is_file():
            raise ImportError(f"--import {spec}: no such file")
        name = f"_workers_extra_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"--import {spec}: not a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def _child_main(conn: Connection, imports: list[str], log_path: str | None) -> None:
    """The child (its environment, `ChildRunner.env` included, inherited from its start): redirect
    output to the log, import extras, then execute jobs until told to stop."""
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    faulthandler.enable()  # a segfault or abort leaves Python's stack in the log
    try:
        for spec in imports:
            import_extra(spec)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        job = Job.from_dict(message)
        print(f"=== job {job.key}", flush=True)
        try:
            record = execute(job)
        except BaseException as exc:  # execute never raises for a job's problems; this is a bug
            record = base_record(job)
            record.tags["error"] = f"worker: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        conn.send(asdict(record))


def describe_exit(exitcode: int | None) -> str:
    """`killed by signal SIGABRT (6)` or `exited with code 3` for a dead child's exit code."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal"
        return f"killed by signal {name} ({-exitcode})"
    return f"exited with code {exitcode}"


def thread_limits(children: int, cores: int | None = None) -> dict[str, str]:
    """The environment that gives each of `children` worker processes its share of the cores for its
    BLAS and OpenMP pools (the float64 reference's matrix product). Without it, twelve screening
    workers on a 16-core GPU node each start 16 OpenBLAS threads and oversubscribe the cores many times
    over, which makes the reference many times slower (docs/evidence/kernels.md, "thread limits").
    Variables the user has set are left alone."""
    if children <= 1:
        return {}
    from workers.hostinfo import available_cores

    share = max(1, (cores or available_cores()) // children)
    return {name: str(share) for name in THREAD_POOL_VARS if name not in os.environ}


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` set, restored after: what a child spawned inside inherits from birth."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ChildRunner:
    """Executes jobs one at a time in a child process, starting a new one after a crash or timeout."""

    def __init__(
        self,
        imports: list[str] | None = None,
        log_path: Path | None = None,
        job_timeout_s: float = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.imports = list(imports or [])
        # the child's environment from its start, before its imports: CUDA_VISIBLE_DEVICES pins it to a
        # GPU, thread_limits() sizes the BLAS pools that numpy starts when it is imported
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else None
        self.job_timeout_s = job_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self.restarts = 0

    def __enter__(self) -> ChildRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child_main,
            args=(child, self.imports, str(self.log_path) if self.log_path else None),
            name="workers-child",
            daemon=True,
        )
        with _SPAWN_LOCK, _environ(self.env):
            proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise ChildStartError(f"worker process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            kind, detail = parent.recv()
        except EOFError:
            proc.join(5)
            raise ChildStartError(f"worker process {describe_exit(proc.exitcode)} while starting") from None
        if kind != "ready":
            proc.join(5)
            raise ChildStartError(f"worker process could not import its modules: {detail}")
        self._proc, self._conn = proc, parent

    def _discard(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(10)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None
        self.restarts += 1

    def close(self) -> None:
        """Ask the child to stop, and make sure it has."""
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(10)
            except (OSError, ValueError):
                pass
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.log_path else 0
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(offset, self._log_size() - STDERR_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def run(self, job: Job) -> Record:
        """Execute `job` in the child; a dead or hung child gives a `failed` record naming why."""
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._discard()
            self._start()
        assert self._conn is not None and self._proc is not None
        offset = self._log_size()
        start = time.monotonic()
        self._conn.send(job.to_dict())
        while True:
            try:
                if self._conn.poll(0.5):
                    return Record(**self._conn.recv())
            except (EOFError, OSError):
                pass  # the child died mid-job: its pipe closed
            if not self._proc.is_alive():
                self._proc.join(5)
                return self._crashed(job, f"worker process {describe_exit(self._proc.exitcode)}", offset)
            if self.job_timeout_s and time.monotonic() - start > self.job_timeout_s:
                why = f"job exceeded {self.job_timeout_s:g} s; worker process killed"
                return self._crashed(job, why, offset)

    def _crashed(self, job: Job, why: str, offset: int) -> Record:
        self._discard()
        record = base_record(job)
        with contextlib.suppress(Exception):  # known here unless it came from an --import module
            record.params["framework"] = registry.get(job.variant).framework
        log = self._log_since(offset)
        last_error = _last_error_line(log)
        record.tags["error"] = (f"crash: {why}" + (f"; last output: {last_error}" if last_error else ""))[
            :MAX_ERROR_CHARS
        ]
        if log:
            record.artifacts["stderr.txt"] = log
        return record


def _last_error_line(log: str) -> str:
    """The reason a child died, from what it wrote: the last error-like line before Python's own
    faulthandler dump (Halide's `Error:`, a CUDA error, an assertion), else the dump's first line."""
    fatal = log.rfind("Fatal Python error:")
    before = log[:fatal] if fatal >= 0 else log
    keys = ("error", "abort", "fault", "assert", "exception", "terminate")
    for line in reversed(before.splitlines()):
        text = line.strip()
        if text and not text.startswith(("File ", "===")) and any(k in text.lower() for k in keys):
            return text
    if fatal >= 0:
        return log[fatal:].splitlines()[0].strip()
    return next((ln.strip() for ln in reversed(log.splitlines()) if ln.strip() and "===" not in ln), "")
