"""The Halide variants: one registered variant per named schedule, for the CPU and CUDA.

`halide_<schedule>` builds the layer of `algorithm.py` with the schedule of that name (manual ones
from `schedules_cpu` / `schedules_gpu`, autoscheduled ones through `autoschedule`):
- CPU: compiled ahead of time through the on-disk compile cache (`cache.py`); a repeat build only
  loads a module. Buffers wrap the NumPy arrays without copying; Halide's thread pool uses every
  core (HL_NUM_THREADS limits it).
- CUDA: JIT-compiled once per process (GPU nodes run one long-lived worker per GPU). Inputs are
  copied to the device once in `place`; `run` launches with every buffer resident and clean, so no
  transfer happens per call; `sync` waits on the device; `fetch` copies the output back.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from types import ModuleType
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.halide.tiling import HOST_ALIGNMENT
from kernels.layer import LayerInputs, LayerShape
from kernels.registry import register

MANUAL_SCHEDULES = ("app", "unfused", "fused_tile", "fused_cblock")
AUTO_SCHEDULES = ("auto_adams2019", "auto_li2018", "auto_mullapudi2016", "auto_anderson2021")
SCHEDULES = MANUAL_SCHEDULES + AUTO_SCHEDULES
PREFIX = "halide_"
# The parameterised family (family.py): built from options["params"]; served as `halide_family` and,
# with parameters from the tuning database, as `halide_tuned` (tuned.py).
FAMILY = "family"

# Device kinds each schedule supports (the autoschedulers' own limits; see autoschedule.py).
SCHEDULE_KINDS: dict[str, tuple[str, ...]] = {
    **{name: ("cpu", "cuda") for name in MANUAL_SCHEDULES},
    "auto_adams2019": ("cpu",),
    "auto_li2018": ("cpu", "cuda"),
    "auto_mullapudi2016": ("cpu",),
    "auto_anderson2021": ("cuda",),
    FAMILY: ("cpu", "cuda"),
}

DESCRIPTIONS = {
    "app": "the official app's schedule (CPU: channel-slice fusion; GPU: one kernel, shared memory)",
    "unfused": "depthwise into its own buffer, then a register-blocked pointwise (GPU: two kernels)",
    "fused_tile": "depthwise per tile of output pixels for every channel, then the pointwise",
    "fused_cblock": "depthwise per channel block inside the pointwise reduction",
    "auto_adams2019": "Adams2019 autoscheduler (CPU)",
    "auto_li2018": "Li2018 autoscheduler (CPU and GPU)",
    "auto_mullapudi2016": "Mullapudi2016 autoscheduler (CPU)",
    "auto_anderson2021": "Anderson2021 autoscheduler (GPU, parallelism = SM count)",
}

# Halide 21's CUDA capability features; a newer GPU runs the highest one's PTX through the driver.
CUDA_CAPABILITIES = (30, 32, 35, 50, 61, 70, 75, 80, 86)
KERNEL_FILTER = r"_kernel_(padded|depthwise|pointwise|output)"


class UnknownScheduleError(ValueError):
    """A schedule name that is not defined; the message lists the valid ones."""


def check_schedule(name: str, kind: str | None = None) -> None:
    """Fail with the list of valid names when `name` is not a schedule (for `kind`, if given)."""
    valid = [s for s in (*SCHEDULES, FAMILY) if kind is None or kind in SCHEDULE_KINDS[s]]
    if name not in valid:
        where = f" for {kind}" if kind else ""
        raise UnknownScheduleError(
            f"unknown Halide schedule {name!r}{where}; valid schedules: {', '.join(valid)}"
        )


def cuda_capability_feature(capability: int) -> Any:
    """The highest Halide `cuda_capability_XX` feature not above min(capability, 86)."""
    import halide as hl

    usable = [c for c in CUDA_CAPABILITIES if c <= min(capability, CUDA_CAPABILITIES[-1])]
    if not usable:
        raise ValueError(
            f"CUDA capability {capability} is below Halide's lowest ({CUDA_CAPABILITIES[0]}); "
            f"valid capabilities: {', '.join(map(str, CUDA_CAPABILITIES))} or newer"
        )
    return getattr(hl.TargetFeature, f"CUDACapability{usable[-1]}")


def cpu_target() -> Any:
    """The host CPU target (every ISA feature of this machine), for ahead-of-time compilation."""
    import halide as hl

    return hl.get_host_target()


def cuda_target(device: DeviceSpec) -> Any:
    """The host target plus CUDA at the device's capability (capped at Halide's highest, 86)."""
    import halide as hl

    if not device.is_gpu:
        raise ValueError(f"device {device.name!r} is a {device.kind}, not a CUDA GPU")
    return (
        hl.get_host_target()
        .with_feature(hl.TargetFeature.CUDA)
        .with_feature(cuda_capability_feature(device.cuda_capability))
    )


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
    """The schedule function's source and that of the module helpers it calls: the `schedule.py`
    artifact. It is the same text for every shape (a bundle stores it once); what the function decided
    for one shape is the `decisions.json` artifact beside it."""
    module: ModuleType | None = inspect.getmodule(fn)
    order: list[Callable[..., Any]] = []

    def visit(f: Callable[..., Any]) -> None:
        if f in order:
            return
        order.append(f)
        for name in f.__code__.co_names:
            obj = getattr(module, name, None)
            if inspect.isfunction(obj) and obj.__module__ == f.__module__:
                visit(obj)

    visit(fn)
    return f"# {fn.__module__}.{fn.__name__}\n" + "\n\n".join(inspect.getsource(f) for f in order)


def decisions_json(decisions: Mapping[str, Any] | None) -> str:
    """What a schedule function decided for this shape (block, threads, shared bytes...): the
    `decisions.json` artifact."""
    plain = {k: _plain(v) for k, v in (decisions or {}).items()}
    return json.dumps(plain, indent=1) + "\n"


def _schedule_artifacts(fn: Callable[..., Any], decisions: Mapping[str, Any] | None) -> dict[str, str]:
    """A schedule function's artifacts for one build (the names are part of the cache key)."""
    return {"schedule.py": schedule_source(fn), "decisions.json": decisions_json(decisions)}


def _module_sources(*modules: ModuleType) -> str:
    return "\n".join(inspect.getsource(m) for m in modules)


def schedule_layer(
    name: str, shape: LayerShape, device: DeviceSpec, target: Any, options: Mapping[str, Any]
) -> tuple[Any, Any, dict[str, str]]:
    """Define the layer and schedule it with `name` for `target`: (layer, pipeline, artifacts)."""
    from kernels.halide import algorithm, autoschedule, schedules_cpu, schedules_gpu

    check_schedule(name, device.kind)
    layer = algorithm.define(shape)
    if name in autoschedule.AUTOSCHEDULERS:
        auto = autoschedule.AUTOSCHEDULERS[name]
        params = autoschedule.autoscheduler_params(auto, device, schedules_cpu.host_threads(), options)
        pipeline, source = autoschedule.apply(layer, target, auto, params)
        return layer, pipeline, {"schedule.txt": source}
    if name == FAMILY:
        from kernels.halide import family

        params = family.resolve(shape, device, options)
        decisions = family.apply(params, layer, target)
        fn = family._apply_gpu if device.is_gpu else family._apply_cpu
        return layer, layer.pipeline(), _schedule_artifacts(fn, decisions)
    table = schedules_gpu.GPU_SCHEDULES if device.is_gpu else schedules_cpu.CPU_SCHEDULES
    fn = table[name]
    decisions = fn(layer, target)
    return layer, layer.pipeline(), _schedule_artifacts(fn, decisions)


def _key_parts(
    name: str, shape: LayerShape, device: DeviceSpec, target: Any, options: Mapping[str, Any]
) -> dict[str, Any]:
    """Everything that changes the code compiled for a CPU variant."""
    import sysconfig

    from kernels.halide import algorithm, autoschedule, cache, schedules_cpu

    parts: dict[str, Any] = {
        "halide": cache.halide_version(),
        "target": target.to_string(),
        "schedule": name,
        "shape": asdict(shape),
        "threads": schedules_cpu.host_threads(),
        "python": sysconfig.get_config_var("EXT_SUFFIX"),
        "artifacts": "schedule.py, decisions.json",  # entries cached before the split miss
    }
    if name in autoschedule.AUTOSCHEDULERS:
        auto = autoschedule.AUTOSCHEDULERS[name]
        parts["params"] = autoschedule.autoscheduler_params(
            auto, device, schedules_cpu.host_threads(), options
        )
        parts["source"] = cache.source_digest(_module_sources(algorithm, autoschedule))
    elif name == FAMILY:
        from kernels.halide import family

        parts["params"] = family.as_dict(family.resolve(shape, device, options))
        parts["source"] = cache.source_digest(_module_sources(algorithm, schedules_cpu, family))
    else:
        parts["source"] = cache.source_digest(_module_sources(algorithm, schedules_cpu))
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
        import halide as hl

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
        import halide as hl

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
        import halide as hl

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


@functools.cache
def _device_usable(target_string: str) -> bool:
    import halide as hl

    return bool(hl.host_supports_target_device(hl.Target(target_string)))


def require_device(target: Any) -> None:
    """Raise a clear error when this host cannot run `target`'s device code (no GPU or driver):
    Halide aborts the process instead of raising if a device operation is attempted. Asked once per
    process and target, before any CUDA compilation (asked after a JIT compilation for the same
    target, Halide 21 answered False on an H100)."""
    if not _device_usable(target.to_string()):
        raise RuntimeError(f"no usable CUDA device for Halide target {target.to_string()} on this host")


def _max_registers(options: Mapping[str, Any]) -> int | None:
    value = options.get("cuda_max_registers")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 255:
        raise ValueError(
            f"options['cuda_max_registers'] must be an integer in 16..255 or None, got {value!r}"
        )
    return value


def _gpu_artifacts(pipeline: Any, layer: Any, target: Any) -> dict[str, str]:
    """The conceptual statement (loops and GPU blocks/threads before device offload) and the PTX."""
    import tempfile
    from pathlib import Path

    import halide as hl

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


def build(
    name: str, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]
) -> CpuBuilt | CudaBuilt:
    """Build schedule `name` of the layer for `device`: the body of every `halide_*` variant."""
    check_schedule(name, device.kind)
    if device.is_gpu:
        return _build_cuda(name, shape, device, options)
    return _build_cpu(name, shape, device, options)


def _build_cpu(name: str, shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> CpuBuilt:
    from kernels.halide import cache

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
    import tempfile
    from pathlib import Path

    import halide as hl

    start = time.perf_counter()
    layer, pipeline, artifacts = schedule_layer(name, shape, device, target, options)
    fn = pipeline.compile_to_callable(layer.arguments, target)
    compile_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        stmt = Path(tmp, "lowered.stmt")
        pipeline.compile_to({hl.OutputFileType.stmt: str(stmt)}, layer.arguments, "dsconv", target)
        artifacts["lowered.stmt"] = stmt.read_text(errors="replace")
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
        import tempfile
        from pathlib import Path

        import halide as hl

        with tempfile.TemporaryDirectory() as tmp:
            stmt = Path(tmp, "lowered.stmt")
            pipeline.compile_to({hl.OutputFileType.stmt: str(stmt)}, layer.arguments, "dsconv", target)
            artifacts["lowered.stmt"] = stmt.read_text(errors="replace")
    return artifacts


def _check(shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why a Halide variant cannot run on `device` (a GPU older than Halide's lowest capability,
    or one without an SM count for Anderson2021's parallelism), or None."""
    if device.is_gpu and device.cuda_capability < CUDA_CAPABILITIES[0]:
        return (
            f"CUDA capability {device.cuda_capability} of {device.name} is below Halide's lowest "
            f"({CUDA_CAPABILITIES[0]})"
        )
    return None


def _check_anderson(shape: LayerShape, device: DeviceSpec) -> str | None:
    if device.is_gpu and device.sm_count <= 0:
        return f"Anderson2021 needs the SM count of {device.name} (sm_count is 0 in the catalog)"
    return _check(shape, device)


def _register_all() -> None:
    for name in SCHEDULES:
        tags = ("halide", "autoscheduler") if name.startswith("auto_") else ("halide", name)
        register(
            PREFIX + name,
            framework="halide",
            kinds=SCHEDULE_KINDS[name],
            description=DESCRIPTIONS[name],
            check=_check_anderson if name == "auto_anderson2021" else _check,
            tags=tags,
        )(functools.partial(build, name))


def _build_family(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> CpuBuilt | CudaBuilt:
    from kernels.halide import family

    return family.build(shape, device, options)


def _build_tuned(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> CpuBuilt | CudaBuilt:
    from kernels.halide import tuned

    return tuned.build(shape, device, options)


def _register_family() -> None:
    register(
        PREFIX + FAMILY,
        framework="halide",
        kinds=("cpu", "cuda"),
        description="the schedule family (family.py) with options['params'] (the heuristic for the rest)",
        check=_check,
        tags=("halide", "family"),
    )(_build_family)
    register(
        PREFIX + "tuned",
        framework="halide",
        kinds=("cpu", "cuda"),
        description="the family's best schedule in tuning/db.json for shape and device, else its heuristic",
        check=_check,
        tags=("halide", "tuned"),
    )(_build_tuned)


_register_all()
_register_family()
