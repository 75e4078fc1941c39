"""The job layer's side of a variant that chose one of several candidates (`kernels.registry.Alternatives`,
carried by `halide_tuned`'s Builds): a short timed search among them before the job's own verification
and timing, and the fallback to the next candidate when one does not verify.

The search runs here, not in the variant, because the worker owns verification and timing: each trial is
verified exactly as a job is (`workers.job.verify`, the job's verification inputs) and timed by the one
harness (`workers.harness.measure`) with `QUICK_TIMING`, a short warm timing like a tuning search's
screening (`conf/tune/default.yaml` `screen`). A trial starts only while the search is expected to end
within the variant's budget (`Alternatives.budget_s`: 30 s a shape on a GPU, 60 s on a CPU by default),
and at least one always runs.
"""

from __future__ import annotations

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
TIMING_STREAM = 2  # workers.job.TIMING: the trials are timed on the job's first timing input set

Verify = Callable[[Any, Job], tuple[float, str]]
OneLine = Callable[[BaseException, str], str]
Seed = Callable[[int, int, int], int]


def quick_search(
    built: Any, job: Job, device: DeviceSpec, verify: Verify, one_line: OneLine, seed: Seed, host: str = ""
) -> tuple[Any | None, dict[str, float]]:
    """Build, verify and time `built.alternatives`' trials within its budget, note each outcome, and
    return the Built it adopts (the fastest that verified; None when no candidate verifies or builds)
    with the search's metrics (`select_s`, `select_trials`)."""
    alts = built.alternatives
    start = time.perf_counter()
    spent: list[float] = []
    source = "?"
    for i in range(int(alts.trials)):
        elapsed = time.perf_counter() - start
        if spent and elapsed + sum(spent) / len(spent) > alts.budget_s:
            break  # the next trial would likely end past the budget
        t0 = time.perf_counter()
        try:
            candidate = alts.build_trial(i)
        except Exception as exc:
            alts.note(i, "build failed", one_line(exc, "build"))
            spent.append(time.perf_counter() - t0)
            continue
        try:
            error, detail = verify(candidate, job)
        except Exception as exc:
            alts.note(i, "failed", one_line(exc, "verify"))
            spent.append(time.perf_counter() - t0)
            continue
        if not error <= job.tolerance:
            alts.note(i, "wrong", detail)
            spent.append(time.perf_counter() - t0)
            continue
        try:
            placed = [candidate.place(make_inputs(job.shape, seed(job.seed, TIMING_STREAM, 0)))]
            timing = harness.measure(candidate, placed, QUICK_TIMING, device)
        except Exception as exc:
            alts.note(i, "failed", one_line(exc, "time"))
            spent.append(time.perf_counter() - t0)
            continue
        source = timing.time_source
        alts.note(i, "ok", time_ms=timing.time_ms)
        spent.append(time.perf_counter() - t0)
        del candidate, placed  # only the adopted trial's Built is kept (by the alternatives)
    facts = {"key": job.key, "git": job.versions.get("git", "unknown"), "host": host, "time_source": source}
    chosen = alts.adopt(facts)
    return chosen, {"select_s": time.perf_counter() - start, "select_trials": float(len(spent))}
