"""A resumed experiment: which planned jobs are already recorded, saying so in one line, and the records
of the whole experiment (earlier runs' and this run's) for the summary and the parent run's metrics.

A job is recorded when a complete child run with its key is in the MLflow experiment, or its record
waits in the local journal (`orchestrator.journal`) for MLflow. Keys hold every setting that changes a
measurement (`workers.schema.Job.key`), so a job with other timing, tolerance, seed, profile or
options is a new job, never a skipped one.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator import journal
from workers.schema import Job, Record

PARENT_TAG = "mlflow.parentRunId"


def journaled(root: Path, experiment: str, tracking_uri: str) -> dict[str, Record]:
    """Records journaled for `experiment` at `tracking_uri` but not yet in MLflow, by job key (each
    tagged with its journal's parent run, when the journal names one)."""
    found: dict[str, Record] = {}
    for path in journal.open_files(root, experiment):
        with contextlib.suppress(OSError):
            state = journal.read(path)
            if state.tracking_uri != tracking_uri:
                continue
            for _, record in state.pending:
                tags = {
                    **record.tags,
                    PARENT_TAG: record.tags.get(PARENT_TAG) or state.parent_id or "journal",
                }
                found[record.key] = Record(record.key, record.params, record.metrics, tags, {})
    return found


def earlier_records(recorder: Any, root: Path, experiment: str, tracking_uri: str) -> dict[str, Record]:
    """Every job key recorded in the experiment, with its newest record: MLflow's child runs (read
    through `recorder`, an `orchestrator.record.Recorder`), then what only the journal holds."""
    found = dict(recorder.recorded())
    for key, record in journaled(root, experiment, tracking_uri).items():
        found.setdefault(key, record)
    return found


def _started(record: Record) -> float:
    try:
        return float(record.tags.get("started_at", "0"))
    except ValueError:
        return 0.0


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds > 0 else "an unknown date"


def describe_skipped(jobs: Sequence[Job], earlier: dict[str, Record], experiment: str) -> str:
    """One line: how many of `jobs` are already recorded, in which parent run (the latest, when several)
    and of when, with one of them as a sample; empty when none is."""
    hits = [earlier[j.key] for j in jobs if j.key in earlier]
    if not hits:
        return ""
    parents = Counter(r.tags.get(PARENT_TAG, "?") for r in hits)
    newest = max(hits, key=_started)
    parent = newest.tags.get(PARENT_TAG, "?")
    where = f"run {parent} of {_when(_started(newest))}"
    if len(parents) > 1:
        where = f"{len(parents)} runs, the latest {where}"
    p = newest.params
    sample = f"{p.get('variant', '?')} · {p.get('shape', '?')} · {p.get('device', '?')}: {newest.status}"
    if newest.status == "ok" and "time_ms" in newest.metrics:
        sample += f" {newest.metrics['time_ms']:.4g} ms"
    return (
        f"{len(hits)} of {len(jobs)} jobs already recorded in experiment {experiment!r} ({where}; e.g. "
        f"{sample}): skipped (rerun=true runs them again)"
    )


def whole_experiment(
    jobs: Sequence[Job], earlier: dict[str, Record], records: Iterable[Record]
) -> list[Record]:
    """The experiment's records in plan order: this run's, and for each planned job it did not run, the
    earlier record of its key (records of jobs outside the plan, e.g. a crashed job's, keep their place
    at the end)."""
    mine = {r.key: r for r in records}
    whole = [mine.pop(j.key, None) or earlier.get(j.key) for j in jobs]
    return [r for r in whole if r is not None] + list(mine.values())


def counts(whole: Sequence[Record], this_run: int) -> dict[str, float]:
    """Parent-run metrics of the whole experiment: jobs and jobs_<status> over every record of it, and
    `jobs_this_run` (records made by this invocation) and `jobs_recorded_before`."""
    from orchestrator.record import status_counts

    return {
        **status_counts(whole),
        "jobs_this_run": float(this_run),
        "jobs_recorded_before": float(len(whole) - this_run),
    }
