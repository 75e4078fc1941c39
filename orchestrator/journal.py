"""The local journal: every finished job's Record on disk (fsync) before MLflow hears of it.

One append-only JSONL file per invocation of the driver, `<root>/<experiment>/<time>-<host>-<pid>.jsonl`
(root: `tracking.journal`; by default beside a SQLite store, so mlflow/journal/ for the embedded one, and
mlflow/journal/ for a tracking server). Each line is one JSON object with a `kind`:

    header  experiment, tracking_uri, artifact_root, host, pid, created   (the first line)
    parent  run_id                  the invocation's MLflow parent run
    record  record_id, record       a finished job's Record, written before it is sent to MLflow
    logged  record_id, run_id       that record is now a complete child run in MLflow
    end     status, metrics, artifacts  the invocation ended (FINISHED | KILLED | FAILED); parent's data
    ended                           the parent run was ended in MLflow accordingly

Lines are only ever appended, each with one write() and an fsync, so a crash loses at most the line
being written; a torn last line is ignored when reading. The writer holds an exclusive lock on its file
for as long as it runs: `orchestrator.sync` skips a locked journal (its driver is still delivering)
and, once it holds the lock, knows the writer is gone. A journal whose every record is logged and whose
parent run is ended is renamed `*.done.jsonl` and no longer read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from workers.schema import Record

RECORD_ID_TAG = "dsconv.record_id"  # the same tag as orchestrator.record.RECORD_ID_TAG
DONE_SUFFIX = ".done.jsonl"
KINDS = ("header", "parent", "record", "logged", "end", "ended")


class JournalBusy(OSError):
    """The journal is locked by a live writer."""


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name) or "_"


def _ends_torn(path: Path) -> bool:
    """True when the file is not empty and its last byte is not a newline."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def default_root(tracking_uri: str) -> Path:
    """Where journals go unless configured: beside a SQLite store (`<its folder>/journal`, so that the
    embedded store's journal is mlflow/journal), else (a server) this repository's mlflow/journal."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / "journal"
    return Path(__file__).resolve().parents[1] / "mlflow" / "journal"


def journal_root(tracking_uri: str, configured: str | None = None) -> Path:
    """The journal folder: `configured` (tracking.journal) if set, else default_root(tracking_uri)."""
    return Path(configured) if configured else default_root(tracking_uri)


def experiment_dir(root: Path, experiment: str) -> Path:
    """The folder of an experiment's journals."""
    return Path(root) / _safe(experiment)


class Journal:
    """One invocation's journal, open for appending and locked until `close`."""

    def __init__(self, path: Path, handle: TextIO) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def create(
        cls, root: Path, experiment: str, tracking_uri: str, artifact_root: str | None = None
    ) -> Journal:
        """A new journal file for an invocation of `experiment` logging to `tracking_uri`."""
        folder = experiment_dir(root, experiment)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = folder / f"{stamp}-{_safe(socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
        journal = cls.open(path)
        journal.append(
            "header",
            experiment=experiment,
            tracking_uri=tracking_uri,
            artifact_root=artifact_root,
            host=socket.gethostname(),
            pid=os.getpid(),
            created=time.time(),
        )
        return journal

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open an existing journal for appending, taking its lock; JournalBusy if a writer holds it."""
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held open and locked until close)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise JournalBusy(f"{path} is being written by a running driver") from None
        journal = cls(path, handle)
        if _ends_torn(path):  # its writer died mid-line: end that line, or the next one would join it
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        return journal

    def append(self, kind: str, **fields: Any) -> None:
        """Append one line and fsync it: when this returns, the line survives a crash of this machine."""
        if kind not in KINDS:
            raise ValueError(f"journal line kind must be one of {KINDS}, got {kind!r}")
        line = json.dumps({"kind": kind, "at": time.time(), **fields}, sort_keys=True) + "\n"
        self._handle.write(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def parent(self, run_id: str) -> None:
        self.append("parent", run_id=run_id)

    def record(self, record: Record) -> str:
        """Journal a finished job's record; returns its record id (also set as its RECORD_ID_TAG tag)."""
        record_id = record.tags.get(RECORD_ID_TAG) or uuid.uuid4().hex
        record.tags[RECORD_ID_TAG] = record_id
        self.append("record", record_id=record_id, record=json.loads(record.to_json()))
        return record_id

    def logged(self, record_id: str, run_id: str) -> None:
        self.append("logged", record_id=record_id, run_id=run_id)

    def end(self, status: str, metrics: dict[str, float], artifacts: dict[str, str] | None = None) -> None:
        """The invocation ended: the parent run's status, metrics and text artifacts (comparison tables)."""
        self.append("end", status=status, metrics=metrics, artifacts=artifacts or {})

    def ended(self) -> None:
        self.append("ended")

    def close(self, settled: bool = False) -> Path:
        """Release the lock; a settled journal (all logged, parent ended) is renamed *.done.jsonl."""
        if not self._handle.closed:
            if settled and not self.path.name.endswith(DONE_SUFFIX):
                done = self.path.with_name(self.path.name.removesuffix(".jsonl") + DONE_SUFFIX)
                os.replace(self.path, done)
                self.path = done
            self._handle.close()
        return self.path

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class JournalState:
    """What a journal file says: its records, which are in MLflow, and how its invocation ended."""

    path: Path
    experiment: str = ""
    tracking_uri: str = ""
    artifact_root: str | None = None
    parent_id: str | None = None
    records: dict[str, Record] = field(default_factory=dict)  # record id → Record, in journal order
    logged: dict[str, str] = field(default_factory=dict)  # record id → child run id
    end: dict[str, Any] | None = None  # {"status": ..., "metrics": {...}, "artifacts": {...}}
    ended: bool = False
    torn: int = 0  # unreadable lines (a crash mid-write)

    @property
    def pending(self) -> list[tuple[str, Record]]:
        """Records not yet complete child runs in MLflow, in journal order."""
        return [(rid, r) for rid, r in self.records.items() if rid not in self.logged]

    @property
    def settled(self) -> bool:
        """Every record logged and the parent run ended: nothing left to do."""
        return not self.pending and self.ended


def read(path: Path) -> JournalState:
    """Parse a journal file; torn or unknown lines are counted and skipped."""
    state = JournalState(path=Path(path))
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                kind = entry["kind"]
                if kind == "header":
                    state.experiment = entry["experiment"]
                    state.tracking_uri = entry["tracking_uri"]
                    state.artifact_root = entry.get("artifact_root")
                elif kind == "parent":
                    state.parent_id = entry["run_id"]
                elif kind == "record":
                    state.records[entry["record_id"]] = Record(**entry["record"])
                elif kind == "logged":
                    state.logged[entry["record_id"]] = entry["run_id"]
                elif kind == "end":
                    state.end = {
                        "status": entry["status"],
                        "metrics": entry.get("metrics", {}),
                        "artifacts": entry.get("artifacts", {}),
                    }
                elif kind == "ended":
                    state.ended = True
                else:
                    state.torn += 1
            except (ValueError, KeyError, TypeError):
                state.torn += 1
    return state


def open_files(root: Path, experiment: str | None = None) -> list[Path]:
    """Journal files not yet settled (not *.done.jsonl), oldest first; one experiment's or all."""
    root = Path(root)
    folders = (
        [experiment_dir(root, experiment)] if experiment else sorted(p for p in root.glob("*") if p.is_dir())
    )
    files = [p for folder in folders for p in folder.glob("*.jsonl") if not p.name.endswith(DONE_SUFFIX)]
    return sorted(files, key=lambda p: p.name)


def pending_keys(root: Path, experiment: str, tracking_uri: str | None = None) -> set[str]:
    """Job keys of records journaled for `experiment` (and `tracking_uri`) but not yet in MLflow."""
    keys: set[str] = set()
    for path in open_files(root, experiment):
        with contextlib.suppress(OSError):
            state = read(path)
            if tracking_uri is None or state.tracking_uri == tracking_uri:
                keys.update(r.key for _, r in state.pending)
    return keys
