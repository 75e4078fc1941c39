"""Halide's four autoschedulers applied to the layer, with the parameters this project uses.

The plugins ship in the wheel under `halide/lib64/` and load by full path. Each autoscheduler needs
estimates on every input and on the output, which `algorithm.define` sets from the shape. Adams2019
and Mullapudi2016 write CPU schedules only; Anderson2021 writes GPU schedules only (with
`parallelism` = the GPU's SM count); Li2018 writes either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import halide as hl

from kernels.device import DeviceSpec
from kernels.halide.algorithm import Layer


@dataclass(frozen=True)
class Autoscheduler:
    """One of Halide's autoschedulers: its plugin name and the device kinds it writes schedules for."""

    name: str  # Halide's name, e.g. "Adams2019"
    kinds: tuple[str, ...]

    @property
    def plugin(self) -> str:
        return os.path.join(hl.install_dir(), "lib64", f"libautoschedule_{self.name.lower()}.so")


AUTOSCHEDULERS: dict[str, Autoscheduler] = {
    "auto_adams2019": Autoscheduler("Adams2019", ("cpu",)),
    "auto_li2018": Autoscheduler("Li2018", ("cpu", "cuda")),
    "auto_mullapudi2016": Autoscheduler("Mullapudi2016", ("cpu",)),
    "auto_anderson2021": Autoscheduler("Anderson2021", ("cuda",)),
}

# The beam searches of Adams2019 and Anderson2021 at their default width (32) take about a minute per
# shape on two cores (docs/evidence/kernels.md, "beam size"); 8 keeps each search to seconds. Override
# with options["autoscheduler"] = {"beam_size": "32"}.
BEAM_SIZE = 8

_loaded: set[str] = set()


def load_plugin(auto: Autoscheduler) -> None:
    """Load the autoscheduler's plugin once per process."""
    if auto.name not in _loaded:
        if not os.path.exists(auto.plugin):
            raise RuntimeError(f"autoscheduler plugin missing: {auto.plugin}")
        hl.load_plugin(auto.plugin)
        _loaded.add(auto.name)


def autoscheduler_params(
    auto: Autoscheduler, device: DeviceSpec, threads: int, options: Mapping[str, Any]
) -> dict[str, str]:
    """The parameters passed to the autoscheduler: parallelism from the device, then overrides
    from options["autoscheduler"] (a mapping of Halide's parameter names to values)."""
    if device.is_gpu:
        if device.sm_count <= 0:
            raise ValueError(f"device {device.name!r}: sm_count must be set for {auto.name} on a GPU")
        params = {"parallelism": str(device.sm_count)}
    else:
        params = {"parallelism": str(threads)}
    if auto.name in ("Adams2019", "Anderson2021"):
        params["beam_size"] = str(BEAM_SIZE)
    overrides = options.get("autoscheduler") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"options['autoscheduler'] must be a mapping of parameter -> value, got {overrides!r}"
        )
    params.update({str(k): str(v) for k, v in overrides.items()})
    return params


def apply(
    L: Layer, target: hl.Target, auto: Autoscheduler, params: Mapping[str, str]
) -> tuple[hl.Pipeline, str]:
    """Schedule the layer with the autoscheduler; returns the scheduled pipeline and the schedule's
    C++ source (what the autoscheduler decided, kept as an artifact)."""
    load_plugin(auto)
    pipeline = L.pipeline()
    result = pipeline.apply_autoscheduler(target, hl.AutoschedulerParams(auto.name, dict(params)))
    header = f"// {auto.name} {dict(params)} for {target.to_string()}, shape {L.shape.label}\n"
    return pipeline, header + result.schedule_source
