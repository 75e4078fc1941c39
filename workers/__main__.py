"""`python -m workers`: run a job list where the GPU is, without Ray or MLflow; print host facts.

    python -m workers run JOBS.json --out DIR [--only SUBSTRING] [--rerun] [--import MODULE]...
    python -m workers info [--measure]

`run` executes each job of JOBS.json (a list of `Job.to_dict()`, or `{"jobs": [...]}`) in order, in a
long-lived child process that is replaced when a job crashes it, appends each Record to
DIR/records.jsonl (artifacts under DIR/artifacts/<key>/) as soon as it is done, and skips keys
already there, so an interrupted run resumes. `orchestrator.ingest DIR` logs the bundle into MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers import bundle, hostinfo
from workers.job import summary_row
from workers.profiling import ProfileConfigError, ProfileSettings, profile_into
from workers.runner import ChildRunner, ChildStartError
from workers.schema import Job, Record


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

    def starting(self, job: Job) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"{job.variant} · {job.shape.name}")
        else:
            print(f"[{self.done + 1}/{self.total}] {job.variant} {job.shape.name} ...", flush=True)

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
    rows = [summary_row(r) for r in records]
    if not rows:
        print("no jobs were run")
        return
    columns = list(rows[0])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns))
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in columns))
        return
    table = Table(*columns)
    for r in rows:
        table.add_row(*(r[c] for c in columns))
    Console().print(table)


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


def run(args: argparse.Namespace) -> int:
    """Execute the job list into the bundle directory; returns the exit code."""
    jobs = load_jobs(args.jobs)
    if args.only:
        jobs = [j for j in jobs if args.only in j.key]
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
    profile_raw = parse_settings(args.profile_settings)
    if todo:
        (out / "logs").mkdir(exist_ok=True)
        runner = ChildRunner(args.imports, out / "logs" / "worker.log", args.job_timeout)
        try:
            with runner, _Progress(len(todo)) as progress:
                for job in todo:
                    progress.starting(job)
                    record = runner.run(job)
                    if args.profile != "none":
                        profile_into(job, record, args.profile, profile_raw, out / "profiles", args.imports)
                    bundle.append_record(out, record)
                    records.append(record)
                    progress.finished(record)
        except ChildStartError as exc:
            raise CliError(str(exc)) from None
    print_table(records)
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "wrong", "failed", "skipped")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" → {out / bundle.RECORDS}")
    if todo:
        print(f"the worker's output (compilers, frameworks, crashes): {out / 'logs' / 'worker.log'}")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print the host facts, and its measured CPU peak and bandwidth (measured now with --measure)."""
    facts = dict(hostinfo.host_facts())
    if args.measure_gpu:
        try:
            facts.update({f"gpu_{k}": str(v) for k, v in hostinfo.measure_gpu_roofs().items()})
        except (ImportError, RuntimeError) as exc:
            raise CliError(f"cannot measure the GPU: {exc}") from None
    peak = hostinfo.host_peak(refresh=True) if args.measure else hostinfo.cached_host_peak()
    if peak is None:
        facts["cpu_peak"] = "not measured yet (python -m workers info --measure)"
    else:
        facts["cpu_peak_gflops"] = f"{peak.peak_gflops:g} (measured {peak.measured_at})"
        facts["cpu_mem_gbps"] = f"{peak.mem_gbps:g}"
        facts["cpu_peak_method"] = peak.method
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
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import this module (dotted name or .py path) in the worker first, e.g. extra variants",
    )  # fmt: skip
    p_run.add_argument(
        "--job-timeout", type=float, default=3600, metavar="S",
        help="kill a job's worker after S seconds and record it failed (0: no limit)",
    )  # fmt: skip
    p_run.add_argument(
        "--profile", choices=("none", "ncu", "nsys"), default="none",
        help="after each ok job, profile its kernels in a separate process (Nsight Compute or Systems)",
    )  # fmt: skip
    p_run.add_argument(
        "--profile-setting", dest="profile_settings", action="append", default=[], metavar="KEY=VALUE",
        help="a setting of conf/profile/<tool>.yaml, e.g. runs=3 (repeatable; JSON values)",
    )  # fmt: skip
    p_info = commands.add_parser("info", help="print host facts")
    p_info.add_argument("--measure", action="store_true", help="measure the CPU peak and bandwidth now")
    p_info.add_argument(
        "--measure-gpu", action="store_true",
        help="measure the GPU's fp32 SGEMM rate and copy bandwidth (the catalog's roof_gflops, roof_gbps)",
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
