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


def has_cuda() -> bool:
    """True when a CUDA GPU is usable from this process (torch or nvidia-smi)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not has_cuda(), reason="no CUDA GPU on this machine")
