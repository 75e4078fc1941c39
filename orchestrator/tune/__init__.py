"""`python -m orchestrator.tune +experiment=NAME [tune.OPTION=VALUE] [overrides] [--local --out DIR]`.

A schedule search over the Halide family (`kernels/halide/family.py`) for every (shape, device) of an
experiment, or the same budget spent on one of Halide's autoschedulers, for comparison:

    python -m orchestrator.tune +experiment=fusion_ablation tune.budget=16 tune.strategy=evolve
    python -m orchestrator.tune +experiment=fusion_ablation shapes=[app] tune.strategy=adams2019
    python -m orchestrator.tune +experiment=mobilenet_v1 devices=[h100] tune=gpu --local --out DIR
    python -m orchestrator.tune --merge DB   # another tuning database's entries into tune.db

Every candidate is an ordinary Job that a worker builds, verifies against the float64 reference and only
then times; the hopeless stop early (successive halving), and the best per (shape, device model, Halide
version) goes into the tuning database (`tuning/db.json`), which the variant `halide_tuned` serves.

The package, one job a module:

    config      the `tune` group's schema and checks; the command line split and composed
    strategies  candidates and outcomes; `random`/`evolve` over the family, the autoschedulers
    executors   where jobs run: Ray dispatch, or child worker processes (`--local`)
    sinks       where records go: MLflow through the recorder, or a results bundle
    loop        the search: screening rounds, then the best re-timed; resuming from earlier searches
    database    the winners into the tuning database; `--merge`
    results     summary.json and the closing table
    cli         `run` and `main` (bad input: one line on stderr, exit code 2)
"""

from __future__ import annotations

from orchestrator.tune.cli import main, run
from orchestrator.tune.config import (
    AUTO_STRATEGIES,
    STRATEGIES,
    TuneConf,
    check_tune,
    compose,
    db_path,
    resume_sources,
    screen_spec,
    split_argv,
)
from orchestrator.tune.database import db_entry, merge_db, write_db
from orchestrator.tune.executors import Executor, LocalExecutor, RayExecutor
from orchestrator.tune.loop import (
    CANDIDATE_TAG,
    ROUND_TAG,
    RUNG_TAG,
    STRATEGY_TAG,
    PairResult,
    candidate_job,
    load_prior,
    plan_pairs,
    search,
)
from orchestrator.tune.results import print_table, summary
from orchestrator.tune.sinks import BundleSink, RecorderSink, Sink
from orchestrator.tune.strategies import AutoSearch, Candidate, FamilySearch, Outcome, Strategy, make_strategy

__all__ = [
    "AUTO_STRATEGIES",
    "CANDIDATE_TAG",
    "ROUND_TAG",
    "RUNG_TAG",
    "STRATEGIES",
    "STRATEGY_TAG",
    "AutoSearch",
    "BundleSink",
    "Candidate",
    "Executor",
    "FamilySearch",
    "LocalExecutor",
    "Outcome",
    "PairResult",
    "RayExecutor",
    "RecorderSink",
    "Sink",
    "Strategy",
    "TuneConf",
    "candidate_job",
    "check_tune",
    "compose",
    "db_entry",
    "db_path",
    "load_prior",
    "main",
    "make_strategy",
    "merge_db",
    "plan_pairs",
    "print_table",
    "resume_sources",
    "run",
    "screen_spec",
    "search",
    "split_argv",
    "summary",
    "write_db",
]
