"""cuDNN baselines through PyTorch: what most GPU users would compare a hand-written layer against.

The layer is `F.conv2d(groups=C)` (depthwise 3x3) then a 1x1 `F.conv2d` with the bias, then ReLU in
place, fp32:
    cudnn_nchw        NCHW tensors (PyTorch sends fp32 NCHW depthwise to its own CUDA kernel)
    cudnn_cl          channels_last tensors (the depthwise goes to cuDNN)
    cublas_mm         channels_last depthwise through cuDNN, then the pointwise as one matrix product
                      of the NHWC pixels by the weights (`torch.addmm`, cuBLAS): the layer with the
                      library's GEMM, which bounds what a pointwise GEMM reaches on the device
                      (framework `cublas`, so that the cuDNN comparison of issue #6 keeps its meaning)
    ..._tf32          TF32 allowed in cuDNN and cuBLAS; the others run strict fp32
Both TF32 switches, and `cudnn.benchmark`, are process-global, so every run sets them again.

TensorFlow's SAME padding puts the odd row or column at the bottom/right; PyTorch's `padding=` is
symmetric. Where they differ (stride 2 on an even size) the run pads explicitly with `F.pad`, a cost
any PyTorch user of this layer pays; elsewhere the convolution pads by itself.

PyTorch is imported lazily (the `torch` extra is optional); `torch_layer` also runs on the CPU, which
is how the math is tested on a machine without a GPU.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.layer import KERNEL, LayerInputs, LayerShape
from kernels.registry import register

NO_TORCH = "PyTorch not installed (install the `torch` extra)"
NO_CUDA = "PyTorch sees no CUDA GPU"
LAYOUTS = ("nchw", "cl", "mm")  # mm: channels_last, the pointwise as a matrix product

# The GPU kernels of one run, as the PyTorch profiler listed them on an H100 (torch 2.11, cuDNN 9.19):
# cuDNN's convolutions (sm80_/sm90_xmma_fprop_*, implicit_convolve_sgemm, convolve_common_engine_*,
# conv2d_grouped_direct_kernel, conv2d_c1_k1_nhwc) and layout conversions (nchwToNhwcKernel), cuBLASLt
# and CUTLASS GEMMs with their split-K reductions (TF32), PyTorch's conv_depthwise2d_forward_kernel,
# and elementwise kernels for F.pad (fill, copy), the bias add and the ReLU (clamp). All of them are
# the layer's, so the filter matches them all.
KERNEL_FILTER = (
    r"conv|cudnn|xmma|gemm|cutlass|cublas|splitK|depthwise|implicit|nchwToNhwc|nhwcToNchw|"
    r"elementwise|Fill|copy|pad|clamp|relu|add"
)


@dataclass(frozen=True)
class CudnnSpec:
    """One cuDNN variant: memory format and TF32."""

    layout: str  # one of LAYOUTS
    tf32: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"cuDNN layout must be one of {list(LAYOUTS)}, got {self.layout!r}")

    @property
    def name(self) -> str:
        return ("cublas_mm" if self.matmul else f"cudnn_{self.layout}") + "_tf32" * self.tf32

    @property
    def matmul(self) -> bool:
        """Whether the pointwise runs as a matrix product (cuBLAS) rather than a 1x1 convolution."""
        return self.layout == "mm"

    @property
    def framework(self) -> str:
        return "cublas" if self.matmul else "cudnn"


SPECS = tuple(CudnnSpec(layout, tf32) for layout in LAYOUTS for tf32 in (False, True))


def same_padding(shape: LayerShape) -> tuple[int, int, int, int]:
    """TensorFlow's SAME padding as (top, bottom, left, right)."""
    total_h = max((shape.ho - 1) * shape.stride + KERNEL - shape.h, 0)
    total_w = max((shape.wo - 1) * shape.stride + KERNEL - shape.w, 0)
    return shape.pad_top, total_h - shape.pad_top, shape.pad_left, total_w - shape.pad_left


def torch_layer(
    torch: ModuleType, shape: LayerShape, x: Any, dw: Any, pw: Any, bias: Any, matmul: bool = False
) -> Any:
    """The layer on NCHW-shaped tensors (either memory format): x (n,c,h,w), dw (c,1,3,3), pw (co,c,1,1).

    With `matmul` the pointwise is one `addmm` of the (n*ho*wo, c) pixels by the (c, co) weights; on
    channels_last tensors both are views, so cuBLAS reads them in place and writes channels_last."""
    F = torch.nn.functional
    top, bottom, left, right = same_padding(shape)
    if (top, left) == (bottom, right):
        y = F.conv2d(x, dw, stride=shape.stride, padding=(top, left), groups=shape.c)
    else:
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), dw, stride=shape.stride, groups=shape.c)
    if matmul:
        pixels = y.permute(0, 2, 3, 1).reshape(-1, shape.c)
        weights = pw.reshape(shape.co, shape.c).t()
        z = torch.addmm(bias, pixels, weights) if bias is not None else pixels @ weights
        y = z.view(shape.n, shape.ho, shape.wo, shape.co).permute(0, 3, 1, 2)
    else:
        y = F.conv2d(y, pw, bias)
    return torch.relu_(y) if shape.relu else y


@dataclass
class _Placed:
    """Input tensors resident on the device, and the output of the last run."""

    x: Any
    dw: Any
    pw: Any
    bias: Any  # None when the layer has no bias
    out: Any


class CudnnBuilt:
    """The layer through PyTorch on one device, with cuDNN's algorithm chosen during the build."""

    def __init__(self, spec: CudnnSpec, shape: LayerShape, device: str, benchmark: bool = True) -> None:
        import torch

        self.torch, self.spec, self.shape, self.benchmark = torch, spec, shape, benchmark
        self.device = torch.device(device)
        self.gpu = self.device.type == "cuda"
        self.format = torch.contiguous_format if spec.layout == "nchw" else torch.channels_last
        self.kernel_filter: str | None = KERNEL_FILTER if self.gpu else None
        self.build_params: Mapping[str, str] = {}
        if self.gpu:
            name = torch.cuda.get_device_name(self.device).replace(" ", "_")
            backend = f"cudnn-{torch.backends.cudnn.version()}-{name}"
        else:
            backend = "host"
        self.target = f"torch-{torch.__version__}-{backend}" + "-benchmark" * (benchmark and self.gpu)

        dummy = self.place(_zeros(shape))  # build = cuDNN's algorithm choice (benchmark) on a placed input
        start = time.perf_counter()
        self.run(dummy)
        self.sync()
        self.compile_s = time.perf_counter() - start  # includes one execution of the layer
        self.artifacts = {"torch.txt": self._describe(dummy)}

    def _set_flags(self) -> None:
        # Process-global switches: set before every run so a TF32 variant never leaks into a strict one.
        backends = self.torch.backends
        backends.cudnn.allow_tf32 = self.spec.tf32
        backends.cuda.matmul.allow_tf32 = self.spec.tf32
        backends.cudnn.benchmark = self.benchmark

    def _describe(self, placed: _Placed) -> str:
        """What PyTorch runs: the calls, the flags, and the backend it selects for each convolution."""
        torch, s = self.torch, self.shape
        top, bottom, left, right = same_padding(s)
        padded = (top, left) != (bottom, right)
        lines = [
            f"# {self.spec.name}, {s.label}, target {self.target}",
            f"memory format: {self.format}; allow_tf32 (cudnn, matmul): {self.spec.tf32}; "
            f"cudnn.benchmark: {self.benchmark}",
            f"F.pad(x, (l={left}, r={right}, t={top}, b={bottom}))" if padded else "no explicit padding",
            f"F.conv2d(x, dw{tuple(placed.dw.shape)}, stride={s.stride}, "
            f"padding={(0, 0) if padded else (top, left)}, groups={s.c})",
            f"torch.addmm(bias, y as ({s.n * s.ho * s.wo}, {s.c}), pw as ({s.c}, {s.co}))"
            if self.spec.matmul
            else f"F.conv2d(y, pw{tuple(placed.pw.shape)}, bias={'yes' if s.bias else 'None'})",
            "torch.relu_(y)" if s.relu else "no relu",
        ]
        try:  # a private API: lose the line, not the variant
            x = placed.x
            if padded:
                x = torch.nn.functional.pad(x, (left, right, top, bottom))
            depthwise = torch._C._select_conv_backend(
                x, placed.dw, None, [s.stride] * 2, [0, 0] if padded else [top, left], [1, 1], False,
                [0, 0], s.c,
            )  # fmt: skip
            y = torch.empty((s.n, s.c, s.ho, s.wo), device=self.device).contiguous(memory_format=self.format)
            pointwise = (
                "addmm"
                if self.spec.matmul
                else torch._C._select_conv_backend(
                    y, placed.pw, placed.bias, [1, 1], [0, 0], [1, 1], False, [0, 0], 1
                )
            )
            lines.append(f"backends: depthwise {depthwise}, pointwise {pointwise}")
        except Exception as e:
            lines.append(f"backends: unavailable ({type(e).__name__}: {e})")
        return "\n".join(lines) + "\n"

    def place(self, inputs: LayerInputs) -> _Placed:
        """Copy the inputs to the device as NCHW-shaped tensors in this variant's memory format."""
        torch, fmt = self.torch, self.format

        def put(a: np.ndarray, perm: tuple[int, ...]) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device).permute(*perm)
            return t.contiguous(memory_format=fmt)

        x = put(inputs.x, (0, 3, 1, 2))  # NHWC -> (n, c, h, w)
        dw = put(inputs.dw[:, :, :, None], (2, 3, 0, 1))  # (3, 3, c, 1) -> (c, 1, 3, 3)
        pw = put(inputs.pw[None, None], (3, 2, 0, 1))  # (1, 1, c, co) -> (co, c, 1, 1)
        bias = torch.from_numpy(inputs.bias).to(self.device) if self.shape.bias else None
        placed = _Placed(x, dw, pw, bias, None)
        self.poison(placed)
        return placed

    def poison(self, placed: _Placed) -> None:
        """Make the kept output NaN, so a run that produced nothing fails verification."""
        s = self.shape
        out = self.torch.full((s.n, s.co, s.ho, s.wo), float("nan"), device=self.device)
        placed.out = out.contiguous(memory_format=self.format)

    def run(self, placed: _Placed) -> None:
        """Launch the layer once and keep its output (asynchronous on the GPU)."""
        self._set_flags()
        placed.out = torch_layer(
            self.torch, self.shape, placed.x, placed.dw, placed.pw, placed.bias, self.spec.matmul
        )

    def sync(self) -> None:
        """Wait for every queued kernel (PyTorch's CPU ops are synchronous)."""
        if self.gpu:
            self.torch.cuda.synchronize(self.device)

    def fetch(self, placed: _Placed) -> np.ndarray:
        """The last output on the host, NHWC float32."""
        return np.ascontiguousarray(placed.out.permute(0, 2, 3, 1).cpu().numpy())


def _zeros(shape: LayerShape) -> LayerInputs:
    s = shape
    return LayerInputs(
        x=np.zeros((s.n, s.h, s.w, s.c), np.float32),
        dw=np.zeros((KERNEL, KERNEL, s.c), np.float32),
        pw=np.zeros((s.c, s.co), np.float32),
        bias=np.zeros(s.co, np.float32),
    )


def check(shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why the cuDNN variants cannot run on `device`: PyTorch missing, or no CUDA GPU visible to it."""
    if importlib.util.find_spec("torch") is None:
        return NO_TORCH
    import torch

    if device.is_gpu and not torch.cuda.is_available():
        return NO_CUDA
    return None


def build(spec: CudnnSpec, shape: LayerShape, device: str, benchmark: bool = True) -> CudnnBuilt:
    """Build `spec` on a torch device ("cuda", "cuda:1", or "cpu" to test the math without a GPU)."""
    return CudnnBuilt(spec, shape, device, benchmark)


def _register(spec: CudnnSpec) -> None:
    def build_variant(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> CudnnBuilt:
        reason = check(shape, device)
        if reason is not None:
            raise RuntimeError(f"{spec.name}: {reason}")
        benchmark = options.get("cudnn_benchmark", True)
        if not isinstance(benchmark, bool):
            raise ValueError(f"{spec.name}: option cudnn_benchmark must be true or false, got {benchmark!r}")
        return build(spec, shape, "cuda", benchmark)

    memory = "NCHW" if spec.layout == "nchw" else "channels_last"
    pointwise = "torch.addmm (cuBLAS)" if spec.matmul else "1x1 conv2d"
    register(
        spec.name,
        framework=spec.framework,
        kinds=("cuda",),
        description=f"PyTorch conv2d(groups=C) then {pointwise}, {memory}, "
        + ("TF32 allowed" if spec.tf32 else "strict fp32")
        + ", cudnn.benchmark unless option cudnn_benchmark=false",
        check=check,
        baseline=True,
        tags=("tf32",) if spec.tf32 else (),
    )(build_variant)


for _spec in SPECS:
    _register(_spec)
