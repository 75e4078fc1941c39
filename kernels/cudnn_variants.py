"""cuDNN baselines through PyTorch: what most GPU users would compare a hand-written layer against.

The layer is `kernels.torch_layer.torch_layer`: `F.conv2d(groups=C)` (depthwise 3x3) then a 1x1
`F.conv2d` with the bias, then ReLU in place, fp32, run eagerly:
    cudnn_nchw        NCHW tensors (PyTorch sends fp32 NCHW depthwise to its own CUDA kernel)
    cudnn_cl          channels_last tensors (the depthwise goes to cuDNN)
    cublas_mm         channels_last depthwise through cuDNN, then the pointwise as one matrix product
                      of the NHWC pixels by the weights (`torch.addmm`, cuBLAS): the layer with the
                      library's GEMM, which bounds what a pointwise GEMM reaches on the device
                      (framework `cublas`, so that the cuDNN comparison of issue #6 keeps its meaning)
    ..._tf32          TF32 allowed in cuDNN and cuBLAS; the others run strict fp32
Both TF32 switches, and `cudnn.benchmark`, are process-global, so every run sets them again.

PyTorch is imported lazily (the `torch` extra is optional); `build(..., "cpu")` runs the same code on
the CPU, which is how the math is tested on a machine without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from kernels.registry import register
from kernels.torch_layer import (  # re-exported: the cuDNN variants' names before the shared module
    NO_CUDA,
    NO_TORCH,
    TorchPlaced,
    TorchPlacement,
    calls,
    check,
    same_padding,
    torch_layer,
    zeros,
)

__all__ = [
    "NO_CUDA",
    "NO_TORCH",
    "SPECS",
    "CudnnBuilt",
    "CudnnSpec",
    "build",
    "check",
    "same_padding",
    "torch_layer",
]

LAYOUTS = ("nchw", "cl", "mm")  # mm: channels_last, the pointwise as a matrix product

# The GPU kernels of one run of these variants, as the PyTorch profiler lists them (docs/evidence/
# kernels.md, "cuDNN kernels"): cuDNN's convolutions (sm80_/sm90_xmma_fprop_*, implicit_convolve_sgemm,
# convolve_common_engine_*, conv2d_grouped_direct_kernel, conv2d_c1_k1_nhwc) and layout conversions
# (nchwToNhwcKernel), cuBLASLt and CUTLASS GEMMs with their split-K reductions (TF32), PyTorch's
# conv_depthwise2d_forward_kernel, and elementwise kernels for F.pad (fill, copy), the bias add and the
# ReLU (clamp). All of them are the layer's, so the filter matches them all.
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


class CudnnBuilt(TorchPlacement):
    """The layer through PyTorch on one device, with cuDNN's algorithm chosen during the build."""

    def __init__(self, spec: CudnnSpec, shape: LayerShape, device: str, benchmark: bool = True) -> None:
        super().__init__(shape, device, channels_last=spec.layout != "nchw")
        torch = self.torch
        self.spec, self.benchmark = spec, benchmark
        self.kernel_filter: str | None = KERNEL_FILTER if self.gpu else None
        backend = f"cudnn-{torch.backends.cudnn.version()}-{self.gpu_name()}" if self.gpu else "host"
        self.target = f"torch-{torch.__version__}-{backend}" + "-benchmark" * (benchmark and self.gpu)

        dummy = self.place(zeros(shape))  # build = cuDNN's algorithm choice (benchmark) on a placed input
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

    def _describe(self, placed: TorchPlaced) -> str:
        """What PyTorch runs: the calls, the flags, and the backend it selects for each convolution."""
        torch, s = self.torch, self.shape
        top, bottom, left, right = same_padding(s)
        padded = (top, left) != (bottom, right)
        lines = [
            f"# {self.spec.name}, {s.label}, target {self.target}",
            f"memory format: {self.format}; allow_tf32 (cudnn, matmul): {self.spec.tf32}; "
            f"cudnn.benchmark: {self.benchmark}",
            *calls(s, placed.pw, self.spec.matmul),
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

    def run(self, placed: TorchPlaced) -> None:
        """Launch the layer once and keep its output (asynchronous on the GPU)."""
        self._set_flags()
        placed.out = torch_layer(
            self.torch, self.shape, placed.x, placed.dw, placed.pw, placed.bias, self.spec.matmul
        )


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
