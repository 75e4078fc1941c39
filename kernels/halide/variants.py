"""The Halide variants in the registry: one `halide_<schedule>` per named schedule (`names`), plus
`halide_family` (a parameter set of the search family) and `halide_tuned` (the family's schedule from
the tuning database, else its heuristic).

Listing variants must not need Halide (a node without it disables them with a reason instead of
failing the import), so the variant bodies import `builder`, which compiles with Halide, when they
build; everything they read before that (names, the family's parameters, the database) is plain Python.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from typing import Any

from kernels import registry
from kernels.device import DeviceSpec
from kernels.halide import family, tuned
from kernels.halide.names import DESCRIPTIONS, FAMILY, PREFIX, SCHEDULE_KINDS, SCHEDULES
from kernels.halide.targets import CUDA_CAPABILITIES
from kernels.layer import LayerShape


def build_named(name: str, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Any:
    """The body of `halide_<name>`: build the named schedule (manual or autoscheduled)."""
    from kernels.halide import builder  # Halide: imported when a variant builds, not when it is listed

    return builder.build(name, shape, device, options)


def build_family(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Any:
    """The body of `halide_family`: build `options["params"]` (completed by the heuristic)."""
    from kernels.halide import builder  # Halide: imported when a variant builds, not when it is listed

    params = family.resolve(shape, device, options)
    built = builder.build(FAMILY, shape, device, family.build_options(params, options))
    built.artifacts["params.json"] = json.dumps(
        {"kind": params.kind, "params": family.as_dict(params)}, indent=1, sort_keys=True
    )
    if isinstance(params, family.GpuParams):  # the pointwise's layout, a param to filter and label runs by
        built.build_params["gemm"] = params.gemm
    return built


def build_tuned(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Any:
    """The body of `halide_tuned`: build the family schedule the database chose; `build.json` and
    `tuned.json` say whether it came from the database or the heuristic."""
    if options.get("params") is not None:
        raise ValueError("halide_tuned takes its parameters from the tuning database; use halide_family")
    started = time.perf_counter()
    choice = tuned.choose(shape, device, options)
    built = build_family(shape, device, {**options, "params": family.as_dict(choice.params)})
    info = json.loads(built.artifacts.get("build.json", "{}"))
    info.update(
        source=choice.source, db_key=choice.key, reason=choice.reason, lookup_s=time.perf_counter() - started
    )
    built.artifacts["build.json"] = json.dumps(info, indent=1)
    built.artifacts["tuned.json"] = json.dumps(choice.as_dict(), indent=1, sort_keys=True)
    built.build_params["schedule_source"] = choice.source  # db | heuristic: compare like with like
    return built


def _check(shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why a Halide variant cannot run on `device` (a GPU older than Halide's lowest capability,
    or one without an SM count for Anderson2021's parallelism), or None."""
    if device.is_gpu and device.cuda_capability < CUDA_CAPABILITIES[0]:
        return (
            f"CUDA capability {device.cuda_capability} of {device.name} is below Halide's lowest "
            f"({CUDA_CAPABILITIES[0]})"
        )
    return None


def _check_anderson(shape: LayerShape, device: DeviceSpec) -> str | None:
    if device.is_gpu and device.sm_count <= 0:
        return f"Anderson2021 needs the SM count of {device.name} (sm_count is 0 in the catalog)"
    return _check(shape, device)


def _register_all() -> None:
    for name in SCHEDULES:
        tags = ("halide", "autoscheduler") if name.startswith("auto_") else ("halide", name)
        registry.register(
            PREFIX + name,
            framework="halide",
            kinds=SCHEDULE_KINDS[name],
            description=DESCRIPTIONS[name],
            check=_check_anderson if name == "auto_anderson2021" else _check,
            tags=tags,
        )(functools.partial(build_named, name))
    registry.register(
        PREFIX + FAMILY,
        framework="halide",
        kinds=SCHEDULE_KINDS[FAMILY],
        description="the schedule family (family/) with options['params'] (the heuristic for the rest)",
        check=_check,
        tags=("halide", "family"),
    )(build_family)
    registry.register(
        PREFIX + "tuned",
        framework="halide",
        kinds=SCHEDULE_KINDS[FAMILY],
        description="the family's best schedule in tuning/db.json for shape and device, else its heuristic",
        check=_check,
        tags=("halide", "tuned"),
    )(build_tuned)


_register_all()
