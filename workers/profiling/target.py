"""The process a profiler watches: build one job's variant, launch it, exit.

    python -m workers.profiling.target JOB.json [--warmup W] [--runs K] [--describe OUT.json]
                                                 [--artifacts-dir DIR] [--no-run] [--no-nvtx]

It places fresh random inputs once, runs W warm-up launches, then K launches inside the NVTX
start/end range `dsconv_profile` (process-wide, so kernels launched from another thread, as
TensorFlow's executor does, are inside it too), syncs and exits. `--describe` writes what the parent
needs to plan the profile: the kernel filter, the build target, which NVTX binding works here, and
the variant's device code (Halide's PTX) as files under `--artifacts-dir`. `--no-run` only describes.

Exit codes: 0 done, 3 the variant cannot run here (the reason is on stderr and in the description).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kernels.layer import LayerShape, make_inputs
from workers.profiling.settings import EXIT_SKIPPED, NVTX_RANGE

PROFILE_SEED_STREAM = 3  # inputs of the profiled launches: a stream the worker's verify/time never use


# --- NVTX ----------------------------------------------------------------------------------------
def _nvtx_torch() -> tuple[Callable[[str], Any], Callable[[Any], None]]:
    import torch.cuda.nvtx as nvtx

    return nvtx.range_start, nvtx.range_end


def _nvtx_package() -> tuple[Callable[[str], Any], Callable[[Any], None]]:
    import nvtx

    return (lambda message: nvtx.start_range(message)), nvtx.end_range


def _nvtx_library() -> tuple[Callable[[str], Any], Callable[[Any], None]]:
    import ctypes

    lib = ctypes.CDLL("libnvToolsExt.so.1")
    lib.nvtxRangeStartA.restype = ctypes.c_uint64
    lib.nvtxRangeStartA.argtypes = [ctypes.c_char_p]
    lib.nvtxRangeEnd.argtypes = [ctypes.c_uint64]
    return (lambda message: lib.nvtxRangeStartA(message.encode())), lib.nvtxRangeEnd


NVTX_BINDINGS: dict[str, Callable[[], tuple[Callable[[str], Any], Callable[[Any], None]]]] = {
    "nvtx": _nvtx_package,  # the light one first
    "torch": _nvtx_torch,
    "libnvToolsExt": _nvtx_library,
}


def nvtx_binding() -> tuple[str, Callable[[str], Any], Callable[[Any], None]] | None:
    """The first NVTX binding importable here, as (name, range_start, range_end); None when none is."""
    for name, load in NVTX_BINDINGS.items():
        try:
            start, end = load()
            end(start("dsconv_nvtx_probe"))  # a CPU-only torch imports, but its NVTX is a stub
        except Exception:  # not installed, no library, or a stub: try the next one
            continue
        return name, start, end
    return None


# --- launching -----------------------------------------------------------------------------------
def run_launches(built: Any, shape: LayerShape, seed: int, warmup: int, runs: int, nvtx: bool) -> str | None:
    """Place one fresh input set, run `warmup` launches, then `runs` launches inside the NVTX range.

    Returns the name of the NVTX binding used, or None when the profiled launches are unmarked (the
    parent then skips warm-ups by count). Syncs after the warm-ups and after the profiled launches,
    so the range holds exactly the profiled kernels.
    """
    placed = built.place(make_inputs(shape, seed))
    for _ in range(warmup):
        built.run(placed)
    built.sync()
    binding = nvtx_binding() if nvtx else None
    handle = binding[1](NVTX_RANGE) if binding else None
    for _ in range(runs):
        built.run(placed)
    built.sync()
    if binding:
        binding[2](handle)
    return binding[0] if binding else None


def describe(built: Any, framework: str, artifacts_dir: Path | None) -> dict[str, Any]:
    """What the parent needs to plan and annotate a profile of `built` (written as JSON)."""
    from workers.profiling.devcode import device_code  # imports Halide lazily

    binding = nvtx_binding()
    info: dict[str, Any] = {
        "framework": framework,
        "target": str(getattr(built, "target", "")),
        "kernel_filter": getattr(built, "kernel_filter", None),
        "compile_s": float(getattr(built, "compile_s", 0.0) or 0.0),
        "nvtx": binding[0] if binding else None,
        "device_code": None,
        "device_code_note": None,
        "max_registers": getattr(built, "max_registers", None),  # Halide's JIT register cap, if set
    }
    if framework == "halide":
        code, note = device_code(built)
        info["device_code_note"] = note
        if code and artifacts_dir is not None:
            artifacts_dir.mkdir(parents=True, exist_ok=True)
            path = artifacts_dir / "kernels.ptx"
            path.write_text(code)
            info["device_code"] = str(path)
    return info


def _write_json(path: Path | None, data: Mapping[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True))


class VariantSkipped(Exception):
    """The variant cannot run on this device or shape; the message says why."""


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every target process takes (this module's and the fixture capture script's)."""
    parser.add_argument("--warmup", type=int, default=3, help="untimed, unprofiled launches first")
    parser.add_argument("--runs", type=int, default=1, help="profiled launches (inside the NVTX range)")
    parser.add_argument("--describe", type=Path, default=None, help="write the variant's description here")
    parser.add_argument("--artifacts-dir", type=Path, default=None, help="where device code files go")
    parser.add_argument("--no-run", action="store_true", help="describe only; launch nothing")
    parser.add_argument("--no-nvtx", action="store_true", help="do not mark the profiled launches")


def serve(
    args: argparse.Namespace, build: Callable[[], tuple[Any, str]], shape: LayerShape, seed: int
) -> int:
    """Build (`build()` → built, framework), describe if asked, then launch as `args` say; the exit status."""
    try:
        built, framework = build()
    except VariantSkipped as skipped:
        _write_json(args.describe, {"skipped": str(skipped)})
        print(f"skipped: {skipped}", file=sys.stderr)
        return EXIT_SKIPPED
    _write_json(args.describe, describe(built, framework, args.artifacts_dir))
    if not args.no_run:
        run_launches(built, shape, seed, args.warmup, args.runs, nvtx=not args.no_nvtx)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Build the job's variant from the registry, optionally describe it, and launch it."""
    from kernels import registry
    from workers.schema import Job

    parser = argparse.ArgumentParser(
        prog="python -m workers.profiling.target", description=__doc__.split("\n")[0]
    )
    parser.add_argument("job", type=Path, help="a Job as JSON (Job.to_dict)")
    parser.add_argument("--module", action="append", default=[], help="extra module that registers variants")
    add_launch_arguments(parser)
    args = parser.parse_args(argv)

    for module in args.module:
        importlib.import_module(module)
    job = Job.from_dict(json.loads(args.job.read_text()))

    def build() -> tuple[Any, str]:
        variant = registry.get(job.variant)
        reason = variant.skip_reason(job.shape, job.device)
        if reason:
            raise VariantSkipped(reason)
        return variant.build(job.shape, job.device, job.options), variant.framework

    seed = int(np.random.SeedSequence([job.seed & 0xFFFFFFFF, PROFILE_SEED_STREAM]).generate_state(1)[0])
    return serve(args, build, job.shape, seed)


if __name__ == "__main__":
    sys.exit(main())
