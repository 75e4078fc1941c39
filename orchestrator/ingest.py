"""`python -m orchestrator.ingest DIR [DIR ...] [--experiment NAME]`: log results bundles into MLflow.

A bundle is what `python -m workers run` writes where the GPU is (no Ray, no MLflow there):
records.jsonl plus artifacts. DIR is a bundle or a folder holding bundles at any depth (`results/`):
every folder with a records.jsonl is one, and the command says how many it found.

Ingesting logs a bundle exactly as if its jobs had run through Ray (the same Recorder: one parent run
for the bundle, a child run per record), and idempotently: a record whose measurement (job key and start
time) already has a child run in the experiment is skipped, so ingesting twice adds nothing, while a
second measurement of the same job (on another GPU of the node, or a re-run) is kept beside the first.

A bundle exported from MLflow (`orchestrator.export`, with a manifest.json) goes back into the experiment
it was exported from, unless --experiment names another.

The MLflow store is the one of `conf/tracking/<name>.yaml` (local by default, which honours
MLFLOW_TRACKING_URI), or `--tracking-uri`.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.config import CONF_DIR, ConfigError, experiment_description, group_options

EXIT_BAD_INPUT = 2
BUNDLE_EXTRAS = ("config.yaml", "jobs.json", "manifest.json")  # logged on the parent run when present


def tracking_from_conf(name: str) -> tuple[str, str | None]:
    """(uri, artifact_root) of conf/tracking/<name>.yaml, resolved (environment included)."""
    from hydra import compose, initialize_config_dir

    if name not in group_options("tracking"):
        raise ConfigError(f"unknown tracking {name!r}; valid: {', '.join(group_options('tracking'))}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"tracking={name}"])
    return str(cfg.tracking.uri), cfg.tracking.artifact_root


def experiment_of(records: Sequence[object], bundle: Path) -> str:
    """The experiment the records belong to: their `experiment` param if they agree, else the folder name."""
    names = {r.params.get("experiment") or r.tags.get("experiment") for r in records}  # type: ignore[attr-defined]
    names.discard(None)
    if len(names) == 1:
        return str(names.pop())
    if len(names) > 1:
        raise ConfigError(f"{bundle} mixes experiments {sorted(names)}; pick one with --experiment NAME")
    return bundle.resolve().name


def ingest(
    bundle: Path,
    tracking_uri: str,
    artifact_root: str | None = None,
    experiment: str | None = None,
    summary: bool = True,
) -> tuple[int, int]:
    """Log the bundle's new records; returns (logged, skipped as already present)."""
    from orchestrator.record import Recorder, check_tracking
    from orchestrator.summary import print_summary, summary_metrics
    from workers.bundle import BundleError, read_bundle, read_manifest

    for noisy in ("alembic", "mlflow"):  # database migrations announce themselves at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if not bundle.is_dir():
        raise ConfigError(f"{bundle} is not a folder; give a results bundle made by `python -m workers run`")
    try:
        records = read_bundle(bundle)
        exported_from = read_manifest(bundle).get("experiment")  # an export goes back where it came from
    except BundleError as exc:
        raise ConfigError(str(exc)) from None
    if not records:
        raise ConfigError(f"{bundle} holds no records")
    name = experiment or (str(exported_from) if exported_from else experiment_of(records, bundle))
    check_tracking(tracking_uri)

    recorder = Recorder(tracking_uri, name, artifact_root, experiment_description(name))
    present = recorder.existing_measurements()
    new = [r for r in records if (r.key, r.tags.get("started_at", "")) not in present]
    if not new:
        print(f"{bundle}: all {len(records)} records already in experiment {name!r}; nothing logged")
        return 0, len(records)

    commits = sorted({r.tags.get("planned.git", "unknown") for r in new})
    params = {
        "experiment": name,
        "devices": ",".join(sorted({r.params.get("device", "?") for r in new})),
        "variants": ",".join(dict.fromkeys(r.params.get("variant", "?") for r in new)),
        "shapes": ",".join(dict.fromkeys(r.params.get("shape", "?") for r in new)),
        "git_commit": ",".join(commits),
        "bundle": str(bundle.resolve()),
        "records": str(len(new)),
    }
    extras = {n: (bundle / n).read_text() for n in BUNDLE_EXTRAS if (bundle / n).is_file()}
    with recorder:
        recorder.start_parent(
            params,
            tags={
                "dsconv.source": "ingest",
                "mlflow.source.git.commit": commits[0] if len(commits) == 1 else "mixed",
                "host": socket.gethostname(),
            },
            artifacts=extras,
            run_name=f"{name} ingest {bundle.resolve().parent.name}/{bundle.resolve().name}",
        )
        for record in new:
            recorder.log_child(record, source="ingest")
        recorder.end_parent("FINISHED", summary_metrics(new))
    if summary:
        print_summary(new, name)
    print(
        f"{bundle}: logged {len(new)} records into experiment {name!r} "
        f"({len(records) - len(new)} already present)"
    )
    return len(new), len(records) - len(new)


def expand_bundles(paths: Sequence[Path], say: Callable[[str], None] = print) -> list[Path]:
    """The bundles the paths name (`workers.bundle.bundles_in`); ConfigError for a path with none."""
    from workers.bundle import BundleError, bundles_in

    try:
        return bundles_in(paths, say)
    except BundleError as exc:
        raise ConfigError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: python -m orchestrator.ingest DIR [DIR...] [--experiment NAME] [--tracking NAME]."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.ingest", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "bundles", nargs="+", type=Path, help="results bundles (records.jsonl inside) or folders holding them"
    )
    parser.add_argument(
        "--experiment", help="MLflow experiment name (default: an export's, else the records' experiment)"
    )
    parser.add_argument("--tracking", default="local", help="conf/tracking option: local | server")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (overrides --tracking)")
    parser.add_argument("--artifact-root", help="artifact folder for a database URI")
    parser.add_argument("--no-summary", action="store_true", help="do not print the results table")
    args = parser.parse_args(argv)
    try:
        uri, root = tracking_from_conf(args.tracking)
        if args.tracking_uri:
            uri, root = args.tracking_uri, args.artifact_root
        elif args.artifact_root:
            root = args.artifact_root
        for bundle in expand_bundles(args.bundles):
            ingest(bundle, uri, root, args.experiment, summary=not args.no_summary)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted: the ingest run was ended KILLED", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
