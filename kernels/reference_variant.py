"""The float64 NumPy reference as a variant: timed like the others, and trivially verified.

It is the yardstick of correctness, not of speed: timing it shows what "written for clarity" costs
next to the compiled variants, and running it through the same harness checks the harness itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.layer import LayerInputs, LayerShape, reference
from kernels.registry import register


@dataclass
class _Placed:
    """One input set and the output of the last run (float64 NHWC)."""

    inputs: LayerInputs
    out: np.ndarray


class NumpyReference:
    """`kernels.layer.reference` behind the Built protocol; runs on the host, synchronously."""

    kernel_filter: str | None = None  # no GPU kernels
    build_params: Mapping[str, str] = MappingProxyType({})

    def __init__(self, shape: LayerShape) -> None:
        self.shape = shape
        self.compile_s = 0.0  # nothing to compile
        self.target = f"numpy-{np.__version__}-float64"
        self.artifacts: Mapping[str, str] = {"reference.py": inspect.getsource(reference)}

    def place(self, inputs: LayerInputs) -> _Placed:
        """Keep the host arrays as they are (they already live where NumPy runs)."""
        s = self.shape
        return _Placed(inputs, np.full((s.n, s.ho, s.wo, s.co), np.nan, dtype=np.float64))

    def poison(self, placed: _Placed) -> None:
        """Replace the output by NaN, so a run that produced nothing fails verification."""
        placed.out = np.full_like(placed.out, np.nan)

    def run(self, placed: _Placed) -> None:
        """Compute the layer in float64 and keep the result."""
        placed.out = reference(self.shape, placed.inputs)

    def sync(self) -> None:
        """Nothing to wait for: NumPy returns when the result is computed."""

    def fetch(self, placed: _Placed) -> np.ndarray:
        """The float64 NHWC output of the last run."""
        return placed.out


@register(
    "numpy_ref",
    framework="numpy",
    kinds=("cpu",),
    description="the float64 NumPy reference (kernels.layer.reference), timed like a variant",
)
def build_numpy_ref(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> NumpyReference:
    """Nothing to build: the reference is plain NumPy."""
    return NumpyReference(shape)
