"""Build a named schedule of the layer for a device: define the algorithm, schedule it, compile it,
and wrap it behind the registry's `Built` protocol. The body of every `halide_*` variant (`variants`).

- CPU: compiled ahead of time through the on-disk compile cache (`cache`); a repeat build only loads a
  module. Buffers wrap the NumPy arrays without copying; Halide's thread pool uses every core
  (HL_NUM_THREADS limits it).
- CUDA: JIT-compiled once per process (GPU nodes run one long-lived worker per GPU). Inputs are
  copied to the device once in `place`; `run` launches with every buffer resident and clean, so no
  transfer happens per call; `sync` waits on the device; `fetch` copies the output back.

`lower_for` schedules and compiles without running: the statement and, for CUDA, the PTX, with no GPU.
"""

from __future__ import annotations

import inspect
import json
import os
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import halide as hl
import numpy as np

from kernels.device import DeviceSpec
from kernels.halide import algorithm, autoschedule, cache, family, schedules_cpu, schedules_gpu, targets
from kernels.halide.family.cpu import apply_cpu
from kernels.halide.family.gpu import apply_gpu
from kernels.halide.family.limits import register_cap
from kernels.halide.names import FAMILY, KERNEL_FILTER, check_schedule
from kernels.halide.targets import cpu_target, cuda_target, halide_version, host_threads, require_device
from kernels.halide.tiling import HOST_ALIGNMENT
from kernels.layer import LayerInputs, LayerShape


def _plain(value: Any) -> Any:
    """Schedule decisions as JSON values: dataclasses, mappings and sequences stay structured (so
    `decisions.json` can be read back as data); anything else (a Halide object) becomes its string."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, int | float | str | bool | None) else str(value)


def schedule_source(fn: Callable[..., Any]) -> str:
    """The schedule function's source and that of the project's functions it calls, transitively (the
    building blocks, the tile arithmetic): the `schedule.py` artifact. It is the same text for every
    shape (a bundle stores it once); what the function decided for one shape is the `decisions.json`
    artifact beside it."""
    order: list[Callable[..., Any]] = []

    def visit(f: Callable[..., Any]) -> None:
        if f in order:
            return
        order.append(f)
        for name in f.__code__.co_names:
            obj = f.__globals__.get(name)
            if inspect.isfunction(obj) and obj.__module__.startswith("kernels."):
                visit(obj)

    visit(fn)
    parts = [
        inspect.getsource(f) if f.__module__ == fn.__module__ else f"# {f.__module__}\n{inspect.getsource(f)}"
        for f in order
    ]
    return f"# {fn.__module__}.{fn.__name__}\n" + "\n\n".join(parts)


def decisions_json(decisions: Mapping[str, Any] | None) -> str:
    """What a schedule function decided for this shape (block, threads, shared bytes...): the
    `decisions.json` artifact."""
    plain = {k: _plain(v) for k, v in (decisions or {}).items()}
    return json.dumps(plain, indent=1) + "\n"


def _schedule_artifacts(fn: Callable[..., Any], decisions: Mapping[str, Any] | None) -> dict[str, str]:
    """A schedule function's artifacts for one build (the names are part of the cache key)."""
    return {"schedule.py": schedule_source(fn), "decisions.json": decisions_json(decisions)}


def schedule_layer(
    name: str, shape: LayerShape, device: DeviceSpec, target: Any, options: Mapping[str, Any]
) -> tuple[Any, Any, dict[str, str]]:
    """Define the layer and schedule it with `name` for `target`: (layer, pipeline, artifacts)."""
    check_schedule(name, device.kind)
    layer = algorithm.define(shape)
    if name in autoschedule.AUTOSCHEDULERS:
        auto = autoschedule.AUTOSCHEDULERS[name]
        params = autoschedule.autoscheduler_params(auto, device, host_threads(), options)
        pipeline, source = autoschedule.apply(layer, target, auto, params)
        return layer, pipeline, {"schedule.txt": source}
    if name == FAMILY:
        params = family.resolve(shape, device, options)
        if isinstance(params, family.GpuParams):
            return layer, layer.pipeline(), _schedule_artifacts(apply_gpu, apply_gpu(params, layer, target))
        return layer, layer.pipeline(), _schedule_artifacts(apply_cpu, apply_cpu(params, layer, target))
    table = schedules_gpu.GPU_SCHEDULES if device.is_gpu else schedules_cpu.CPU_SCHEDULES
    fn = table[name]
    decisions = fn(layer, target)
    return layer, layer.pipeline(), _schedule_artifacts(fn, decisions)


def key_sources(scheduler: str, root: Path = cache.REPO_ROOT) -> list[Path]:
    """The source files (under `root`) that make a CPU build of a schedule from module `scheduler`: that
    module and every project module it imports, transitively (the algorithm, the building blocks, the
    tile arithmetic...), the cache and targets that compile it, and this module, whose build path turns
    a schedule into code (its own imports, the other schedules among them, change no CPU build)."""
    files = cache.source_files((scheduler, cache.__name__, targets.__name__), root)
    own = cache.module_file(__name__, root)
    if own is None:
        raise ValueError(f"no source for {__name__} under {root}")
    return sorted({*files, own})


def _key_parts(
    name: str, shape: LayerShape, device: DeviceSpec, target: Any, options: Mapping[str, Any]
) -> dict[str, Any]:
    """Everything that changes the code compiled for a CPU variant."""
    parts: dict[str, Any] = {
        "halide": halide_version(),
        "target": target.to_string(),
        "schedule": name,
        "shape": asdict(shape),
        "threads": host_threads(),
        "python": sysconfig.get_config_var("EXT_SUFFIX"),
        "artifacts": "schedule.py, decisions.json",  # entries cached before the split miss
    }
    if name in autoschedule.AUTOSCHEDULERS:
        auto = autoschedule.AUTOSCHEDULERS[name]
        parts["params"] = autoschedule.autoscheduler_params(auto, device, host_threads(), options)
        scheduler = autoschedule.__name__
    elif name == FAMILY:
        parts["params"] = family.as_dict(family.resolve(shape, device, options))
        scheduler = apply_cpu.__module__
    else:
        scheduler = schedules_cpu.CPU_SCHEDULES[name].__module__
    parts["source"] = cache.source_digest(key_sources(scheduler))
    return parts


@dataclass
class Placed:
    """One input set where the kernel runs: Halide buffers (in the pipeline's argument order) and the
    output's host array. The buffers wrap the NumPy arrays kept here."""

    buffers: tuple[Any, ...]
    out: np.ndarray
    arrays: tuple[np.ndarray, ...]


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A copy of `a` whose data starts at a multiple of HOST_ALIGNMENT bytes."""
    raw = np.empty(a.nbytes + HOST_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % HOST_ALIGNMENT
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _host_arrays(shape: LayerShape, inputs: LayerInputs) -> tuple[np.ndarray, ...]:
    """The inputs as C-contiguous float32 at `tiling.HOST_ALIGNMENT` bytes (no copy when they already
    are), shapes checked."""
    expected = {
        "x": (shape.n, shape.h, shape.w, shape.c),
        "dw": (3, 3, shape.c),
        "pw": (shape.c, shape.co),
        "bias": (shape.co,),
    }
    arrays = []
    for field, dims in expected.items():
        a = np.ascontiguousarray(getattr(inputs, field), dtype=np.float32)
        if a.shape != dims:
            raise ValueError(f"input {field} has shape {a.shape}, expected {dims} for {shape.label}")
        if a.ctypes.data % HOST_ALIGNMENT:  # a view into another array: the pipeline asserts alignment
            a = _aligned_copy(a)
        arrays.append(a)
    return tuple(arrays)


class CpuBuilt:
    """A compiled CPU pipeline behind the `Built` protocol (see kernels/registry.py)."""

    kernel_filter: str | None = None

    def __init__(
        self,
        shape: LayerShape,
        fn: Callable[..., None],
        compile_s: float,
        target: str,
        artifacts: dict[str, str],
    ) -> None:
        self.shape = shape
        self._fn = fn
        self.compile_s = compile_s
        self.target = target
        self.artifacts = artifacts
        self.build_params: dict[str, str] = {}

    def place(self, inputs: LayerInputs) -> Placed:
        arrays = _host_arrays(self.shape, inputs)
        s = self.shape
        out = np.empty((s.n, s.ho, s.wo, s.co), np.float32)
        return Placed(tuple(hl.Buffer(a) for a in (*arrays, out)), out, arrays)

    def poison(self, placed: Placed) -> None:
        placed.out.fill(np.nan)

    def run(self, placed: Placed) -> None:
        self._fn(*placed.buffers)

    def sync(self) -> None:
        pass  # the call returns when the pipeline has finished

    def fetch(self, placed: Placed) -> np.ndarray:
        return placed.out.copy()


class CudaBuilt:
    """A JIT-compiled CUDA pipeline behind the `Built` protocol, with buffers resident on the device.

    Launches go through `Pipeline.realize` with the inputs bound to the ImageParams, not through a
    `Callable`: the Python binding of `Callable.__call__` marks every input host-dirty (a full
    host-to-device copy per call) and copies every output back to the host after each call.
    """

    def __init__(
        self,
        shape: LayerShape,
        layer: Any,
        pipeline: Any,
        compile_s: float,
        target: Any,
        artifacts: dict[str, str],
        max_registers: int | None,
    ) -> None:
        self.shape = shape
        self._params = (layer.input, layer.depthwise_filter, layer.pointwise_filter, layer.bias)
        self._pipeline = pipeline
        self._target = target
        self.compile_s = compile_s
        self.target = target.to_string()
        self.artifacts = artifacts
        self.kernel_filter = KERNEL_FILTER
        self.build_params: dict[str, str] = {}
        self.max_registers = max_registers
        self._loaded = False
        self._last: Placed | None = None

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"Halide CUDA {what} failed with error {code}")

    def place(self, inputs: LayerInputs) -> Placed:
        require_device(self._target)
        arrays = _host_arrays(self.shape, inputs)
        buffers = [hl.Buffer(a) for a in arrays]
        for b in buffers:
            self._check(b.copy_to_device(hl.DeviceAPI.CUDA, self._target), "copy to device")
        s = self.shape
        out = np.empty((s.n, s.ho, s.wo, s.co), np.float32)
        ob = hl.Buffer(out)
        self._check(ob.device_malloc(hl.DeviceAPI.CUDA, self._target), "device_malloc")
        placed = Placed((*buffers, ob), out, arrays)
        self._last = placed
        return placed

    def poison(self, placed: Placed) -> None:
        ob = placed.buffers[-1]
        placed.out.fill(np.nan)
        ob.set_host_dirty(True)
        self._check(ob.copy_to_device(hl.DeviceAPI.CUDA, self._target), "poison copy")

    def _launch(self, placed: Placed) -> None:
        for param, buffer in zip(self._params, placed.buffers[:-1], strict=True):
            param.set(buffer)
        self._pipeline.realize(placed.buffers[-1], self._target)

    def run(self, placed: Placed) -> None:
        self._last = placed
        if self._loaded:
            self._launch(placed)
            return
        # The CUDA runtime reads its register cap when it loads the module, at the first launch.
        previous = os.environ.get("HL_CUDA_JIT_MAX_REGISTERS")
        if self.max_registers is not None:
            os.environ["HL_CUDA_JIT_MAX_REGISTERS"] = str(self.max_registers)
        try:
            self._launch(placed)
        finally:
            if self.max_registers is not None:
                if previous is None:
                    os.environ.pop("HL_CUDA_JIT_MAX_REGISTERS", None)
                else:
                    os.environ["HL_CUDA_JIT_MAX_REGISTERS"] = previous
        self._loaded = True

    def sync(self) -> None:
        if self._last is not None:
            self._check(self._last.buffers[-1].device_sync(), "device_sync")

    def fetch(self, placed: Placed) -> np.ndarray:
        ob = placed.buffers[-1]
        self._check(ob.copy_to_host(), "copy to host")
        return placed.out.copy()


def _max_registers(options: Mapping[str, Any]) -> int | None:
    return register_cap(options.get("cuda_max_registers"))


def _gpu_artifacts(pipeline: Any, layer: Any, target: Any) -> dict[str, str]:
    """The conceptual statement (loops and GPU blocks/threads before device offload) and the PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        stmt, ptx = Path(tmp, "lowered.stmt"), Path(tmp, "kernels.ptx")
        pipeline.compile_to(
            {hl.OutputFileType.conceptual_stmt: str(stmt), hl.OutputFileType.device_code: str(ptx)},
            layer.arguments,
            "dsconv",
            target,
        )
        return {
            "lowered.stmt": stmt.read_text(errors="replace"),
            "kernels.ptx": ptx.read_text(errors="replace"),
        }


def _cpu_stmt(pipeline: Any, layer: Any, target: Any) -> str:
    """The lowered statement of a CPU pipeline (what the cache stores beside a compiled entry)."""
    with tempfile.TemporaryDirectory() as tmp:
        stmt = Path(tmp, "lowered.stmt")
        pipeline.compile_to({hl.OutputFileType.stmt: str(stmt)}, layer.arguments, "dsconv", target)
        return stmt.read_text(errors="replace")


def build(
    name: str, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]
) -> CpuBuilt | CudaBuilt:
    """Build schedule `name` of the layer for `device`: the body of every `halide_*` variant."""
    check_schedule(name, device.kind)
    if device.is_gpu:
        return _build_cuda(name, shape, device, options)
    return _build_cpu(name, shape, device, options)


def _build_cpu(name: str, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> CpuBuilt:
    target = cpu_target()
    problem = None if options.get("jit") else cache.toolchain_problem()
    if problem is None and not options.get("jit"):
        key = cache.cache_key(_key_parts(name, shape, device, target, options))

        def make() -> tuple[Any, list[Any], Any, dict[str, str]]:
            layer, pipeline, artifacts = schedule_layer(name, shape, device, target, options)
            return pipeline, layer.arguments, target, artifacts

        entry = cache.get_or_build(cache.cache_root(options), key, make)
        compile_s = entry.load_s if entry.hit else entry.meta["compile_s"]
        info = {
            "cache": "hit" if entry.hit else "miss",
            "key": key,
            "entry": str(entry.path),
            "cold_compile_s": entry.meta["compile_s"],
            "compile_s": compile_s,
        }
        artifacts = {**entry.artifacts, "build.json": json.dumps(info, indent=1)}
        return CpuBuilt(shape, entry.function, compile_s, target.to_string(), artifacts)

    # No toolchain (or options["jit"]): JIT-compile in this process, nothing cached.
    start = time.perf_counter()
    layer, pipeline, artifacts = schedule_layer(name, shape, device, target, options)
    fn = pipeline.compile_to_callable(layer.arguments, target)
    compile_s = time.perf_counter() - start
    artifacts["lowered.stmt"] = _cpu_stmt(pipeline, layer, target)
    reason = "options['jit']" if options.get("jit") else problem
    artifacts["build.json"] = json.dumps({"cache": "off", "reason": reason, "compile_s": compile_s}, indent=1)
    return CpuBuilt(shape, fn, compile_s, target.to_string(), artifacts)


def _build_cuda(name: str, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> CudaBuilt:
    target = cuda_target(device)
    max_registers = _max_registers(options)
    require_device(target)
    start = time.perf_counter()
    layer, pipeline, artifacts = schedule_layer(name, shape, device, target, options)
    pipeline.compile_jit(target)
    compile_s = time.perf_counter() - start
    artifacts.update(_gpu_artifacts(pipeline, layer, target))
    info = {
        "cache": "off (CUDA is JIT-compiled once per process)",
        "compile_s": compile_s,
        "cuda_max_registers": max_registers if max_registers is not None else "runtime default (64)",
    }
    artifacts["build.json"] = json.dumps(info, indent=1)
    return CudaBuilt(shape, layer, pipeline, compile_s, target, artifacts, max_registers)


def lower_for(
    name: str, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Schedule and compile `name` for `device` without running it: the artifacts (schedule, lowered
    statement and, for CUDA, the PTX). Needs no GPU, so a CPU-only machine checks the GPU paths."""
    options = options or {}
    check_schedule(name, device.kind)
    target = cuda_target(device) if device.is_gpu else cpu_target()
    layer, pipeline, artifacts = schedule_layer(name, shape, device, target, options)
    if device.is_gpu:
        artifacts.update(_gpu_artifacts(pipeline, layer, target))
    else:
        artifacts["lowered.stmt"] = _cpu_stmt(pipeline, layer, target)
    return artifacts
