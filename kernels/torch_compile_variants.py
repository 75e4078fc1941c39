"""torch.compile (Inductor) of the layer as the cuDNN variants write it: what a PyTorch user tries first.

The function compiled is `kernels.torch_layer.torch_layer` (depthwise `F.conv2d(groups=C)`, 1x1 `F.conv2d`
with the bias, ReLU in place), fp32, on channels_last tensors, the same eager code as `cudnn_cl`:
    torch_compile         mode "default"
    torch_compile_max     mode "max-autotune-no-cudagraphs" (Inductor autotunes its templates against
                          cuBLAS/cuDNN; no CUDA graphs, so a call launches its kernels as eager code would)
    ..._tf32              TF32 allowed (cuDNN, cuBLAS, float32 matmul precision "high"); the others run
                          strict fp32 (both switches off, precision "highest")
Inductor keeps the depthwise as an ATen call (cuDNN) or a Triton template, may turn the 1x1 convolution
into a GEMM, and fuses bias and ReLU into Triton kernels: a call is Triton kernels plus cuDNN and cuBLAS
ones, so the harness counts every kernel of a call (`kernel_filter` None); the build's artifact
`inductor_code.py` (the generated wrapper) shows which.

Each build compiles a fresh function: Dynamo's state is reset and Inductor's and Triton's caches start
empty (`torch._inductor.utils.fresh_cache`), so `compile_s` is a cold compile (autotuning included) and no
earlier build's code or choices (another shape, or TF32 where this one is strict) are reused (the first
build in a process also pays Inductor's imports and the start of its compile workers). The TF32
switches are process-global and Dynamo guards on them: they are set to the variant's flavour while
compiling and around every run, and restored after, so variants sharing a worker process never see each
other's flags. A run that would make Dynamo compile again (a later build reset its state, or a guard
failed) raises instead of timing a recompilation.

PyTorch is imported lazily; on a machine without PyTorch, a GPU or Triton the variants are skipped with the
reason. They are registered for CUDA only; `build(..., "cpu")` compiles the same function for the CPU
(Inductor's C++ backend), which is how the code path is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from kernels.registry import register
from kernels.torch_layer import TorchPlaced, TorchPlacement, calls, torch_layer, zeros
from kernels.torch_layer import check as torch_check

FRAMEWORK = "torch_compile"
MODES = ("default", "max-autotune-no-cudagraphs")
NO_TRITON = "Triton not installed (torch.compile's Inductor generates Triton kernels for CUDA)"
RUN_STANCE = "fail_on_recompile"  # torch.compiler stance of every run: a recompilation raises


@dataclass(frozen=True)
class CompileSpec:
    """One torch.compile variant: Inductor's mode and TF32."""

    mode: str  # one of MODES
    tf32: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"torch.compile mode must be one of {list(MODES)}, got {self.mode!r}")

    @property
    def name(self) -> str:
        return "torch_compile" + "_max" * (self.mode != "default") + "_tf32" * self.tf32


SPECS = tuple(CompileSpec(mode, tf32) for mode in MODES for tf32 in (False, True))


def read_flags(torch: ModuleType) -> dict[str, str]:
    """The switches `tf32_flags` sets and restores, as PyTorch reports them."""
    b = torch.backends
    flags = {
        "cudnn.allow_tf32": str(b.cudnn.allow_tf32),
        "cuda.matmul.allow_tf32": str(b.cuda.matmul.allow_tf32),
        "cudnn.benchmark": str(b.cudnn.benchmark),
    }
    try:
        flags["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    except RuntimeError as exc:  # a mixed legacy/new state that PyTorch refuses to read
        flags["float32_matmul_precision"] = f"unreadable ({str(exc)[:80]})"
    return flags


def precision_api_flags(torch: ModuleType) -> dict[str, str]:
    """What PyTorch >= 2.9's fp32_precision API reports for matmul and cuDNN convolutions (which Inductor's
    templates read), for the build's artifact; empty on older PyTorch. `tf32_flags` does not restore these
    strings one by one (PyTorch refuses some mixes of the two APIs): the legacy switches carry the meaning,
    and an unset "none" may read "ieee" after a strict variant ran."""
    b = torch.backends
    flags = {}
    for name, get in (
        ("cuda.matmul.fp32_precision", lambda: b.cuda.matmul.fp32_precision),
        ("cudnn.conv.fp32_precision", lambda: b.cudnn.conv.fp32_precision),
    ):
        with contextlib.suppress(AttributeError, RuntimeError):
            flags[name] = str(get())
    return flags


@contextlib.contextmanager
def tf32_flags(torch: ModuleType, tf32: bool, benchmark: bool | None = None) -> Iterator[None]:
    """cuDNN's and cuBLAS's TF32 switches and the float32 matmul precision set to one flavour (and
    `cudnn.benchmark` when given); on exit, the values found on entry are put back.

    The precision goes first: PyTorch >= 2.9 keeps the legacy switches and the fp32_precision API in one
    state, and setting a legacy switch after `set_float32_matmul_precision` the other way leaves a state
    that `torch.get_float32_matmul_precision()` (which Inductor's autotuner reads) refuses to read."""
    b = torch.backends
    saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark)
    try:
        precision: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # unreadable on entry: the legacy switches alone are restored
        precision = None
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    b.cuda.matmul.allow_tf32 = tf32
    b.cudnn.allow_tf32 = tf32
    if benchmark is not None:
        b.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        if precision is not None:
            torch.set_float32_matmul_precision(precision)
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark = saved


@contextlib.contextmanager
def _cold_compile(owner: object) -> Iterator[None]:
    """A compile with nothing cached: Inductor's and Triton's caches cleared in memory and pointed at a
    new, empty directory (`torch._inductor.utils.fresh_cache`, as PyTorch's own benchmarks use it). The
    directory lives as long as `owner` (the compiled code's files stay where Inductor put them)."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:  # its name before PyTorch 2.8
        from torch._inductor.utils import fresh_inductor_cache as fresh_cache

    parent = tempfile.mkdtemp(prefix="dsconv-inductor-")
    weakref.finalize(owner, shutil.rmtree, parent, True)
    with fresh_cache(dir=parent, delete=False):
        yield


def _run_and_get_code(fn: Any, *args: Any) -> tuple[Any, list[str]]:
    """`fn(*args)` (the compiling call) and the wrapper code Inductor generated for it, through
    `torch._inductor.utils.run_and_get_code` (a testing helper: where it is missing, no code)."""
    try:
        from torch._inductor.utils import run_and_get_code
    except ImportError:
        return fn(*args), []
    return run_and_get_code(fn, *args)


class CompiledBuilt(TorchPlacement):
    """The layer compiled by torch.compile for one shape on one torch device, channels_last."""

    def __init__(self, spec: CompileSpec, shape: LayerShape, device: str, benchmark: bool = True) -> None:
        super().__init__(shape, device, channels_last=True)
        torch = self.torch
        self.spec, self.benchmark = spec, benchmark
        # Every kernel of a call: Inductor's Triton kernels and what its ATen calls launch (cuDNN, cuBLAS,
        # PyTorch's own), whatever their names; memory copies and memsets are not kernels.
        self.kernel_filter: str | None = None
        backend = "host"
        if self.gpu:
            import triton

            cudnn = torch.backends.cudnn.version()
            backend = f"triton-{triton.__version__}-cudnn-{cudnn}-{self.gpu_name()}"
        self.target = f"torch-{torch.__version__}-inductor-{spec.mode}-{backend}"
        self.build_params = {
            "compile_mode": spec.mode,
            "inductor_caches": "fresh (empty, cleared): a cold compile",
        }

        def layer(x: Any, dw: Any, pw: Any, bias: Any) -> Any:
            return torch_layer(torch, shape, x, dw, pw, bias)

        dummy = self.place(zeros(shape))
        with tf32_flags(torch, spec.tf32, benchmark), _cold_compile(self):
            torch._dynamo.reset()  # no cache entry, guard or recompile count of an earlier build
            self._fn = torch.compile(layer, mode=spec.mode, fullgraph=True, dynamic=False)
            flags = {**read_flags(torch), **precision_api_flags(torch)}
            start = time.perf_counter()
            dummy.out, code = _run_and_get_code(self._fn, dummy.x, dummy.dw, dummy.pw, dummy.bias)
            self.sync()
            self.compile_s = time.perf_counter() - start  # tracing, lowering, autotuning, one execution
        self.artifacts = {"torch_compile.txt": self._describe(dummy, flags)}
        if code:
            self.artifacts["inductor_code.py"] = "\n\n".join(code)

    def _describe(self, placed: TorchPlaced, flags: Mapping[str, str]) -> str:
        """What was compiled, in which mode, under which switches."""
        s, torch = self.shape, self.torch
        options = torch._inductor.list_mode_options(self.spec.mode)
        lines = [
            f"# {self.spec.name}, {s.label}, target {self.target}",
            f"torch.compile(layer, mode={self.spec.mode!r}, fullgraph=True, dynamic=False); "
            f"mode options {options or '{}'}; torch._dynamo.reset() and fresh Inductor/Triton caches before",
            f"memory format: {self.format}; switches while compiling and running: "
            + ", ".join(f"{k}={v}" for k, v in flags.items()),
            "layer:",
            *(f"  {line}" for line in calls(s, placed.pw)),
        ]
        return "\n".join(lines) + "\n"

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """The variant's switches, and no compilation, around one call."""
        with tf32_flags(self.torch, self.spec.tf32, self.benchmark):
            set_stance = getattr(self.torch.compiler, "set_stance", None)
            with set_stance(RUN_STANCE) if set_stance else contextlib.nullcontext():
                yield

    def run(self, placed: TorchPlaced) -> None:
        """Launch the compiled layer once and keep its output (asynchronous on the GPU)."""
        with self._running():
            placed.out = self._fn(placed.x, placed.dw, placed.pw, placed.bias)


def check(shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why the torch.compile variants cannot run: PyTorch missing, no CUDA GPU, or no Triton for it."""
    reason = torch_check(shape, device)
    if reason is None and device.is_gpu and importlib.util.find_spec("triton") is None:
        return NO_TRITON
    return reason


def build(spec: CompileSpec, shape: LayerShape, device: str, benchmark: bool = True) -> CompiledBuilt:
    """Compile `spec` for a torch device ("cuda", "cuda:1", or "cpu": Inductor's C++ backend)."""
    return CompiledBuilt(spec, shape, device, benchmark)


def _register(spec: CompileSpec) -> None:
    def build_variant(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> CompiledBuilt:
        reason = check(shape, device)
        if reason is not None:
            raise RuntimeError(f"{spec.name}: {reason}")
        benchmark = options.get("cudnn_benchmark", True)
        if not isinstance(benchmark, bool):
            raise ValueError(f"{spec.name}: option cudnn_benchmark must be true or false, got {benchmark!r}")
        return build(spec, shape, "cuda", benchmark)

    register(
        spec.name,
        framework=FRAMEWORK,
        kinds=("cuda",),
        description=f"torch.compile(mode={spec.mode!r}) of the cuDNN variants' layer, channels_last, "
        + ("TF32 allowed" if spec.tf32 else "strict fp32")
        + ", cudnn.benchmark unless option cudnn_benchmark=false; compile_s is a cold compile",
        check=check,
        baseline=True,
        tags=(("tf32",) if spec.tf32 else ()) + (("max_autotune",) if spec.mode != "default" else ()),
    )(build_variant)


for _spec in SPECS:
    _register(_spec)
