"""A hand-written fused Triton kernel of the layer: what a GPU programmer writes when no library fuses it.

`triton_fused` is one kernel: a program takes a block of output pixels (flattened over batch, rows and
columns) and a block of output channels; for each block of input channels it computes the depthwise 3x3
in registers (nine masked loads of the NHWC input, SAME padding by masks) and multiplies it into the
pointwise accumulator with `tl.dot` in strict fp32 (`input_precision="ieee"`: FMAs, no TF32), then adds
the bias, applies ReLU and stores NHWC. Nothing is written between the two stages, as in Halide's fused
schedules; unlike them, the depthwise is recomputed for every block of output channels when `co` is
wider than one block.

The block sizes and warps are chosen by `triton.autotune` at build time over `CONFIGS` (those wider than
the layer's channels pruned), keyed by the shape; the build's artifact names the chosen configuration,
and `compile_s` includes the autotuning. It answers question 4 ("can we do better?") from outside
Halide: the same algorithm, with the loads, tiles and reduction order a compiler other than Halide's
chooses.

PyTorch (tensors, placement) and Triton are imported lazily; without them, or without a CUDA GPU, the
variant is skipped with the reason. `build(..., interpret=True)` runs the kernel in Triton's interpreter
on the CPU (`TRITON_INTERPRET=1`), which is how its indexing is tested without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from kernels.registry import register
from kernels.torch_layer import TorchPlaced, TorchPlacement, zeros
from kernels.torch_layer import check as torch_check

NAME = "triton_fused"
KERNEL_NAME = "separable_fused_kernel"
NO_TRITON = "Triton not installed (the kernel is written in Triton)"
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class BlockConfig:
    """One point of the autotuning space: pixels, input channels and output channels a program, warps."""

    block_p: int
    block_c: int
    block_co: int
    warps: int
    stages: int = 1

    @property
    def meta(self) -> dict[str, int]:
        """The kernel's block-size arguments."""
        return {"BLOCK_P": self.block_p, "BLOCK_C": self.block_c, "BLOCK_CO": self.block_co}

    @property
    def launch(self) -> dict[str, int]:
        """The block sizes with Triton's launch options (warps, pipeline stages)."""
        return {**self.meta, "num_warps": self.warps, "num_stages": self.stages}

    def fits(self, shape: LayerShape) -> bool:
        """False where a block is wider than the layer needs (`tl.dot` needs at least 16 a side)."""
        return _fits(self.block_c, self.block_co, shape.c, shape.co)


TILES = (  # (pixels, input channels, output channels, warps) a program
    (32, 16, 16, 2),
    (64, 16, 16, 2),
    (64, 16, 16, 4),
    (128, 16, 16, 4),
    (64, 32, 16, 4),
    (64, 16, 32, 4),
    (64, 32, 32, 4),
    (128, 16, 32, 4),
    (128, 32, 32, 8),
    (64, 16, 64, 4),
    (128, 16, 64, 8),
    (64, 32, 64, 4),
    (128, 32, 64, 8),
    (64, 16, 128, 4),
    (128, 16, 128, 8),
    (128, 32, 128, 8),
    (128, 64, 128, 8),
    (128, 32, 16, 4),
    (256, 32, 16, 8),
    (256, 32, 32, 8),
)
STAGES = (1, 3)  # 3: Triton pipelines the channel loop's loads (cp.async on Ampere and later)
CONFIGS = tuple(BlockConfig(p, c, co, w, stages) for p, c, co, w in TILES for stages in STAGES)


def parse_config(value: Any) -> BlockConfig:
    """`config` as an option: [pixels, input channels, output channels, warps] or with stages appended;
    block sizes are powers of two of at least 16, warps one of 1, 2, 4, 8, 16."""
    form = "expected [BLOCK_P, BLOCK_C, BLOCK_CO, WARPS] or [..., STAGES]: powers of two >= 16, warps 1-16"
    if not isinstance(value, (list, tuple)) or len(value) not in (4, 5):
        raise ValueError(f"{NAME}: option config {value!r}: {form}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{NAME}: option config {value!r}: {form}")
    blocks, warps = value[:3], value[3]
    if any(b < 16 or b & (b - 1) for b in blocks) or warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"{NAME}: option config {value!r}: {form}")
    return BlockConfig(*value)


def _fits(block_c: int, block_co: int, c: int, co: int) -> bool:
    """Whether channel blocks are no wider than the next power of two of the channels (16 at least)."""

    def pow2(n: int) -> int:
        return 1 << max(n - 1, 0).bit_length()

    return block_c <= max(16, pow2(c)) and block_co <= max(16, pow2(co))


def configs_for(shape: LayerShape) -> list[BlockConfig]:
    """The autotuning configurations that fit `shape` (never empty: the smallest fits every shape)."""
    return [cfg for cfg in CONFIGS if cfg.fits(shape)]


def check(shape: LayerShape, device: DeviceSpec) -> str | None:
    """Why the variant cannot run: PyTorch or Triton missing, no GPU, or offsets beyond 32 bits."""
    reason = torch_check(shape, device)
    if reason is None and importlib.util.find_spec("triton") is None:
        reason = NO_TRITON
    largest = max(shape.n * shape.h * shape.w * shape.c, shape.n * shape.ho * shape.wo * shape.co)
    if reason is None and largest > INT32_MAX:
        reason = f"{largest} elements in one tensor: the kernel's pixel index is 32-bit"
    return reason


@functools.cache
def _kernel() -> Any:
    """The autotuned Triton kernel (defined on first use: Triton is imported lazily)."""
    import triton
    import triton.language as tl

    def prune(configs: list[Any], named_args: dict[str, Any], **_: Any) -> list[Any]:
        c, co = named_args["C"], named_args["CO"]
        kept = [cfg for cfg in configs if _fits(cfg.kwargs["BLOCK_C"], cfg.kwargs["BLOCK_CO"], c, co)]
        return kept or configs[:1]

    @triton.autotune(
        configs=[triton.Config(cfg.meta, num_warps=cfg.warps, num_stages=cfg.stages) for cfg in CONFIGS],
        key=["N", "H", "W", "C", "CO", "STRIDE"],
        prune_configs_by={"early_config_prune": prune},
        reset_to_zero=None,
    )
    @triton.jit
    def separable_fused_kernel(
        x_ptr, dw_ptr, pw_ptr, bias_ptr, out_ptr,  # noqa: ANN001 - Triton's pointers and ints
        N, H, W, C, CO, HO, WO, pad_top, pad_left,  # noqa: ANN001
        sxn, sxh, sxw, sxc,  # noqa: ANN001 - input strides (elements) of n, h, w, c
        sdc, sdk,  # noqa: ANN001 - depthwise filter strides of channel and tap (3 * ky + kx)
        spc, spo,  # noqa: ANN001 - pointwise filter strides of input and output channel
        son, soh, sow, soc,  # noqa: ANN001 - output strides
        STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
    ):  # fmt: skip
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < N * HO * WO
        wo = p % WO
        rest = p // WO
        ho = rest % HO
        n = rest // HO
        o = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
        o_ok = o < CO
        acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < C
            depthwise = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
            for ky in tl.static_range(3):
                hi = ho * STRIDE - pad_top + ky
                row_ok = p_ok & (hi >= 0) & (hi < H)
                for kx in tl.static_range(3):
                    wi = wo * STRIDE - pad_left + kx
                    ok = row_ok & (wi >= 0) & (wi < W)
                    pixel = n * sxn + hi * sxh + wi * sxw
                    v = tl.load(
                        x_ptr + pixel[:, None] + c[None, :] * sxc,
                        mask=ok[:, None] & c_ok[None, :],
                        other=0.0,
                    )
                    tap = tl.load(dw_ptr + c * sdc + (3 * ky + kx) * sdk, mask=c_ok, other=0.0)
                    depthwise += v * tap[None, :]
            weights = tl.load(
                pw_ptr + c[:, None] * spc + o[None, :] * spo,
                mask=c_ok[:, None] & o_ok[None, :],
                other=0.0,
            )
            acc = tl.dot(depthwise, weights, acc, input_precision="ieee")
        if HAS_BIAS:
            acc += tl.load(bias_ptr + o, mask=o_ok, other=0.0)[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0)
        out = out_ptr + (n * son + ho * soh + wo * sow)[:, None] + o[None, :] * soc
        tl.store(out, acc, mask=p_ok[:, None] & o_ok[None, :])

    return separable_fused_kernel


class TritonBuilt(TorchPlacement):
    """The fused Triton kernel on one device, autotuned for the shape during the build."""

    kernel_filter: str | None = KERNEL_NAME

    def __init__(self, shape: LayerShape, device: str, config: BlockConfig | None = None) -> None:
        super().__init__(shape, device, channels_last=True)
        import triton

        self.pinned = config
        self.kernel = _kernel()
        # the autotuner's kernel, or its JIT function launched with the pinned block sizes and warps
        self._launch, self._meta = (self.kernel, {}) if config is None else (self.kernel.fn, config.launch)
        gpu = self.gpu_name()
        self.target = f"triton-{triton.__version__}-{gpu}" + "-interpreter" * (not self.gpu)
        dummy = self.place(zeros(shape))  # build = compile and autotune on a placed input
        start = time.perf_counter()
        self.run(dummy)
        self.sync()
        self.compile_s = time.perf_counter() - start
        if config is not None:
            self.config = config.launch
        else:
            best = self.kernel.best_config
            self.config = {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}
        self.build_params = {f"triton.{k}": str(v) for k, v in self.config.items()}
        self.artifacts = {"triton.txt": self._describe()}

    def _describe(self) -> str:
        s = self.shape
        lines = [
            f"# {NAME}, {s.label}, target {self.target}",
            f"kernel {KERNEL_NAME}: one program per {self.config['BLOCK_P']} output pixels x "
            f"{self.config['BLOCK_CO']} output channels, {self.config['BLOCK_C']} input channels a step; "
            "tl.dot input_precision='ieee' (strict fp32)",
            f"pinned: {self.config}"
            if self.pinned
            else f"chosen by triton.autotune among {len(configs_for(s))} configurations: {self.config}",
            f"compile and autotune: {self.compile_s:.2f} s",
        ]
        return "\n".join(lines) + "\n"

    def run(self, placed: TorchPlaced) -> None:
        """Launch the kernel once into the kept output (asynchronous on the GPU)."""
        import triton

        s = self.shape
        x, dw, pw, out = placed.x, placed.dw, placed.pw, placed.out
        # channels_last tensors: x (n, c, h, w) and out (n, co, ho, wo) are NHWC in memory,
        # dw (c, 1, 3, 3) is (c, 9) and pw (co, c, 1, 1) is (co, c).
        bias = placed.bias if placed.bias is not None else out  # never read without a bias
        grid = lambda meta: (  # noqa: E731 - Triton's grid callable
            triton.cdiv(s.n * s.ho * s.wo, meta["BLOCK_P"]),
            triton.cdiv(s.co, meta["BLOCK_CO"]),
        )
        self._launch[grid](
            x, dw, pw, bias, out,
            s.n, s.h, s.w, s.c, s.co, s.ho, s.wo, s.pad_top, s.pad_left,
            x.stride(0), x.stride(2), x.stride(3), x.stride(1),
            dw.stride(0), dw.stride(3),
            pw.stride(1), pw.stride(0),
            out.stride(0), out.stride(2), out.stride(3), out.stride(1),
            STRIDE=s.stride, HAS_BIAS=s.bias, RELU=s.relu, **self._meta,
        )  # fmt: skip


def build(
    shape: LayerShape, device: str = "cuda", config: BlockConfig | None = None, interpret: bool = False
) -> TritonBuilt:
    """Build the kernel for `shape` on a torch device, autotuned unless `config` pins the block sizes.

    `interpret` runs Triton's interpreter on the CPU (it cannot autotune: the first fitting configuration
    is pinned unless `config` is given); set before the kernel's first use in the process."""
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
        device = "cpu"
        config = config or configs_for(shape)[0]
    return TritonBuilt(shape, device, config)


@register(
    NAME,
    framework="triton",
    kinds=("cuda",),
    description="a hand-written fused Triton kernel (depthwise in registers, pointwise by tl.dot in strict "
    "fp32), block sizes by triton.autotune unless option config=[BLOCK_P, BLOCK_C, BLOCK_CO, WARPS(, "
    "STAGES)] pins them",
    check=check,
    baseline=True,
)
def build_variant(shape: LayerShape, device: DeviceSpec, options: Mapping[str, Any]) -> TritonBuilt:
    """The registered build: the kernel on the job's GPU."""
    config = parse_config(options["config"]) if options.get("config") is not None else None
    reason = check(shape, device)
    if reason is not None:
        raise RuntimeError(f"{NAME}: {reason}")
    return build(shape, "cuda", config)
