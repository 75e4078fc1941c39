"""The layer's algorithm in Halide, written once; schedules live in `schedules_cpu` / `schedules_gpu`.

Halide order reverses NumPy's: the NHWC input is `input(c, x, y, n)`, the (3, 3, c) depthwise filter
is `depthwise_filter(c, kx, ky)`, the (c, co) pointwise filter is `pointwise_filter(co, c)` and the
output is `output(co, x, y, n)`. Every extent of the shape is baked into the parameters' bounds: one
build per shape, which lets the compiler drop bounds checks and lets the autoschedulers (which need
constant extents) plan for the real sizes.

Funcs are named explicitly ("padded", "depthwise", "pointwise", "output") so that GPU kernel names,
`_kernel_<Func>...`, are stable for profiler filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import halide as hl

from kernels.halide.tiling import HOST_ALIGNMENT
from kernels.layer import KERNEL, LayerShape

FUNC_NAMES = ("padded", "depthwise", "pointwise", "output")


@dataclass
class Layer:
    """The layer's Funcs, Vars and parameters for one shape: what a schedule needs to name."""

    shape: LayerShape
    input: hl.ImageParam  # (c, x, y, n)
    depthwise_filter: hl.ImageParam  # (c, kx, ky)
    pointwise_filter: hl.ImageParam  # (co, c)
    bias: hl.ImageParam  # (co,)
    padded: hl.Func  # (c, x, y, n) in input coordinates, zero outside the image
    depthwise: hl.Func  # (c, x, y, n) in output coordinates
    pointwise: hl.Func  # (co, x, y, n): pure init (bias) + update over rc
    output: hl.Func  # (co, x, y, n)
    c: hl.Var  # channel (input channels for padded/depthwise, output channels for the rest)
    x: hl.Var
    y: hl.Var
    n: hl.Var
    rc: hl.RDom  # the pointwise reduction over input channels

    @property
    def arguments(self) -> list[hl.Argument]:
        """The pipeline's arguments, in the order every compiled variant is called with."""
        return [
            hl.Argument(self.input),
            hl.Argument(self.depthwise_filter),
            hl.Argument(self.pointwise_filter),
            hl.Argument(self.bias),
        ]

    def pipeline(self) -> hl.Pipeline:
        return hl.Pipeline(self.output)


def _bind(param: hl.ImageParam, extents: tuple[int, ...], aligned: bool = True) -> None:
    """Fix a parameter's bounds (min 0, dense innermost) and, if `aligned`, its alignment; and give
    autoschedulers their estimates."""
    if aligned:
        param.set_host_alignment(HOST_ALIGNMENT)
    for d, extent in enumerate(extents):
        param.dim(d).set_bounds(0, extent).set_estimate(0, extent)
    # Dense strides from the extents: C-contiguous NumPy arrays seen in Halide order.
    stride = 1
    for d, extent in enumerate(extents):
        param.dim(d).set_stride(stride)
        stride *= extent


def define(shape: LayerShape) -> Layer:
    """Build the layer's Funcs for `shape` (unscheduled: every Func is inline until a schedule says)."""
    f32 = hl.Float(32)
    inp = hl.ImageParam(f32, 4, "input")
    dwf = hl.ImageParam(f32, 3, "depthwise_filter")
    pwf = hl.ImageParam(f32, 2, "pointwise_filter")
    bias = hl.ImageParam(f32, 1, "bias")
    _bind(inp, (shape.c, shape.w, shape.h, shape.n))
    _bind(dwf, (shape.c, KERNEL, KERNEL))
    _bind(pwf, (shape.co, shape.c))
    # The bias keeps Halide's default alignment: its loads are few, so alignment gains nothing there, and
    # declared it makes each thread load its bias in 8-byte pairs and initialise its accumulators as
    # 64-bit registers, which slowed the pointwise kernel (docs/evidence/kernels.md, "bias alignment").
    _bind(bias, (shape.co,), aligned=False)

    c, x, y, n = hl.Var("c"), hl.Var("x"), hl.Var("y"), hl.Var("n")

    # Zero padding written as a select on clamped coordinates, as the official app does: the
    # built-in boundary conditions cause unwanted loop partitioning here.
    in_bounds = (x >= 0) & (x < shape.w) & (y >= 0) & (y < shape.h)
    padded = hl.Func("padded")
    padded[c, x, y, n] = hl.select(
        in_bounds, inp[c, hl.clamp(x, 0, shape.w - 1), hl.clamp(y, 0, shape.h - 1), n], hl.f32(0.0)
    )

    # 3x3 depthwise, TensorFlow SAME padding: output pixel (x, y) reads input rows
    # y*stride - pad_top + ky and columns x*stride - pad_left + kx.
    s = shape.stride
    taps = [
        dwf[c, kx, ky] * padded[c, x * s + kx - shape.pad_left, y * s + ky - shape.pad_top, n]
        for ky in range(KERNEL)
        for kx in range(KERNEL)
    ]
    depthwise = hl.Func("depthwise")
    depthwise[c, x, y, n] = sum(taps[1:], taps[0])

    rc = hl.RDom([hl.Range(0, shape.c)], "rc")
    pointwise = hl.Func("pointwise")
    pointwise[c, x, y, n] = bias[c] if shape.bias else hl.f32(0.0)
    pointwise[c, x, y, n] += pwf[c, rc.x] * depthwise[rc.x, x, y, n]

    output = hl.Func("output")
    output[c, x, y, n] = hl.max(pointwise[c, x, y, n], hl.f32(0.0)) if shape.relu else pointwise[c, x, y, n]

    # The output has the shape's exact extents and a dense layout, like the parameters.
    out = output.output_buffer()
    stride = 1
    for d, extent in enumerate((shape.co, shape.wo, shape.ho, shape.n)):
        out.dim(d).set_bounds(0, extent).set_stride(stride)
        stride *= extent
    output.set_estimates(
        [hl.Range(0, shape.co), hl.Range(0, shape.wo), hl.Range(0, shape.ho), hl.Range(0, shape.n)]
    )

    return Layer(shape, inp, dwf, pwf, bias, padded, depthwise, pointwise, output, c, x, y, n, rc)
