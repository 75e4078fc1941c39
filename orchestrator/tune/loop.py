"""The search loop: screen every pair's candidates in rounds, then re-time the best with the experiment's
timing (successive halving).

Every candidate is an ordinary Job (`halide_family` with `options.params`, or `halide_auto_<name>` with
`options.autoscheduler`): the worker builds it, verifies it against the float64 reference and only then
times it. Every candidate is first timed with a short spec (`tune.screen`), and only the `tune.promote`
best (plus the heuristic's schedule, the baseline) are re-timed with the experiment's timing.

A search can go on from earlier ones (`tune.resume`, records files or bundles, as Kernel Tuner's cache files
do): the candidates they screened for the same shape, device model and Halide version are not screened
again, `evolve` mutates the best of them, and their best is re-timed beside this search's own, so one
search can span several calls to a GPU node.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from orchestrator.config import ConfigError
from orchestrator.tune.config import AUTO_STRATEGIES, TuneConf
from orchestrator.tune.executors import Executor
from orchestrator.tune.sinks import Sink
from orchestrator.tune.strategies import Candidate, Outcome, Strategy, make_strategy, ranked
from workers.schema import Job, Record, TimingSpec

RUNG_TAG, CANDIDATE_TAG, STRATEGY_TAG, ROUND_TAG = (
    "tune.rung",
    "tune.candidate",
    "tune.strategy",
    "tune.round",
)
LARGE_ARTIFACTS = ("lowered.stmt", "kernels.ptx")
SCREEN_SHARE = 0.7  # of tune.time_limit_s: no screening round starts after it (the rest re-times the best)


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


def say(text: str) -> None:
    """A progress line, flushed at once (a search on a GPU node is followed through a pipe)."""
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
            say(f"time limit: no screening round starts after {limit:.0f} s; re-timing the best")
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
        say(f"round {round_}: screening {len(jobs)} candidates over {len(pairs)} (shape, device) pairs")

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
            say(f"  {pair.name} {outcome.candidate.label} {record.status}: {took[:160]} (best {best:.4g} ms)")

        executor.run(jobs, screened, exclusive=False)
        round_ += 1

    finals: list[Job] = []
    for pair in pairs:
        chosen = ranked(pair.fresh())[: t.promote]
        # the best of the earlier searches too: their screenings ran under other loads, so it is
        # re-timed beside this search's best rather than ranked against their screenings
        earlier = ranked(pair.earlier())[:1]
        for outcome in [*earlier, pair.baseline()]:
            if outcome is not None and math.isfinite(outcome.screen_ms) and outcome not in chosen:
                chosen.append(outcome)
        for outcome in chosen:
            job = candidate_job(pair.base, outcome.candidate, pair.base.timing)
            by_key[job.key] = (pair, outcome, round_)
            finals.append(job)
    if not finals:
        return
    say(f"promoted: re-timing {len(finals)} candidates with the experiment's timing, one at a time")

    def timed(job: Job, record: Record) -> None:
        pair, outcome, r = by_key[job.key]
        outcome.final = _annotate(record, outcome.candidate, 1, r, t)
        sink.log(job, record)
        say(f"  {pair.name} {outcome.candidate.label} {record.status}: {outcome.final_ms:.4g} ms")

    executor.run(finals, timed, exclusive=True)


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
