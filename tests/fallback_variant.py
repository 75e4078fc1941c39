"""A test-only variant with two candidates, the first computing a wrong answer (the float64 reference
scaled by 1.5), the second the right one: the job layer must fall back to the second when the first does
not verify, and the record must say so (`kernels.registry.Alternatives`). Registered when imported, as
`extra_variant_modules=[fallback_variant]` does with tests/ on PYTHONPATH."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernels.device import DeviceSpec
from kernels.layer import LayerShape, reference
from kernels.reference_variant import NumpyReference
from kernels.registry import register

NAME = "fallback_probe"
CANDIDATES = (("scaled", 1.5), ("exact", 1.0))


class _Scaled(NumpyReference):
    def __init__(self, shape: LayerShape, label: str, factor: float, alternatives: Any) -> None:
        super().__init__(shape)
        self.factor, self.alternatives = factor, alternatives
        self.build_params = {"candidate": label}

    def run(self, placed: Any) -> None:
        placed.out = self.factor * reference(self.shape, placed.inputs)


class _Alternatives:
    """The second candidate after the first; no timed search."""

    trials = 0
    budget_s = 0.0

    def __init__(self, shape: LayerShape) -> None:
        self.shape, self.left, self.reasons = shape, list(CANDIDATES), []

    def first(self) -> _Scaled:
        label, factor = self.left.pop(0)
        return _Scaled(self.shape, label, factor, self)

    def next_candidate(self, reason: str) -> _Scaled | None:
        self.reasons.append(reason)
        if not self.left:
            return None
        built = self.first()
        built.build_params = {**built.build_params, "fallback_reason": reason}
        return built

    def build_trial(self, index: int) -> Any:
        raise NotImplementedError

    def note(
        self,
        index: int,
        outcome: str,
        reason: str = "",
        time_ms: float | None = None,
        min_ms: float | None = None,
    ) -> None:
        raise NotImplementedError

    def adopt(self, job: Mapping[str, Any], index: int | None, built: Any) -> Any:
        raise NotImplementedError


@register(
    NAME, framework="numpy", kinds=("cpu",), description="test only: a wrong candidate, then a right one"
)
def build(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Any:
    """The first candidate (wrong); its alternatives hold the right one."""
    return _Alternatives(shape).first()
