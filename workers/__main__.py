"""`python -m workers`: run a job list where the GPU is, without Ray or MLflow; print host facts.

    python -m workers run JOBS.json --out DIR [--gpus all|0,1] [--only SUBSTRING] [--rerun] [--import M]...
    python -m workers info [--measure] [--measure-gpu]

`run` executes each job of JOBS.json (a list of `Job.to_dict()`, or `{"jobs": [...]}`) in order, in a
long-lived child process that is replaced when a job crashes it, appends each Record to
DIR/records.jsonl (artifacts under DIR/artifacts/<key>/) as soon as it is done, and skips keys
already there, so an interrupted run resumes. `orchestrator.ingest DIR` logs the bundle into MLflow.

With `--gpus`, one child per GPU (its CUDA_VISIBLE_DEVICES set to that GPU alone) takes the next job
from a shared queue, so the GPUs of one machine time different jobs at the same time, never two on
one GPU; each record names its GPU (param gpu_index). This is the machine-local form of what Ray does
across machines (orchestrator.dispatch), for a node that has no Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workers import bundle, hostinfo, roofs
from workers.job import summary_row
from workers.profiling import ProfileConfigError, ProfileSettings, profile_into
from workers.runner import ChildRunner, ChildStartError, thread_limits
from workers.schema import Job, Record
from workers.table import print_rows


class CliError(Exception):
    """Bad input: reported as one line, exit code 2."""


def load_jobs(path: Path) -> list[Job]:
    """Jobs from a JSON file holding a list of Job dicts or an object with a "jobs" list."""
    try:
        data: Any = json.loads(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict):
        if "jobs" not in data:
            raise CliError(f"{path}: expected a list of jobs or an object with a 'jobs' list")
        data = data["jobs"]
    if not isinstance(data, list):
        raise CliError(f"{path}: expected a list of jobs or an object with a 'jobs' list")
    jobs = []
    for i, item in enumerate(data):
        try:
            jobs.append(Job.from_dict(item))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CliError(f"{path}: job {i} is not a valid Job: {exc}") from None
    return jobs


class _Progress:
    """A rich progress bar (done / failed / left) when rich is installed, plain lines otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.failed = total, 0, 0
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:
            self._bar = None
            return
        self._bar = Progress(
            TextColumn("[bold]jobs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done {task.fields[done]} · failed {task.fields[failed]} · left {task.fields[left]}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        self._task = self._bar.add_task("", total=total, done=0, failed=0, left=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def starting(self, job: Job, where: str = "") -> None:
        at = f" on GPU {where}" if where else ""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{job.variant} · {job.shape.name}{at}")
        else:
            print(f"[{self.done + 1}/{self.total}] {job.variant} {job.shape.name}{at} ...", flush=True)

    def finished(self, record: Record) -> None:
        self.done += 1
        self.failed += record.status == "failed"
        left = self.total - self.done
        if self._bar is not None:
            self._bar.update(self._task, advance=1, done=self.done, failed=self.failed, left=left)
        else:
            error = f" ({record.tags['error']})" if record.tags.get("error") else ""
            print(f"    {record.status}{error}", flush=True)


def print_table(records: Sequence[Record]) -> None:
    """The closing table: variant, shape, status, time_ms, gflops, pct_roofline."""
    print_rows([summary_row(r) for r in records], empty="no jobs were run")


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs into a dict; values parse as JSON when they can (3, true, ["a"]), else text."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--profile-setting wants KEY=VALUE, got {pair!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    try:
        ProfileSettings.from_config(settings)
    except ProfileConfigError as exc:
        raise CliError(str(exc)) from None
    return settings


def parse_gpus(spec: str, present: Sequence[str]) -> list[str]:
    """`--gpus` into GPU indices: `all` (every GPU in `present`) or distinct indices such as `0,1`."""
    shown = ", ".join(present) if present else "none found"
    if spec == "all":
        if not present:
            raise CliError("--gpus all: this machine has no GPU (nvidia-smi and torch see none)")
        return list(present)
    gpus = [g.strip() for g in spec.split(",")]
    if not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise CliError(
            f"--gpus wants `all` or distinct GPU indices like 0,1, got {spec!r} (GPUs here: {shown})"
        )
    if not present:
        raise CliError(f"--gpus {spec}: this machine has no GPU (nvidia-smi and torch see none)")
    missing = [g for g in gpus if g not in present]
    if missing:
        raise CliError(f"--gpus {spec}: no GPU {', '.join(missing)} on this machine (GPUs here: {shown})")
    return gpus


def run_pool(
    todo: Sequence[Job],
    runners: Sequence[tuple[str, ChildRunner]],
    finish: Callable[[Job, Record], None],
    progress: _Progress,
) -> None:
    """Run `todo` on the runners at once, each taking the next job from one queue, in job order;
    `finish(job, record)` is called under a lock as each job ends. On Ctrl-C no job starts, and a
    running job whose child is killed as the runners close is not recorded (a resume runs it again)."""
    jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
    for job in todo:
        jobs.put(job)
    lock, stop = threading.Lock(), threading.Event()
    failures: list[BaseException] = []

    def work(where: str, runner: ChildRunner) -> None:
        try:
            while not stop.is_set():
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    return
                with lock:
                    progress.starting(job, where)
                record = runner.run(job)
                if stop.is_set() and record.status == "failed":
                    return  # its child was killed by the Ctrl-C, not by the job
                with lock:
                    finish(job, record)
        except BaseException as exc:  # a runner that cannot start: stop the others, report it
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=r, name=f"gpu-{r[0]}", daemon=True) for r in runners]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()  # no new job starts; the children of running ones are killed as the process exits
        raise
    if failures:
        raise failures[0]


def run(args: argparse.Namespace) -> int:
    """Execute the job list into the bundle directory; returns the exit code."""
    jobs = load_jobs(args.jobs)
    if args.profile is not None:  # the command line's profiler pass replaces the jobs' own (and their keys)
        settings = parse_settings(args.profile_settings)
        observer = {"tool": args.profile, **settings} if args.profile != "none" else {}
        jobs = [dataclasses.replace(j, profile=dict(observer)) for j in jobs]
    elif args.profile_settings:
        raise CliError("--profile-setting needs --profile ncu|nsys")
    if args.only:
        jobs = [j for j in jobs if args.only in j.key]
    gpus = parse_gpus(args.gpus, hostinfo.gpu_indices()) if args.gpus else []
    if len(gpus) > 1 and any(j.profile for j in jobs):
        raise CliError("--profile runs on one GPU at a time: give --gpus a single index, or leave it out")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        done = set() if args.rerun else bundle.recorded_keys(out)
    except bundle.BundleError as exc:
        raise CliError(str(exc)) from None
    todo = [j for j in jobs if j.key not in done]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"{skipped} job(s) already in {out / bundle.RECORDS}: skipped (use --rerun to run them again)")
    records: list[Record] = []

    def finish(job: Job, record: Record) -> None:
        if job.profile:
            settings = {k: v for k, v in job.profile.items() if k != "tool"}
            profile_into(job, record, str(job.profile["tool"]), settings, out / "profiles", args.imports)
        record.tags[hostinfo.DISPATCH_TAG] = "worker-cli"
        bundle.append_record(out, record)
        records.append(record)
        progress.finished(record)

    started = time.monotonic()
    if todo:
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        runners = [
            (
                g,
                ChildRunner(
                    args.imports,
                    logs / f"worker-gpu{g}.log",
                    args.job_timeout,
                    {"CUDA_VISIBLE_DEVICES": g, **thread_limits(len(gpus))},
                ),
            )
            for g in gpus
        ] or [("", ChildRunner(args.imports, logs / "worker.log", args.job_timeout))]
        try:
            with contextlib.ExitStack() as stack, _Progress(len(todo)) as progress:
                for _, runner in runners:
                    stack.enter_context(runner)
                run_pool(todo, runners, finish, progress)
        except ChildStartError as exc:
            raise CliError(str(exc)) from None
    wall_s = time.monotonic() - started
    print_table(records)
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "wrong", "failed", "skipped")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" → {out / bundle.RECORDS}")
    if todo:
        busy_s = sum(
            float(r.tags["ended_at"]) - float(r.tags["started_at"]) for r in records if "ended_at" in r.tags
        )
        where = f"on GPUs {','.join(gpus)}" if gpus else "in one worker"
        overlap = busy_s / max(wall_s, 1e-9)
        print(
            f"wall {wall_s:.1f} s for {busy_s:.1f} s of jobs {where} ({overlap:.2f} jobs running on average)"
        )
        print(f"the worker's output (compilers, frameworks, crashes): {out / 'logs'}")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print the host facts and the roofs: the CPU's (measured now with --measure, else as cached) and,
    with --measure-gpu, the GPU's (FMA peak, SGEMM, L2 and DRAM bandwidth), measured now."""
    facts = dict(hostinfo.host_facts())
    if args.measure_gpu:
        try:
            facts.update(roofs.gpu_ceilings(refresh=True).as_lines("gpu"))
        except Exception as exc:  # no GPU, no CUDA for Halide: one line
            raise CliError(f"cannot measure the GPU: {type(exc).__name__}: {exc}") from None
    found = roofs.host_ceilings(refresh=True) if args.measure else roofs.cached_host_ceilings()
    if found is None:
        facts["cpu_roofs"] = "not measured yet (python -m workers info --measure)"
    else:
        facts.update(found.as_lines("cpu"))
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; bad input exits 2 with one line on stderr."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,info}")
    p_run = commands.add_parser("run", help="execute a job list into a results bundle")
    p_run.add_argument("jobs", type=Path, help="JSON: a list of Job dicts, or {'jobs': [...]}")
    p_run.add_argument("--out", type=Path, required=True, help="bundle directory (created; resumed)")
    p_run.add_argument("--only", metavar="SUBSTRING", help="run only jobs whose key contains this")
    p_run.add_argument("--rerun", action="store_true", help="run jobs already recorded in the bundle")
    p_run.add_argument(
        "--gpus", metavar="all|0,1,...",
        help="time on these GPUs at once, one worker per GPU pulling from one queue (default: one worker)",
    )  # fmt: skip
    p_run.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import this module (dotted name or .py path) in the worker first, e.g. extra variants",
    )  # fmt: skip
    p_run.add_argument(
        "--job-timeout", type=float, default=3600, metavar="S",
        help="kill a job's worker after S seconds and record it failed (0: no limit)",
    )  # fmt: skip
    p_run.add_argument(
        "--profile", choices=("none", "ncu", "nsys"), default=None,
        help="after each ok job, profile its kernels in a separate process (Nsight Compute or Systems); "
        "default: each job's own profile (the experiment's profile group when it was exported)",
    )  # fmt: skip
    p_run.add_argument(
        "--profile-setting", dest="profile_settings", action="append", default=[], metavar="KEY=VALUE",
        help="a setting of conf/profile/<tool>.yaml, e.g. runs=3 (repeatable; JSON values)",
    )  # fmt: skip
    p_info = commands.add_parser("info", help="print host facts")
    p_info.add_argument(
        "--measure", action="store_true",
        help="measure the CPU's roofs now: FMA peak (Halide), SGEMM, last-level cache and DRAM bandwidth",
    )  # fmt: skip
    p_info.add_argument(
        "--measure-gpu", action="store_true",
        help="measure the GPU's roofs now: FMA peak (Halide CUDA), SGEMM (TF32 off), L2 and DRAM bandwidth",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        return run(args) if args.command == "run" else info(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished jobs are in the bundle, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
