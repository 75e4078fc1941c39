"""The comparisons every output makes: best per framework, baselines, speedups and geometric means.

The end-of-run summary (`orchestrator.summary`), the parent run's metrics (`summary_metrics`, logged by
`python -m orchestrator` and `python -m orchestrator.ingest`) and the report (`orchestrator.report`) take
their figures from here, so that the three agree on the same records.

Groups. A result's comparison group is its framework, with `_tf32` appended when the variant runs TF32:
TF32 rounds the matrix products' inputs to 10 mantissa bits and runs them on tensor cores, which Halide 21
never emits, so a strict fp32 baseline and a TF32 one answer different questions and are never mixed.
The subject is `halide`; every other framework except the float64 reference (`numpy`) is a baseline, in
each precision it ran: `tensorflow`, `tensorflow_tf32`, `cudnn`, `cudnn_tf32`, `cublas`, `cublas_tf32`,
`torch_compile`, `torch_compile_tf32` (Inductor's default and max-autotune modes are variants of one group:
the faster is the group's best), and any framework registered later, with no change here but its label.

TF32. A variant is TF32 when its registry entry carries the tag `tf32` (`kernels.registry`; the planner
gives such variants their own tolerance from the same tag). A record carries only the variant's name, so
for a variant not registered in this process (a record older than a rename, a module not loaded) the name
decides: `tf32` as one of its `_`-separated parts, the way every registered TF32 variant names itself
(tests/test_analytics.py holds the two in agreement).

Results. Only `ok` records with a positive median time count (`Timed`); a `wrong` one has no speed by
design. The best of a group is its fastest such result per (device, shape); on a tie the first wins.

Metrics of the parent run (`speedup_metrics`), each the geometric mean, over every (device, shape) where the
best Halide and the group's best both ran, of group time / Halide time (above 1: Halide is faster):

    geomean_speedup_halide_vs_<framework>        against its strict fp32 variants, e.g. `..._vs_cudnn`
    geomean_speedup_halide_vs_<framework>_tf32   against its TF32 variants, e.g. `..._vs_cudnn_tf32`

Dispatch paths. A job reaches its worker through Ray (the orchestrator's live path) or through
`python -m workers run` (the worker CLI, for a node without Ray); the record's tag `dispatch` says which
(`ray`, `worker-cli`; absent: unknown). `path_pairs` pairs the records of one measurement made through
both, and `path_agreement` says how far their times lie apart: the check that both paths measure the
same kernel time.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from workers.schema import Record, TimingSpec

T = TypeVar("T")
Where = tuple[str, str]  # (device, shape)

SUBJECT = "halide"  # the framework the others are compared against
REFERENCES = ("numpy",)  # frameworks that are neither subject nor baseline (the float64 reference)
TF32 = "tf32"  # the registry tag, and the name part, of a TF32 variant
FRAMEWORK_ORDER = (
    "halide",
    "tensorflow",
    "cudnn",
    "cublas",
    "torch_compile",
    "triton",
)  # display order; others follow
FRAMEWORK_LABELS = {"halide": "Halide", "tensorflow": "TensorFlow", "cudnn": "cuDNN", "cublas": "cuBLAS",
                    "torch_compile": "torch.compile", "triton": "Triton", "numpy": "NumPy"}  # fmt: skip
METRIC_PREFIX = "geomean_speedup_halide_vs_"


# --- groups -------------------------------------------------------------------------------------------
def is_tf32(variant: str) -> bool:
    """Whether `variant` runs TF32: its registry tag when registered here, else its name (see above)."""
    from kernels import registry

    registered = registry.all_variants().get(variant)
    if registered is not None:
        return TF32 in registered.tags
    return TF32 in variant.split("_")


def group(framework: str, variant: str) -> str:
    """The comparison group of a result: `framework`, or `framework_tf32` for a TF32 variant."""
    return f"{framework}_{TF32}" if is_tf32(variant) else framework


def framework_of(group_name: str) -> str:
    """The framework of a group (`cudnn_tf32` → `cudnn`)."""
    return group_name.removesuffix(f"_{TF32}")


def is_tf32_group(group_name: str) -> bool:
    """Whether a group holds TF32 variants (`cudnn_tf32`)."""
    return framework_of(group_name) != group_name


def is_baseline(group_name: str) -> bool:
    """Whether a group is compared against the subject: every framework but the subject and the references."""
    return framework_of(group_name) not in (SUBJECT, *REFERENCES)


def groups(frameworks: Iterable[str]) -> tuple[str, ...]:
    """Each framework's groups, strict fp32 first: (`cudnn`,) → (`cudnn`, `cudnn_tf32`)."""
    return tuple(g for fw in frameworks for g in (fw, f"{fw}_{TF32}"))


def ordered(group_names: Iterable[str]) -> list[str]:
    """Groups in display order: FRAMEWORK_ORDER, then other frameworks by name; strict before TF32."""

    def key(g: str) -> tuple[int, str, bool]:
        fw = framework_of(g)
        rank = FRAMEWORK_ORDER.index(fw) if fw in FRAMEWORK_ORDER else len(FRAMEWORK_ORDER)
        return rank, fw, g != fw

    return sorted(dict.fromkeys(group_names), key=key)


def label(group_name: str) -> str:
    """A group as prose: `cuDNN (fp32)`, `TensorFlow (TF32)`."""
    fw = framework_of(group_name)
    return f"{framework_label(fw)} ({'TF32' if is_tf32_group(group_name) else 'fp32'})"


def framework_label(framework: str) -> str:
    """A framework as prose: `torch.compile`, `cuDNN`; an unknown one as its name."""
    return FRAMEWORK_LABELS.get(framework, framework)


def metric_name(group_name: str) -> str:
    """The parent run's metric of a baseline group: `geomean_speedup_halide_vs_<group>`."""
    return METRIC_PREFIX + group_name


# --- results ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timed(Generic[T]):
    """One `ok` result with a positive time, and the item it came from (a Record or a report row)."""

    device: str
    shape: str
    variant: str
    framework: str
    time_ms: float
    item: T

    @property
    def where(self) -> Where:
        return self.device, self.shape

    @property
    def group(self) -> str:
        return group(self.framework, self.variant)


def timed(items: Iterable[T], fields: Callable[[T], tuple[str, str, str, str, str, Any]]) -> list[Timed[T]]:
    """The items that count as speeds; `fields` gives an item's (status, device, shape, variant,
    framework, time_ms)."""
    out = []
    for item in items:
        status, device, shape, variant, framework, t = fields(item)
        if status == "ok" and isinstance(t, int | float) and t > 0 and math.isfinite(t):
            out.append(Timed(device, shape, variant, framework, float(t), item))
    return out


def timed_records(records: Iterable[Record]) -> list[Timed[Record]]:
    """Records as results: (device, shape) from their params, as the driver names them."""

    def fields(r: Record) -> tuple[str, str, str, str, str, Any]:
        p = r.params
        return (r.status, p.get("device", "?"), p.get("shape", "?"), p.get("variant", "?"),
                p.get("framework", "?"), r.metrics.get("time_ms"))  # fmt: skip

    return timed(records, fields)


def timed_rows(rows: Iterable[Mapping[str, Any]]) -> list[Timed[Mapping[str, Any]]]:
    """Report rows as results: (device, shape) are the report's unambiguous `device_key`, `shape_key`."""

    def fields(r: Mapping[str, Any]) -> tuple[str, str, str, str, str, Any]:
        return (r.get("status", "failed"), r["device_key"], r["shape_key"], str(r.get("variant", "?")),
                str(r.get("framework", "?")), r.get("time_ms"))  # fmt: skip

    return timed(rows, fields)


def best_per_group(results: Iterable[Timed[T]]) -> dict[Where, dict[str, Timed[T]]]:
    """(device, shape) → group → its fastest result, in the order the (device, shape) pairs appear."""
    best: dict[Where, dict[str, Timed[T]]] = {}
    for r in results:
        at = best.setdefault(r.where, {})
        held = at.get(r.group)
        if held is None or r.time_ms < held.time_ms:
            at[r.group] = r
    return best


def baselines_present(best: Mapping[Where, Mapping[str, Timed[Any]]]) -> list[str]:
    """The baseline groups that ran somewhere beside the subject, in display order."""
    return ordered(g for at in best.values() if SUBJECT in at for g in at if is_baseline(g))


def speedups(
    results: Iterable[Timed[Any]], baselines: Sequence[str] | None = None
) -> dict[str, dict[Where, float]]:
    """baseline group → (device, shape) → the group's best time / the best Halide time, where both ran.
    `baselines`: the groups wanted (each gets an entry, empty if it never ran); default: those present."""
    best = best_per_group(results)
    wanted = list(baselines) if baselines is not None else baselines_present(best)
    out: dict[str, dict[Where, float]] = {g: {} for g in wanted}
    for where, at in best.items():
        if SUBJECT not in at:
            continue
        for g in wanted:
            if g in at:
                out[g][where] = at[g].time_ms / at[SUBJECT].time_ms
    return out


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive finite values; None when there are none."""
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def speedup_metrics(results: Iterable[Timed[Any]]) -> dict[str, float]:
    """The parent run's metrics: `metric_name(group)` → geometric-mean speedup, per baseline group that
    ran beside Halide (the names are in the module docstring)."""
    metrics = {}
    for g, per_where in speedups(results).items():
        value = geomean(per_where.values())
        if value is not None:
            metrics[metric_name(g)] = value
    return metrics


# --- the same job through both dispatch paths ---------------------------------------------------------
DISPATCH_TAG = "dispatch"  # the record's tag: how the job reached its worker
DISPATCH_PATHS = ("ray", "worker-cli")  # the orchestrator's live path, and `python -m workers run`
TIMING_FIELDS = tuple(f.name for f in dataclasses.fields(TimingSpec))  # the settings a job is timed with


def flat_record(record: Record) -> dict[str, Any]:
    """A Record as one mapping, as the report's rows hold it: tags, then params, then metrics."""
    return {**record.tags, **record.params, **record.metrics}


def measurement(flat: Mapping[str, Any]) -> tuple[str, ...] | None:
    """What a record measured, whichever path dispatched it: its job key (variant, shape, device model,
    options, cold cache, versions; `workers.schema.Job.key`) with the timing settings, tolerance and seed,
    which the key leaves out. None without a job key."""
    key = flat.get("job_key")
    if not key:
        return None
    timing = tuple(f"{name}={flat.get(f'timing.{name}')}" for name in TIMING_FIELDS)
    return (str(key), *timing, f"tolerance={flat.get('tolerance')}", f"seed={flat.get('seed')}")


@dataclass(frozen=True)
class PathPair(Generic[T]):
    """One measurement timed through Ray and through the worker CLI: the newest ok record of each."""

    variant: str
    framework: str
    shape: str
    device: str
    ray: Timed[T]
    cli: Timed[T]

    @property
    def diff(self) -> float:
        """Worker-CLI time / Ray time - 1 (above 0: slower through the worker CLI)."""
        return self.cli.time_ms / self.ray.time_ms - 1


def path_pairs(items: Sequence[T], flat: Callable[[T], Mapping[str, Any]]) -> list[PathPair[T]]:
    """The measurements that have an ok record through each dispatch path (tag `dispatch`: ray and
    worker-cli; a record without it is of an unknown path and pairs with nothing). `items` are oldest
    first: a later record of the same measurement and path replaces an earlier one. `flat` gives an item
    as one mapping of tags, params and metrics (a report row as it is; a Record through `flat_record`)."""
    newest: dict[tuple[str, ...], dict[str, Timed[T]]] = {}
    for item in items:
        f = flat(item)
        path, ident, t = f.get(DISPATCH_TAG), measurement(f), f.get("time_ms")
        if path not in DISPATCH_PATHS or ident is None or f.get("status") != "ok":
            continue
        if not (isinstance(t, int | float) and t > 0 and math.isfinite(t)):
            continue
        device, shape = (
            str(f.get("device_key", f.get("device", "?"))),
            str(f.get("shape_key", f.get("shape", "?"))),
        )
        found = Timed(device, shape, str(f.get("variant", "?")), str(f.get("framework", "?")), float(t), item)
        newest.setdefault(ident, {})[str(path)] = found
    pairs = []
    for by_path in newest.values():
        if len(by_path) == len(DISPATCH_PATHS):
            ray, cli = by_path[DISPATCH_PATHS[0]], by_path[DISPATCH_PATHS[1]]
            pairs.append(PathPair(ray.variant, ray.framework, ray.shape, ray.device, ray, cli))
    return pairs


@dataclass(frozen=True)
class PathAgreement:
    """How far the pairs' two times lie apart: their count per framework, the median and largest
    absolute difference (a fraction: 0.02 is 2%)."""

    pairs: int
    per_framework: dict[str, int]
    median_abs_diff: float | None
    max_abs_diff: float | None


def path_agreement(pairs: Iterable[PathPair[Any]], frameworks: Iterable[str] | None = None) -> PathAgreement:
    """The agreement of the pairs, of the given frameworks only when `frameworks` is given."""
    wanted = None if frameworks is None else set(frameworks)
    chosen = [p for p in pairs if wanted is None or p.framework in wanted]
    diffs = sorted(abs(p.diff) for p in chosen)
    counts: dict[str, int] = {}
    for p in chosen:
        counts[p.framework] = counts.get(p.framework, 0) + 1
    return PathAgreement(
        len(chosen), counts, statistics.median(diffs) if diffs else None, diffs[-1] if diffs else None
    )


# --- the conditions of a timing ------------------------------------------------------------------------
def is_throttled(flat: Mapping[str, Any]) -> bool:
    """Whether a record's GPU clock fell well below its maximum during the timing (tag `throttled`,
    `workers.clocks`)."""
    return str(flat.get("throttled", "")).lower() == "true"


def throttle_text(flat: Mapping[str, Any]) -> str:
    """What a throttled record's clocks did, in one line: lowest and maximum SM clock, the clock event
    reasons NVML reported and the harness's note."""

    def mhz(key: str) -> str:
        value: Any = flat.get(key)
        return f"{float(value):.0f} MHz" if _number(value) else "?"

    reasons = flat.get("clock_event_reasons") or "none reported"
    note = flat.get("throttle_note")
    return (
        f"SM clock down to {mhz('sm_clock_mhz_min')} of {mhz('sm_clock_max_mhz')} (median "
        f"{mhz('sm_clock_mhz_median')}); reasons: {reasons}" + (f"; {note}" if note else "")
    )


def _number(value: Any) -> bool:
    """Whether `value` reads as a finite number (a metric, or a param's text)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
