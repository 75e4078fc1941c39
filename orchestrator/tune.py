"""`python -m orchestrator.tune +experiment=NAME [tune.OPTION=VALUE] [overrides] [--local --out DIR]`.

A schedule search over the Halide family (`kernels/halide/family.py`) for every (shape, device) of an
experiment, or the same budget spent on one of Halide's autoschedulers, for comparison:

    python -m orchestrator.tune +experiment=fusion_ablation tune.budget=16 tune.strategy=evolve
    python -m orchestrator.tune +experiment=fusion_ablation shapes=[app] tune.strategy=adams2019
    python -m orchestrator.tune +experiment=mobilenet_v1 devices=[h100] tune=gpu --local --out DIR

Every candidate is an ordinary Job (`halide_family` with `options.params`, or `halide_auto_<name>`
with `options.autoscheduler`): the worker builds it, verifies it against the float64 reference and
only then times it. Successive halving stops the hopeless early: every candidate is first timed
with a short spec (`tune.screen`), and only the `tune.promote` best (plus the heuristic's
schedule, the baseline) are re-timed with the experiment's timing; the best of those per (shape,
device model, Halide version) goes into the tuning database (`tuning/db.json`) with its time, the
command and the date, and is what the variant `halide_tuned` serves.

Strategies: `random` draws candidates from the family's space; `evolve` starts from the heuristic,
the same tiles with the depthwise at every other level, and random draws, then mutates the best
`tune.parents` each generation. `adams2019`, `anderson2021`, `li2018`, `mullapudi2016` spend the same
budget on that autoscheduler: its configured run first, then greedy runs (beam 1) with random
dropout, one seed per candidate (Li2018 and Mullapudi2016 have no random knob: their one schedule).

A search can go on from earlier ones (`tune.resume=[tuning/runs/h100-*/records.jsonl.gz]`, records
files or bundles, as Kernel Tuner's cache files do): the candidates they screened for the same shape,
device model and Halide version are not screened again, `evolve` mutates the best of them, and their
best is re-timed beside this search's own, so one search can span several calls to a GPU node.

Dispatch: through the orchestrator's Ray dispatch (`orchestrator.dispatch`) with the search logged
into MLflow by its recorder (experiment `tune_<NAME>`), or with `--local` in this process's child
workers (`workers.runner`, crash-isolated; no Ray, no MLflow) into a results bundle under `--out`
that `python -m orchestrator.ingest DIR` logs later. Either way `summary.json` says what was found.

Configuration: the experiment's config tree (`conf/`, the same overrides as `python -m orchestrator`)
plus the `tune` group (`conf/tune/<name>.yaml`, chosen with `tune=NAME`; options `tune.KEY=VALUE`).
Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import random
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from orchestrator.config import CONF_DIR, REPO_ROOT, ConfigError, TimingConf, group_options, hydra_raises
from workers.schema import Job, Record, TimingSpec
from workers.table import cell, print_rows

FAMILY_STRATEGIES = ("evolve", "random")
AUTO_STRATEGIES = {  # strategy -> (variant, device kinds, whether it has a random knob)
    "adams2019": ("halide_auto_adams2019", ("cpu",), True),
    "anderson2021": ("halide_auto_anderson2021", ("cuda",), True),
    "li2018": ("halide_auto_li2018", ("cpu", "cuda"), False),
    "mullapudi2016": ("halide_auto_mullapudi2016", ("cpu",), False),
}
STRATEGIES = (*FAMILY_STRATEGIES, *AUTO_STRATEGIES)
DB_MODES = ("better", "always", "none")
ARTIFACT_MODES = ("small", "all")
LARGE_ARTIFACTS = ("lowered.stmt", "kernels.ptx")
RUNG_TAG, CANDIDATE_TAG, STRATEGY_TAG, ROUND_TAG = (
    "tune.rung",
    "tune.candidate",
    "tune.strategy",
    "tune.round",
)
EXIT_BAD_INPUT = 2
DROPOUT = 50  # percent: the chance a greedy autoscheduler run keeps each state it considers
SCREEN_SHARE = 0.7  # of tune.time_limit_s: no screening round starts after it (the rest re-times the best)


@dataclass
class TuneConf:
    """The `tune` group (conf/tune/*.yaml); every key is explained in conf/tune/default.yaml."""

    budget: int = 16
    strategy: str = "evolve"
    generation: int = 8
    parents: int = 3
    explore: float = 0.25
    promote: int = 3
    screen: TimingConf = field(default_factory=lambda: TimingConf(1, 5, 30, 0.05, 0.3, 0.1))
    seed: int = 0
    db: str | None = None
    db_mode: str = "better"
    artifacts: str = "small"
    parallel: int = 1
    job_timeout_s: float = 600.0
    time_limit_s: float = 0.0
    resume: list[str] = field(default_factory=list)


def check_tune(t: TuneConf) -> None:
    """Reject settings that make no sense, in one line naming the valid choices."""
    if t.strategy not in STRATEGIES:
        raise ConfigError(f"unknown tune.strategy {t.strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if t.db_mode not in DB_MODES:
        raise ConfigError(f"unknown tune.db_mode {t.db_mode!r}; valid: {', '.join(DB_MODES)}")
    if t.artifacts not in ARTIFACT_MODES:
        raise ConfigError(f"unknown tune.artifacts {t.artifacts!r}; valid: {', '.join(ARTIFACT_MODES)}")
    sc = t.screen
    if (
        sc.warmup < 0
        or sc.min_repeats < 1
        or sc.max_repeats < sc.min_repeats
        or sc.max_time_s < sc.min_time_s
    ):
        raise ConfigError(
            "tune.screen: need warmup >= 0, 1 <= min_repeats <= max_repeats, min_time_s <= max_time_s"
        )
    for name, low in (("budget", 1), ("generation", 1), ("parents", 1), ("promote", 1), ("parallel", 1)):
        if getattr(t, name) < low:
            raise ConfigError(f"tune.{name} must be >= {low}, got {getattr(t, name)}")
    if t.time_limit_s < 0:
        raise ConfigError(f"tune.time_limit_s must be >= 0 (0: no limit), got {t.time_limit_s}")
    if not 0 <= t.explore <= 1:
        raise ConfigError(f"tune.explore must be in [0, 1], got {t.explore}")
    resume_sources(t)


def resume_sources(t: TuneConf) -> list[Path]:
    """The records files and bundle folders of tune.resume, glob patterns expanded; one that matches
    nothing is an error."""
    sources: list[Path] = []
    for entry in t.resume:
        pattern = str(Path(entry).expanduser())
        found = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
        found = [p for p in found if p.is_file() or (p / "records.jsonl").is_file()]
        if not found:
            raise ConfigError(
                f"tune.resume: {entry!r} names no records file (records.jsonl[.gz]) or results bundle"
            )
        sources.extend(found)
    return list(dict.fromkeys(sources))


# --- candidates ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One schedule to try: a variant and the options that make it (family parameters or autoscheduler
    parameters)."""

    variant: str
    options: tuple[tuple[str, str], ...]  # sorted (option, JSON value) pairs: hashable, stable
    label: str  # short id for logs and tags
    baseline: bool = False  # the heuristic's (or the autoscheduler's configured) schedule

    @classmethod
    def make(cls, variant: str, options: dict[str, Any], baseline: bool = False) -> Candidate:
        import hashlib

        items = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in options.items()))
        label = hashlib.sha256(json.dumps([variant, items]).encode()).hexdigest()[:8]
        return cls(variant, items, label, baseline)

    def option_dict(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.options}

    @property
    def ident(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.variant, self.options


@dataclass
class Outcome:
    """What a candidate gave: its screening record and, once promoted, its precise one."""

    candidate: Candidate
    screen: Record | None = None
    final: Record | None = None
    prior: bool = False  # screened by an earlier search (tune.resume), not by this one

    @staticmethod
    def _time(record: Record | None) -> float:
        if record is None or record.status != "ok":
            return math.inf
        return float(record.metrics.get("time_ms", math.inf))

    @property
    def screen_ms(self) -> float:
        return self._time(self.screen)

    @property
    def final_ms(self) -> float:
        return self._time(self.final)


class Strategy(Protocol):
    def propose(self, n: int, outcomes: Sequence[Outcome]) -> list[Candidate]:
        """Up to `n` new candidates, given every outcome so far (never one already tried)."""
        ...

    def known(self, record: Record) -> Candidate | None:
        """The candidate an earlier search's record screened, when it lies in this strategy's space."""
        ...


class FamilySearch:
    """`random` and `evolve` over the family's space for one (shape, device)."""

    def __init__(self, shape: LayerShape, device: DeviceSpec, t: TuneConf, rng: random.Random) -> None:
        from kernels.halide import family, tuned

        self.family, self.shape, self.device, self.t, self.rng = family, shape, device, t, rng
        self.seeds = (
            family.seeds(shape, device) if t.strategy == "evolve" else [family.heuristic(shape, device)]
        )
        if t.strategy == "evolve":  # a search goes on from the best schedule found so far ...
            db = {"tuning_db": str(db_path(t))}
            known = tuned.choose(shape, device, db)
            entry = [known.params] if known.source == "db" else []
            # ... with the other thread tiles of its depthwise stage, if it has one, its depthwise at
            # the other levels, its threads laid out to leave no tail and no part-filled warp, its
            # longer reduction steps, its other register caps, ...
            ahead = list(entry)
            for around in (
                family.depthwise_tiles,
                family.depthwise_levels,
                family.whole_blocks,
                family.longer_steps,
                family.other_caps,
            ):
                ahead += [q for p in entry for q in around(p, shape, device)]
            # ... and from the ones other models of the device's kind kept for the shape, screened
            # first; the heuristic stays the baseline (seeds[0]) even when an entry equals it.
            ahead += tuned.relatives(shape, device, db)
            base, rest = self.seeds[0], self.seeds[1:]
            ahead = [q for i, q in enumerate(ahead) if q != base and q not in ahead[:i]]
            self.seeds = [base, *ahead, *(q for q in rest if q not in ahead)]

    def _candidate(self, params: Any, baseline: bool = False) -> Candidate:
        return Candidate.make("halide_family", {"params": self.family.as_dict(params)}, baseline)

    def known(self, record: Record) -> Candidate | None:
        raw = record.params.get("option.params")
        if record.params.get("variant") != "halide_family" or raw is None:
            return None
        try:
            params = self.family.params_class(self.device)(**json.loads(raw))
        except (TypeError, ValueError):  # written by a family whose parameters have changed since
            return None
        if self.family.check(params, self.shape, self.device) is not None:
            return None
        return self._candidate(params, baseline=params == self.seeds[0])

    def propose(self, n: int, outcomes: Sequence[Outcome]) -> list[Candidate]:
        tried = {o.candidate.ident for o in outcomes}
        out: list[Candidate] = []

        def add(params: Any, baseline: bool = False) -> None:
            c = self._candidate(params, baseline)
            if c.ident not in tried and len(out) < n:
                tried.add(c.ident)
                out.append(c)

        for i, params in enumerate(self.seeds):
            add(params, baseline=i == 0)
        best = _ranked(outcomes)[: self.t.parents]
        parents = [json.loads(dict(o.candidate.options)["params"]) for o in best]
        cls = self.family.params_class(self.device)
        for _ in range(50 * n):
            if len(out) >= n:
                break
            if self.t.strategy == "evolve" and parents and self.rng.random() >= self.t.explore:
                parent = cls(**self.rng.choice(parents))
                steps = 1 if self.rng.random() < 0.7 else 2
                add(self.family.mutate(parent, self.shape, self.device, self.rng, steps))
            else:
                add(self.family.sample(self.shape, self.device, self.rng))
        return out


class AutoSearch:
    """An autoscheduler given the same budget: its configured run, then greedy runs with random dropout."""

    def __init__(self, shape: LayerShape, device: DeviceSpec, t: TuneConf, rng: random.Random) -> None:
        self.variant, _, self.random_knob = AUTO_STRATEGIES[t.strategy]
        self.t = t

    def propose(self, n: int, outcomes: Sequence[Outcome]) -> list[Candidate]:
        tried = {o.candidate.ident for o in outcomes}
        out: list[Candidate] = []
        configured = Candidate.make(self.variant, {}, baseline=True)
        if configured.ident not in tried:
            out.append(configured)
        seed = len(outcomes)
        while self.random_knob and len(out) < n:
            params = {
                "beam_size": 1,
                "random_dropout": DROPOUT,
                "random_dropout_seed": self.t.seed * 1000 + seed,
            }
            seed += 1
            c = Candidate.make(self.variant, {"autoscheduler": params})
            if c.ident not in tried:
                out.append(c)
        return out[:n]

    def known(self, record: Record) -> Candidate | None:
        if record.params.get("variant") != self.variant:
            return None
        raw = record.params.get("option.autoscheduler")
        options = {"autoscheduler": json.loads(raw)} if raw else {}
        return Candidate.make(self.variant, options, baseline=not options)


def make_strategy(shape: LayerShape, device: DeviceSpec, t: TuneConf, rng: random.Random) -> Strategy:
    if t.strategy in AUTO_STRATEGIES:
        return AutoSearch(shape, device, t, rng)
    return FamilySearch(shape, device, t, rng)


# --- executors and sinks -------------------------------------------------------------------------------

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


# --- the search ----------------------------------------------------------------------------------------


@dataclass
class PairResult:
    """The search of one (shape, device): every outcome and the winner."""

    shape: LayerShape
    device: DeviceSpec
    base: Job
    strategy: Strategy
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.shape.name}@{self.device.name}"

    def best(self) -> Outcome | None:
        finals = [o for o in self.outcomes if math.isfinite(o.final_ms)]
        return min(finals, key=lambda o: o.final_ms) if finals else None

    def baseline(self) -> Outcome | None:
        return next((o for o in self.outcomes if o.candidate.baseline), None)

    def fresh(self) -> list[Outcome]:
        """The outcomes this search screened (not the earlier searches' of tune.resume)."""
        return [o for o in self.outcomes if not o.prior]

    def earlier(self) -> list[Outcome]:
        """The outcomes the earlier searches of tune.resume screened."""
        return [o for o in self.outcomes if o.prior]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.fresh():
            status = o.screen.status if o.screen else "pending"
            out[status] = out.get(status, 0) + 1
        return out


def _retryable(record: Record) -> bool:
    """A screening whose worker was killed (a timeout, a crash) says nothing about the schedule."""
    return record.status == "failed" and record.tags.get("error", "").startswith("crash:")


def load_prior(pairs: Sequence[PairResult], sources: Sequence[Path]) -> dict[str, int]:
    """Give each pair the candidates that earlier searches screened for it (tune.resume): they are not
    screened again, evolve mutates the best of them, and the best is re-timed with this search's.

    A record counts when it is a screening (rung 0) of the same shape, device model and Halide version,
    in the strategy's space today; a candidate screened more than once keeps its fastest screening.
    Returns how many candidates each pair got."""
    from kernels.halide import tuned
    from workers.bundle import BundleError, read_records

    records: list[Record] = []
    for source in sources:
        try:
            records.extend(read_records(source))
        except (BundleError, OSError) as exc:
            raise ConfigError(f"tune.resume: {exc}") from None
    halide = tuned.halide_version()
    loaded = {}
    for pair in pairs:
        shape_params = pair.shape.as_params()
        best: dict[Any, Outcome] = {}
        for record in records:
            p = record.params
            if (
                record.tags.get(RUNG_TAG) != "0"
                or record.tags.get("halide_version") != halide
                or p.get("device_model") != pair.device.model
                or any(p.get(k) != v for k, v in shape_params.items())
                or _retryable(record)
            ):
                continue
            candidate = pair.strategy.known(record)
            if candidate is None:
                continue
            outcome = Outcome(candidate, screen=record, prior=True)
            held = best.get(candidate.ident)
            if held is None or outcome.screen_ms < held.screen_ms:
                best[candidate.ident] = outcome
        pair.outcomes.extend(best.values())
        loaded[pair.name] = len(best)
    return loaded


def candidate_job(base: Job, candidate: Candidate, timing: TimingSpec) -> Job:
    """The Job of one candidate: the pair's base job with the candidate's variant, options and timing."""
    options = {**base.options, **candidate.option_dict()}
    return dataclasses.replace(base, variant=candidate.variant, options=options, timing=timing)


def _annotate(record: Record, candidate: Candidate, rung: int, round_: int, t: TuneConf) -> Record:
    record.tags.update(
        {
            RUNG_TAG: str(rung),
            CANDIDATE_TAG: candidate.label,
            STRATEGY_TAG: t.strategy,
            ROUND_TAG: str(round_),
            "tune.baseline": str(candidate.baseline).lower(),
        }
    )
    if t.artifacts == "small" and rung == 0:
        for name in LARGE_ARTIFACTS:
            record.artifacts.pop(name, None)
    return record


QUIET_LOGGERS = ("alembic", "mlflow", "ray", "urllib3")


def _ranked(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """The outcomes screened ok, fastest first."""
    return sorted((o for o in outcomes if math.isfinite(o.screen_ms)), key=lambda o: o.screen_ms)


def _say(text: str) -> None:
    print(text, flush=True)


def search(
    pairs: Sequence[PairResult],
    t: TuneConf,
    screen: TimingSpec,
    executor: Executor,
    sink: Sink,
) -> None:
    """Screen `t.budget` candidates per pair in rounds of `t.generation` (all pairs' candidates of a round
    dispatched together), then re-time the `t.promote` best and the baseline of each with its own timing."""
    by_key: dict[str, tuple[PairResult, Outcome, int]] = {}
    round_ = 0
    started = time.monotonic()
    while True:
        if round_ and t.time_limit_s and time.monotonic() - started > SCREEN_SHARE * t.time_limit_s:
            limit = SCREEN_SHARE * t.time_limit_s
            _say(f"time limit: no screening round starts after {limit:.0f} s; re-timing the best")
            break
        jobs: list[Job] = []
        for pair in pairs:
            left = t.budget - len(pair.fresh())
            if left <= 0:
                continue
            for candidate in pair.strategy.propose(min(left, t.generation), pair.outcomes):
                outcome = Outcome(candidate)
                pair.outcomes.append(outcome)
                job = candidate_job(pair.base, candidate, screen)
                by_key[job.key] = (pair, outcome, round_)
                jobs.append(job)
        if not jobs:
            break
        _say(f"round {round_}: screening {len(jobs)} candidates over {len(pairs)} (shape, device) pairs")

        def screened(job: Job, record: Record) -> None:
            pair, outcome, r = by_key[job.key]
            outcome.screen = _annotate(record, outcome.candidate, 0, r, t)
            sink.log(job, record)
            best = min((o.screen_ms for o in pair.outcomes), default=math.inf)
            took = (
                f"{outcome.screen_ms:.4g} ms"
                if math.isfinite(outcome.screen_ms)
                else record.tags.get("error", "")
            )
            _say(
                f"  {pair.name} {outcome.candidate.label} {record.status}: {took[:160]} (best {best:.4g} ms)"
            )

        executor.run(jobs, screened, exclusive=False)
        round_ += 1

    finals: list[Job] = []
    for pair in pairs:
        chosen = _ranked(pair.fresh())[: t.promote]
        # the best of the earlier searches too: their screenings ran under other loads, so it is
        # re-timed beside this search's best rather than ranked against their screenings
        earlier = _ranked(pair.earlier())[:1]
        for outcome in [*earlier, pair.baseline()]:
            if outcome is not None and math.isfinite(outcome.screen_ms) and outcome not in chosen:
                chosen.append(outcome)
        for outcome in chosen:
            job = candidate_job(pair.base, outcome.candidate, pair.base.timing)
            by_key[job.key] = (pair, outcome, round_)
            finals.append(job)
    if not finals:
        return
    _say(f"promoted: re-timing {len(finals)} candidates with the experiment's timing, one at a time")

    def timed(job: Job, record: Record) -> None:
        pair, outcome, r = by_key[job.key]
        outcome.final = _annotate(record, outcome.candidate, 1, r, t)
        sink.log(job, record)
        _say(f"  {pair.name} {outcome.candidate.label} {record.status}: {outcome.final_ms:.4g} ms")

    executor.run(finals, timed, exclusive=True)


# --- the database and the summary ----------------------------------------------------------------------


def db_entry(pair: PairResult, t: TuneConf, command: str) -> dict[str, Any] | None:
    """The database entry of a pair's winner (family strategies only), or None when nothing ran ok."""
    from kernels.halide import tuned

    best = pair.best()
    if best is None or best.candidate.variant != "halide_family" or best.final is None:
        return None
    record = best.final
    baseline = pair.baseline()
    heuristic_ms = baseline.final_ms if baseline else math.inf
    metrics = record.metrics
    entry: dict[str, Any] = {
        "shape": {k: v for k, v in dataclasses.asdict(pair.shape).items() if k != "name"},
        "shape_name": pair.shape.name,
        "device": pair.device.name,
        "device_model": tuned.device_model(pair.device),
        "halide": tuned.halide_version(),
        "kind": pair.device.kind,
        "params": json.loads(dict(best.candidate.options)["params"]),
        "time_ms": metrics["time_ms"],
        "time_p25_ms": metrics.get("time_p25_ms"),
        "time_p75_ms": metrics.get("time_p75_ms"),
        "time_source": record.tags.get("time_source", "?"),
        "gflops": metrics.get("gflops"),
        "pct_roofline": metrics.get("pct_roofline"),
        "heuristic_time_ms": heuristic_ms if math.isfinite(heuristic_ms) else None,
        "speedup_vs_heuristic": heuristic_ms / metrics["time_ms"] if math.isfinite(heuristic_ms) else None,
        "candidates": len(pair.fresh()),
        "candidates_ok": sum(math.isfinite(o.screen_ms) for o in pair.fresh()),
        "candidates_earlier": len(pair.earlier()),
        "strategy": t.strategy,
        "budget": t.budget,
        "seed": t.seed,
        "job_key": record.key,
        "git": pair.base.versions.get("git", "unknown"),
        "host": record.tags.get("host", socket.gethostname()),
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return entry


def summary(pairs: Sequence[PairResult], t: TuneConf, command: str) -> dict[str, Any]:
    """What the search found, per pair: the best and baseline times, counts, the winner's options."""
    rows = []
    for pair in pairs:
        best, base = pair.best(), pair.baseline()
        rows.append(
            {
                "shape": pair.shape.name,
                "label": pair.shape.label,
                "device": pair.device.name,
                "candidates": len(pair.fresh()),
                "candidates_earlier": len(pair.earlier()),
                "statuses": pair.counts(),
                "best_ms": best.final_ms if best else None,
                "best_variant": best.candidate.variant if best else None,
                "best_options": best.candidate.option_dict() if best else None,
                "best_pct_roofline": best.final.metrics.get("pct_roofline") if best and best.final else None,
                "baseline_ms": base.final_ms if base and math.isfinite(base.final_ms) else None,
                "speedup_vs_baseline": (
                    base.final_ms / best.final_ms
                    if best and base and math.isfinite(base.final_ms) and math.isfinite(best.final_ms)
                    else None
                ),
            }
        )
    return {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "tune": dataclasses.asdict(t),
        "pairs": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    """The closing table: per (shape, device), the candidates screened, the best and the baseline."""
    print_rows(
        [
            {
                "shape": row["shape"],
                "device": row["device"],
                "cands": str(row["candidates"]),
                "best ms": cell(row["best_ms"], ".4g"),
                "baseline ms": cell(row["baseline_ms"], ".4g"),
                "x base": cell(row["speedup_vs_baseline"], ".2f"),
                "%roof": cell(row["best_pct_roofline"], ".1f"),
            }
            for row in result["pairs"]
        ],
        empty="no (shape, device) pairs were searched",
    )


# --- configuration -------------------------------------------------------------------------------------


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """(flags, Hydra overrides of the experiment's config tree, overrides of the tune group)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.tune", add_help=True)
    parser.add_argument(
        "--local", action="store_true", help="run here without Ray or MLflow (a results bundle)"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (bundle, summary.json); default outputs/tune_*/"
    )
    parser.add_argument("--merge", type=Path, metavar="DB", help="merge another tuning database into tune.db")
    flags, rest = parser.parse_known_args(list(argv))
    unknown = [a for a in rest if a.startswith("--")]
    if unknown:
        raise ConfigError(f"unknown flag {unknown[0]!r}; valid flags: --local, --out DIR, --merge DB")
    tune_args = [
        a for a in rest if a.split("=", 1)[0].lstrip("+~") == "tune" or a.lstrip("+~").startswith("tune.")
    ]
    return flags, [a for a in rest if a not in tune_args], tune_args


def compose(overrides: Sequence[str], tune_args: Sequence[str]) -> tuple[DictConfig, TuneConf]:
    """The experiment's config (Hydra compose API over conf/) and the tune settings, both checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    group = "default"
    dotlist = []
    for arg in tune_args:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "tune":
            group = value
        else:
            dotlist.append(f"{key.removeprefix('tune.')}={value}")
    if group not in group_options("tune"):
        raise ConfigError(
            f"unknown tune option {group!r}; valid tune options: {', '.join(group_options('tune'))}"
        )
    schema = OmegaConf.structured(TuneConf)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(CONF_DIR / "tune" / f"{group}.yaml"))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        valid = ", ".join(f.name for f in dataclasses.fields(TuneConf))
        raise ConfigError(f"tune: {str(exc).splitlines()[0]} (keys: {valid})") from None
    t = OmegaConf.to_object(merged)
    assert isinstance(t, TuneConf)
    check_tune(t)
    return cfg, t


def screen_spec(t: TuneConf) -> TimingSpec:
    """The TimingSpec that screens candidates (tune.screen)."""
    return TimingSpec(**dataclasses.asdict(t.screen))


def plan_pairs(cfg: DictConfig, t: TuneConf) -> list[PairResult]:
    """One search per (shape, device) of the experiment: base jobs from the orchestrator's planner."""
    from orchestrator.plan import make_plan

    variant = AUTO_STRATEGIES[t.strategy][0] if t.strategy in AUTO_STRATEGIES else "halide_family"
    planned = OmegaConf.to_container(cfg, resolve=False)
    planned.pop("hydra", None)  # type: ignore[union-attr]
    tcfg = OmegaConf.create(planned)
    tcfg.variants = [variant]
    tcfg.profile = {"tool": "none"}
    jobs = make_plan(tcfg)
    pairs = []
    rng = random.Random(t.seed)
    for job in jobs:
        if t.strategy in AUTO_STRATEGIES and job.device.kind not in AUTO_STRATEGIES[t.strategy][1]:
            kinds = ", ".join(AUTO_STRATEGIES[t.strategy][1])
            raise ConfigError(
                f"tune.strategy {t.strategy} schedules {kinds} only; "
                f"device {job.device.name!r} is {job.device.kind}"
            )
        base = dataclasses.replace(job, experiment=f"tune_{cfg.name}")
        strategy = make_strategy(job.shape, job.device, t, random.Random(rng.random()))
        pairs.append(PairResult(job.shape, job.device, base, strategy))
    return pairs


def db_path(t: TuneConf) -> Path:
    """The tuning database a search starts from and writes to: tune.db, else the repository's."""
    from kernels.halide import tuned

    return Path(t.db).expanduser() if t.db else tuned.DEFAULT_DB


def write_db(pairs: Sequence[PairResult], t: TuneConf, command: str) -> list[str]:
    """Store each pair's winner in the tuning database (per tune.db_mode); returns the keys written."""
    from kernels.halide import tuned

    if t.db_mode == "none":
        return []
    path = db_path(t)
    written = []
    for pair in pairs:
        entry = db_entry(pair, t, command)
        if entry is None:
            continue
        key = tuned.entry_key(pair.shape, pair.device)
        if tuned.store(path, key, entry, keep_better=t.db_mode == "better"):
            written.append(key)
    _say(f"tuning database {path}: {len(written)} entr{'y' if len(written) == 1 else 'ies'} written")
    return written


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
    _say(
        f"{command}\n{len(pairs)} (shape, device) pairs, {t.budget} candidates each, "
        f"strategy {t.strategy}; out: {out}"
    )
    if t.resume:
        loaded = load_prior(pairs, resume_sources(t))
        counts = ", ".join(f"{k} for {n}" for n, k in loaded.items())
        _say(f"screened by earlier searches (not screened again): {counts}")

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


def merge_db(source: Path, tune_args: Sequence[str]) -> dict[str, Any]:
    """Merge the entries of another tuning database (a GPU node's) into tune.db, per tune.db_mode."""
    from kernels.halide import tuned

    dest = tuned.DEFAULT_DB
    mode = "better"
    for arg in tune_args:
        key, _, value = arg.partition("=")
        if key == "tune.db":
            dest = Path(value).expanduser()
        elif key == "tune.db_mode":
            mode = value
        else:
            raise ConfigError(f"--merge takes tune.db and tune.db_mode only, got {arg!r}")
    if mode not in ("better", "always"):
        raise ConfigError(f"--merge: tune.db_mode must be better or always, got {mode!r}")
    try:
        entries = tuned.load(source)["entries"]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    written = [k for k, e in entries.items() if tuned.store(dest, k, e, keep_better=mode == "better")]
    _say(f"{dest}: {len(written)} of {len(entries)} entries from {source} written")
    return {"db_written": written}


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


if __name__ == "__main__":
    sys.exit(main())
