"""TensorFlow baselines: the layer as most TensorFlow users write it, traced into a `tf.function`.

Names follow `tf_{separable|twostep}[_nchw][_tf32][_xla]`:
    separable  `tf.nn.separable_conv2d` (TensorFlow's own composite of the two convolutions)
    twostep    `tf.nn.depthwise_conv2d`, then `tf.nn.conv2d` with a 1x1 filter
    _nchw      data_format="NCHW" (GPU only; inputs are transposed in `place`, outside the timed run)
    _tf32      TensorFloat-32 allowed in the convolutions (GPU only; every other variant runs with it off)
    _xla       `tf.function(jit_compile=True)`
Each ends with `bias_add` and `relu` when the shape has them. NCHW is not combined with XLA: XLA picks
its own layouts, so the variant would only add transposes.

TensorFlow is imported lazily, in `check` and `build`, so that listing variants stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.layer import LayerInputs, LayerShape
from kernels.registry import register

NO_TF = "TensorFlow not installed (pip install 'tensorflow==2.21.*')"
NO_GPU = "TensorFlow sees no GPU (install the `gpu` extra: tensorflow[and-cuda])"
OPS = ("separable", "twostep")


@dataclass(frozen=True)
class TfSpec:
    """One TensorFlow variant: which ops, which layout, TF32 or not, XLA or not."""

    op: str  # one of OPS
    nchw: bool = False
    tf32: bool = False
    xla: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"TensorFlow op must be one of {list(OPS)}, got {self.op!r}")

    @property
    def name(self) -> str:
        return "tf_" + self.op + "_nchw" * self.nchw + "_tf32" * self.tf32 + "_xla" * self.xla

    @property
    def kinds(self) -> tuple[str, ...]:
        """NCHW and TF32 only mean something on a GPU: TensorFlow's CPU kernels are NHWC and fp32."""
        return ("cuda",) if self.nchw or self.tf32 else ("cpu", "cuda")

    @property
    def data_format(self) -> str:
        return "NCHW" if self.nchw else "NHWC"


SPECS = tuple(
    TfSpec(op, nchw, tf32, xla)
    for op in OPS
    for nchw in (False, True)
    for tf32 in (False, True)
    for xla in (False, True)
    if not (nchw and xla)
)


# --- importing TensorFlow quietly -----------------------------------------------------------------
_tf: ModuleType | None = None


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[Any]:
    """Send file descriptor 2 to a temporary file (native code writes there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow() -> ModuleType:
    """Import TensorFlow once, quietly, and stop it from taking all GPU memory.

    TF_CPP_MIN_LOG_LEVEL=2 silences TensorFlow's C++ logs once absl logging is initialised, but the
    lines logged while the library loads (oneDNN notice, "could not find cuda drivers", cuInit
    failures) are written to stderr before that and ignore the variable; they are swallowed here and
    replayed only if the import fails. Set TF_CPP_MIN_LOG_LEVEL below 2 to see them.
    """
    global _tf
    if _tf is not None:
        return _tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = os.environ["TF_CPP_MIN_LOG_LEVEL"]
    quiet = not level.isdigit() or int(level) >= 2
    captured = b""
    try:
        with _stderr_to_file() if quiet else contextlib.nullcontext() as sink:
            try:
                import tensorflow as tf

                gpus = tf.config.list_physical_devices("GPU")
            finally:
                if sink is not None:
                    sink.seek(0)
                    captured = sink.read()
    except BaseException:
        sys.stderr.write(captured.decode(errors="replace"))  # stderr is restored by now
        raise
    if quiet:  # Python-side warnings too, e.g. retracing notices: every build traces its own function
        tf.get_logger().setLevel(logging.ERROR)
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # raised once the GPU is initialised: too late, keep going
            tf.config.experimental.set_memory_growth(gpu, True)
    _tf = tf
    return tf


# --- which CUDA libraries TensorFlow runs on ---------------------------------------------------------
# (library soname, C function, its arguments before the int* result) for each version read; sonames are
# TensorFlow 2.20's (CUDA 12). A library already loaded by the process is matched by soname, so these name
# the files TensorFlow itself opened (PyTorch, loaded first, may have brought its own cuDNN 9).
_VERSION_CALLS = {
    "cuda_runtime": ("libcudart.so.12", "cudaRuntimeGetVersion", ()),
    "cudnn": ("libcudnn.so.9", "cudnnGetVersion", None),  # returns the version as size_t
    "cublas_major": ("libcublas.so.12", "cublasGetProperty", (0,)),
    "cublas_minor": ("libcublas.so.12", "cublasGetProperty", (1,)),
}


def cuda_libraries(tf: ModuleType) -> dict[str, str]:
    """The CUDA and cuDNN versions TensorFlow was built for and the ones loaded in this process, as record
    params (`tf.build.cuda`, `tf.loaded.cudnn`, ...): a GPU record names the libraries TensorFlow ran on."""
    import ctypes

    info = tf.sysconfig.get_build_info()
    params = {f"tf.build.{k}": str(info.get(f"{k}_version", "?")) for k in ("cuda", "cudnn")}
    for name, (soname, function, args) in _VERSION_CALLS.items():
        try:
            fn = getattr(ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL), function)
            if args is None:
                fn.restype = ctypes.c_size_t
                value = int(fn())
            else:
                out = ctypes.c_int()
                status = fn(*args, ctypes.byref(out))
                value = out.value if status == 0 else f"error {status}"
        except (OSError, AttributeError) as e:
            value = f"unknown ({e})"
        params[f"tf.loaded.{name}"] = str(value)
    return params


# --- the variant --------------------------------------------------------------------------------
@dataclass
class _Placed:
    """Input tensors resident on the job's device, and the output of the last run."""

    args: tuple[Any, ...]
    out: Any


class TfBuilt:
    """A traced (and for XLA compiled) `tf.function` of the layer, pinned to one device."""

    kernel_filter: str | None = None  # every GPU kernel of a run is the layer's (TF, Eigen, cuDNN, cuBLAS)
    build_params: Mapping[str, str] = MappingProxyType({})

    def __init__(self, spec: TfSpec, shape: LayerShape, device: DeviceSpec) -> None:
        tf = import_tensorflow()
        self.tf, self.spec, self.shape = tf, spec, shape
        self.gpu = device.is_gpu
        self.device = "/GPU:0" if self.gpu else "/CPU:0"
        self.target = f"tensorflow-{tf.__version__}-{'gpu' if self.gpu else 'cpu'}" + "-xla" * spec.xla
        # With synchronous execution (TensorFlow's default) an eager call on the CPU returns only
        # once its kernels have finished; GPU kernels are queued on a stream and need sync_devices().
        self._sync_needed = self.gpu or not tf.config.experimental.get_synchronous_execution()
        self._fn = tf.function(self._layer, jit_compile=spec.xla)

        dummy = self.place(_zeros(shape))  # build = trace + compile, timed on a placed input
        self._set_tf32()
        start = time.perf_counter()
        self.run(dummy)
        self.sync()
        self.compile_s = time.perf_counter() - start  # includes one execution of the layer
        self.artifacts = self._describe(dummy)
        if self.gpu:
            self.build_params = MappingProxyType(cuda_libraries(tf))

    def _layer(self, *args: Any) -> Any:
        tf, spec, s = self.tf, self.spec, self.shape
        x, dw, pw = args[:3]
        strides = [1, 1, s.stride, s.stride] if spec.nchw else [1, s.stride, s.stride, 1]
        with tf.device(self.device):
            if spec.op == "separable":
                y = tf.nn.separable_conv2d(x, dw, pw, strides, "SAME", data_format=spec.data_format)
            else:
                y = tf.nn.depthwise_conv2d(x, dw, strides, "SAME", data_format=spec.data_format)
                y = tf.nn.conv2d(y, pw, 1, "VALID", data_format=spec.data_format)
            if s.bias:
                y = tf.nn.bias_add(y, args[3], data_format=spec.data_format)
            if s.relu:
                y = tf.nn.relu(y)
            return y

    def _set_tf32(self) -> None:
        # Process-global: set before every run so a TF32 variant never leaks into a strict one.
        self.tf.config.experimental.enable_tensor_float_32_execution(self.spec.tf32)

    def _describe(self, placed: _Placed) -> dict[str, str]:
        """What TensorFlow ran: the traced graph's ops, and the HLO handed to XLA."""
        graph = self._fn.get_concrete_function(*placed.args).graph
        lines = [f"# {self.spec.name} on {self.device}, {self.shape.label}, target {self.target}"]
        for op in graph.get_operations():
            shapes = ", ".join(str(t.shape) for t in op.outputs)
            lines.append(f"{op.type:24s} {op.name:40s} {op.device or '-':20s} {shapes}")
        artifacts = {"graph.txt": "\n".join(lines) + "\n"}
        if self.spec.xla:
            try:
                artifacts["hlo.txt"] = self._fn.experimental_get_compiler_ir(*placed.args)(stage="hlo")
            except Exception as e:  # an experimental API: lose the listing, not the variant
                artifacts["hlo.txt"] = f"HLO unavailable: {type(e).__name__}: {e}\n"
        return artifacts

    def place(self, inputs: LayerInputs) -> _Placed:
        """Copy the inputs to the device in this variant's layout (HWIO filters, NHWC or NCHW data)."""
        tf, s = self.tf, self.shape
        x = inputs.x.transpose(0, 3, 1, 2) if self.spec.nchw else inputs.x
        arrays = [x, inputs.dw[:, :, :, None], inputs.pw[None, None]]
        if s.bias:
            arrays.append(inputs.bias)
        with tf.device(self.device):
            # identity() runs on the device, so the tensors are resident there, not on the host.
            args = tuple(tf.identity(tf.constant(np.ascontiguousarray(a))) for a in arrays)
        for t in args:
            if not t.device.endswith(self.device[1:]):
                raise RuntimeError(f"{self.spec.name}: input placed on {t.device}, wanted {self.device}")
        placed = _Placed(args, None)
        self.poison(placed)
        return placed

    def poison(self, placed: _Placed) -> None:
        """Make the kept output NaN, so a run that produced nothing fails verification."""
        s = self.shape
        dims = (s.n, s.co, s.ho, s.wo) if self.spec.nchw else (s.n, s.ho, s.wo, s.co)
        with self.tf.device(self.device):
            placed.out = self.tf.fill(dims, np.float32(np.nan))

    def run(self, placed: _Placed) -> None:
        """Call the function once and keep its output (on the GPU it may still be running)."""
        if self.gpu:
            self._set_tf32()  # on the CPU TF32 does not exist; skip the call in the timed loop
        placed.out = self._fn(*placed.args)

    def sync(self) -> None:
        """Wait for queued GPU work; on the CPU (synchronous execution) every run has already ended."""
        if self._sync_needed:
            self.tf.test.experimental.sync_devices()

    def fetch(self, placed: _Placed) -> np.ndarray:
        """The last output on the host, NHWC."""
        out = placed.out.numpy()
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1)) if self.spec.nchw else out


def _zeros(shape: LayerShape) -> LayerInputs:
    s = shape
    return LayerInputs(
        x=np.zeros((s.n, s.h, s.w, s.c), np.float32),
        dw=np.zeros((3, 3, s.c), np.float32),
        pw=np.zeros((s.c, s.co), np.float32),
        bias=np.zeros(s.co, np.float32),
    )


def check(spec: TfSpec, shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why `spec` cannot run on `device`: TensorFlow missing, or no GPU visible to it."""
    if importlib.util.find_spec("tensorflow") is None:
        return NO_TF
    if device.is_gpu and not import_tensorflow().config.list_physical_devices("GPU"):
        return NO_GPU
    return None


def build(spec: TfSpec, shape: LayerShape, device: DeviceSpec) -> TfBuilt:
    """Trace and compile `spec` for one shape on one device (no `kinds` check: tests call it directly)."""
    reason = check(spec, shape, device)
    if reason is not None:
        raise RuntimeError(f"{spec.name}: {reason}")
    return TfBuilt(spec, shape, device)


def _describe(spec: TfSpec) -> str:
    ops = {
        "separable": "tf.nn.separable_conv2d",
        "twostep": "tf.nn.depthwise_conv2d then tf.nn.conv2d 1x1",
    }[spec.op]
    return (
        f"TensorFlow {ops}, {spec.data_format}, "
        + ("TF32 allowed" if spec.tf32 else "strict fp32")
        + (", XLA (jit_compile=True)" if spec.xla else ", tf.function")
    )


def _register(spec: TfSpec) -> None:
    def build_variant(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> TfBuilt:
        return build(spec, shape, device)

    register(
        spec.name,
        framework="tensorflow",
        kinds=spec.kinds,
        description=_describe(spec),
        check=functools.partial(check, spec),
        baseline=True,
        tags=tuple(t for t, on in (("xla", spec.xla), ("tf32", spec.tf32), ("nchw", spec.nchw)) if on),
    )(build_variant)


for _spec in SPECS:
    _register(_spec)
