"""A test-only variant whose build kills its process with a native abort (as a crash inside a compiler
would). The orchestrator imports it through `extra_variant_modules=[crashing_variant]`, with tests/ on
PYTHONPATH, so product code carries no test hooks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from kernels.registry import register

NAME = "crash_abort"


@register(NAME, framework="numpy", kinds=("cpu", "cuda"), description="test only: os.abort() in build")
def build(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Any:
    """Never returns: SIGABRT, like a native assertion failing inside a compiler."""
    os.abort()
