"""Where every record of a search goes: MLflow through the orchestrator's recorder, or a results bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from workers.schema import Job, Record


class Sink(Protocol):
    """Where every record of the search goes (MLflow through the recorder, or a results bundle)."""

    def log(self, job: Job, record: Record) -> None: ...


class BundleSink:
    """A results bundle (`workers.bundle`): what `python -m orchestrator.ingest DIR` logs into MLflow."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def log(self, job: Job, record: Record) -> None:
        from workers import bundle

        bundle.append_record(self.out, record)


class RecorderSink:
    """MLflow through the orchestrator's recorder: a child run per record under the search's parent run."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def log(self, job: Job, record: Record) -> None:
        self.recorder.log_child(record, job)
