"""The candidates of one `halide_tuned` build, built one after another (`candidates.Plan`), and what became
of each: the `Alternatives` a `Built` of the variant carries (`kernels.registry`).

The variant builds the first candidate that builds. The job layer (`workers.job`, `workers.select`),
which alone verifies and times, asks for the next one when a candidate does not verify
(`next_candidate`), and for a `quick` plan first builds (`build_trial`), verifies and times the first few
itself, then `adopt`s the fastest, which is stored in the tuning database with source `quick`. Every
Built this returns says which candidate it is and why the earlier ones did not run: params
`schedule_source`, `candidate`, `candidates_tried`; artifacts `tuned.json` (the plan and each outcome),
`build.json`, `params.json`; tags `tuned.skipped` (database entries skipped, with their reasons) and
`tuned.store` (what storing a quick winner did).
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from kernels.device import DeviceSpec
from kernels.halide import builder, candidates, family, tuned
from kernels.halide.candidates import Candidate, Plan
from kernels.halide.names import FAMILY
from kernels.layer import LayerShape

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 300
MAX_SKIPPED_TAG_CHARS = 2000


def _line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__)[:MAX_REASON_CHARS]


class Selection:
    """Builds the candidates of `plan` for (shape, device) in order and keeps what became of each."""

    def __init__(self, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any], plan: Plan) -> None:
        self.shape, self.device, self.options, self.plan = shape, device, dict(options), plan
        self.pending: list[Candidate] = list(plan.candidates)
        self.outcomes: list[dict[str, Any]] = []  # one a candidate tried: origin, outcome, reason, time
        self.current: Candidate | None = None
        self.current_built: Any = None
        self.quick_pending = plan.source == "quick"
        # a quick plan's first build is the ranking's first, until the job layer has timed the trials
        self.source = "rank" if self.quick_pending else plan.source
        self.store_note = ""
        self._trials: dict[int, dict[str, Any]] = {}  # a quick search's rows, by trial index
        self._failed: dict[tuple[str, Any], str] = {}  # candidates that failed to build, with the reason

    # --- the protocol the job layer uses (kernels.registry.Alternatives) -----------------------------------

    @property
    def trials(self) -> int:
        """How many candidates the job layer should time before choosing (0 unless the plan is quick)."""
        return min(self.plan.trials, len(self.plan.candidates)) if self.quick_pending else 0

    @property
    def budget_s(self) -> float:
        return self.plan.budget_s

    def trial_candidates(self) -> list[Candidate]:
        """The candidates a quick search times, in rank order."""
        return list(self.plan.candidates[: self.trials])

    def build_trial(self, index: int) -> Any:
        """Build trial `index` of `trial_candidates` (raises when it does not build; `note` records it)."""
        cand = self.trial_candidates()[index]
        if cand.ident in self._failed:
            raise RuntimeError(self._failed[cand.ident])
        if self.current is not None and cand.ident == self.current.ident:
            return self.current_built  # the variant's own first build
        return self._build(cand)

    def note(
        self,
        index: int,
        outcome: str,
        reason: str = "",
        time_ms: float | None = None,
        min_ms: float | None = None,
    ) -> None:
        """What the job layer found for trial `index`: outcome ok | build failed | wrong | failed, with its
        median (`time_ms`) and fastest (`min_ms`) times; noted again with outcome `ok`, the times are the
        confirming re-timings' (the screening's median is kept as `screen_ms`)."""
        cand = self.trial_candidates()[index]
        seen = self._trials.get(index)
        if seen is not None and outcome == "ok" and time_ms is not None:
            seen.setdefault("screen_ms", seen.get("time_ms"))
            seen["time_ms"] = time_ms
            if min_ms is not None:
                seen["min_ms"] = min_ms
            return
        row: dict[str, Any] = {"origin": cand.origin, "outcome": outcome, "stage": "quick"}
        if reason:
            row["reason"] = reason[:MAX_REASON_CHARS]
        if time_ms is not None:
            row["time_ms"] = time_ms
        if min_ms is not None:
            row["min_ms"] = min_ms
        self._trials[index] = row
        self.outcomes.append(row)
        if outcome != "ok":
            log.warning("halide_tuned: candidate %s %s: %s", cand.origin, outcome, reason)

    def adopt(self, job: Mapping[str, Any], index: int | None, built: Any) -> Any:
        """Trial `index` (its Built `built`), the job layer's choice, annotated, after storing it in the
        tuning database (source quick; `job`: key, git, host of the job that ran the search); with no
        choice (no trial verified), the ranking's next candidates, untimed (None when none builds)."""
        trials = self.trial_candidates()
        tried = {trials[i].ident for i in self._trials}
        self.quick_pending = False
        self.current = self.current_built = None
        if index is None:
            self.pending = [c for c in self.plan.candidates if c.ident not in tried]
            return self.first()
        cand = trials[index]
        self.source = "quick"
        self.current, self.current_built = cand, built
        # fallbacks: the other trials that verified, fastest first, then the candidates not timed
        timed = sorted(
            (r.get("min_ms", r["time_ms"]), i) for i, r in self._trials.items() if r["outcome"] == "ok"
        )
        ok = [trials[i] for _, i in timed if i != index]
        self.pending = [*ok, *(c for c in self.plan.candidates if c.ident not in tried)]
        self._store(cand, index, job)
        return self._annotate(built)

    def next_candidate(self, reason: str) -> Any | None:
        """The next candidate that builds, after the current one failed to verify or run (`reason`); None
        when none is left."""
        if self.current is not None:
            row = {
                "origin": self.current.origin,
                "outcome": "wrong or failed",
                "reason": reason[:MAX_REASON_CHARS],
            }
            self.outcomes.append(row)
            log.warning("halide_tuned: candidate %s did not verify: %s", self.current.origin, reason)
            self.current = self.current_built = None
        return self.first()

    # --- building ----------------------------------------------------------------------------------------

    def first(self) -> Any | None:
        """The first pending candidate that builds, annotated (None when none is left)."""
        while self.pending:
            cand = self.pending.pop(0)
            try:
                built = self._build(cand)
            except Exception as exc:  # the next candidate is built instead; the record says why
                self._failed[cand.ident] = _line(exc)
                if not self.quick_pending:  # a quick search notes it as its trial's outcome
                    self.outcomes.append(
                        {"origin": cand.origin, "outcome": "build failed", "reason": _line(exc)}
                    )
                log.warning("halide_tuned: candidate %s failed to build: %s", cand.origin, _line(exc))
                continue
            self.current, self.current_built = cand, built
            return self._annotate(built)
        return None

    def _build(self, cand: Candidate) -> Any:
        options = cand.build_options(self.options)
        return builder.build(cand.schedule, self.shape, self.device, options)

    def _annotate(self, built: Any) -> Any:
        cand = self.current
        assert cand is not None
        tried = len(
            {o["origin"] for o in self.outcomes} | {cand.origin}
        )  # candidates tried, this one included
        built.alternatives = self
        built.build_params["schedule_source"] = self.source
        built.build_params["candidate"] = cand.origin
        built.build_params["candidates_tried"] = str(tried)
        built.build_params["schedule"] = cand.schedule
        if isinstance(cand.params, family.GpuParams):
            built.build_params["gemm"] = cand.params.gemm
        if cand.params is not None:
            built.artifacts["params.json"] = json.dumps(
                {"kind": cand.params.kind, "params": family.as_dict(cand.params)}, indent=1, sort_keys=True
            )
        info = json.loads(built.artifacts.get("build.json", "{}"))
        info.update(source=self.source, db_key=self.plan.key, reason=self.plan.reason, candidate=cand.origin)
        built.artifacts["build.json"] = json.dumps(info, indent=1)
        record = {
            **self.plan.as_dict(),
            "source": self.source,
            "schedule": cand.schedule,
            "params": family.as_dict(cand.params) if cand.params is not None else None,
            "chosen": cand.as_dict(),
            "tried": [*self.outcomes, {"origin": cand.origin, "outcome": "ran"}],
        }
        if self.store_note:
            record["store"] = self.store_note
        built.artifacts["tuned.json"] = json.dumps(record, indent=1, sort_keys=True)
        tags = getattr(built, "build_tags", None)
        if tags is None:
            tags = built.build_tags = {}
        if self.plan.skipped:
            tags["tuned.skipped"] = "; ".join(self.plan.skipped)[:MAX_SKIPPED_TAG_CHARS]
        if self.store_note:
            tags["tuned.store"] = self.store_note
        return built

    def _store(self, cand: Candidate, index: int, job: Mapping[str, Any]) -> None:
        """The quick winner into the tuning database: written unless a faster usable entry is there; an
        unusable entry under this key (another machine's code under the same CPU name) is replaced."""
        rows = [self._trials[i] for i in sorted(self._trials)]
        row = self._trials[index]
        entry: dict[str, Any] = {
            "shape": {k: v for k, v in vars(self.shape).items() if k != "name"},
            "shape_name": self.shape.name,
            "device": self.device.name,
            "device_model": tuned.device_model(self.device),
            "halide": tuned.halide_version(),
            "kind": self.device.kind,
            "schedule": cand.schedule,
            "time_ms": row["time_ms"],
            "time_min_ms": row.get("min_ms"),
            "time_source": job.get("time_source", "?"),
            "source": "quick",
            "origin": cand.origin,
            "candidates": len(rows),
            "candidates_ok": sum(r["outcome"] == "ok" for r in rows),
            "trials": [{k: v for k, v in r.items() if k != "stage"} for r in rows],
            "job_key": job.get("key", ""),
            "git": job.get("git", "unknown"),
            "host": job.get("host", socket.gethostname()),
            "command": "halide_tuned on a miss with on_miss=quick (workers.select)",
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if cand.params is not None:
            entry["params"] = family.as_dict(cand.params)
        if cand.schedule == FAMILY:
            entry.pop("schedule")
        replace_unusable = self.plan.reason.startswith("db entry unusable")
        try:
            written = tuned.store(
                tuned.db_path(self.options), self.plan.key, entry, keep_better=not replace_unusable
            )
        except (OSError, ValueError) as exc:
            self.store_note = f"not stored: {_line(exc)}"
            log.warning("halide_tuned: quick winner not stored in the tuning database: %s", exc)
            return
        self.store_note = (
            f"stored {cand.origin} ({row['time_ms']:.6g} ms) as {self.plan.key}"
            if written
            else f"not stored: a faster entry for {self.plan.key} is there"
        )


def build(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Any:
    """The body of `halide_tuned`: plan the candidates and build the first that builds (for a quick
    plan, the job layer times the first few before it verifies anything)."""
    plan = candidates.plan(shape, device, options)
    selection = Selection(shape, device, options, plan)
    # For a quick plan the job layer times the trials and adopts the fastest; a caller that does not know
    # `Alternatives` has the ranking's first (source rank).
    built = selection.first()
    if built is None:
        raise RuntimeError(
            f"no candidate of halide_tuned builds for {shape.label}: "
            + "; ".join(f"{o['origin']}: {o.get('reason', o['outcome'])}" for o in selection.outcomes)
        )
    return built


def describe(outcomes: Sequence[Mapping[str, Any]]) -> str:
    """One line of what became of each candidate tried."""
    return "; ".join(f"{o['origin']}: {o['outcome']}" for o in outcomes)
