"""Where a search's jobs run: the orchestrator's Ray dispatch, or child worker processes of this one.

Both hand each Record to a callback as soon as it is back, so the search prints and logs candidates while
the rest still run.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from workers.schema import Job, Record

OnRecord = Callable[[Job, Record], None]


class Executor(Protocol):
    """Runs jobs and hands each Record to `on_record` as soon as it is back; returns them all."""

    def run(self, jobs: Sequence[Job], on_record: OnRecord, exclusive: bool) -> list[Record]:
        """`exclusive`: the jobs are precise timings and must not overlap anything else on the device."""
        ...

    def close(self) -> None: ...


class RayExecutor:
    """Jobs through the orchestrator's Ray dispatch (one timing job per device at a time)."""

    def __init__(self, cfg: DictConfig, devices: dict[str, str]) -> None:
        from orchestrator.dispatch import RayDispatcher

        self.dispatcher = RayDispatcher(
            address=cfg.cluster.address,
            num_cpus=cfg.cluster.num_cpus,
            retries=cfg.retries,
            extra_modules=cfg.extra_variant_modules,
            log_to_driver=cfg.cluster.log_to_driver,
        )
        self.dispatcher.preflight(devices)
        self.dispatcher.connect(devices)

    def run(self, jobs: Sequence[Job], on_record: OnRecord, exclusive: bool) -> list[Record]:
        return self.dispatcher.run(jobs, on_record, progress=sys.stderr.isatty())

    def close(self) -> None:
        self.dispatcher.close()


class LocalExecutor:
    """Jobs in child worker processes of this one (`workers.runner.ChildRunner`: a crash becomes a
    `failed` record): `parallel` of them while screening, one for precise timings."""

    def __init__(self, log_dir: Path, parallel: int, job_timeout_s: float, imports: Sequence[str]) -> None:
        from workers.runner import ChildRunner, thread_limits

        log_dir.mkdir(parents=True, exist_ok=True)
        env = thread_limits(parallel)  # the cores shared among the children's BLAS pools
        self.runners = [
            ChildRunner(list(imports), log_dir / f"worker{i}.log", job_timeout_s, env)
            for i in range(parallel)
        ]
        self._lock = threading.Lock()

    def run(self, jobs: Sequence[Job], on_record: OnRecord, exclusive: bool) -> list[Record]:
        runners = self.runners[:1] if exclusive else self.runners
        queue = list(jobs)
        records: dict[int, Record] = {}

        def work(runner: Any) -> None:
            while True:
                with self._lock:
                    if not queue:
                        return
                    index = len(jobs) - len(queue)
                    job = queue.pop(0)
                record = runner.run(job)
                with self._lock:
                    records[index] = record
                    on_record(job, record)

        with ThreadPoolExecutor(len(runners)) as pool:
            for future in [pool.submit(work, r) for r in runners]:
                future.result()
        return [records[i] for i in sorted(records)]

    def close(self) -> None:
        for runner in self.runners:
            runner.close()
