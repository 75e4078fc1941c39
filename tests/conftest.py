"""Shared test fixtures. Tests use real components: Halide, TensorFlow, Ray and MLflow all run here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kernels.device import DeviceSpec  # noqa: E402 (after the path set-up above)

# The H100 the offline GPU tests build and lower for (no GPU needed: PTX and schedules only).
H100 = DeviceSpec("h100", "cuda", "NVIDIA H100", 60000.0, 3350.0, sm_count=132, cuda_capability=90)


def has_cuda() -> bool:
    """True when a CUDA GPU is usable from this process (torch or nvidia-smi)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not has_cuda(), reason="no CUDA GPU on this machine")
