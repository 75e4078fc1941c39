"""Getting journaled records into MLflow: live while an experiment runs, and later with this command.

    python -m orchestrator.sync                        # every open journal, into the store each names
    python -m orchestrator.sync --experiment sweep     # one experiment's journals
    python -m orchestrator.sync --tracking-uri http://127.0.0.1:5000

`Delivery` is the driver's only path to MLflow: each finished job's Record is scrubbed of secrets,
journaled (fsync), and only then logged. When the tracking server goes away mid-sweep, the sweep goes on,
records pile up in the journal, and they are logged as soon as the server answers again (checked at
each new record and at the end); what is still missing when the driver exits is logged by this command
or by the next run of the experiment. Each journaled record becomes exactly one complete child run: its
record id is a tag, a complete run with it means done, and a half-written one (the server died during
the write) is deleted and written again. The parent run is ended with the status the driver journaled
(FAILED when the driver died without one).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import CONF_DIR, ConfigError, group_options
from orchestrator.journal import Journal, JournalBusy, open_files, read
from workers.schema import Job, Record

EXIT_BAD_INPUT = 2
DELIVERY_TAG = "dsconv.delivery"  # set to `journal` on a child run that was logged late, from the journal
# MLflow's HTTP client retries a refused connection for minutes by default; the driver would stall on
# every record while the server is away. These defaults (overridable in the environment) fail in seconds.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run ... at" line per child run
}
PROBE_TIMEOUT_S = 2.0


def fail_fast_http() -> None:
    """Make MLflow's HTTP client give up on an absent server in seconds, and keep it from printing a
    link per run (unless the user set these variables otherwise)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a tracking server's /health answers 200 (a database URI is always taken as reachable)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- live: the driver's path to MLflow --------------------------------------------------------------
class Delivery:
    """Journal first, then MLflow, for one invocation: survives the tracking server going away.

    Used as a context manager around the sweep: leaving on Ctrl-C ends the parent run KILLED, on an
    exception FAILED (journaled either way); `finish` ends it normally with the summary metrics.
    """

    def __init__(self, recorder: Any, journal: Journal, say: Callable[[str], None] = _stderr) -> None:
        self.recorder = recorder  # orchestrator.record.Recorder
        self.journal = journal
        self.say = say
        self.records: list[Record] = []  # every record of this invocation, scrubbed
        self._pending: dict[str, tuple[Record, Job | None]] = {}  # journaled, not yet in MLflow
        self.online = True
        self._interrupted_writes = False  # a write failed: later writes check for half-written runs
        self.finished = False

    @property
    def waiting(self) -> int:
        """Records journaled but not yet in MLflow."""
        return len(self._pending)

    def start(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
        run_name: str | None = None,
    ) -> str:
        """Open the parent run (the tracking store must answer now) and journal its id."""
        run_id = self.recorder.start_parent(params, tags=tags, artifacts=artifacts, run_name=run_name)
        self.journal.parent(run_id)
        return run_id

    def add(self, job: Job | None, record: Record) -> Record:
        """Scrub, journal (fsync), then log one finished job's record; returns the scrubbed record."""
        from orchestrator.record import deferred_interrupt, scrub_record

        record = scrub_record(record)
        with deferred_interrupt():  # journaled means counted and pending: Ctrl-C waits for all three
            record_id = self.journal.record(record)
            self.records.append(record)
            self._pending[record_id] = (record, job)
        self.deliver()
        return record

    def deliver(self) -> None:
        """Log every journaled record MLflow lacks, in order; stop quietly at the first failure."""
        if not self._pending:
            return
        if not self.online:
            if not reachable(self.recorder.tracking_uri):
                return
            self.online = True
            self.say(f"MLflow answers again: logging {len(self._pending)} journaled record(s)")
        from orchestrator.record import deferred_interrupt

        for record_id, (record, job) in list(self._pending.items()):
            # Logged, journaled as logged and no longer pending, or none of it: a Ctrl-C between the
            # child run and the journal line would log the record twice when finish() delivers again.
            with deferred_interrupt():
                try:
                    if self._interrupted_writes:
                        run_id, _ = self.recorder.log_child_once(record, job)
                    else:
                        run_id = self.recorder.log_child(record, job)
                except Exception as exc:  # the store refused or is away: the journal keeps the record
                    self._interrupted_writes = True
                    if self.online:
                        self.say(
                            f"MLflow unreachable ({_first_line(exc)}): the sweep goes on; records are kept "
                            f"in {self.journal.path} and logged when it answers again"
                        )
                    self.online = False
                    return
                self.journal.logged(record_id, run_id)
                del self._pending[record_id]

    def finish(
        self,
        status: str,
        metrics: Mapping[str, float] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        """Journal the end, log what is still missing if MLflow answers, and end the parent run with
        `status`, the job counts plus `metrics`, and `artifacts` (text files: comparison tables)."""
        from orchestrator.record import status_counts

        if self.finished:
            return
        self.finished = True
        full = {**status_counts(self.records), **(metrics or {})}
        self.journal.end(status, full, dict(artifacts or {}))
        self.deliver()
        settled = False
        if self._pending:
            self.recorder.parent_id = None  # left RUNNING for `python -m orchestrator.sync` to end
            self.say(
                f"{len(self._pending)} record(s) wait in the journal {self.journal.path}; they are logged by "
                "`python -m orchestrator.sync` (or the next run of this experiment) once MLflow answers"
            )
        else:
            try:
                if artifacts and self.recorder.parent_id:
                    self.recorder.log_artifacts(self.recorder.parent_id, artifacts)
                self.recorder.end_parent(status, full)
                self.journal.ended()
                settled = True
            except Exception as exc:
                self.say(
                    f"could not end the parent run ({_first_line(exc)}); `python -m orchestrator.sync` will"
                )
        self.journal.close(settled=settled)

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.finished:
            return
        status = "FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        try:
            self.finish(status)
        except Exception as err:  # never hide the exception that is leaving
            self.say(f"could not close the journal cleanly: {_first_line(err)}")


# --- later: python -m orchestrator.sync --------------------------------------------------------------
@dataclass
class SyncResult:
    """What syncing one journal file did."""

    path: Path
    logged: int = 0  # child runs written now
    present: int = 0  # records already complete in MLflow
    status: str = ""  # the parent's end status applied ("" if nothing to do)
    busy: bool = False  # a running driver holds the file

    def describe(self) -> str:
        if self.busy:
            return f"{self.path}: skipped, a running driver is still writing it"
        ended = f"; parent run ended {self.status}" if self.status else ""
        return f"{self.path}: logged {self.logged} record(s), {self.present} already in MLflow{ended}"


def sync_file(path: Path, tracking_uri: str | None = None, artifact_root: str | None = None) -> SyncResult:
    """Bring one journal into MLflow: missing records as child runs, then end its parent run."""
    from orchestrator.record import SOURCE_TAG, Recorder, check_tracking, status_counts

    result = SyncResult(Path(path))
    try:
        journal = Journal.open(path)
    except JournalBusy:
        result.busy = True
        return result
    settled = False
    try:
        state = read(path)
        if not state.experiment:
            raise ConfigError(f"{path} has no header line; it is not a journal")
        if state.settled:
            settled = True
            return result
        uri = tracking_uri or state.tracking_uri
        check_tracking(uri)
        recorder = Recorder(uri, state.experiment, artifact_root or state.artifact_root)
        status = recorder.resume_parent(state.parent_id) if state.parent_id else None
        if status is None:  # never created, or not in this store: a parent for what the journal holds
            recorder.start_parent(
                {"experiment": state.experiment, "journal": str(path), "records": str(len(state.records))},
                tags={SOURCE_TAG: "sync", "host": socket.gethostname()},
                run_name=f"{state.experiment} sync {Path(path).stem}",
            )
            journal.parent(str(recorder.parent_id))
            status = "RUNNING"
        for record_id, record in state.pending:
            record.tags.setdefault(DELIVERY_TAG, "journal")
            run_id, new = recorder.log_child_once(record, source=record.tags.get(SOURCE_TAG, "ray"))
            journal.logged(record_id, run_id)
            result.logged += new
            result.present += not new
        # No `end` line: the driver died without one; its parent run ends FAILED.
        end = state.end or {"status": "FAILED", "metrics": {}, "artifacts": {}}
        metrics = {**end["metrics"], **status_counts(state.records.values())}
        if state.end is None:
            journal.end(end["status"], metrics)
        if status == "RUNNING":
            if end["artifacts"]:
                recorder.log_artifacts(str(recorder.parent_id), end["artifacts"])
            recorder.end_parent(end["status"], metrics)
            result.status = end["status"]
        journal.ended()
        settled = True
    finally:
        journal.close(settled=settled)
    return result


def sync_all(
    root: Path,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    only_uri: str | None = None,
    artifact_root: str | None = None,
) -> list[SyncResult]:
    """Sync every open journal under `root` (one experiment's, or all); `only_uri` keeps those whose
    records were meant for that store; `tracking_uri` sends them all to one store instead."""
    results = []
    for path in open_files(root, experiment):
        if only_uri is not None:
            try:
                if read(path).tracking_uri != only_uri:
                    continue
            except OSError:
                continue
        results.append(sync_file(path, tracking_uri, artifact_root))
    return results


def journal_from_conf(name: str = "local") -> Path:
    """The journal folder of conf/tracking/<name>.yaml (DSCONV_JOURNAL_DIR, else beside its store)."""
    from hydra import compose, initialize_config_dir

    from orchestrator.journal import journal_root

    if name not in group_options("tracking"):
        raise ConfigError(f"unknown tracking {name!r}; valid: {', '.join(group_options('tracking'))}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"tracking={name}"])
    return journal_root(str(cfg.tracking.uri), cfg.tracking.journal)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: python -m orchestrator.sync [--experiment NAME] [--journal DIR] [--tracking-uri URI]."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.sync", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="only this experiment's journals (default: all)")
    parser.add_argument("--journal", help="journal folder (default: tracking.journal, else mlflow/journal)")
    parser.add_argument("--tracking-uri", help="log into this store instead of the one each journal names")
    parser.add_argument("--artifact-root", help="artifact folder for a database URI")
    args = parser.parse_args(argv)
    for noisy in ("alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    fail_fast_http()
    try:
        root = Path(args.journal or journal_from_conf())
        results = sync_all(root, args.experiment, args.tracking_uri, artifact_root=args.artifact_root)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted: the journal keeps what was not logged yet", file=sys.stderr)
        sys.exit(130)
    for result in results:
        print(result.describe())
    if not results:
        print(f"{root}: no journal waiting to be synced")


if __name__ == "__main__":
    main()
