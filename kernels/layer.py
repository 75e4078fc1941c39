"""The depthwise separable convolution layer: its shape, its cost model, its inputs and its reference.

The layer, as in Halide's `apps/depthwise_separable_conv` and MobileNet: NHWC fp32 input, a 3x3
depthwise convolution with TensorFlow's SAME padding and stride 1 or 2 (channel multiplier 1), then a
1x1 pointwise convolution to `co` channels, an optional bias and an optional ReLU.

Array layouts shared by every variant (each variant converts to its own layout inside `place`):
    x     (n, h, w, c)       input
    dw    (3, 3, c)          depthwise filter, [ky, kx, channel]
    pw    (c, co)            pointwise filter
    bias  (co,)              zeros when the layer has no bias
    out   (n, ho, wo, co)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

KERNEL = 3  # depthwise filter extent (3x3)
BYTES_PER_ELEMENT = 4  # fp32
STRIDES = (1, 2)


class ShapeError(ValueError):
    """A layer shape that makes no sense (zero or negative sizes, an unsupported stride)."""


@dataclass(frozen=True)
class LayerShape:
    """One layer instance. `name` is how configs, records and tables refer to it."""

    name: str
    n: int
    h: int
    w: int
    c: int
    co: int
    stride: int = 1
    bias: bool = True
    relu: bool = True

    def __post_init__(self) -> None:
        for field in ("n", "h", "w", "c", "co"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ShapeError(f"shape {self.name!r}: {field} must be a positive integer, got {value!r}")
        if self.stride not in STRIDES:
            raise ShapeError(
                f"shape {self.name!r}: stride must be one of {list(STRIDES)}, got {self.stride!r}"
            )

    # --- geometry -------------------------------------------------------------------------------
    @property
    def ho(self) -> int:
        """Output height under SAME padding."""
        return math.ceil(self.h / self.stride)

    @property
    def wo(self) -> int:
        """Output width under SAME padding."""
        return math.ceil(self.w / self.stride)

    @property
    def pad_top(self) -> int:
        """Rows of zeros before the first input row (TensorFlow SAME: the smaller half goes first)."""
        return _same_pad_before(self.h, self.ho, self.stride)

    @property
    def pad_left(self) -> int:
        """Columns of zeros before the first input column."""
        return _same_pad_before(self.w, self.wo, self.stride)

    @property
    def label(self) -> str:
        """A compact human label: `4x112x112x32->16 s1`."""
        return f"{self.n}x{self.h}x{self.w}x{self.c}->{self.co} s{self.stride}"

    def as_params(self) -> dict[str, str]:
        """The shape as MLflow params (`shape`, `n`, `h`, `w`, `c`, `co`, `stride`, ...)."""
        d = asdict(self)
        d["shape"] = d.pop("name")
        return {k: str(v) for k, v in d.items()}

    # --- cost model -----------------------------------------------------------------------------
    @property
    def flops(self) -> int:
        """Floating-point operations: an FMA counts 2; bias add and ReLU count 1 each per output."""
        pixels = self.n * self.ho * self.wo
        depthwise = 2 * KERNEL * KERNEL * self.c
        pointwise = 2 * self.c * self.co
        epilogue = self.co * (int(self.bias) + int(self.relu))
        return pixels * (depthwise + pointwise + epilogue)

    @property
    def min_bytes(self) -> int:
        """Fewest bytes a fused layer must move through memory: each input read once, output written once."""
        elements = (
            self.n * self.h * self.w * self.c  # input
            + KERNEL * KERNEL * self.c  # depthwise filter
            + self.c * self.co  # pointwise filter
            + (self.co if self.bias else 0)
            + self.n * self.ho * self.wo * self.co  # output
        )
        return BYTES_PER_ELEMENT * elements

    @property
    def intermediate_bytes(self) -> int:
        """Bytes an unfused layer adds: the depthwise result written once and read back once."""
        return 2 * BYTES_PER_ELEMENT * self.n * self.ho * self.wo * self.c

    @property
    def arithmetic_intensity(self) -> float:
        """FLOP per byte of the fused layer at its minimum traffic."""
        return self.flops / self.min_bytes


def _same_pad_before(size: int, out: int, stride: int) -> int:
    total = max((out - 1) * stride + KERNEL - size, 0)
    return total // 2


@dataclass(frozen=True)
class LayerInputs:
    """One set of inputs for a shape, in the shared layouts above (float32, C-contiguous)."""

    x: np.ndarray
    dw: np.ndarray
    pw: np.ndarray
    bias: np.ndarray


def make_inputs(shape: LayerShape, seed: int) -> LayerInputs:
    """Fresh random inputs. Never zeros: zeros hide unwritten outputs and wrong indexing.

    Weights are scaled so outputs stay O(1) whatever the channel count, which keeps the relative
    error of fp32 variants meaningful on wide layers.
    """
    rng = np.random.default_rng(seed)

    def draw(*dims: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * np.float32(scale)).astype(np.float32)

    bias = draw(shape.co) if shape.bias else np.zeros(shape.co, np.float32)
    return LayerInputs(
        x=draw(shape.n, shape.h, shape.w, shape.c),
        dw=draw(KERNEL, KERNEL, shape.c, scale=1 / 3),
        pw=draw(shape.c, shape.co, scale=1 / math.sqrt(shape.c)),
        bias=bias,
    )


def reference(shape: LayerShape, inputs: LayerInputs) -> np.ndarray:
    """The layer in float64 NumPy, written for clarity; every variant is checked against it."""
    x = inputs.x.astype(np.float64)
    padded = np.zeros(
        (shape.n, shape.h + KERNEL, shape.w + KERNEL, shape.c), dtype=np.float64
    )  # big enough for any SAME padding of a 3x3 window
    padded[:, shape.pad_top : shape.pad_top + shape.h, shape.pad_left : shape.pad_left + shape.w] = x
    s = shape.stride
    depthwise = np.zeros((shape.n, shape.ho, shape.wo, shape.c), dtype=np.float64)
    for ky in range(KERNEL):
        for kx in range(KERNEL):
            window = padded[:, ky : ky + s * shape.ho : s, kx : kx + s * shape.wo : s, :]
            depthwise += window * inputs.dw[ky, kx].astype(np.float64)
    # one (pixels x c) @ (c x co) product: a 4-D @ loops over small products (12 s against 0.07 s at
    # 64x14x14x576->96), which made each verification of a large layer take seconds
    pixels = depthwise.reshape(-1, shape.c) @ inputs.pw.astype(np.float64)
    out = pixels.reshape(shape.n, shape.ho, shape.wo, shape.co) + inputs.bias.astype(np.float64)
    if shape.relu:
        out = np.maximum(out, 0.0)
    return out


def relative_l2_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN or a shape mismatch gives +inf (never passes)."""
    if out.shape != ref.shape:
        return math.inf
    out64 = np.asarray(out, dtype=np.float64)
    if not np.all(np.isfinite(out64)):
        return math.inf
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(out64 - ref)) / (denom if denom > 0 else 1.0)
