"""The strategies of a search: what a candidate is, what it gave, and which candidates to try next.

`random` draws candidates from the family's space (`kernels/halide/family.py`); `evolve` starts from the
heuristic, the same tiles with the depthwise at every other level, and random draws, then mutates the best
`tune.parents` each generation. `adams2019`, `anderson2021`, `li2018`, `mullapudi2016` spend the same
budget on that autoscheduler: its configured run first, then greedy runs (beam 1) with random dropout, one
seed per candidate (Li2018 and Mullapudi2016 have no random knob: their one schedule).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from orchestrator.tune.config import AUTO_STRATEGIES, TuneConf, db_path
from workers.schema import Record

DROPOUT = 50  # percent: the chance a greedy autoscheduler run keeps each state it considers


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
    """What proposes a search's candidates for one (shape, device)."""

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
            # (an entry of a named schedule, stored by a quick search, has no parameters to start from)
            entry = [known.params] if known.source == "db" and known.params is not None else []
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
        best = ranked(outcomes)[: self.t.parents]
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
    """The strategy of tune.strategy for one (shape, device): an autoscheduler's, else the family's."""
    if t.strategy in AUTO_STRATEGIES:
        return AutoSearch(shape, device, t, rng)
    return FamilySearch(shape, device, t, rng)


def ranked(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """The outcomes screened ok, fastest first."""
    return sorted((o for o in outcomes if math.isfinite(o.screen_ms)), key=lambda o: o.screen_ms)
