"""Shared test fixtures. Tests use real components: Halide, TensorFlow, Ray and MLflow all run here."""

from __future__ import annotations

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


from kernels.device import DeviceSpec  # noqa: E402 (after the path set-up above)
from kernels.halide.tuned import DEFAULT_DB  # noqa: E402
from kernels.layer import LayerShape, make_inputs, reference, relative_l2_error  # noqa: E402
from kernels.registry import Built  # noqa: E402

CACHE_ENV = "DSCONV_CACHE_DIR"  # kernels.halide.cache / workers.hostinfo
TUNING_DB_ENV = "DSCONV_TUNING_DB"  # kernels.halide.tuned
_SESSION_DIR: Path | None = None  # made by this process (the controller under xdist): removed at the end


def pytest_configure(config: pytest.Config) -> None:
    """The session's own compile cache and tuning database, set in the environment before pytest-xdist
    starts its workers, so that the workers and every process a test starts share them:

    - DSCONV_CACHE_DIR: an empty compile cache and host-measurement folder, as on a fresh clone; a
      pipeline that several tests build compiles once a session (the cache is safe for concurrent
      writers). One already set in the environment is kept (a warm cache: `DSCONV_CACHE_DIR=DIR make test`).
    - DSCONV_TUNING_DB: a copy of the committed tuning/db.json: `halide_tuned` reads the committed entries,
      and what a quick search on a miss stores lands in the copy, never in the repository.
    """
    global _SESSION_DIR
    if hasattr(config, "workerinput"):  # an xdist worker: the controller set both already
        return
    folder = Path(tempfile.mkdtemp(prefix="dsconv-tests-"))
    _SESSION_DIR = folder
    if not os.environ.get(CACHE_ENV):
        os.environ[CACHE_ENV] = str(folder / "cache")
    if not os.environ.get(TUNING_DB_ENV):
        copy = folder / "tuning" / "db.json"
        copy.parent.mkdir()
        if DEFAULT_DB.exists():
            shutil.copyfile(DEFAULT_DB, copy)
        os.environ[TUNING_DB_ENV] = str(copy)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


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
    without `requires_gpu`. The longest modules run first (`_longest_modules_first`)."""
    unmarked = [i.nodeid for i in items if _skips_without_gpu(i) and not i.get_closest_marker("gpu")]
    if unmarked:
        raise pytest.UsageError("tests that need a GPU lack the `gpu` marker: " + ", ".join(unmarked))
    if not has_cuda():
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(pytest.mark.skip(reason=NO_GPU))
    items[:] = _longest_modules_first(items)


# The modules that take longest, longest first (`pytest --durations=0` on a 2-core VM): `make test` runs
# the suite on two pytest-xdist workers that take whole modules in collection order (`--dist loadscope
# --no-loadscope-reorder`), and a long module started last would leave one worker idle until it ends.
LONGEST_MODULES = (
    "test_gpu_kit.py",
    "test_e2e.py",
    "test_cluster.py",
    "test_tracking.py",
    "test_resume.py",
    "test_halide_variants.py",
)


def _longest_modules_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """`items` with the modules of LONGEST_MODULES first, then the other modules holding a `slow` test,
    then the rest; the tests of a module keep their order (some depend on it)."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if item.path.name in LONGEST_MODULES:
            return LONGEST_MODULES.index(item.path.name)
        return len(LONGEST_MODULES) + (item.path not in slow)

    return sorted(items, key=rank)  # stable: a module's tests stay together and in order


def reference_error(built: Built, shape: LayerShape, seed: int = 1) -> float:
    """Place fresh inputs, poison the output, run once, fetch: the relative L2 error of `built` against
    the float64 reference (a wrong or unwritten element shows as a large error or NaN)."""
    inputs = make_inputs(shape, seed)
    placed = built.place(inputs)
    built.poison(placed)
    built.run(placed)
    built.sync()
    return relative_l2_error(built.fetch(placed), reference(shape, inputs))
