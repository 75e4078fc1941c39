"""`python -m orchestrator.report`: figures, tables and findings.md of an experiment's records.

    python -m orchestrator.report --experiment NAME [NAME ...] [--run-id ID] [--tracking-uri URI]
                                  [--out DIR] [--no-log]
    python -m orchestrator.report --bundle DIR [DIR ...] [--out DIR]   (DIR: a bundle, or a folder of them)
    python -m orchestrator.report --published [NAME ...] [--out DIR]  (make reports: conf/reports.yaml)

Records: the MLflow store of MLFLOW_TRACKING_URI, else the repository's (mlflow/mlflow.db); or, with
--bundle, results bundles read directly (no MLflow). Which runs: with --run-id, that parent run's
jobs; otherwise every job run of the experiment, the newest run of each measurement (variant, shape,
device, options) kept. Writes reports/<experiment>/ (or --out; with several experiments,
--out/<experiment>/). The files are also logged as artifacts of the parent run, under report/, when
one parent run is the source (--run-id, or an experiment with a single parent run); --no-log skips it.
With --published, the published reports of conf/reports.yaml (all, or those named) are rebuilt from the
committed bundles into reports/<name>/ (or --out/<name>/), with no time stamp.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator.report.build import build_report, log_to_parent
from orchestrator.report.load import (
    REPO_ROOT,
    Dataset,
    ReportInputError,
    client_for,
    default_tracking_uri,
    experiment_names,
    load_bundles,
    load_mlflow,
)

EXIT_BAD_INPUT = 2


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would retype it, for findings.md."""
    return shlex.join(["python", "-m", "orchestrator.report", *argv])


def out_dir(args: argparse.Namespace, experiment: str, several: bool) -> Path:
    """--out (or --out/<experiment> for several experiments), else reports/<experiment>."""
    if args.out is None:
        return REPO_ROOT / "reports" / experiment
    return Path(args.out) / experiment if several else Path(args.out)


def bundle_folders(paths: Sequence[Path]) -> list[Path]:
    """The bundles --bundle names: each a bundle, or a folder holding bundles at any depth (one line
    says how many were found there)."""
    from workers.bundle import BundleError, bundles_in

    try:
        return bundles_in(paths, print)
    except BundleError as exc:
        raise ReportInputError(str(exc)) from None


def datasets(args: argparse.Namespace) -> list[Dataset]:
    """The datasets the arguments name (one per experiment)."""
    if args.bundle:
        if args.run_id:
            raise ReportInputError("--run-id reads MLflow; it cannot be combined with --bundle")
        names = args.experiment or [None]
        if len(names) > 1:
            raise ReportInputError("with --bundle, give at most one --experiment (it renames the records')")
        return load_bundles(bundle_folders(args.bundle), names[0])
    uri = args.tracking_uri or default_tracking_uri()
    if args.run_id:
        if args.experiment and len(args.experiment) > 1:
            raise ReportInputError("--run-id names one parent run: give at most one --experiment with it")
        return [load_mlflow(uri, args.experiment[0] if args.experiment else None, args.run_id)]
    if not args.experiment:
        names = experiment_names(client_for(uri))
        raise ReportInputError(
            "give --experiment NAME, --run-id ID or --bundle DIR; experiments in "
            f"{uri}: {', '.join(names) or '(none)'}"
        )
    return [load_mlflow(uri, name) for name in dict.fromkeys(args.experiment)]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and write the report(s); bad input exits 2 with one line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--experiment", nargs="+", metavar="NAME", help="MLflow experiment name(s)")
    parser.add_argument("--run-id", help="a parent run id: report only its jobs")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else mlflow/)"
    )
    parser.add_argument(
        "--bundle",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="results bundles instead of MLflow (a folder holding bundles: every one at any depth)",
    )
    parser.add_argument(
        "--published", nargs="*", metavar="NAME", help="rebuild the published reports (conf/reports.yaml)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<experiment>/)")
    parser.add_argument("--no-log", action="store_true", help="do not log the files on the parent run")
    args = parser.parse_args(argv)
    for noisy in ("alembic", "mlflow", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.published is not None:
            if args.bundle or args.experiment or args.run_id:
                raise ReportInputError(
                    "--published rebuilds conf/reports.yaml's reports: give no other source"
                )
            from orchestrator.report.published import REPORTS, build_published

            build_published(args.out or REPORTS, args.published)
            return 0
        found = datasets(args)
        for ds in found:
            out = out_dir(args, ds.experiment, len(found) > 1)
            files = build_report(ds, out, command_line(argv))
            print(f"{ds.experiment}: {len(ds.rows)} records -> {out / 'findings.md'} ({len(files)} files)")
            if ds.log_to and not args.no_log:
                log_to_parent(args.tracking_uri or default_tracking_uri(), ds.log_to, files)
                print(f"{ds.experiment}: logged the report on parent run {ds.log_to} under report/")
            elif len(ds.parents) > 1 and not args.no_log:
                print(
                    f"{ds.experiment}: records from {len(ds.parents)} parent runs; not logged on any "
                    "(give --run-id ID to report one parent run and log it there)"
                )
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
