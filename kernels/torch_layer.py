"""The layer in PyTorch, shared by the variants that run it through PyTorch (cuDNN eager, torch.compile).

`torch_layer` is the layer as a PyTorch user writes it: `F.conv2d(groups=C)` (depthwise 3x3), then a 1x1
`F.conv2d` with the bias (or one `addmm`), then ReLU in place, on NCHW-shaped tensors in either memory
format. `TorchPlacement` is what every such Built does alike: place the inputs on the device in the
variant's memory format, poison the output, wait for the device, fetch the output as NHWC.

TensorFlow's SAME padding puts the odd row or column at the bottom/right; PyTorch's `padding=` is
symmetric. Where they differ (stride 2 on an even size) the layer pads explicitly with `F.pad`, a cost
any PyTorch user of this layer pays; elsewhere the convolution pads by itself.

PyTorch is imported lazily (the `torch` extra is optional); the code also runs on the CPU, which is how
the math is tested on a machine without a GPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.layer import KERNEL, LayerInputs, LayerShape

NO_TORCH = "PyTorch not installed (install the `torch` extra)"
NO_CUDA = "PyTorch sees no CUDA GPU"


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


def calls(shape: LayerShape, pw: Any, matmul: bool = False) -> list[str]:
    """The PyTorch calls `torch_layer` makes for `shape`, one line each (for a build's artifact)."""
    s = shape
    top, bottom, left, right = same_padding(s)
    padded = (top, left) != (bottom, right)
    return [
        f"F.pad(x, (l={left}, r={right}, t={top}, b={bottom}))" if padded else "no explicit padding",
        f"F.conv2d(x, dw{(s.c, 1, KERNEL, KERNEL)}, stride={s.stride}, "
        f"padding={(0, 0) if padded else (top, left)}, groups={s.c})",
        f"torch.addmm(bias, y as ({s.n * s.ho * s.wo}, {s.c}), pw as ({s.c}, {s.co}))"
        if matmul
        else f"F.conv2d(y, pw{tuple(pw.shape)}, bias={'yes' if s.bias else 'None'})",
        "torch.relu_(y)" if s.relu else "no relu",
    ]


@dataclass
class TorchPlaced:
    """Input tensors resident on the device, and the output of the last run."""

    x: Any
    dw: Any
    pw: Any
    bias: Any  # None when the layer has no bias
    out: Any


class TorchPlacement:
    """The Built protocol's data movement for a layer run through PyTorch on one torch device.

    Subclasses compile or choose their kernels in `__init__` and define `run`; `place`, `poison`,
    `sync` and `fetch` are the same for all of them."""

    kernel_filter: str | None = None
    build_params: Mapping[str, str] = MappingProxyType({})

    def __init__(self, shape: LayerShape, device: str, channels_last: bool) -> None:
        import torch

        self.torch, self.shape = torch, shape
        self.device = torch.device(device)
        self.gpu = self.device.type == "cuda"
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def place(self, inputs: LayerInputs) -> TorchPlaced:
        """Copy the inputs to the device as NCHW-shaped tensors in this variant's memory format."""
        torch, fmt = self.torch, self.format

        def put(a: np.ndarray, perm: tuple[int, ...]) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device).permute(*perm)
            return t.contiguous(memory_format=fmt)

        x = put(inputs.x, (0, 3, 1, 2))  # NHWC -> (n, c, h, w)
        dw = put(inputs.dw[:, :, :, None], (2, 3, 0, 1))  # (3, 3, c, 1) -> (c, 1, 3, 3)
        pw = put(inputs.pw[None, None], (3, 2, 0, 1))  # (1, 1, c, co) -> (co, c, 1, 1)
        bias = torch.from_numpy(inputs.bias).to(self.device) if self.shape.bias else None
        placed = TorchPlaced(x, dw, pw, bias, None)
        self.poison(placed)
        return placed

    def poison(self, placed: TorchPlaced) -> None:
        """Make the kept output NaN, so a run that produced nothing fails verification."""
        s = self.shape
        out = self.torch.full((s.n, s.co, s.ho, s.wo), float("nan"), device=self.device)
        placed.out = out.contiguous(memory_format=self.format)

    def sync(self) -> None:
        """Wait for every queued kernel (PyTorch's CPU ops are synchronous)."""
        if self.gpu:
            self.torch.cuda.synchronize(self.device)

    def fetch(self, placed: TorchPlaced) -> np.ndarray:
        """The last output on the host, NHWC float32."""
        return np.ascontiguousarray(placed.out.permute(0, 2, 3, 1).cpu().numpy())

    def gpu_name(self) -> str:
        """The device's name with underscores for spaces, for target strings ("host" on the CPU)."""
        return self.torch.cuda.get_device_name(self.device).replace(" ", "_") if self.gpu else "host"


def zeros(shape: LayerShape) -> LayerInputs:
    """An all-zero input set of `shape` (what a build runs once to choose or compile its kernels)."""
    s = shape
    return LayerInputs(
        x=np.zeros((s.n, s.h, s.w, s.c), np.float32),
        dw=np.zeros((KERNEL, KERNEL, s.c), np.float32),
        pw=np.zeros((s.c, s.co), np.float32),
        bias=np.zeros(s.co, np.float32),
    )


def check(shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why a PyTorch variant cannot run on `device`: PyTorch missing, or no CUDA GPU visible to it."""
    if importlib.util.find_spec("torch") is None:
        return NO_TORCH
    import torch

    if device.is_gpu and not torch.cuda.is_available():
        return NO_CUDA
    return None
