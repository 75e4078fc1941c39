"""Jobs leave the driver here: through Ray (local instance or a cluster), or exported as jobs.json.

Ray: each job is one task calling `workers.job.execute`. One timing job at a time per device: every
device key `d` is a custom resource `timing_<d>` (capacity 1 for the host CPU; one per GPU on a GPU
node) that each of its tasks holds, and a CUDA task also takes a whole GPU (`num_gpus=1`, never a
fraction). A task whose process dies (a native abort in a compiler, say) is retried `retries` times by
Ray, then becomes a `failed` Record naming the cause, and the rest goes on; a task on a node that dies is
re-run by Ray on another node offering the same model. Records are handed to the caller as they complete
(`ray.wait`), so MLflow fills while the experiment runs. On a cluster, nodes declare their GPU model
(orchestrator.cluster); each record says where it ran (node, node_ip, node_id, node_gpu_model, gpu_index)
and when it held its slot (tags started_at / ended_at, Unix seconds).

A local instance binds every port to 127.0.0.1 with the dashboard off: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
makes Ray 2.60 take the loopback address as the node address (its single-machine mode); without it the
gRPC servers listen on all interfaces. The variable must be set before `ray` is imported.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.cluster import (
    LOCAL_MODE_ENV,
    NO_CLUSTER_HINT,
    ClusterView,
    check_devices,
    check_reachable,
    is_loopback,
    local_gpu_count,
    resolve_address,
    resource_for,
    use_token_auth,
)
from orchestrator.config import ConfigError
from workers.hostinfo import DISPATCH_TAG
from workers.schema import Job, Record

OnRecord = Callable[[Job, Record], object]  # what it returns is ignored
Profile = tuple[str, dict[str, Any]]  # (tool, settings of conf/profile/<tool>.yaml without `tool`)
MAX_CAUSE_CHARS = 500
WATCH_S = 5.0  # seconds between checks that every pending job still has a node of its model
__all__ = ["LOCAL_MODE_ENV", "is_loopback", "local_gpu_count", "resource_for"]  # kept importable from here


def execute_in_worker(
    job_dict: dict[str, Any],
    modules: Sequence[str],
    profile: Profile | None = None,
    profile_dir: str | None = None,
) -> str:
    """The body of a Ray task: run one job in the worker process, return its Record as JSON.

    A CPU job gets OMP_NUM_THREADS = the cores it may use (Ray sets 1 in its workers, which would
    starve oneDNN); it must be set before a framework is first imported in this process. With a
    profiler configured, an `ok` job is then profiled in processes of its own (workers.profiling),
    still holding the device, so the profile never overlaps another job's timing.
    """
    job = Job.from_dict(job_dict)
    if job.device.kind == "cpu":
        cores = job.device.cores or len(os.sched_getaffinity(0))
        os.environ["OMP_NUM_THREADS"] = str(cores)
    for module in modules:
        importlib.import_module(module)
    from workers.job import execute

    record = execute(job)  # with where it ran (node, gpu_index...) and when (tags started_at, ended_at)
    if profile and profile[0] != "none" and record.status == "ok" and "profile_status" not in record.tags:
        from workers.profiling import profile_into

        profile_into(job, record, profile[0], profile[1], Path(profile_dir or "profiles"), modules)
    record.tags[DISPATCH_TAG] = "ray"
    stand_in = job.options.get("stand_in")
    if stand_in:
        record.params["stand_in_for"] = job.device.name
        record.tags["stand_in"] = (
            f"{stand_in}: {stand_in} kernels ran on a node declaring {job.device.name}; not GPU time"
        )
    return record.to_json()


def failed_record(job: Job, cause: str) -> Record:
    """The Record of a job whose worker never returned one (process died, task lost)."""
    from kernels import registry
    from workers.job import base_record

    record = base_record(job)
    with contextlib.suppress(registry.UnknownVariantError):
        record.params["framework"] = registry.get(job.variant).framework
    record.tags.update(status="failed", error=cause[:MAX_CAUSE_CHARS], **{DISPATCH_TAG: "ray"})
    # where it ran is lost with its worker: only a node declaring the job's model could have taken it
    record.params["node_gpu_model"] = job.device.name if job.device.name != "cpu" else "unknown"
    return record


def describe_ray_error(exc: BaseException) -> str:
    """One line saying why a task gave no record: the Ray error type and the first line of its message."""
    cause = getattr(exc, "cause", None)  # RayTaskError: the exception raised inside the task
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    kind = type(exc).__name__
    if kind == "WorkerCrashedError":
        kind = "worker process died (WorkerCrashedError)"
    return f"{kind}: {lines[0]}" if lines else kind


def init_ray(ray: Any, **kwargs: Any) -> None:
    """`ray.init(**kwargs)`, keeping this process's SIGTERM handler: ray.init installs one of its own that
    calls sys.exit, which would bypass the driver's Ctrl-C path (parent run ended KILLED, Ray left). A
    SIGTERM that arrives while ray.init runs is handed to the handler that was there before."""
    if threading.current_thread() is not threading.main_thread():
        ray.init(**kwargs)
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM or previous in (None, signal.SIG_DFL, signal.SIG_IGN):
            raise
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)  # the driver's handler: KeyboardInterrupt, as on Ctrl-C
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class JobProgress:
    """A rich progress bar of jobs done / failed / left, on stderr."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self._bar = Progress(
            TextColumn("[bold]jobs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done {task.fields[done]} · failed {task.fields[failed]} · left {task.fields[left]}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self._task = self._bar.add_task("", total=total, done=0, failed=0, left=total)

    def __enter__(self) -> JobProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def advance(self, record: Record) -> None:
        self.done += 1
        self.failed += record.status == "failed"
        last = f"{record.params.get('variant', '?')} {record.params.get('shape', '?')}: {record.status}"
        self._bar.update(
            self._task,
            advance=1,
            done=self.done,
            failed=self.failed,
            left=self.total - self.done,
            description=last,
        )


class RayDispatcher:
    """A connection to Ray (a private local instance, or a cluster at an address) that runs jobs.

    `preflight` fails fast (before Ray starts) where a local instance could not run a device's jobs;
    `connect` starts or joins Ray and checks that some node offers every device the jobs need (a
    request no node can satisfy would wait forever); `run` runs them. Used as a context manager,
    leaving cancels what is still pending (Ctrl-C) and leaves Ray (a local instance shuts down).
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        retries: int = 1,
        extra_modules: Iterable[str] = (),
        log_to_driver: bool = False,
        profile: Profile | None = None,
        profile_dir: str | None = None,
    ) -> None:
        self.address, self.num_cpus, self.retries = address, num_cpus, retries
        self.profile, self.profile_dir = profile, profile_dir
        self.extra_modules = list(extra_modules)
        self.log_to_driver = log_to_driver
        self._pending: dict[Any, Job] = {}
        self._ray: Any = None
        self._remote: Any = None

    # --- connection ------------------------------------------------------------------------------
    def preflight(self, devices: dict[str, str]) -> None:
        """Before starting a local instance: a CUDA device needs a GPU on this machine."""
        if self.address is None:
            cuda = [name for name, kind in devices.items() if kind == "cuda"]
            if cuda and local_gpu_count() == 0:
                raise ConfigError(
                    f"device {cuda[0]!r} needs a GPU and this machine has none; run on a GPU node, "
                    "join a cluster (cluster=ray), or export the jobs (dispatch=export)"
                )

    def connect(self, devices: Mapping[str, str] | None = None) -> None:
        """Start or join Ray; `devices` maps each device key the jobs use to the kind its jobs build for
        (cpu|cuda). When given, the cluster is checked for them at once (see `check`)."""
        if self.address is not None:
            self.address = resolve_address(self.address)
        if self.address is None or is_loopback(self.address):
            # Before `import ray`: loopback only. A driver joining a cluster on 127.0.0.1 needs it too,
            # or it looks for a node at the machine's external address and waits forever.
            os.environ.setdefault(LOCAL_MODE_ENV, "0")
        if self.address is not None and self.address != "auto":
            check_reachable(self.address)  # one line in seconds, where ray.init would retry for minutes
        if self.address is not None:
            use_token_auth()
        import ray

        self._ray = ray
        self._remote = ray.remote(execute_in_worker)
        common = dict(include_dashboard=False, log_to_driver=self.log_to_driver, logging_level="ERROR")
        if self.address is None:
            gpus = local_gpu_count()
            resources = {
                resource_for(name): float(1 if kind == "cpu" else gpus)
                for name, kind in (devices or {"cpu": "cpu"}).items()
                if kind == "cpu" or gpus > 0
            }
            # address="local": a new private instance, even when a Ray cluster is running on this machine
            # (ray.init() without an address would join it).
            init_ray(
                ray,
                address="local",
                num_cpus=self.num_cpus or os.cpu_count() or 1,
                num_gpus=gpus,
                resources=resources,
                **common,
            )
        else:
            try:
                init_ray(ray, address=self.address, **common)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = (
                    str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
                )
                raise ConfigError(
                    f"cannot connect to Ray at {self.address!r}: {first}; {NO_CLUSTER_HINT}"
                ) from None
        if devices is not None:
            self.check(devices)

    @property
    def where(self) -> str:
        """`this machine` for a private instance, else `the Ray cluster at ADDRESS` (for messages)."""
        return "this machine" if self.address is None else f"the Ray cluster at {self.address}"

    def view(self) -> ClusterView:
        """The connected cluster's alive nodes and what they declared."""
        if self._ray is None:
            raise RuntimeError("RayDispatcher.view() before connect()")
        return ClusterView.from_ray(self._ray)

    def check(self, devices: Mapping[str, str]) -> None:
        """Fail in one line, leaving Ray, when no node offers one of `devices` (a request no node can
        satisfy would otherwise wait forever): the line says what is missing and what the cluster has."""
        try:
            check_devices(self.view(), devices, self.where)
        except ConfigError:
            self.close()
            raise

    def close(self) -> None:
        """Cancel pending tasks and leave Ray (shutting down a local instance)."""
        if self._ray is None:
            return
        for ref in list(self._pending):
            with contextlib.suppress(Exception):  # already finished or gone: nothing to cancel
                self._ray.cancel(ref, force=True)
        self._pending.clear()
        if self._ray.is_initialized():
            self._ray.shutdown()
        self._ray = None

    def __enter__(self) -> RayDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running ---------------------------------------------------------------------------------
    def _submit(self, job: Job) -> Any:
        options: dict[str, Any] = dict(
            resources={resource_for(job.device.name): 1},
            num_cpus=1,
            num_gpus=1 if job.device.kind == "cuda" else 0,
            max_retries=self.retries,
            retry_exceptions=False,  # execute() returns failures as records; only crashes are retried
            name=f"{job.variant}.{job.shape.name}.{job.device.name}",
        )
        return self._remote.options(**options).remote(
            job.to_dict(), self.extra_modules, self.profile, self.profile_dir
        )

    def run(self, jobs: Sequence[Job], on_record: OnRecord, progress: bool = True) -> list[Record]:
        """Run every job; each Record goes to `on_record` as soon as it is back. Returns them all.

        Every WATCH_S seconds without a result, the pending jobs are checked against the alive nodes: a
        job whose model no node offers any more (the last such node died) is cancelled and recorded
        `failed` with that cause, instead of waiting forever. A job on a node that dies while others of
        its model live is re-run there by Ray (max_retries).
        """
        self._pending = {self._submit(job): job for job in jobs}
        records: list[Record] = []
        bar = JobProgress(len(jobs)) if progress else None
        if bar:
            bar.__enter__()

        def deliver(job: Job, record: Record) -> None:
            records.append(record)
            if bar:
                bar.advance(record)
            on_record(job, record)

        try:
            while self._pending:
                ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=WATCH_S)
                for ref in ready:
                    job = self._pending.pop(ref)
                    deliver(job, self._result(ref, job))
                if not ready:
                    for job, record in self._stranded():
                        deliver(job, record)
        finally:
            if bar:
                bar.__exit__(None, None, None)
        return records

    def _stranded(self) -> list[tuple[Job, Record]]:
        """Cancel and fail the pending jobs whose device no alive node offers any more."""
        kinds = {job.device.name: job.device.kind for job in self._pending.values()}
        view = self.view()
        gone = {name for name, kind in kinds.items() if view.lacking({name: kind})}
        out = []
        for ref, job in list(self._pending.items()):
            if job.device.name in gone:
                del self._pending[ref]
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=True)
                cause = f"no alive node of {self.where} offers {job.device.name} any more (its nodes left)"
                out.append((job, failed_record(job, cause)))
        return out

    def _result(self, ref: Any, job: Job) -> Record:
        try:
            return Record.from_json(self._ray.get(ref))
        except self._ray.exceptions.RayError as exc:
            return failed_record(job, describe_ray_error(exc))


def export_jobs(jobs: Sequence[Job], config_yaml: str, out: Path) -> Path:
    """Write `jobs.json` (a list of Job.to_dict) and `config.yaml` into `out`; returns jobs.json."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "jobs.json"
    path.write_text(json.dumps([job.to_dict() for job in jobs], indent=1, sort_keys=True) + "\n")
    (out / "config.yaml").write_text(config_yaml)
    return path
