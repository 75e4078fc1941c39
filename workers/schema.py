"""The two messages that cross between orchestrator and workers: a Job in, a Record out.

Both are plain data that round-trip through JSON, because they travel three ways: as Ray task
arguments and results, as `jobs.json` exported for a GPU node without Ray or MLflow, and as lines
of a results bundle's `records.jsonl` that `orchestrator.ingest` logs into MLflow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kernels.device import LEGACY_FIELDS, DeviceSpec
from kernels.layer import LayerShape

STATUSES = ("ok", "wrong", "failed", "skipped")


@dataclass(frozen=True)
class TimingSpec:
    """How the harness times a job (see `workers.harness`)."""

    warmup: int = 3  # untimed runs before timing (JIT, caches, clocks)
    min_repeats: int = 10  # timed samples at least
    max_repeats: int = 200  # timed samples at most
    min_time_s: float = 0.2  # keep sampling at least this long...
    max_time_s: float = 5.0  # ...and stop after this long, stable or not
    stable_spread: float = 0.05  # stop once (p75 - p25) / median is under this
    cold_cache: bool = False  # rotate among input sets larger than the last-level cache
    input_sets: int = 1  # input sets to rotate through (cold_cache raises it as needed)


@dataclass(frozen=True)
class Job:
    """One unit of work: build, verify and time one variant on one shape on one device."""

    experiment: str
    variant: str
    shape: LayerShape
    device: DeviceSpec
    timing: TimingSpec = field(default_factory=TimingSpec)
    tolerance: float = 1e-4  # relative L2 error above which the result is `wrong`
    seed: int = 0  # seeds the verification and timing inputs
    options: dict[str, Any] = field(default_factory=dict)  # variant build options (register cap...)
    versions: dict[str, str] = field(default_factory=dict)  # code and library versions in the key
    # the profiler pass observing the job: {"tool": "ncu"|"nsys", settings...}; {} = none
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity of the measurement: variant, shape, device model, and every setting that changes what
        is measured or recorded: options, timing (every TimingSpec field), tolerance, seed, the profiler
        pass and its settings, code and library versions.

        Two jobs with the same key measure the same thing; re-runs and ingests de-duplicate on it. (Keys
        made before timing, tolerance, seed and profile entered them differ: records keep the key they
        were made with, and a re-run of such a job is a new measurement.)
        """
        ident = {
            "variant": self.variant,
            "shape": asdict(self.shape),
            "device": self.device.name,
            "options": self.options,
            "timing": asdict(self.timing),
            "tolerance": self.tolerance,
            "seed": self.seed,
            "profile": self.profile,
            "versions": self.versions,
        }
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.variant}.{self.shape.name}.{self.device.name}.{digest}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        d = dict(d)
        d["shape"] = LayerShape(**d["shape"])
        d["device"] = DeviceSpec(**{k: v for k, v in d["device"].items() if k not in LEGACY_FIELDS})
        d["timing"] = TimingSpec(**d.get("timing", {}))
        return cls(**d)


@dataclass
class Record:
    """The outcome of one job, shaped as an MLflow child run: params, metrics, tags, artifacts.

    `tags["status"]` is one of STATUSES; a `wrong`, `failed` or `skipped` record carries no speed
    metrics, and `tags["error"]` says why. Artifacts are small text files (name -> content).
    """

    key: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.tags.get("status", "failed")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Record:
        return cls(**json.loads(line))
