"""The variant registry: every implementation of the layer, found by name.

In the manner of tritonbench's `@register_benchmark`: each variant registers itself with the
device kinds it supports and a check that says, with a reason, why it cannot run somewhere (a
framework missing, no GPU). A variant only *builds* something callable; it never times itself: the
worker's harness owns warm-up, repeats and clocks.

A variant's module imports its framework lazily, inside `build`, so listing variants is cheap and a
missing framework disables its variants with a reason instead of breaking the import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kernels.device import DeviceSpec
from kernels.layer import LayerInputs, LayerShape

FRAMEWORKS = ("halide", "tensorflow", "cudnn", "cublas", "torch_compile", "triton", "numpy")

# Modules whose import registers variants. Each registers with `@register` at import time.
VARIANT_MODULES = (
    "kernels.reference_variant",
    "kernels.halide.variants",
    "kernels.tensorflow_variants",
    "kernels.cudnn_variants",
    "kernels.torch_compile_variants",
    "kernels.triton_variants",
)


class UnknownVariantError(KeyError):
    """A variant name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Built(Protocol):
    """What `Variant.build` returns: a compiled implementation for one shape on one device.

    The harness calls `place` once per input set (moving data to where the kernel runs, outside any
    timed region), then `run` many times, `sync` before reading a clock, and `fetch` to verify.
    """

    compile_s: float  # seconds spent compiling (0 when served from the compile cache)
    target: str  # what it was compiled for, e.g. a Halide target string or "tf-cpu"
    kernel_filter: str | None  # regex matching this variant's GPU kernel names (profilers), or None
    build_params: Mapping[str, str]  # facts of this build the record keeps as params (e.g. schedule_source)

    @property
    def artifacts(self) -> Mapping[str, str]:
        """File name -> text: schedule source, lowered statement, ... (read only here, so that a variant
        may keep them in a dict)."""
        ...

    def place(self, inputs: LayerInputs) -> Any:
        """Copy one input set to where the kernel runs and allocate its output; returns a handle."""
        ...

    def poison(self, placed: Any) -> None:
        """Fill the output with NaN so that an element the kernel never writes fails verification."""
        ...

    def run(self, placed: Any) -> None:
        """Launch the layer once on a placed input set (may return before the device finishes)."""
        ...

    def sync(self) -> None:
        """Wait until every launched run has finished."""
        ...

    def fetch(self, placed: Any) -> np.ndarray:
        """The output of the last run, on the host, NHWC."""
        ...


class Alternatives(Protocol):
    """What a Built may carry as `built.alternatives`: the other candidates of a variant that chose one of
    several schedules (`halide_tuned`). The variant never verifies or times them itself; the job layer
    (`workers.job`, `workers.select`), which owns both, uses this to fall back or to choose:

    - `next_candidate(reason)`: the next candidate's Built after this one failed to verify or to run
      (`reason`: why, for the record), or None when none is left;
    - `trials` > 0: before verifying anything, build (`build_trial(i)`, raising when it does not build),
      verify and time (quick timing, within `budget_s` seconds) the first `trials` candidates,
      `note(i, outcome, reason, time_ms, min_ms)` each (again with a confirming re-timing's times), then
      `adopt(job facts, i, its Built)` for the fastest (index None when none verified): the Built the
      job goes on with (None when none is left that builds).

    A Built may also carry `build_tags` (mapping): tags for the record, such as the database entries a
    lookup skipped."""

    trials: int
    budget_s: float

    def next_candidate(self, reason: str) -> Built | None: ...

    def build_trial(self, index: int) -> Built: ...

    def note(
        self,
        index: int,
        outcome: str,
        reason: str = "",
        time_ms: float | None = None,
        min_ms: float | None = None,
    ) -> None: ...

    def adopt(self, job: Mapping[str, Any], index: int | None, built: Built | None) -> Built | None: ...


BuildFn = Callable[[LayerShape, DeviceSpec, Mapping[str, Any]], Built]
CheckFn = Callable[[LayerShape, DeviceSpec], "str | None"]


def _always(shape: LayerShape, device: DeviceSpec) -> str | None:
    return None


@dataclass(frozen=True)
class Variant:
    """A registered implementation of the layer."""

    name: str
    framework: str
    kinds: tuple[str, ...]  # device kinds it supports: cpu, cuda
    build: BuildFn
    description: str
    check: CheckFn = _always  # returns why it cannot run on (shape, device), or None
    baseline: bool = False  # a reference point for speedups (TensorFlow, cuDNN)
    tags: tuple[str, ...] = field(default=())  # e.g. ("fused",), ("autoscheduler",)

    def skip_reason(self, shape: LayerShape, device: DeviceSpec) -> str | None:
        """Why this variant cannot run on `device` for `shape`, or None when it can."""
        if device.kind not in self.kinds:
            return f"{self.name} has no {device.kind} implementation (supports: {', '.join(self.kinds)})"
        return self.check(shape, device)


_REGISTRY: dict[str, Variant] = {}
_loaded = False


def register(
    name: str,
    *,
    framework: str,
    kinds: tuple[str, ...],
    description: str,
    check: CheckFn = _always,
    baseline: bool = False,
    tags: tuple[str, ...] = (),
) -> Callable[[BuildFn], BuildFn]:
    """Decorator: register `fn(shape, device, options) -> Built` as the variant `name`."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"variant {name!r}: framework must be one of {list(FRAMEWORKS)}")

    def decorate(fn: BuildFn) -> BuildFn:
        if name in _REGISTRY and _REGISTRY[name].build is not fn:
            raise ValueError(f"variant {name!r} registered twice")
        _REGISTRY[name] = Variant(name, framework, kinds, fn, description, check, baseline, tags)
        return fn

    return decorate


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in VARIANT_MODULES:
            importlib.import_module(module)
        _loaded = True


def all_variants() -> dict[str, Variant]:
    """Every registered variant, by name, in registration order."""
    _load()
    return dict(_REGISTRY)


def get(name: str) -> Variant:
    """The variant called `name`; an unknown name fails with the list of known ones."""
    variants = all_variants()
    if name not in variants:
        raise UnknownVariantError(f"unknown variant {name!r}; valid variants: {', '.join(sorted(variants))}")
    return variants[name]
