"""Experiment config → list of Jobs (variants × shapes × devices), every name checked first.

Planning is where bad input is caught: an unknown variant, shape or device, or a shape that makes no
sense, raises ConfigError with one line naming the valid choices, before Ray starts or an MLflow run
exists. The plan also pins the versions that enter each job's key (git commit, Halide, TensorFlow), so
re-runs and ingests of the same measurement de-duplicate.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kernels import registry
from kernels.device import KINDS, DeviceSpec
from kernels.halide.candidates import ON_MISS
from kernels.halide.family.limits import register_cap
from kernels.layer import STRIDES, LayerShape, ShapeError
from orchestrator.config import (
    AUTO_DEVICES,
    REPO_ROOT,
    SCHEMAS,
    STAND_INS,
    Config,
    ConfigError,
    DeviceConf,
    ShapeConf,
    experiment_names,
)
from workers.hostinfo import code_versions
from workers.schema import Job, TimingSpec

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# An inline shape in `shapes`: NxHxWxC-CO with an optional sS stride suffix, e.g. 1x30x30x24-40s2.
# (Hydra's override grammar accepts `x`, `-` and digits unquoted; `->` and `:` it does not.)
SPEC = re.compile(r"^(?P<n>\d+)x(?P<h>\d+)x(?P<w>\d+)x(?P<c>\d+)-(?P<co>\d+)(?:s(?P<stride>\d+))?$")
SPEC_HELP = "or an inline spec NxHxWxC-CO[sS] such as 1x30x30x24-40s2"
DEVICE_ROOFS = ("tf32_gflops", "fma_gflops", "sgemm_gflops", "cache_gbps", "cache_bytes", "dram_gbps")


def versions() -> dict[str, str]:
    """Code and library versions that identify a measurement: git commit, Halide, TensorFlow (, torch)."""
    return code_versions(repo=str(REPO_ROOT))


def load_variant_modules(modules: Iterable[str]) -> None:
    """Import extra modules whose `@register` adds variants (tests use one that crashes its process)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"extra_variant_modules: cannot import {module!r}: {exc}") from None


def _typed(entry: Any, schema: type[DataclassInstance], what: str) -> dict[str, Any]:
    """A catalog entry checked against its schema (types, unknown and missing keys), as a plain dict."""
    valid = ", ".join(schema.__dataclass_fields__)
    if not isinstance(entry, Mapping | DictConfig):
        raise ConfigError(f"{what} must be a mapping of {valid}; got {entry!r}")
    try:
        if isinstance(entry, DictConfig):  # a typed node would lend the merge its own extra keys
            entry = OmegaConf.to_container(entry, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), entry)
        return OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{what}: {first} (keys: {valid})") from None


def resolve_shape(name: str, catalog: Mapping[str, Any], batch: int | None) -> LayerShape:
    """The LayerShape for a catalog name or an inline spec; `batch` replaces n where the entry follows it."""
    if name in catalog:
        entry = _typed(catalog[name], ShapeConf, f"shape {name!r}")
    elif match := SPEC.match(name):
        entry = {k: int(v) for k, v in match.groupdict().items() if v is not None}
        entry = {"stride": 1, **entry, "depth_multiplier": 1, "follows_batch": False}
    else:
        raise ConfigError(f"unknown shape {name!r}; valid shapes: {', '.join(catalog)} ({SPEC_HELP})")
    if entry.get("depth_multiplier", 1) != 1:
        raise ConfigError(
            f"shape {name!r}: channel mismatch: depth_multiplier {entry['depth_multiplier']} gives "
            f"{entry['c'] * entry['depth_multiplier']} depthwise channels but the pointwise layer takes "
            f"c={entry['c']}; the layer supports depth_multiplier 1 only"
        )
    if entry.pop("follows_batch", False) and batch is not None:
        entry["n"] = batch
    entry.pop("depth_multiplier", None)
    if entry.get("stride") not in STRIDES:
        raise ConfigError(
            f"shape {name!r}: stride must be one of {list(STRIDES)}, got {entry.get('stride')!r}"
        )
    try:
        return LayerShape(name=name, **entry)
    except ShapeError as exc:
        raise ConfigError(str(exc)) from None


def resolve_device(name: str, catalog: Mapping[str, Any]) -> DeviceSpec:
    """The DeviceSpec of a device catalog key."""
    if name not in catalog:
        raise ConfigError(f"unknown device {name!r}; valid devices: {', '.join(catalog)}")
    entry = _typed(catalog[name], DeviceConf, f"device {name!r}")
    if entry["kind"] not in KINDS:
        raise ConfigError(f"device {name!r}: kind must be one of {list(KINDS)}, got {entry['kind']!r}")
    for key in ("peak_gflops", "mem_gbps", "sm_count", "cuda_capability", "cores", *DEVICE_ROOFS):
        if entry[key] < 0:
            raise ConfigError(f"device {name!r}: {key} must be >= 0, got {entry[key]!r}")
    return DeviceSpec(name=name, **entry)


def stand_in_device(device: DeviceSpec, stand_in: str) -> DeviceSpec:
    """The device a GPU model's job builds for when `stand_in` (cpu) replaces it: the host CPU of the node
    that declares the model, measured there. The name stays the model's key (it picks the node and the
    column of the cross-GPU table); kind and model say honestly what ran."""
    model = f"host CPU standing in for {device.model}"
    return DeviceSpec(name=device.name, kind=stand_in, model=model, peak_gflops=0.0, mem_gbps=0.0)


def _tolerance(cfg: DictConfig, variant: str) -> float:
    """The variant's error bound: TF32 matrix units round operands to 10 mantissa bits, so a correct TF32
    result lies beyond the fp32 bound (the errors seen: docs/evidence/orchestrator.md)."""
    tf32 = "tf32" in registry.get(variant).tags
    return float(cfg.tolerance_tf32 if tf32 else cfg.tolerance)


def _unique(names: Iterable[str], what: str) -> list[str]:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    if not seen:
        raise ConfigError(f"no {what} given: set {what}=[...]")
    return seen


def check_keys(cfg: DictConfig) -> None:
    """No key the schema does not know: `+key=value` overrides bypass the schema's struct mode."""
    known = Config.__dataclass_fields__
    unknown = [k for k in cfg if k not in known and k != "hydra"]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid keys of the config: {', '.join(known)}")
    for group in ("timing", "tracking", "cluster", "dispatch", "tuned"):
        _typed(cfg[group], SCHEMAS[group], group)
    profile_settings(cfg)


def profile_settings(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(tool, settings) of the profile group, checked by workers.profiling; settings are plain data."""
    from workers.profiling.settings import ProfileConfigError, ProfileSettings, check_tool

    node = OmegaConf.to_container(cfg.profile, resolve=True)
    if not isinstance(node, dict):
        raise ConfigError(f"profile must be a mapping with a `tool` key, got {node!r}")
    try:
        tool = check_tool(str(node.get("tool", "none")))
        ProfileSettings.from_config(node)
    except (ProfileConfigError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    return tool, {k: v for k, v in node.items() if k != "tool"}


def check(cfg: DictConfig) -> None:
    """Unknown keys, and scalar settings that make no sense (negative batch, tolerance, retries)."""
    if OmegaConf.is_missing(cfg, "name"):
        raise ConfigError(
            f"no experiment chosen: add +experiment=NAME; valid experiments: {', '.join(experiment_names())}"
        )
    check_keys(cfg)
    if cfg.batch is not None and cfg.batch <= 0:
        raise ConfigError(f"batch must be a positive integer or null, got {cfg.batch}")
    for key in ("tolerance", "tolerance_tf32"):
        if not cfg[key] > 0:
            raise ConfigError(f"{key} must be > 0, got {cfg[key]}")
    if cfg.retries < 0:
        raise ConfigError(f"retries must be >= 0, got {cfg.retries}")
    if cfg.stand_in is not None and cfg.stand_in not in STAND_INS:
        raise ConfigError(f"stand_in must be null or one of {', '.join(STAND_INS)}, got {cfg.stand_in!r}")
    tuned = cfg.tuned
    if tuned.on_miss not in ON_MISS:
        raise ConfigError(f"tuned.on_miss must be one of {', '.join(ON_MISS)}, got {tuned.on_miss!r}")
    if tuned.quick_budget_s is not None and not tuned.quick_budget_s > 0:
        raise ConfigError(f"tuned.quick_budget_s must be > 0 or null, got {tuned.quick_budget_s}")
    if tuned.quick_trials is not None and tuned.quick_trials < 1:
        raise ConfigError(f"tuned.quick_trials must be >= 1 or null, got {tuned.quick_trials}")
    try:
        register_cap(cfg.options.get("cuda_max_registers"))
    except ValueError as exc:
        raise ConfigError(f"options.{exc}") from None
    t = cfg.timing
    if t.warmup < 0 or t.min_repeats < 1 or t.max_repeats < t.min_repeats or t.input_sets < 1:
        raise ConfigError(
            "timing: need warmup >= 0, min_repeats >= 1, max_repeats >= min_repeats, input_sets >= 1"
        )
    if t.min_time_s < 0 or t.max_time_s < t.min_time_s or t.stable_spread < 0:
        raise ConfigError("timing: need 0 <= min_time_s <= max_time_s and stable_spread >= 0")


def wants_auto_devices(cfg: DictConfig) -> bool:
    """True when `devices` asks for the Ray cluster's GPU models (devices=[auto])."""
    return AUTO_DEVICES in list(cfg.devices)


def make_plan(cfg: DictConfig, devices: Sequence[str] | None = None) -> list[Job]:
    """Every job of the experiment, in order variant-major within each device; raises ConfigError.

    `devices` replaces cfg.devices: the driver passes the models it found in the cluster for
    devices=[auto]. With stand_in=cpu, each GPU model's jobs build CPU kernels (see stand_in_device),
    and the option enters the job key, so a stand-in never passes for the model's real measurement.
    """
    check(cfg)
    load_variant_modules(cfg.extra_variant_modules)
    variant_names = _unique(cfg.variants, "variants")
    for name in variant_names:
        try:
            registry.get(name)
        except registry.UnknownVariantError as exc:
            raise ConfigError(str(exc)) from None
    shape_catalog = OmegaConf.to_container(cfg.shape_catalog, resolve=True)
    device_catalog = OmegaConf.to_container(cfg.device_catalog, resolve=True)
    shapes = [resolve_shape(s, shape_catalog, cfg.batch) for s in _unique(cfg.shapes, "shapes")]
    names = _unique(cfg.devices if devices is None else devices, "devices")
    if AUTO_DEVICES in names:
        raise ConfigError(
            "devices=[auto] takes the GPU models of a Ray cluster (cluster=ray) when jobs are dispatched; "
            "for dispatch=export name them, e.g. devices=[rtx2060,rtx3070]"
        )
    devices = [resolve_device(d, device_catalog) for d in names]
    timing = TimingSpec(**OmegaConf.to_container(cfg.timing, resolve=True))
    options = {k: v for k, v in OmegaConf.to_container(cfg.options, resolve=True).items() if v is not None}
    pinned = versions()
    stand_in = cfg.stand_in
    tool, settings = profile_settings(cfg)
    profile = {"tool": tool, **settings} if tool != "none" else {}

    tuned = {k: v for k, v in OmegaConf.to_container(cfg.tuned, resolve=True).items() if v is not None}

    def device_options(device: DeviceSpec, variant: str) -> dict[str, Any]:
        out = {**options, "stand_in": stand_in} if stand_in and device.is_gpu else dict(options)
        if "tuned" in registry.get(variant).tags:  # halide_tuned: what it does on a miss is in its key
            out.update(tuned)
        return out

    return [
        Job(
            experiment=cfg.name,
            variant=variant,
            shape=shape,
            device=stand_in_device(device, stand_in) if stand_in and device.is_gpu else device,
            timing=timing,
            tolerance=_tolerance(cfg, variant),
            seed=int(cfg.seed),
            options=device_options(device, variant),
            versions=dict(pinned),
            profile=dict(profile),
        )
        for device in devices
        for shape in shapes
        for variant in variant_names
    ]
