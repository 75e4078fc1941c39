"""The goals question 4 checks: read from conf/report/goals.yaml, checked, one line for a bad file.

The goals are targets someone stated, not results, so they live in a config file beside the experiments
rather than in code; the report quotes each as written and computes its value from the records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import analytics
from orchestrator.report.load import REPO_ROOT, ReportInputError

GOALS_FILE = REPO_ROOT / "conf" / "report" / "goals.yaml"
KINDS = ("speedup_geomean", "roofline_geomean", "not_slower", "max_time_ms")
SPEEDUP_KINDS = ("speedup_geomean", "not_slower")  # the kinds that compare with a baseline group
FILE_KEYS = ("source", "goals", "dispatch")


@dataclass(frozen=True)
class Goal:
    """A stated target, checked where the records cover it (the keys are explained in goals.yaml)."""

    device_prefix: str  # device keys starting with this (cpu, h100)
    text: str
    kind: str  # one of KINDS
    threshold: float
    baseline: str = ""  # baseline group for speedups
    shapes: tuple[str, ...] = ()  # shape names it is defined on (empty: every shape)
    batch: int | None = None  # the batch it is defined at (None: any)
    experiment: str = ""  # the experiment it is defined over ("" any)


@dataclass(frozen=True)
class DispatchGoal:
    """The agreement stated for the same jobs run through Ray and through the worker CLI (the section
    "Same jobs, both paths"): at least `min_pairs` pairs of `frameworks`, median |difference| within
    `max_median_diff_pct` percent."""

    source: str
    text: str
    frameworks: tuple[str, ...]
    min_pairs: int
    max_median_diff_pct: float


@dataclass(frozen=True)
class Goals:
    """The goals of one file and where they are stated (`source`, quoted in findings.md)."""

    source: str
    goals: tuple[Goal, ...]
    dispatch: DispatchGoal | None = None


class GoalsError(ReportInputError):
    """A goals file that cannot be used: one line naming the file, the goal and the valid choices."""


REQUIRED = tuple(f.name for f in dataclasses.fields(Goal) if f.default is dataclasses.MISSING)
VALID_KEYS = tuple(f.name for f in dataclasses.fields(Goal))


def load_goals(path: Path | None = None) -> Goals:
    """The goals of `path` (default GOALS_FILE), checked; GoalsError (one line) when the file is missing or
    malformed."""
    import yaml

    path = path or GOALS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GoalsError(f"{path}: cannot read the goals file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise GoalsError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise GoalsError(f"{path}: expected a mapping with keys {', '.join(FILE_KEYS)}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise GoalsError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(FILE_KEYS)}")
    source, entries = data.get("source"), data.get("goals")
    if not isinstance(source, str) or not source:
        raise GoalsError(f'{path}: `source` must name where the goals are stated, e.g. "issue #6"')
    if not isinstance(entries, list):
        raise GoalsError(f"{path}: `goals` must be a list of goals (keys: {', '.join(VALID_KEYS)})")
    goals = tuple(_goal(entry, f"{path}: goal {i + 1}") for i, entry in enumerate(entries))
    dispatch = data.get("dispatch")
    return Goals(source, goals, None if dispatch is None else _dispatch_goal(dispatch, f"{path}: dispatch"))


DISPATCH_KEYS = tuple(f.name for f in dataclasses.fields(DispatchGoal))


def _dispatch_goal(entry: Any, where: str) -> DispatchGoal:
    """The file's `dispatch` entry, its keys and types checked."""
    if not isinstance(entry, Mapping):
        raise GoalsError(f"{where}: expected a mapping with keys {', '.join(DISPATCH_KEYS)}")
    unknown = sorted(set(entry) - set(DISPATCH_KEYS))
    missing = [k for k in DISPATCH_KEYS if k not in entry]
    if unknown or missing:
        what = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
        raise GoalsError(f"{where}: {what}; keys: {', '.join(DISPATCH_KEYS)}")
    for key in ("source", "text"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise GoalsError(f"{where}: {key} must be text, got {entry[key]!r}")
    frameworks = entry["frameworks"]
    if not isinstance(frameworks, list) or not frameworks or not all(isinstance(f, str) for f in frameworks):
        raise GoalsError(f"{where}: frameworks must be a list of framework names, got {frameworks!r}")
    from kernels.registry import FRAMEWORKS

    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise GoalsError(f"{where}: unknown framework {unknown[0]!r}; valid: {', '.join(FRAMEWORKS)}")
    pairs, pct = entry["min_pairs"], entry["max_median_diff_pct"]
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise GoalsError(f"{where}: min_pairs must be a positive integer, got {pairs!r}")
    if isinstance(pct, bool) or not isinstance(pct, int | float) or pct < 0:
        raise GoalsError(f"{where}: max_median_diff_pct must be a number >= 0, got {pct!r}")
    return DispatchGoal(entry["source"], entry["text"], tuple(frameworks), pairs, float(pct))


def _goal(entry: Any, where: str) -> Goal:
    """One goal of the file, its keys and types checked."""
    if not isinstance(entry, Mapping):
        raise GoalsError(f"{where}: expected a mapping with keys {', '.join(VALID_KEYS)}")
    unknown = sorted(set(entry) - set(VALID_KEYS))
    if unknown:
        raise GoalsError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(VALID_KEYS)}")
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise GoalsError(f"{where}: missing key {missing[0]!r}; required keys: {', '.join(REQUIRED)}")
    values = dict(entry)
    for key in ("device_prefix", "text", "kind", "baseline", "experiment"):
        if key in values and not isinstance(values[key], str):
            raise GoalsError(f"{where}: {key} must be text, got {values[key]!r}")
    if values["kind"] not in KINDS:
        raise GoalsError(f"{where}: unknown kind {values['kind']!r}; valid kinds: {', '.join(KINDS)}")
    threshold = values["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise GoalsError(f"{where}: threshold must be a number, got {threshold!r}")
    values["threshold"] = float(threshold)
    batch = values.get("batch")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise GoalsError(f"{where}: batch must be a positive integer or null, got {batch!r}")
    shapes = values.get("shapes") or []
    if not isinstance(shapes, list) or not all(isinstance(s, str) for s in shapes):
        raise GoalsError(f"{where}: shapes must be a list of shape names, got {shapes!r}")
    values["shapes"] = tuple(shapes)
    baseline = values.get("baseline", "")
    if values["kind"] in SPEEDUP_KINDS and not (baseline and analytics.is_baseline(baseline)):
        raise GoalsError(
            f"{where}: kind {values['kind']} needs a baseline group (e.g. cudnn, cudnn_tf32, tensorflow), "
            f"got {baseline!r}"
        )
    if values["kind"] not in SPEEDUP_KINDS and baseline:
        raise GoalsError(f"{where}: kind {values['kind']} takes no baseline, got {baseline!r}")
    return Goal(**values)
