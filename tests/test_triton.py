"""The hand-written fused Triton kernel (`triton_fused`).

Without PyTorch and Triton (as in CI): the variant is registered in its own framework, says why it cannot
run, rejects a bad `config` option with one line, and its configuration space fits every extreme shape.
With PyTorch and Triton on the CPU: the kernel runs in Triton's interpreter and verifies against the
float64 reference on extreme and awkward shapes (its indexing, masks and SAME padding). On a GPU (`-m gpu`):
the autotuned kernel verifies, and the harness times only its kernel.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT, reference_error, requires_gpu

from kernels import registry as reg
from kernels import torch_layer
from kernels import triton_variants as tv
from kernels.device import DeviceSpec
from kernels.layer import LayerShape, make_inputs

STRICT = 1e-4
CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0, cores=2)
GPU = DeviceSpec("h200", "cuda", "NVIDIA H200", 67000.0, 4800.0, sm_count=132, cuda_capability=90)
HAS_TORCH_AND_TRITON = all(importlib.util.find_spec(m) is not None for m in ("torch", "triton"))
requires_triton = pytest.mark.skipif(not HAS_TORCH_AND_TRITON, reason="PyTorch or Triton not installed")

# The extreme shapes (c = 1, co = 1, 1x1 images, stride 2 on one-pixel-wide images, c wider than a
# block) and awkward ones (odd sizes, TensorFlow's asymmetric padding at stride 2 on even sizes, no bias).
SHAPES = (
    LayerShape("c1_co1", 1, 5, 5, 1, 1),
    LayerShape("one_pixel", 2, 1, 1, 33, 40, stride=2, bias=False, relu=False),
    LayerShape("thin_s2", 1, 3, 21, 17, 9, stride=2),
    LayerShape("odd_c7_s1", 2, 13, 11, 7, 10),
    LayerShape("even_c5_s2", 2, 12, 14, 5, 3, stride=2, bias=False),
    LayerShape("wide_c", 1, 4, 3, 70, 20),
)


def test_registered_in_its_own_framework_for_cuda_only() -> None:
    assert "triton" in reg.FRAMEWORKS and "kernels.triton_variants" in reg.VARIANT_MODULES
    mine = {n: v for n, v in reg.all_variants().items() if v.framework == "triton"}
    assert set(mine) == {tv.NAME}
    variant = mine[tv.NAME]
    assert variant.kinds == ("cuda",) and variant.baseline and "tf32" not in variant.tags
    assert variant.skip_reason(SHAPES[0], CPU) == f"{tv.NAME} has no cpu implementation (supports: cuda)"


def test_gpu_skip_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = tv.check(SHAPES[0], GPU)
    if importlib.util.find_spec("torch") is None:
        assert reason == torch_layer.NO_TORCH
    elif not HAS_TORCH_AND_TRITON:
        assert reason == tv.NO_TRITON
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m: None if m == "triton" else real(m))
    if importlib.util.find_spec("torch") is not None and torch_layer.check(SHAPES[0], GPU) is None:
        assert tv.check(SHAPES[0], GPU) == tv.NO_TRITON


def test_offsets_beyond_32_bits_are_a_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tv, "torch_check", lambda shape, device: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda m: object())
    huge = LayerShape("huge", 64, 1024, 1024, 64, 16)  # 2^32 input elements
    assert "32-bit" in (tv.check(huge, GPU) or "")
    assert tv.check(SHAPES[0], GPU) is None


@pytest.mark.parametrize(
    "value",
    [
        [64, 16, 16],
        [64, 16, 16, 3],
        [60, 16, 16, 4],
        [64, 8, 16, 4],
        [64, 16, 16, 4, 0],
        "64,16,16,4",
        [64.0] * 4,
    ],
)
def test_a_bad_config_option_is_one_line_with_the_valid_form(value: object) -> None:
    with pytest.raises(
        ValueError, match=r"option config .*expected \[BLOCK_P, BLOCK_C, BLOCK_CO, WARPS\]"
    ) as e:
        reg.get(tv.NAME).build(SHAPES[0], GPU, {"config": value})
    assert "\n" not in str(e.value)


def test_a_config_option_pins_the_block_sizes() -> None:
    assert tv.parse_config([128, 32, 64, 8]) == tv.BlockConfig(128, 32, 64, 8, 1)
    assert tv.parse_config([64, 16, 16, 4, 3]).meta == {"BLOCK_P": 64, "BLOCK_C": 16, "BLOCK_CO": 16}


@pytest.mark.parametrize("c,co", [(1, 1), (3, 4096), (4096, 1), (17, 9), (32, 16), (1024, 1024)])
def test_the_configuration_space_fits_every_shape(c: int, co: int) -> None:
    shape = LayerShape("s", 1, 7, 7, c, co)
    fitting = tv.configs_for(shape)
    assert fitting and all(
        cfg.block_c <= max(16, c) * 2 and cfg.block_co <= max(16, co) * 2 for cfg in fitting
    )
    assert len(
        {(cfg.block_p, cfg.block_c, cfg.block_co, cfg.warps, cfg.stages) for cfg in tv.CONFIGS}
    ) == len(tv.CONFIGS)
    if c >= 32 and co >= 128:
        assert len(fitting) == len(tv.CONFIGS)


def test_listing_variants_imports_neither_torch_nor_triton() -> None:
    code = "import sys, kernels.triton_variants; assert not {'torch', 'triton'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- Triton's interpreter on the CPU (PyTorch and Triton installed) ------------------------------
@requires_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_the_kernel_verifies_in_the_interpreter(shape: LayerShape) -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); from conftest import reference_error; "
        "from test_triton import SHAPES, STRICT, tv; "
        f"s = SHAPES[{SHAPES.index(shape)}]; e = reference_error(tv.build(s, interpret=True), s); "
        "assert e < STRICT, f'relative L2 error {e:.2e} on {s.label}'"
    )
    # a fresh process: the interpreter is chosen when the kernel is first defined
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


# --- on a GPU --------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: s.name)
def test_the_autotuned_kernel_verifies_on_the_gpu(shape: LayerShape) -> None:
    from kernels.device import visible_gpu

    built = reg.get(tv.NAME).build(shape, visible_gpu(), {})
    assert set(built.config) >= {"BLOCK_P", "BLOCK_C", "BLOCK_CO", "num_warps", "num_stages"}
    assert reference_error(built, shape) < STRICT


@pytest.mark.gpu
@requires_gpu
def test_the_harness_times_only_the_kernel() -> None:
    from kernels.device import visible_gpu
    from workers import harness
    from workers.paired import ROUND_TIMING

    shape = SHAPES[3]
    device = visible_gpu()
    built = reg.get(tv.NAME).build(shape, device, {"config": [64, 16, 16, 4]})
    timing = harness.measure(built, [built.place(make_inputs(shape, 1))], ROUND_TIMING, device)
    assert timing.time_source == "cupti" and 0 < timing.time_ms < timing.call_ms
