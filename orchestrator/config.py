"""Typed schemas for the Hydra configs in `conf/`, and the one error type for bad input.

The dataclasses are registered in Hydra's ConfigStore as `config_schema`, which `conf/config.yaml` puts
first in its defaults list: every YAML value and every command-line override is then checked against a
type before anything runs (`timing.min_repeats=abc` fails at composition, not in a worker).

Values live in the YAML files; the defaults here only say what a missing key means.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


class ConfigError(ValueError):
    """Bad input from the user (a config value or an override); its message is one line for stderr."""


@dataclass
class ShapeConf:
    """One entry of the shape catalog: a layer instance (see `kernels.layer.LayerShape`)."""

    n: int = MISSING  # batch
    h: int = MISSING  # input height, pixels
    w: int = MISSING  # input width, pixels
    c: int = MISSING  # input channels (= depthwise channels)
    co: int = MISSING  # output channels of the pointwise convolution
    stride: int = 1  # depthwise stride, 1 or 2
    bias: bool = True  # add a bias after the pointwise convolution
    relu: bool = True  # apply ReLU at the end
    depth_multiplier: int = 1  # depthwise output channels per input channel; the layer supports 1
    follows_batch: bool = False  # true: the experiment's `batch` replaces n


@dataclass
class DeviceConf:
    """One entry of the device catalog (see `kernels.device.DeviceSpec`)."""

    kind: str = MISSING  # cpu | cuda
    model: str = MISSING  # human name
    peak_gflops: float = 0.0  # fp32 FMA peak, GFLOP/s; 0 = measure on the node
    mem_gbps: float = 0.0  # DRAM bandwidth, GB/s; 0 = measure on the node
    sm_count: int = 0  # streaming multiprocessors (0 on a CPU)
    cuda_capability: int = 0  # e.g. 75 for sm_75 (0 on a CPU)
    cores: int = 0  # CPU cores to use; 0 = all cores of the node (and 0 on a GPU)
    tf32_gflops: float = 0.0  # datasheet TF32 tensor-core peak, dense; 0 = none
    # measured roofs pinned in the catalog (0 = measured on the node: workers.roofs)
    fma_gflops: float = 0.0  # fp32 FMA peak
    sgemm_gflops: float = 0.0  # SGEMM, TF32 off (the attainable line)
    cache_gbps: float = 0.0  # L2 / last-level cache read bandwidth
    cache_bytes: int = 0  # its size
    dram_gbps: float = 0.0  # DRAM read bandwidth


@dataclass
class TimingConf:
    """How the worker's harness times a job (mirrors `workers.schema.TimingSpec`)."""

    warmup: int = 3
    min_repeats: int = 10
    max_repeats: int = 200
    min_time_s: float = 0.2
    max_time_s: float = 5.0
    stable_spread: float = 0.05
    cold_cache: bool = False
    input_sets: int = 1


@dataclass
class TrackingConf:
    """Where MLflow records go."""

    uri: str = MISSING  # tracking URI: sqlite:///path.db or http://host:port
    artifact_root: str | None = None  # artifact folder for a database URI; a server decides its own
    journal: str | None = None  # local journal folder (records written here before MLflow); null = default


@dataclass
class ClusterConf:
    """Which Ray instance runs the jobs."""

    address: str | None = None  # null = start a local instance; else a Ray address (or "auto")
    num_cpus: int | None = None  # CPUs of a local instance; null = all of this machine's
    log_to_driver: bool = False  # stream worker stdout/stderr to this terminal


@dataclass
class DispatchConf:
    """How jobs leave the driver."""

    mode: str = "ray"  # ray = run through Ray and record in MLflow; export = write jobs.json and stop
    out: str | None = None  # export folder; null = Hydra's output folder of this invocation


@dataclass
class TunedConf:
    """What the variant `halide_tuned` does where the tuning database has no entry for a shape and device
    (`kernels.halide.candidates`); passed to its jobs as options, so it is part of their key."""

    on_miss: str = "quick"  # heuristic | rank | quick
    quick_budget_s: float | None = (
        None  # seconds a quick search may take a shape; null = 30 on a GPU, 60 on a CPU
    )
    quick_trials: int | None = None  # candidates a quick search times at most; null = 12


@dataclass
class Config:
    """The whole configuration of one invocation of `python -m orchestrator`."""

    name: str = MISSING  # experiment name = MLflow experiment; set by +experiment=NAME
    description: str = ""  # what the experiment is for: the MLflow experiment's description
    variants: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    batch: int | None = None
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    tolerance: float = 1e-4
    tolerance_tf32: float = 1e-3
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    tuned: TunedConf = field(default_factory=TunedConf)
    retries: int = 1
    rerun: bool = False  # true: run jobs whose key is already recorded (in MLflow or the journal) again
    allow_failures: bool = False  # true: exit 0 even when a job failed or is wrong (else exit 1)
    stand_in: str | None = None  # cpu: a GPU model's jobs run CPU kernels on a node declaring that model
    extra_variant_modules: list[str] = field(default_factory=list)
    # Catalog entries are checked against ShapeConf / DeviceConf when the plan is made: OmegaConf cannot
    # add a new key to a dict typed with a dataclass value from a command-line override
    # (`+shape_catalog.mine={...}` fails with "dict is not a subclass of ShapeConf").
    shape_catalog: dict[str, Any] = field(default_factory=dict)
    device_catalog: dict[str, Any] = field(default_factory=dict)
    timing: TimingConf = field(default_factory=TimingConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    cluster: ClusterConf = field(default_factory=ClusterConf)
    dispatch: DispatchConf = field(default_factory=DispatchConf)
    # conf/profile/*.yaml: `tool` (none | ncu | nsys) plus the keys of workers.profiling.ProfileSettings,
    # which checks them (one schema, kept by the profiler's owner) when the plan is made.
    profile: dict[str, Any] = field(default_factory=lambda: {"tool": "none"})


SCHEMAS: dict[str, type[DataclassInstance]] = {
    "": Config,
    "timing": TimingConf,
    "tracking": TrackingConf,
    "cluster": ClusterConf,
    "dispatch": DispatchConf,
    "tuned": TunedConf,
    "shape_catalog": ShapeConf,
    "device_catalog": DeviceConf,
}
DISPATCH_MODES = ("ray", "export")
STAND_INS = ("cpu",)  # what may stand in for a GPU model (tests and dry runs on machines without one)
AUTO_DEVICES = "auto"  # devices=[auto]: every GPU model the Ray cluster's nodes declare


@contextlib.contextmanager
def hydra_raises() -> Iterator[bool]:
    """Inside: HYDRA_FULL_ERROR=1, so that Hydra raises its errors to the caller (who makes one line of
    them) instead of printing its multi-line report. Yields whether the user had set it (they want the
    traceback). The variable is restored on the way out: an entry point called in-process (the tests)
    must not leave it set for the processes started after it, which would then print tracebacks."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield before == "1"
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _repo_root() -> str:
    return str(REPO_ROOT)


def register() -> None:
    """Register the schema and the `${repo_root:}` resolver; idempotent, called on import."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", _repo_root)
    ConfigStore.instance().store(name="config_schema", node=Config)


def experiment_description(name: str) -> str | None:
    """The `description` of conf/experiment/NAME.yaml, or None when there is no such experiment."""
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    value = OmegaConf.load(path).get("description")
    return str(value) if value else None


def experiment_names() -> list[str]:
    """The experiments a user can pick with +experiment=NAME (files in conf/experiment/)."""
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def group_options(group: str) -> list[str]:
    """The options of a config group (files in conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


register()
