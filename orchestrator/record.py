"""The one place that writes to MLflow: a parent run per invocation, a child run per job.

Workers never talk to MLflow; they return Records and the driver logs them here (one writer, so a
SQLite store is never written by two processes at once). The same code logs a results bundle made
on a GPU node (`orchestrator.ingest`), so both paths give identical runs.

What the MLflow UI shows: each experiment has the model-training kind (`mlflow.experimentKind`) and a
description (`mlflow.note.content`, from the experiment's config); a child run is named `variant · shape ·
device` and starts and ends when its job did (so the UI's Duration is the job's: the worker's `started_at`
/ `ended_at` tags; it also records them in ISO 8601 as `started` / `ended`, and the job's seconds as the
metric `job_s`). `Recorder.runs_url` links the child runs.

Every run this module opens ends FINISHED, FAILED or KILLED: a child is created, filled and
terminated in one call; the parent is ended by the context manager, KILLED on Ctrl-C, FAILED when an
exception escapes, FINISHED otherwise (failed or wrong jobs are results, not a failure of the run).

Nothing secret leaves through here: every param, tag and text artifact passes `scrub_*` first, which
blanks values whose name looks like a secret (*TOKEN*, *SECRET*, *PASSWORD*, *KEY*, credentials...),
credentials inside URIs (scheme://user:pass@host) and well-known token formats, wherever they appear.
Binary profiler reports (`profile_file.*`) are uploaded as they are.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.journal import RECORD_ID_TAG  # one journaled record = one child run
from workers.profiling import PROFILE_FILE_TAG  # a binary profiler file (.ncu-rep) the worker left at a path
from workers.schema import STATUSES, Job, Record

ROLE_TAG = "dsconv.role"  # parent | child: lets the UI and ingest tell the two apart
# MLflow 3's UI opens an experiment in its GenAI (traces) view unless the experiment's kind says model
# training (the UI reads this tag; mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the experiment's (or a run's) description in the UI
NAME_SEPARATOR = " · "  # child run names: variant · shape · device
DEFAULT_UI = "http://127.0.0.1:5000"  # `make mlflow-ui` on the embedded store
SOURCE_TAG = "dsconv.source"  # ray | ingest
MAX_PARAM_CHARS = 6000  # MLflow 3 limit on a param value
MAX_TAG_CHARS = 8000  # MLflow 3 limit on a tag value
BATCH = 100  # params and tags per log_batch call (MLflow's limit)
_BAD_KEY = re.compile(r"[^/\w.\- ]")
REDACTED = "[redacted]"
SAFE_NAMES = frozenset({"job_key", "db_key", RECORD_ID_TAG})  # our own names that merely contain `key`
_SECRET_NAME = re.compile(r"token|secret|passw|pwd|credential|auth(?!or)|key|cookie|session_id", re.I)
_URI_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s:@]+):([^/\s@]+)@")
_URI_TOKEN = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s:@]{20,})@")  # https://<token>@host
_TOKENS = re.compile(
    r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|glpat-[\w\-]{20,}|hf_[A-Za-z0-9]{20,}"
    r"|sk-[\w\-]{20,}|xox[abprs]-[\w\-]{10,}|AKIA[0-9A-Z]{16}|AIza[\w\-]{30,}"
    r"|eyJ[\w\-]{8,}\.[\w\-]{8,}\.[\w\-]{8,})"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/\-]{16,}=*")
# In text: `NAME=value`, `NAME: value`, `"NAME": "value"` lines or `export NAME=value`, NAME secret-like.
_SECRET_ASSIGNMENT = re.compile(
    r"(?im)^(\s*(?:export\s+)?[\"']?(?P<name>[\w.\-]*(?:token|secret|passw\w*|pwd|credential\w*|auth[_\-]?\w*"
    r"|key)[\w.\-]*?)[\"']?\s*[:=]\s*)(\S.*)$"
)


def _blank_assignment(match: re.Match[str]) -> str:
    name = match["name"]
    if name in SAFE_NAMES or not _SECRET_NAME.search(name) or name.lower().startswith("author"):
        return match[0]
    return f"{match[1]}{REDACTED}"


def is_secret_name(name: str) -> bool:
    """True for a param or tag name that looks like it holds a secret (AWS_SECRET_ACCESS_KEY, HF_TOKEN...)."""
    return name not in SAFE_NAMES and bool(_SECRET_NAME.search(name))


def scrub_text(text: str) -> str:
    """`text` with URI credentials, known token formats and secret-looking assignments blanked."""
    text = _URI_PASSWORD.sub(rf"\1\2:{REDACTED}@", text)
    text = _URI_TOKEN.sub(rf"\1{REDACTED}@", text)
    text = _TOKENS.sub(REDACTED, text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return _SECRET_ASSIGNMENT.sub(_blank_assignment, text)


def scrub_mapping(items: Mapping[str, Any]) -> dict[str, str]:
    """Params or tags as strings, secrets blanked: by name, and inside every value."""
    return {k: REDACTED if is_secret_name(k) else scrub_text(str(v)) for k, v in items.items()}


def scrub_record(record: Record) -> Record:
    """A copy of `record` safe to write anywhere (journal, MLflow): see scrub_text and is_secret_name."""
    return Record(
        key=record.key,
        params=scrub_mapping(record.params),
        metrics=dict(record.metrics),
        tags=scrub_mapping(record.tags),
        artifacts={name: scrub_text(str(text)) for name, text in record.artifacts.items()},
    )


def status_counts(records: Iterable[Record]) -> dict[str, float]:
    """Parent-run metrics counting jobs by status: jobs, jobs_ok, jobs_wrong, jobs_failed, jobs_skipped."""
    counts = Counter(r.status for r in records)
    return {"jobs": float(sum(counts.values())), **{f"jobs_{s}": float(counts[s]) for s in STATUSES}}


def _key(name: str) -> str:
    """A metric or param key MLflow accepts (`^[/\\w.\\- ]*$`): other characters become `_`."""
    return _BAD_KEY.sub("_", name)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def is_database_uri(uri: str) -> bool:
    """True for a tracking URI the client writes itself (a database), False for a tracking server."""
    return not uri.startswith(("http://", "https://", "databricks"))


def check_tracking(uri: str) -> None:
    """Fail fast, in one line, when a tracking server does not answer (MLflow would retry for minutes)."""
    from orchestrator.config import ConfigError

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            if response.status == 200:
                return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"MLflow tracking server {uri} does not answer ({exc}); start it with `make mlflow-server` "
            "or pick tracking=local"
        ) from None
    raise ConfigError(f"MLflow tracking server {uri} is not healthy; pick tracking=local")


_deferring = threading.local()


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM) until the block is done, then raise it: for steps that must not stop
    halfway. A held SIGTERM goes, after the block, to the handler that was there before it (the driver's
    raises KeyboardInterrupt, as Ctrl-C does).

    Blocks nest: an inner block inside an outer one defers to the outer, so a step made of several
    atomic steps (log a child, then journal that it is logged) is atomic as a whole.
    """
    if threading.current_thread() is not threading.main_thread() or getattr(_deferring, "active", False):
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if signal.SIGTERM in caught:
        signal.raise_signal(signal.SIGTERM)
    if signal.SIGINT in caught:
        raise KeyboardInterrupt


def _seconds(text: str | None) -> float | None:
    """Unix seconds from a record's `started_at` / `ended_at` tag, or None when absent or unreadable."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def run_status(record: Record) -> str:
    """MLflow status of a job's child run: FAILED when the job failed, FINISHED for ok, wrong, skipped."""
    return "FAILED" if record.status == "failed" else "FINISHED"


class Recorder:
    """Writes one invocation (or one ingested bundle) into the MLflow experiment `experiment`."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_root: str | None = None,
        description: str | None = None,
    ) -> None:
        # A MLFLOW_RUN_ID in the environment silently overrides parent_run_id in the fluent API; this
        # module uses MlflowClient only, and drops the variable so nothing below can pick it up.
        os.environ.pop("MLFLOW_RUN_ID", None)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.description = description or (
            f"dsconv-lab experiment {experiment!r}: a parent run per invocation, a child run per job "
            "(variant · shape · device) with its time_ms, gflops and pct_roofline."
        )
        with deferred_interrupt():  # a new database is migrated here; a Ctrl-C midway would corrupt it
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment_id(artifact_root)
        self.parent_id: str | None = None
        self.counts: Counter[str] = Counter()

    def _experiment_id(self, artifact_root: str | None) -> str:
        """The experiment's id, created if missing; its kind (model training, so the UI opens on its runs)
        and description are set where they are missing (a description written in the UI is kept)."""
        tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING, NOTE_TAG: self.description}
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            for key, value in tags.items():
                if not found.tags.get(key):
                    self.client.set_experiment_tag(found.experiment_id, key, value)
            return found.experiment_id
        location = None
        if artifact_root and is_database_uri(self.tracking_uri):
            location = (Path(artifact_root).resolve() / self.experiment).as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=location, tags=tags)

    def runs_url(self, ui: str | None = None) -> str:
        """The experiment's child runs in the MLflow UI, fastest first: `ui` (default: the tracking server,
        or `make mlflow-ui`'s http://127.0.0.1:5000 for a database store) + the runs page with the model
        training view, the child runs only (so none is folded under its parent) and sorted by time_ms.

        MLflow 3.17's UI opens an experiment in the view its own GenAI / Model training switch holds (GenAI
        until a user picks the other; the experiment's kind tag does not override it), so a link names it.
        """
        server = None if is_database_uri(self.tracking_uri) else self.tracking_uri
        base = (ui or server or DEFAULT_UI).rstrip("/")
        query = urllib.parse.urlencode({
            "workflowType": "machine_learning",
            "searchFilter": f"tags.`{ROLE_TAG}` = 'child'",
            "orderByKey": "metrics.`time_ms`",
            "orderByAsc": "true",
        })  # fmt: skip
        return f"{base}/#/experiments/{self.experiment_id}/runs?{query}"

    # --- the parent run --------------------------------------------------------------------------
    def start_parent(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
        run_name: str | None = None,
    ) -> str:
        """Open the invocation's parent run with its params, tags and text artifacts; returns its id."""
        name = run_name or f"{self.experiment} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        with deferred_interrupt():  # a run is never left RUNNING between create and the first log
            run = self.client.create_run(
                self.experiment_id, run_name=name, tags=scrub_mapping({ROLE_TAG: "parent", **(tags or {})})
            )
            self.parent_id = run.info.run_id
            try:
                self._log(self.parent_id, params=params, artifacts=artifacts or {})
            except Exception:
                self.end_parent("FAILED")
                raise
        return self.parent_id

    def end_parent(self, status: str, metrics: Mapping[str, float] | None = None) -> None:
        """Log the job counts (and `metrics`) on the parent run and end it with `status`."""
        if self.parent_id is None:
            return
        run_id, self.parent_id = self.parent_id, None
        with deferred_interrupt():
            try:
                counts = {f"jobs_{s}": float(self.counts[s]) for s in STATUSES}
                counts["jobs"] = float(sum(self.counts.values()))
                self._log(run_id, metrics={**counts, **(metrics or {})})
            finally:
                self.client.set_terminated(run_id, status=status)

    def resume_parent(self, run_id: str) -> str | None:
        """Adopt an existing parent run (the journal's, when syncing); returns its status, None if absent."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.experiment_id != self.experiment_id:
            return None
        self.parent_id = run_id
        return run.info.status

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.end_parent("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end_parent("KILLED")
        else:
            self.end_parent("FAILED")

    # --- a child run per job ---------------------------------------------------------------------
    def log_child(self, record: Record, job: Job | None = None, source: str = "ray") -> str:
        """Log one job's Record as a child run of the parent, ended FINISHED or FAILED; returns its id."""
        if self.parent_id is None:
            raise RuntimeError("log_child called without an open parent run")
        params = dict(record.params)
        if job is not None:  # a record from a worker carries these already; fill any gap from the job
            params.setdefault("variant", job.variant)
            params.setdefault("device", job.device.name)
            for k, v in job.shape.as_params().items():
                params.setdefault(k, v)
        tags = {
            **record.tags,
            RECORD_ID_TAG: record.tags.get(RECORD_ID_TAG) or uuid.uuid4().hex,
            "status": record.status,
            "job_key": record.key,
            "mlflow.parentRunId": self.parent_id,
            ROLE_TAG: "child",
            SOURCE_TAG: source,
        }
        name = NAME_SEPARATOR.join(params.get(k, "?") for k in ("variant", "shape", "device"))
        started, ended = _seconds(record.tags.get("started_at")), _seconds(record.tags.get("ended_at"))
        tags = {k: v[:MAX_TAG_CHARS] for k, v in scrub_mapping(tags).items()}
        with deferred_interrupt():  # a child is logged whole: Ctrl-C takes effect after it
            # the run spans the job, not the logging: the UI's Duration is then the job's own
            start_ms = int(started * 1000) if started is not None else None
            run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=name, tags=tags)
            run_id = run.info.run_id
            status = "FAILED"
            try:
                self._log(run_id, params=params, metrics=record.metrics, artifacts=record.artifacts)
                self._log_files(run_id, record.tags)
                status = run_status(record)
            finally:
                end_ms = int(ended * 1000) if ended is not None and started is not None else None
                self.client.set_terminated(run_id, status=status, end_time=end_ms)
            self.counts[record.status] += 1
        return run_id

    def _complete_children(self) -> Iterator[Any]:
        """Every child run of this experiment that is not RUNNING (a writer that died halfway)."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{ROLE_TAG}` = 'child'",
                max_results=1000,
                page_token=token,
            )
            yield from (r for r in page if r.info.status != "RUNNING")
            token = page.token
            if not token:
                return

    def recorded(self) -> dict[str, Record]:
        """The newest complete child run of each job key in this experiment, read back as a Record
        (params, metrics and tags, `mlflow.parentRunId` included; artifacts stay in MLflow): what a
        resumed run summarises beside its own records."""
        found: dict[str, tuple[int, Record]] = {}
        for run in self._complete_children():
            tags = dict(run.data.tags)
            key = tags.get("job_key")
            if not key or (key in found and found[key][0] >= (run.info.start_time or 0)):
                continue
            record = Record(key=key, params=dict(run.data.params), metrics=dict(run.data.metrics), tags=tags)
            found[key] = (run.info.start_time or 0, record)
        return {key: record for key, (_, record) in found.items()}

    def existing_keys(self) -> set[str]:
        """Job keys that already have a complete child run in this experiment (re-runs skip those)."""
        return {r.data.tags["job_key"] for r in self._complete_children() if "job_key" in r.data.tags}

    def existing_measurements(self) -> set[tuple[str, str]]:
        """(job key, started_at) of every complete child run: one measurement each, so an ingest skips
        a record already logged but keeps a second measurement of the same job (another GPU, a re-run)."""
        return {
            (r.data.tags["job_key"], r.data.tags.get("started_at", ""))
            for r in self._complete_children()
            if "job_key" in r.data.tags
        }

    def find_record(self, record_id: str) -> tuple[list[str], list[str]]:
        """(complete, half-written) child run ids carrying `record_id` in this experiment."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RECORD_ID_TAG}` = '{record_id}'", max_results=100
        )
        done = [r.info.run_id for r in runs if r.info.status != "RUNNING"]
        return done, [r.info.run_id for r in runs if r.info.status == "RUNNING"]

    def log_child_once(self, record: Record, job: Job | None = None, source: str = "ray") -> tuple[str, bool]:
        """Log `record` unless a complete run of it (its record id) exists: (run id, logged now).

        A half-written run of it (the server went away mid-write) is deleted first, so that each
        journaled record ends as exactly one complete child run however often syncing is tried.
        """
        record_id = record.tags.get(RECORD_ID_TAG)
        if record_id:
            done, partial = self.find_record(record_id)
            if done:
                return done[0], False
            for run_id in partial:
                self.client.delete_run(run_id)
        return self.log_child(record, job, source), True

    # --- writing ---------------------------------------------------------------------------------
    def _log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        now = int(time.time() * 1000)
        plist = [Param(_key(k), v[:MAX_PARAM_CHARS]) for k, v in scrub_mapping(params or {}).items()]
        mlist = [
            Metric(_key(k), float(v), now, 0)
            for k, v in (metrics or {}).items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]
        for chunk in _chunks(plist, BATCH):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(mlist, 1000):
            self.client.log_batch(run_id, metrics=chunk)
        for name, text in (artifacts or {}).items():
            self.client.log_text(run_id, scrub_text(str(text)), artifact_file=name)

    def _log_files(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Upload binary files a record names in `profile_file.<name>` tags, when they are on this machine."""
        for key, path in tags.items():
            if key.startswith(PROFILE_FILE_TAG) and Path(path).is_file():
                self.client.log_artifact(run_id, path, artifact_path="profile")

    def log_artifacts(self, run_id: str, artifacts: Mapping[str, str]) -> None:
        """Log text artifacts (name -> content, secrets scrubbed) on a run, e.g. the parent's tables."""
        self._log(run_id, artifacts=artifacts)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on a run (values truncated to MLflow's limit)."""
        tlist = [RunTag(k, v[:MAX_TAG_CHARS]) for k, v in scrub_mapping(tags).items()]
        for chunk in _chunks(tlist, BATCH):
            self.client.log_batch(run_id, tags=chunk)
