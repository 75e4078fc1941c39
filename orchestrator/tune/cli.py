"""The command line of `python -m orchestrator.tune`: parse, plan, search, record; bad input → one line.

Dispatch: through the orchestrator's Ray dispatch (`orchestrator.dispatch`) with the search logged into
MLflow by its recorder (experiment `tune_<NAME>`), or with `--local` in this process's child workers
(`workers.runner`, crash-isolated; no Ray, no MLflow) into a results bundle under `--out` that
`python -m orchestrator.ingest DIR` logs later. Either way `summary.json` says what was found.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import REPO_ROOT, ConfigError, hydra_raises
from orchestrator.tune.config import (
    EXIT_BAD_INPUT,
    TuneConf,
    compose,
    resume_sources,
    screen_spec,
    split_argv,
)
from orchestrator.tune.database import merge_db, write_db
from orchestrator.tune.executors import Executor, LocalExecutor, RayExecutor
from orchestrator.tune.loop import STRATEGY_TAG, PairResult, load_prior, plan_pairs, say, search
from orchestrator.tune.results import print_table, summary
from orchestrator.tune.sinks import BundleSink, RecorderSink
from workers.schema import TimingSpec

QUIET_LOGGERS = ("alembic", "mlflow", "ray", "urllib3")


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Parse, plan, search, record; returns the summary (also written to OUT/summary.json)."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    flags, overrides, tune_args = split_argv(argv)
    if flags.merge:
        return merge_db(flags.merge, tune_args)
    cfg, t = compose(overrides, tune_args)
    command = "python -m orchestrator.tune " + " ".join(shlex.quote(a) for a in argv)
    pairs = plan_pairs(cfg, t)
    screen = screen_spec(t)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = flags.out or REPO_ROOT / "outputs" / f"tune_{cfg.name}" / stamp
    out.mkdir(parents=True, exist_ok=True)
    config_yaml = (
        OmegaConf.to_yaml(cfg, resolve=True)
        + "\ntune:\n"
        + OmegaConf.to_yaml(OmegaConf.structured(t)).replace("\n", "\n  ").rstrip()
        + "\n"
    )
    (out / "config.yaml").write_text("# " + command + "\n" + config_yaml)
    say(
        f"{command}\n{len(pairs)} (shape, device) pairs, {t.budget} candidates each, "
        f"strategy {t.strategy}; out: {out}"
    )
    if t.resume:
        loaded = load_prior(pairs, resume_sources(t))
        counts = ", ".join(f"{k} for {n}" for n, k in loaded.items())
        say(f"screened by earlier searches (not screened again): {counts}")

    if flags.local:
        executor: Executor = LocalExecutor(
            out / "logs", t.parallel, t.job_timeout_s, cfg.extra_variant_modules
        )
        try:
            search(pairs, t, screen, executor, BundleSink(out))
        finally:
            executor.close()
        result = summary(pairs, t, command)
    else:
        result = _run_with_ray(cfg, t, pairs, screen, command, config_yaml)
    result["db_written"] = write_db(pairs, t, command)
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print_table(result)
    return result


def _run_with_ray(
    cfg: DictConfig,
    t: TuneConf,
    pairs: Sequence[PairResult],
    screen: TimingSpec,
    command: str,
    config_yaml: str,
) -> dict[str, Any]:
    from orchestrator.record import Recorder, check_tracking

    uri = cfg.tracking.uri
    check_tracking(uri)
    devices = {p.device.name: p.device.kind for p in pairs}
    versions = pairs[0].base.versions if pairs else {}
    executor = RayExecutor(cfg, devices)
    try:
        with Recorder(uri, f"tune_{cfg.name}", cfg.tracking.artifact_root) as recorder:
            recorder.start_parent(
                {
                    "experiment": cfg.name,
                    "strategy": t.strategy,
                    "budget": t.budget,
                    "promote": t.promote,
                    "seed": t.seed,
                    **{f"screen.{k}": v for k, v in dataclasses.asdict(t.screen).items()},
                    "shapes": ",".join(dict.fromkeys(p.shape.name for p in pairs)),
                    "devices": ",".join(devices),
                    "git_commit": versions.get("git", "unknown"),
                    **{f"version.{k}": v for k, v in versions.items() if k != "git"},
                },
                tags={"dsconv.source": "ray", STRATEGY_TAG: t.strategy, "host": socket.gethostname()},
                artifacts={"config.yaml": config_yaml},
                run_name=f"tune_{cfg.name} {t.strategy} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            )
            search(pairs, t, screen, executor, RecorderSink(recorder))
            result = summary(pairs, t, command)
            metrics = {}
            for row in result["pairs"]:
                if row["best_ms"] is not None:
                    metrics[f"best_ms.{row['shape']}.{row['device']}"] = row["best_ms"]
                if row["speedup_vs_baseline"] is not None:
                    metrics[f"speedup_vs_baseline.{row['shape']}.{row['device']}"] = row[
                        "speedup_vs_baseline"
                    ]
            if recorder.parent_id:
                recorder.client.log_text(
                    recorder.parent_id, json.dumps(result, indent=1, default=str), "summary.json"
                )
            recorder.end_parent("FINISHED", metrics)
    finally:
        executor.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input → one line on stderr and exit code 2."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with hydra_raises():
            run(argv)
    except KeyboardInterrupt:
        print("interrupted (a MLflow run in progress was ended KILLED)", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        from hydra.errors import HydraException

        if not isinstance(exc, HydraException | OmegaConfBaseException) or os.environ.get("DSCONV_TRACEBACK"):
            raise
        print(f"error: {_one_line(exc, argv)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _one_line(exc: BaseException, argv: Iterable[str]) -> str:
    """Hydra's and OmegaConf's multi-line errors as the orchestrator's CLI words them."""
    from orchestrator.__main__ import _one_line as orchestrator_one_line

    return orchestrator_one_line(exc, list(argv)).replace("\n", " ")
