"""Shared test fixtures. Tests use real components: Halide, TensorFlow, Ray and MLflow all run here."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _scratch_tuning_db() -> None:
    """Tests, and every process they start (Ray workers, `make run`, the worker CLI), read a copy of the
    tuning database and write their `quick` entries there, never into the repository's tuning/db.json."""
    if "DSCONV_TUNING_DB" in os.environ:
        return
    scratch = Path(tempfile.mkdtemp(prefix="dsconv-test-db-"))
    atexit.register(shutil.rmtree, scratch, True)
    shutil.copyfile(ROOT / "tuning" / "db.json", scratch / "db.json")
    os.environ["DSCONV_TUNING_DB"] = str(scratch / "db.json")


_scratch_tuning_db()

from kernels.device import DeviceSpec  # noqa: E402 (after the path set-up above)
from kernels.layer import LayerShape, make_inputs, reference, relative_l2_error  # noqa: E402
from kernels.registry import Built  # noqa: E402

# The H100 the offline GPU tests build and lower for (no GPU needed: PTX and schedules only).
H100 = DeviceSpec("h100", "cuda", "NVIDIA H100", 60000.0, 3350.0, sm_count=132, cuda_capability=90)


def has_cuda() -> bool:
    """True when a CUDA GPU is usable from this process (torch or nvidia-smi)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


NO_GPU = "no CUDA GPU on this machine"
requires_gpu = pytest.mark.skipif(not has_cuda(), reason=NO_GPU)


def _skips_without_gpu(item: pytest.Item) -> bool:
    return any(m.kwargs.get("reason") == NO_GPU for m in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs a GPU (`requires_gpu`) must carry the `gpu` marker, so that `-m "not gpu"`
    leaves it out; and a test marked `gpu` is skipped with the reason where there is no GPU, even
    without `requires_gpu`."""
    unmarked = [i.nodeid for i in items if _skips_without_gpu(i) and not i.get_closest_marker("gpu")]
    if unmarked:
        raise pytest.UsageError("tests that need a GPU lack the `gpu` marker: " + ", ".join(unmarked))
    if not has_cuda():
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(pytest.mark.skip(reason=NO_GPU))


def reference_error(built: Built, shape: LayerShape, seed: int = 1) -> float:
    """Place fresh inputs, poison the output, run once, fetch: the relative L2 error of `built` against
    the float64 reference (a wrong or unwritten element shows as a large error or NaN)."""
    inputs = make_inputs(shape, seed)
    placed = built.place(inputs)
    built.poison(placed)
    built.run(placed)
    built.sync()
    return relative_l2_error(built.fetch(placed), reference(shape, inputs))
