"""The device code of Halide variants: PTX from Halide, SASS from the CUDA tools where they exist.

The PTX is what Halide hands the driver (the driver JIT-compiles it for newer GPUs); the SASS is what
actually runs, and what explains registers, spills and instruction mix next to the ncu counters.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from workers.profiling.procs import last_line

CUDA_BIN_DIRS = ("/usr/local/cuda/bin", "/opt/cuda/bin")
PTX_TARGET = re.compile(r"^\s*\.target\s+sm_(\d+)", re.MULTILINE)
PTX_ENTRY = re.compile(r"^\s*(?:\.visible\s+)?\.entry\s+(\w+)", re.MULTILINE)


def find_tool(name: str) -> str | None:
    """`name` on PATH, else in the usual CUDA install folders; None when it is nowhere."""
    found = shutil.which(name)
    if found:
        return found
    for folder in CUDA_BIN_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate)
    return None


def ptx_entries(ptx: str) -> list[str]:
    """The kernel names (`.entry`) a PTX module defines, in order."""
    return PTX_ENTRY.findall(ptx)


def device_code(built: Any) -> tuple[str | None, str | None]:
    """The PTX of a built Halide variant, and a note saying where it came from (or why there is none).

    Looks, in order, for a `.ptx` artifact, a `device_code()` method, then a pipeline to compile
    (`built.pipeline` + `built.arguments`, or `built.layer.pipeline()` + `built.layer.arguments`)
    with `compile_to(device_code)` for `built.target`.
    """
    for name, text in dict(getattr(built, "artifacts", {}) or {}).items():
        if str(name).endswith(".ptx") and text:
            return str(text), f"artifact {name}"
    method = getattr(built, "device_code", None)
    if callable(method):
        code = method()
        if code:
            return str(code), "Built.device_code()"
    pipeline, arguments = _pipeline_of(built)
    if pipeline is None:
        return None, "the Halide variant exposes no PTX artifact, device_code() or pipeline"
    import halide as hl  # a Halide variant was built here, so Halide imports

    target = getattr(built, "target", None)
    target = target if isinstance(target, hl.Target) else hl.Target(str(target))
    if not target.has_gpu_feature():
        return None, f"target {target} has no GPU feature: no device code"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.ptx"
        pipeline.compile_to({hl.OutputFileType.device_code: str(path)}, list(arguments), "dsconv", target)
        code = path.read_text() if path.is_file() else ""
    return (code, "compile_to(device_code)") if code else (None, "compile_to wrote no device code")


def _pipeline_of(built: Any) -> tuple[Any, Any]:
    pipeline = getattr(built, "pipeline", None)
    arguments = getattr(built, "arguments", None)
    layer = getattr(built, "layer", None)
    if (pipeline is None or arguments is None) and layer is not None:
        pipeline = getattr(layer, "pipeline", None)
        arguments = getattr(layer, "arguments", None)
    if callable(pipeline) and not hasattr(pipeline, "compile_to"):
        pipeline = pipeline()
    if callable(arguments):
        arguments = arguments()
    if pipeline is None or arguments is None or not hasattr(pipeline, "compile_to"):
        return None, None
    return pipeline, arguments


HALIDE_JIT_MAX_REGISTERS = 64  # Halide's CUDA runtime loads modules with this cap unless told otherwise


def sass_from_ptx(
    ptx_path: Path,
    capability: int,
    out_path: Path,
    max_registers: int | None = HALIDE_JIT_MAX_REGISTERS,
    timeout_s: float = 120.0,
) -> str | None:
    """Assemble `ptx_path` for sm_`capability` (ptxas) and disassemble it (cuobjdump) into `out_path`.

    `max_registers` mirrors the cap the driver's JIT applies when Halide loads the module, so the
    SASS is the code that runs. Returns None when the SASS was written, else one line saying why not
    (tool missing, ptxas error). `capability` 0 means the PTX's own `.target`.
    """
    ptxas, cuobjdump = find_tool("ptxas"), find_tool("cuobjdump")
    if not ptxas or not cuobjdump:
        missing = [name for name, path in (("ptxas", ptxas), ("cuobjdump", cuobjdump)) if not path]
        return f"no SASS: {' and '.join(missing)} not found on PATH or in {', '.join(CUDA_BIN_DIRS)}"
    if not capability:
        match = PTX_TARGET.search(ptx_path.read_text())
        capability = int(match.group(1)) if match else 0
    if not capability:
        return "no SASS: unknown CUDA capability"
    cubin = out_path.with_suffix(".cubin")
    steps = (
        [
            ptxas,
            f"-arch=sm_{capability}",
            *([f"-maxrregcount={max_registers}"] if max_registers else []),
            str(ptx_path),
            "-o",
            str(cubin),
        ],
        [cuobjdump, "--dump-sass", str(cubin)],
    )
    try:
        done = subprocess.run(steps[0], capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            return f"no SASS: ptxas failed: {last_line(done.stderr or done.stdout)}"
        done = subprocess.run(steps[1], capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            return f"no SASS: cuobjdump failed: {last_line(done.stderr or done.stdout)}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no SASS: {type(exc).__name__}: {exc}"
    finally:
        cubin.unlink(missing_ok=True)
    out_path.write_text(done.stdout)
    return None
