"""What a profiler pass is asked to do (`conf/profile/*.yaml`) and what it hands back.

The profiler pass is an observer, in the manner of Kernel Tuner's `observers/`: it runs after a job
was timed, in processes of its own, so that it never disturbs the timing it sits beside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

TOOLS = ("none", "ncu", "nsys")
CLOCK_CONTROLS = ("none", "base")  # ncu --clock-control: leave the clocks alone, or lock them to base
# ncu --cache-control: flush every cache before each profiled kernel (ncu's default), or leave them as the
# previous kernel left them (as a warm timing runs)
CACHE_CONTROLS = ("all", "none")
# The Nsight Compute sections that explain a kernel's time (identifiers as `ncu --list-sections` prints).
DEFAULT_SECTIONS = (
    "SpeedOfLight",
    "MemoryWorkloadAnalysis",
    "Occupancy",
    "LaunchStats",
    "WarpStateStats",
    "SchedulerStats",
)
NVTX_RANGE = "dsconv_profile"  # NVTX start/end range around the profiled launches (ncu --nvtx-include)
EXIT_SKIPPED = 3  # exit status of the target process when the variant cannot run on the device
OK = "ok"  # the profile_status of a profile that was captured and parsed
MLFLOW_KEY = re.compile(r"^[/\w.\- ]*$")  # what MLflow accepts as a metric, param or tag key


class ProfileConfigError(ValueError):
    """A profile config value that makes no sense; the message names the valid choices."""


@dataclass(frozen=True)
class ProfileSettings:
    """How to profile a job. Every field is a key of `conf/profile/ncu.yaml` (and `nsys.yaml`)."""

    warmup: int = 3  # launches of the whole layer before the profiled ones (JIT, caches, autotuning)
    runs: int = 1  # launches of the whole layer that are profiled
    clock_control: str = "none"  # none = leave the GPU clocks as they are; base = lock them to base clocks
    cache_control: str = "all"  # all = flush the caches before each profiled kernel; none = leave them warm
    sections: tuple[str, ...] = DEFAULT_SECTIONS  # Nsight Compute sections collected for each kernel
    nvtx: bool = True  # mark the profiled launches with an NVTX range when the target can (torch, nvtx)
    kernels_per_run: int | None = None  # kernels one run launches, when known: skip warm-ups by count
    max_kernels_per_run: int = 64  # cap on profiled kernels per run (a runaway filter stays cheap)
    timeout_s: float = 600.0  # wall-clock limit of each profiler process
    ncu_path: str | None = None  # the ncu executable; null = search PATH and the usual install folders
    nsys_path: str | None = None  # the nsys executable; null = search PATH and the usual install folders
    python: str | None = None  # interpreter of the target process; null = the worker's own
    variant_modules: tuple[str, ...] = ()  # extra modules the target imports to register variants
    sass: bool = True  # disassemble Halide's PTX to SASS when ptxas and cuobjdump are present

    def __post_init__(self) -> None:
        for name, choices in (("clock_control", CLOCK_CONTROLS), ("cache_control", CACHE_CONTROLS)):
            if getattr(self, name) not in choices:
                raise ProfileConfigError(
                    f"profile.{name} must be one of {list(choices)}, got {getattr(self, name)!r}"
                )
        for name in ("warmup", "runs", "max_kernels_per_run"):
            value = getattr(self, name)
            low = 0 if name == "warmup" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ProfileConfigError(f"profile.{name} must be an integer >= {low}, got {value!r}")
        if self.kernels_per_run is not None and (
            not isinstance(self.kernels_per_run, int) or self.kernels_per_run < 1
        ):
            raise ProfileConfigError(
                f"profile.kernels_per_run must be null or an integer >= 1, got {self.kernels_per_run!r}"
            )
        if not self.sections or not all(isinstance(s, str) and s for s in self.sections):
            raise ProfileConfigError(
                f"profile.sections must be a non-empty list of names, got {self.sections!r}"
            )
        if not self.timeout_s > 0:
            raise ProfileConfigError(f"profile.timeout_s must be > 0, got {self.timeout_s!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ProfileSettings:
        """Settings from a `profile` config node (a dict or an OmegaConf DictConfig); `tool` is ignored.

        An unknown key fails with the list of valid ones, so a typo never silently falls back to a default.
        """
        data = {str(k): v for k, v in dict(cfg).items() if str(k) != "tool"}
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ProfileConfigError(
                f"unknown profile key(s) {unknown}; valid keys: tool, {', '.join(valid)}"
            )
        for key in ("sections", "variant_modules"):
            if data.get(key) is not None:
                data[key] = tuple(str(s) for s in data[key])
        if data.get("timeout_s") is not None:
            data["timeout_s"] = float(data["timeout_s"])
        return cls(**data)


def check_tool(tool: str) -> str:
    """`tool` if it is a known profiler, else a one-line error naming the valid ones."""
    if tool not in TOOLS:
        raise ProfileConfigError(f"profile tool must be one of {list(TOOLS)}, got {tool!r}")
    return tool


@dataclass
class ProfileResult:
    """The outcome of a profiler pass over one job, ready to merge into its Record.

    `status` is "ok" or one line saying why there is no profile (it becomes the `profile_status` tag).
    `metrics` and `tags` have MLflow-safe keys; `artifacts` are files on disk (the report is binary).
    """

    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def apply_to(self, record: Any, max_text_bytes: int = 2_000_000) -> None:
        """Merge into a `workers.schema.Record`: metrics, tags (with `profile_status`) and text artifacts.

        A Record carries artifacts as text, so only the text files (CSV, PTX, SASS, logs) under
        `max_text_bytes` go in; the binary `.ncu-rep` stays a path in `self.artifacts` for the caller.
        """
        record.metrics.update(self.metrics)
        record.tags.update(self.tags)
        record.tags["profile_status"] = self.status
        for name, path in self.artifacts.items():
            if name.endswith(TEXT_SUFFIXES) and path.is_file() and path.stat().st_size <= max_text_bytes:
                record.artifacts[f"profile/{name}"] = path.read_text(errors="replace")


TEXT_SUFFIXES = (".csv", ".ptx", ".sass", ".log", ".txt", ".json")
