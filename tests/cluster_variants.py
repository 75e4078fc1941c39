"""A test-only variant for the cluster tests: `sleepy_ref`, the NumPy reference whose build first notes
the Ray node it runs on (an empty file named by the node id in $DSCONV_TEST_STARTED) and then sleeps
$DSCONV_TEST_SLEEP_S seconds, so that a test can kill that node while the job runs. The orchestrator
imports it through `extra_variant_modules=[cluster_variants]`, with tests/ on PYTHONPATH."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from kernels.reference_variant import build_numpy_ref
from kernels.registry import register

NAME = "sleepy_ref"


@register(NAME, framework="numpy", kinds=("cpu",), description="test only: numpy_ref after a noted sleep")
def build(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> Any:
    """Note the node, sleep, then build the NumPy reference."""
    folder = os.environ.get("DSCONV_TEST_STARTED")
    if folder:
        import ray

        Path(folder, ray.get_runtime_context().get_node_id()).write_text(f"{time.time():.3f}\n")
    time.sleep(float(os.environ.get("DSCONV_TEST_SLEEP_S", "3")))
    return build_numpy_ref(shape, device, options)
