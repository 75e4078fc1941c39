"""What `halide_tuned` may build for a (shape, device), in the order it tries them, and why.

On a hit the database's entry comes first. On a miss (`ON_MISS`, chosen by the job's option `on_miss`):

- `heuristic`: the family's heuristic first;
- `rank`: the candidates ordered by the family's cost model (`family.cost`), nothing timed;
- `quick`: the same order, and the job layer (`workers.select`) verifies and times the first few with a
  short timing through the one harness, builds the fastest and stores it in the database with source
  `quick`, so that the next build is a hit.

The candidates: the heuristic; the named manual schedules (`app`, `unfused`, `fused_tile`,
`fused_cblock`) by name, and the family's versions of the last three beside them (`family.named`: the same
tiles and depthwise level, but not always the same code: on a GPU the family loads in `.v4` pieces and
lays its depthwise stage over all of a block's threads; on a CPU its rows a task are a power of two and
its register tile at most 8 pixels wide, where `schedules_cpu` takes 7 rows at 7² or 9 pixels at 17²);
the database's entries for the `NEAR` nearest shapes on this device model (`shape_distance`) and
the same shape's entries on other device models of the same kind (another GPU, another CPU), each
refitted to this shape and device (`family.fit`). Whatever comes after the first is a fallback: a
candidate that fails to build or to verify is followed by the next one, and the record says which ran
and why the earlier ones did not. Plain Python: the driver and tests read it without Halide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernels.device import DeviceSpec
from kernels.halide import family, tuned
from kernels.halide.family import cost
from kernels.halide.names import FAMILY, MANUAL_SCHEDULES
from kernels.layer import LayerShape

ON_MISS = ("heuristic", "rank", "quick")
DEFAULT_ON_MISS = "quick"  # conf/config.yaml `tuned.on_miss` sets it for experiments; this is the fallback
NEAR = 3  # entries of the nearest shapes on the same device model that become candidates
QUICK_TRIALS = 12  # candidates a quick search times at most (in rank order; its time budget stops it first)
QUICK_BUDGET_S = {"cuda": 30.0, "cpu": 60.0}  # seconds a quick search may take a shape, by device kind
STRIDE_DISTANCE = 2.0  # a stride mismatch weighs as much as two octaves of a size
EPILOGUE_DISTANCE = 0.25  # bias or ReLU present in one shape only


def shape_distance(a: LayerShape, b: LayerShape) -> float:
    """How far apart two layer shapes are for reusing a schedule: the sum of |log2| of the ratios of
    n, output height and width, c and co, plus `STRIDE_DISTANCE` for another stride and
    `EPILOGUE_DISTANCE` for each of bias and ReLU that differs (0 for the same shape)."""
    sizes = ((a.n, b.n), (a.ho, b.ho), (a.wo, b.wo), (a.c, b.c), (a.co, b.co))
    d = sum(abs(math.log2(x / y)) for x, y in sizes)
    d += STRIDE_DISTANCE * (a.stride != b.stride)
    d += EPILOGUE_DISTANCE * ((a.bias != b.bias) + (a.relu != b.relu))
    return d


@dataclass(frozen=True)
class Candidate:
    """One schedule `halide_tuned` may build: the family's parameters (`schedule` = family) or a named
    schedule; `origin` says where it came from (heuristic, named:<name>, family:<name>, db:<key>,
    near:<key>, other:<key>), `estimate_s` is the cost model's time."""

    schedule: str
    params: family.Params | None
    origin: str
    estimate_s: float

    @property
    def ident(self) -> tuple[str, Any]:
        return (self.schedule, self.params)

    def build_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options its build takes (the family's parameters and register cap; a named schedule's
        options as given)."""
        base = {k: v for k, v in options.items() if k not in ("params", *OPTION_KEYS)}
        if self.params is None:
            return base
        return family.build_options(self.params, base)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "params": family.as_dict(self.params) if self.params is not None else None,
            "origin": self.origin,
            "estimate_ms": round(self.estimate_s * 1e3, 6),
        }


OPTION_KEYS = ("on_miss", "quick_budget_s", "quick_trials")  # halide_tuned's own options


@dataclass(frozen=True)
class Plan:
    """What a `halide_tuned` build tries, in order (`candidates[0]` first), where the first came from
    (`source`), and, for `quick`, how many of them the job layer times within how many seconds."""

    source: str  # tuned.SOURCES
    on_miss: str
    key: str
    reason: str
    candidates: tuple[Candidate, ...]
    entry: dict[str, Any] | None = None
    skipped: tuple[str, ...] = field(default=())
    trials: int = 0  # quick: candidates to time (0: none)
    budget_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "on_miss": self.on_miss,
            "db_key": self.key,
            "reason": self.reason,
            "candidates": [c.as_dict() for c in self.candidates],
        }
        if self.entry:
            out["db_entry"] = {k: v for k, v in self.entry.items() if k != "params"}
        if self.skipped:
            out["skipped"] = list(self.skipped)
        if self.trials:
            out["quick"] = {"trials": self.trials, "budget_s": self.budget_s}
        return out


def on_miss_option(options: Mapping[str, Any]) -> str:
    """The job's `on_miss` option, checked (one line naming the valid choices)."""
    value = options.get("on_miss", DEFAULT_ON_MISS)
    if value not in ON_MISS:
        raise ValueError(f"options['on_miss'] must be one of {', '.join(ON_MISS)}, got {value!r}")
    return str(value)


def _estimate(schedule: str, params: family.Params | None, shape: LayerShape, device: DeviceSpec) -> float:
    if params is None:
        return cost.estimate_named(schedule, shape, device)
    return cost.estimate(params, shape, device)


def gather(shape: LayerShape, device: DeviceSpec, found: tuned.Lookup) -> tuple[list[Candidate], list[str]]:
    """Every candidate for (shape, device) but the database's own entry, without duplicates, each with
    the cost model's estimate, in the order heuristic, named, nearest shapes, other devices; and the
    entries that could not be refitted (one line each)."""
    out: list[Candidate] = []
    problems: list[str] = []

    def add(schedule: str, params: family.Params | None, origin: str, alternative: bool = True) -> None:
        if any(c.ident == (schedule, params) for c in out):
            return
        out.append(Candidate(schedule, params, origin, _estimate(schedule, params, shape, device)))
        # A GPU schedule with its reduction the other way too (split-K where its grid does not fill the
        # device, unsplit where it is split): the searched entries of other shapes come unsplit, and the
        # split is the family's answer to few outputs over many input channels; the timing decides.
        other = (
            family.split_alternative(params, shape, device) if alternative and params is not None else None
        )
        if other is not None:
            add(schedule, other, f"{origin} split_k={other.split_k}", alternative=False)

    add(FAMILY, family.heuristic(shape, device), "heuristic")
    named = family.named(shape, device)
    for name in MANUAL_SCHEDULES:
        add(name, None, f"named:{name}")
        if name in named:
            add(FAMILY, named[name], f"family:{name}")
    own_model, own_key = tuned.device_model(device), tuned.entry_key(shape, device)
    near: list[tuple[float, str, dict[str, Any]]] = []
    other: list[tuple[float, str, dict[str, Any]]] = []
    for key, entry in found.entries.items():
        parsed = tuned.parse_key(key)
        if (
            parsed is None
            or key == own_key
            or entry.get("kind", family.params_class(device).kind) != device.kind
        ):
            continue
        their_shape, model, _ = parsed
        if model == own_model:
            near.append((shape_distance(shape, their_shape), key, entry))
        elif their_shape.name == tuned.shape_key(shape):
            other.append((float(entry["time_ms"]), key, entry))
    picked = [("near", k, e) for _, k, e in sorted(near, key=lambda t: (t[0], t[1]))[:NEAR]]
    picked += [("other", k, e) for _, k, e in sorted(other, key=lambda t: (t[0], t[1]))]
    for kind, key, entry in picked:
        schedule = str(entry.get("schedule", FAMILY))
        if schedule != FAMILY:
            add(schedule, None, f"{kind}:{key}")
            continue
        try:
            raw = family.params_class(device)(**entry["params"])
            add(FAMILY, family.fit(raw, shape, device), f"{kind}:{key}")
        except (TypeError, ValueError) as exc:
            problems.append(f"{key}: not refittable here: {exc}")
    return out, problems


def plan(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Plan:
    """The candidates a `halide_tuned` build tries, in order, and where the first came from."""
    on_miss = on_miss_option(options)
    found = tuned.lookup(shape, device, options)
    choice = tuned.choose(shape, device, options, found)
    rest, problems = gather(shape, device, found)
    skipped = (*choice.skipped, *problems)
    ranked = sorted(rest, key=lambda c: c.estimate_s)
    if choice.source == "db":
        first = Candidate(
            choice.schedule,
            choice.params,
            f"db:{choice.key}",
            _estimate(choice.schedule, choice.params, shape, device),
        )
        order = [first, *(c for c in ranked if c.ident != first.ident)]
        return Plan("db", on_miss, choice.key, choice.reason, tuple(order), choice.entry, skipped)
    if on_miss == "heuristic":
        order = [rest[0], *(c for c in ranked if c is not rest[0])]
        return Plan("heuristic", on_miss, choice.key, choice.reason, tuple(order), None, skipped)
    if on_miss == "rank":
        return Plan("rank", on_miss, choice.key, choice.reason, tuple(ranked), None, skipped)
    trials = int(options.get("quick_trials") or QUICK_TRIALS)
    budget = float(options.get("quick_budget_s") or QUICK_BUDGET_S[device.kind])
    return Plan("quick", on_miss, choice.key, choice.reason, tuple(ranked), None, skipped, trials, budget)


def describe(candidates: Sequence[Candidate]) -> str:
    """`origin (estimate ms)` of each candidate, comma-separated (for logs)."""
    return ", ".join(f"{c.origin} ({c.estimate_s * 1e3:.4g} ms)" for c in candidates)
