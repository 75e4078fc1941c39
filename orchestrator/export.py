"""`python -m orchestrator.export --experiment NAME --out DIR`: an experiment's MLflow runs as a bundle.

The inverse of `orchestrator.ingest`. Each complete child run (one job's Record) becomes a line of
DIR/records.jsonl with its params, metrics and tags; its text artifacts go to DIR/artifacts/<job key>/,
a schedule's source once under DIR/shared/, as `python -m workers run` stores them. So
`python -m orchestrator.ingest DIR` logs the same runs into another store and
`python -m orchestrator.report --bundle DIR` reads them without MLflow. DIR/manifest.json says where
they came from: the command, the tracking URI (credentials blanked), the experiment, the parent and
child run ids, the commit, the date and the number of records.

    python -m orchestrator.export --experiment sweep --out results/h200/sweep
    python -m orchestrator.export --experiment sweep --out DIR --tracking server
    python -m orchestrator.export --experiment sweep --out DIR --run PARENT_RUN_ID \\
        --filter "params.device = 'h200'"

Left out, and why:
- MLflow's own tags (`mlflow.*`: run name, parent run, user) and the Recorder's `dsconv.role` and
  `dsconv.source`: the Recorder sets them again when the bundle is ingested;
- the runs of a parent run still RUNNING (a sweep in progress, or a driver that died before
  `orchestrator.sync` ended it): one warning line, unless --include-running;
- a child run left RUNNING: a writer died while logging it, so it is half-written (sync writes it
  again); always left out, with a warning line;
- binary artifacts (profiler reports named by `profile_file.*` tags, anything not UTF-8): listed in
  the manifest with the command that downloads them.

The store is only read: a SQLite file that does not exist is an error, not a new empty store. DIR is
written beside itself (DIR.part) and renamed when complete, so an interrupted export leaves no half
bundle. Several measurements of one job (the same key measured by two sweeps) are all kept
(`workers.bundle`'s "measurement").
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.config import ConfigError
from workers.bundle import MANIFEST

EXIT_BAD_INPUT = 2
PARENTS_DIR = "parents"  # DIR/parents/<parent run id>/: each parent run's text artifacts
PARENT_EXTRAS = ("config.yaml", "jobs.json")  # copied to DIR/ when one content: ingest logs them again
PARENT_TAG = "mlflow.parentRunId"
SYSTEM_TAG_PREFIX = "mlflow."
PROGRESS_FROM = 50  # job runs: a progress bar from this many on, on a terminal
FETCH_THREADS = 4  # runs whose artifacts are fetched at once from a tracking server


@dataclass
class Exported:
    """What one export wrote."""

    out: Path
    records: int = 0
    parents: list[str] = field(default_factory=list)
    skipped_running: int = 0  # runs of RUNNING parents, and half-written (RUNNING) child runs
    left_out: int = 0  # binary artifacts not in the bundle (listed in the manifest)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def open_store(uri: str) -> Any:
    """An MlflowClient of an existing store: a SQLite file or folder must exist (reading must not create
    an empty store), a tracking server must answer (one line, in seconds, when it does not)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.record import check_tracking, scrub_text
    from orchestrator.sync import fail_fast_http

    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.is_file():
            raise ConfigError(
                f"no MLflow store at {path} (tracking URI {scrub_text(uri)}); nothing to export"
            )
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not path.is_dir():
            raise ConfigError(f"no MLflow store at {path}; nothing to export")
    fail_fast_http()
    try:
        check_tracking(uri)
    except ConfigError as exc:  # its message names the URI: credentials in it stay out of the terminal
        raise ConfigError(scrub_text(str(exc))) from None
    os.environ.pop("MLFLOW_RUN_ID", None)
    return MlflowClient(tracking_uri=uri)


def find_experiment(client: Any, name: str, uri: str) -> Any:
    """The active experiment `name`, or ConfigError naming the experiments that hold runs."""
    from orchestrator.record import scrub_text

    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "active":
        return found
    names = sorted(
        e.name for e in client.search_experiments() if client.search_runs([e.experiment_id], max_results=1)
    )
    deleted = " (it was deleted: `mlflow experiments restore` brings it back)" if found is not None else ""
    raise ConfigError(
        f"unknown experiment {name!r}{deleted} in {scrub_text(uri)}; experiments with runs: "
        + (", ".join(names) or "(none)")
    )


def _search(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    runs, token = [], None
    while True:
        try:
            page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        except MlflowException as exc:
            raise ConfigError(f"bad --filter ({filter_string}): {_first_line(exc)}") from None
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _check_parents(client: Any, wanted: Sequence[str], parents: dict[str, Any], experiment: str) -> None:
    """ConfigError in one line for a --run that is not a parent run of the experiment."""
    from mlflow.exceptions import MlflowException

    for run_id in wanted:
        if run_id in parents:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None
        if run is not None and PARENT_TAG in run.data.tags:
            raise ConfigError(
                f"run {run_id} is a job's child run; give its parent run: {run.data.tags[PARENT_TAG]}"
            )
        newest = sorted(parents.values(), key=lambda r: r.info.start_time or 0, reverse=True)[:10]
        valid = ", ".join(f"{r.info.run_id} ({r.data.tags.get('mlflow.runName', '')})" for r in newest)
        raise ConfigError(
            f"no parent run {run_id} in experiment {experiment!r}; its newest parent runs: "
            + (valid or "(none)")
        )


def _started(run: Any) -> float:
    """When the job's measurement started (the worker's `started_at`, else the run's creation)."""
    try:
        return float(run.data.tags["started_at"])
    except (KeyError, ValueError):
        return (run.info.start_time or 0) / 1000


def _measurement(run: Any) -> str:
    from orchestrator.record import RECORD_ID_TAG

    return run.data.tags.get(RECORD_ID_TAG) or run.info.run_id


def record_tags(tags: dict[str, str]) -> dict[str, str]:
    """A child run's tags as its Record had them: without MLflow's and the Recorder's own."""
    from orchestrator.record import ROLE_TAG, SOURCE_TAG

    return {
        k: v
        for k, v in tags.items()
        if not k.startswith(SYSTEM_TAG_PREFIX) and k not in (ROLE_TAG, SOURCE_TAG)
    }


def _files(repo: Any, path: str | None = None) -> Iterator[Any]:
    for info in repo.list_artifacts(path):
        if info.is_dir:
            yield from _files(repo, info.path)
        else:
            yield info


def text_artifacts(run: Any, tracking_uri: str, scratch: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """A run's text artifacts (name -> content) and the binary ones left out (a manifest entry each).

    Read through the run's artifact repository directly: MlflowClient.download_artifacts looks the
    run up again for every file, which made a store on disk three times slower to export."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from workers.profiling import PROFILE_FILE_TAG

    run_id = run.info.run_id
    repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri)
    binaries = {
        f"profile/{PurePosixPath(v).name}" for k, v in run.data.tags.items() if k.startswith(PROFILE_FILE_TAG)
    }
    texts: dict[str, str] = {}
    left: list[dict[str, Any]] = []
    folder = Path(tempfile.mkdtemp(prefix=run_id, dir=scratch))
    try:
        for info in sorted(_files(repo), key=lambda i: i.path):
            why = "binary profiler report" if info.path in binaries else ""
            if not why:
                data = Path(repo.download_artifacts(info.path, str(folder))).read_bytes()
                try:
                    texts[info.path] = data.decode("utf-8")
                    continue
                except UnicodeDecodeError:
                    why = "not UTF-8 text"
            left.append({
                "run_id": run_id, "artifact": info.path, "bytes": info.file_size, "why": why,
                "download": f"mlflow artifacts download -r {run_id} -a {info.path}",
            })  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return texts, left


def record_of(run: Any, tracking_uri: str, scratch: Path) -> tuple[Any, list[dict[str, Any]]]:
    """The Record a child run was logged from (and its binary artifacts, left out)."""
    from workers.schema import Record

    artifacts, left = text_artifacts(run, tracking_uri, scratch)
    record = Record(
        key=run.data.tags["job_key"],
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=record_tags(run.data.tags),
        artifacts=artifacts,
    )
    for entry in left:
        entry["job_key"] = record.key
    return record, left


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")


def _parent_entry(run: Any | None, run_id: str, records: int) -> dict[str, Any]:
    if run is None:
        return {"run_id": run_id, "status": "not a parent run of the experiment", "records": records}
    from orchestrator.record import SOURCE_TAG

    return {
        "run_id": run_id,
        "run_name": run.data.tags.get("mlflow.runName", ""),
        "status": run.info.status,
        "source": run.data.tags.get(SOURCE_TAG, ""),
        "start_time": _iso(run.info.start_time),
        "end_time": _iso(run.info.end_time),
        "params": dict(sorted(run.data.params.items())),
        "records": records,
    }


def _run_entry(run: Any, measurement: str | None) -> dict[str, str]:
    entry = {"run_id": run.info.run_id, "job_key": run.data.tags["job_key"]}
    entry["parent_run_id"] = run.data.tags.get(PARENT_TAG, "")
    return {**entry, "measurement": measurement} if measurement else entry


def _write_parents(part: Path, parents: dict[str, Any], tracking_uri: str, scratch: Path) -> None:
    """Each parent's text artifacts under parents/<id>/; config.yaml and jobs.json at the top when one."""
    seen: dict[str, set[str]] = {name: set() for name in PARENT_EXTRAS}
    for run_id, run in parents.items():
        texts, _ = text_artifacts(run, tracking_uri, scratch)
        for name, text in texts.items():
            path = part / PARENTS_DIR / run_id / PurePosixPath(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            if name in seen:
                seen[name].add(text)
    for name, texts in seen.items():
        if len(texts) == 1:
            (part / name).write_text(texts.pop(), encoding="utf-8")


def _progress(total: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=total < PROGRESS_FROM or not console.is_terminal,
    )  # fmt: skip


def _check_out(out: Path, force: bool) -> Path:
    """The folder `out` may be written: new or empty, or (with force) a bundle to replace; returns the
    folder the bundle is assembled in first, beside it."""
    from workers.bundle import RECORDS

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give --out a folder for the bundle")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"{out} is not empty; give another --out, or --force to replace it")
        if not ((out / RECORDS).is_file() or (out / MANIFEST).is_file()):
            raise ConfigError(f"{out} is not a results bundle; --force replaces a bundle, nothing else")
    full = out.resolve()
    return full.with_name(full.name + ".part")


def select_runs(
    client: Any,
    experiment: Any,
    runs: Sequence[str],
    filters: Sequence[str],
    include_running: bool,
    say: Callable[[str], None],
) -> tuple[list[Any], dict[str, Any], int]:
    """(complete child runs to export, oldest measurement first; the experiment's parent runs by id;
    runs skipped as RUNNING). Each skip is said in one line."""
    from orchestrator.record import ROLE_TAG

    parents = {
        r.info.run_id: r for r in _search(client, experiment.experiment_id, f"tags.`{ROLE_TAG}` = 'parent'")
    }
    _check_parents(client, runs, parents, experiment.name)
    query = " AND ".join([f"tags.`{ROLE_TAG}` = 'child'", *filters])
    children = [
        r for r in _search(client, experiment.experiment_id, query)
        if not runs or r.data.tags.get(PARENT_TAG) in runs
    ]  # fmt: skip
    keyless = [r for r in children if "job_key" not in r.data.tags]
    if keyless:
        say(f"warning: {len(keyless)} child run(s) without a job_key tag (not a job's record): not exported")
    half = [r for r in children if r.info.status == "RUNNING" and "job_key" in r.data.tags]
    if half:
        say(
            f"warning: {len(half)} job run(s) left RUNNING by a writer that died mid-write (half-written): "
            "not exported; `python -m orchestrator.sync` writes them again"
        )
    children = [r for r in children if r.info.status != "RUNNING" and "job_key" in r.data.tags]
    complete = len(children)
    for pid, count in sorted(Counter(r.data.tags.get(PARENT_TAG, "") for r in children).items()):
        parent = parents.get(pid)
        if parent is None or parent.info.status != "RUNNING" or include_running:
            continue
        say(
            f"warning: parent run {pid} ({parent.data.tags.get('mlflow.runName', '')}) is RUNNING (a sweep "
            f"in progress, or a driver that died before `orchestrator.sync`): its {count} job run(s) "
            "skipped; --include-running exports them"
        )
        children = [r for r in children if r.data.tags.get(PARENT_TAG) != pid]
    if not children:
        what = f" of parent run(s) {', '.join(runs)}" if runs else ""
        what += f" matching {' AND '.join(filters)}" if filters else ""
        raise ConfigError(f"experiment {experiment.name!r} has no complete job runs{what} to export")
    children.sort(key=lambda r: (_started(r), r.data.tags["job_key"], _measurement(r)))
    return children, parents, len(half) + complete - len(children)


def export(
    experiment: str,
    out: Path,
    tracking_uri: str,
    runs: Sequence[str] = (),
    filters: Sequence[str] = (),
    include_running: bool = False,
    force: bool = False,
    command: str = "",
    say: Callable[[str], None] = _say,
) -> Exported:
    """Write the experiment's complete child runs (of the parent runs `runs`, matching `filters`) as a
    results bundle in `out`; returns what was written."""
    from orchestrator.record import scrub_text
    from workers.bundle import append_record
    from workers.hostinfo import git_commit

    out = Path(out)
    part = _check_out(out, force)
    client = open_store(tracking_uri)
    exp = find_experiment(client, experiment, tracking_uri)
    children, parents, skipped = select_runs(client, exp, runs, filters, include_running, say)
    repeated = {k for k, n in Counter(r.data.tags["job_key"] for r in children).items() if n > 1}
    measurements = [_measurement(r) if r.data.tags["job_key"] in repeated else None for r in children]
    used = dict.fromkeys(r.data.tags.get(PARENT_TAG, "") for r in children)

    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    left: list[dict[str, Any]] = []
    commits: set[str] = set()
    threads = FETCH_THREADS if tracking_uri.startswith(("http://", "https://")) else 1
    try:
        with tempfile.TemporaryDirectory(prefix="dsconv-export-") as tmp:
            pool = ThreadPoolExecutor(threads)
            try:
                with _progress(len(children)) as bar:
                    task = bar.add_task("runs", total=len(children))
                    fetched = pool.map(lambda r: record_of(r, tracking_uri, Path(tmp)), children)
                    for (record, binaries), measurement in zip(fetched, measurements, strict=True):
                        append_record(part, record, measurement)
                        left.extend(binaries)
                        commits.add(record.tags.get("planned.git", "unknown"))
                        bar.advance(task)
            finally:
                pool.shutdown(cancel_futures=True)  # on Ctrl-C, the runs still queued are not fetched
            _write_parents(part, {p: parents[p] for p in used if p in parents}, tracking_uri, Path(tmp))
        manifest = {
            "command": scrub_text(command),
            "tracking_uri": scrub_text(tracking_uri),
            "experiment": exp.name,
            "experiment_id": exp.experiment_id,
            "filters": list(filters),
            "parent_runs": [
                _parent_entry(parents.get(p), p, sum(r.data.tags.get(PARENT_TAG, "") == p for r in children))
                for p in used
            ],
            "runs": [_run_entry(r, m) for r, m in zip(children, measurements, strict=True)],
            "records": len(children),
            "skipped_running": skipped,
            "left_out": left,
            "git_commit": git_commit(),
            "record_commits": sorted(commits),
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        (part / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(part, out)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return Exported(out, len(children), list(used), skipped, len(left))


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: python -m orchestrator.export --experiment NAME --out DIR [options]."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    from orchestrator.ingest import tracking_from_conf
    from orchestrator.record import scrub_text

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment to export")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to write (new or empty)")
    parser.add_argument("--tracking", default="local", help="conf/tracking option: local | server")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (overrides --tracking)")
    parser.add_argument(
        "--run", nargs="+", action="extend", default=[], metavar="PARENT_RUN_ID",
        help="only the job runs of these parent runs (default: every parent run of the experiment)",
    )  # fmt: skip
    parser.add_argument(
        "--filter", action="append", default=[], metavar="EXPR",
        help="MLflow search filter on the job runs, e.g. \"params.device = 'h200'\" (repeat: all must hold)",
    )  # fmt: skip
    parser.add_argument(
        "--include-running", action="store_true", help="export the runs of RUNNING parent runs too"
    )
    parser.add_argument("--force", action="store_true", help="replace --out when it is not empty")
    args = parser.parse_args(argv)
    for noisy in ("alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        uri = args.tracking_uri or tracking_from_conf(args.tracking)[0]
        done = export(
            args.experiment, args.out, uri, args.run, args.filter, args.include_running, args.force,
            command=shlex.join(["python", "-m", "orchestrator.export", *argv]),
        )  # fmt: skip
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except (MlflowException, RequestException) as exc:  # the server went away, or refused, mid-export
        print(
            f"error: reading {scrub_text(uri)} failed ({_first_line(exc)}); nothing written", file=sys.stderr
        )
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print(f"interrupted: nothing written to {args.out}", file=sys.stderr)
        sys.exit(130)
    extra = f"; {done.skipped_running} RUNNING run(s) skipped" if done.skipped_running else ""
    extra += f"; {done.left_out} binary artifact(s) left out (listed in {MANIFEST})" if done.left_out else ""
    print(
        f"{done.out}: exported {done.records} record(s) of experiment {args.experiment!r} from "
        f"{len(done.parents)} parent run(s) in {scrub_text(uri)}{extra}"
    )


if __name__ == "__main__":
    main()
