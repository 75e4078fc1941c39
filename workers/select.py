"""The job layer's side of a variant that chose one of several candidates (`kernels.registry.Alternatives`,
carried by `halide_tuned`'s Builds): a short timed search among them before the job's own verification
and timing, and the fallback to the next candidate when one does not verify.

The search runs here, not in the variant, because the worker owns verification and timing: each trial is
verified exactly as a job is (`workers.job.verify`, the job's verification inputs) and timed by the one
harness (`workers.harness.measure`) with `QUICK_TIMING`, a short warm timing like a tuning search's
screening (`conf/tune/default.yaml` `screen`). Screening stops where the next trial would end past
`SCREEN_SHARE` of the variant's budget (`Alternatives.budget_s`: 30 s a shape on a GPU, 60 s on a CPU by
default; at least one trial always runs); the `CONFIRM` fastest are then re-timed in turns, round after
round, while the budget lasts (a tuning search's promotion, shrunk): on a machine shared with other work
a burst of load during one screening otherwise decides the winner (on the project's 2-core VM one
schedule's screening times varied 2x between calls minutes apart). The winner is the lowest median of
its timings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from kernels.device import DeviceSpec
from kernels.layer import make_inputs
from workers import harness
from workers.schema import Job, TimingSpec

# The screening timing of a tuning search (conf/tune/default.yaml `screen`): warm, at most 0.3 s a trial.
QUICK_TIMING = TimingSpec(
    warmup=1, min_repeats=5, max_repeats=30, min_time_s=0.05, max_time_s=0.3, stable_spread=0.1
)
SCREEN_SHARE = 0.7  # of the budget screening may take; the rest re-times the fastest
CONFIRM = 4  # trials re-timed after screening
CONFIRM_ROUNDS = 10  # at most, each timing every confirmed trial once in turn (the budget stops it first)
TIMING_STREAM = 2  # workers.job.TIMING: the trials are timed on the job's first timing input set

Verify = Callable[[Any, Job], tuple[float, str]]
OneLine = Callable[[BaseException, str], str]
Seed = Callable[[int, int, int], int]


def quick_search(
    built: Any, job: Job, device: DeviceSpec, verify: Verify, one_line: OneLine, seed: Seed, host: str = ""
) -> tuple[Any | None, dict[str, float]]:
    """Build, verify and time `built.alternatives`' trials within its budget, note each outcome, re-time
    the fastest in turns, and return the Built the alternatives adopt (the lowest median; None when no
    candidate verifies or builds), with the search's metrics (`select_s`, `select_trials`)."""
    alts = built.alternatives
    start = time.perf_counter()
    inputs = make_inputs(job.shape, seed(job.seed, TIMING_STREAM, 0))
    spent: list[float] = []
    timed: dict[int, list[tuple[float, float]]] = {}  # trial -> its timings (fastest, median), ms
    kept: dict[int, Any] = {}  # the CONFIRM fastest trials' Builts (a GPU Built holds device memory)
    source = "?"

    def measure(candidate: Any) -> tuple[float, float]:
        nonlocal source
        timing = harness.measure(candidate, [candidate.place(inputs)], QUICK_TIMING, device)
        source = timing.time_source
        return timing.min_ms, timing.time_ms

    def score(i: int) -> float:
        return statistics.median(fastest for fastest, _ in timed[i])

    for i in range(int(alts.trials)):
        elapsed = time.perf_counter() - start
        if spent and elapsed + statistics.mean(spent) > SCREEN_SHARE * alts.budget_s:
            break  # the next trial would likely end past the screening's share of the budget
        t0 = time.perf_counter()
        outcome = _screen(alts, i, job, verify, one_line, measure)
        spent.append(time.perf_counter() - t0)
        if outcome is None:
            continue
        candidate, times = outcome
        timed[i] = [times]
        kept[i] = candidate
        for slow in sorted(kept, key=score)[CONFIRM:]:
            del kept[slow]
        del candidate
    if len(kept) > 1:  # re-time the fastest in turns while the budget lasts
        for _ in range(CONFIRM_ROUNDS):
            round_s = sum(QUICK_TIMING.max_time_s for _ in kept) * 1.5
            if time.perf_counter() - start + round_s > alts.budget_s:
                break
            for i, candidate in kept.items():
                timed[i].append(measure(candidate))
        for i in kept:
            if len(timed[i]) > 1:
                medians = [median for _, median in timed[i]]
                alts.note(i, "ok", time_ms=statistics.median(medians), min_ms=score(i))
    winner = min(kept, key=score) if kept else None
    facts = {"key": job.key, "git": job.versions.get("git", "unknown"), "host": host, "time_source": source}
    chosen = alts.adopt(facts, winner, kept.get(winner) if winner is not None else None)
    return chosen, {"select_s": time.perf_counter() - start, "select_trials": float(len(spent))}


def _screen(
    alts: Any,
    i: int,
    job: Job,
    verify: Verify,
    one_line: OneLine,
    measure: Callable[[Any], tuple[float, float]],
) -> tuple[Any, tuple[float, float]] | None:
    """Build, verify and time trial `i` once, noting its outcome; (its Built, (fastest, median) ms) when
    it verified."""
    try:
        candidate = alts.build_trial(i)
    except Exception as exc:
        alts.note(i, "build failed", one_line(exc, "build"))
        return None
    try:
        error, detail = verify(candidate, job)
    except Exception as exc:
        alts.note(i, "failed", one_line(exc, "verify"))
        return None
    if not error <= job.tolerance:
        alts.note(i, "wrong", detail)
        return None
    try:
        fastest, median = measure(candidate)
    except Exception as exc:
        alts.note(i, "failed", one_line(exc, "time"))
        return None
    alts.note(i, "ok", time_ms=median, min_ms=fastest)
    return candidate, (fastest, median)
