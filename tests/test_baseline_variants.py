"""The baselines (TensorFlow, cuDNN through PyTorch, the NumPy reference) against the float64 reference.

Every baseline that can run on this machine is built through the registry and checked on awkward
shapes: odd sizes, stride 2 on odd and even sizes (TensorFlow's asymmetric SAME padding), channel
counts that are no multiple of a vector width, batch 2, bias and ReLU off. GPU-only variants must give
a reason on a CPU; their math is checked on the CPU where the framework allows it.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, requires_gpu

from kernels import cudnn_variants, reference_variant, tensorflow_variants
from kernels import registry as reg
from kernels.device import DeviceSpec
from kernels.layer import LayerShape, make_inputs, reference, relative_l2_error

STRICT = 1e-4  # fp32 against float64
TF32 = 1e-3  # TF32 keeps 10 mantissa bits: about 2e-4 was measured on an H100 (variants tagged "tf32")

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0, cores=2)
GPU = DeviceSpec("h100", "cuda", "NVIDIA H100", 67000.0, 3350.0, sm_count=132, cuda_capability=90)

ODD_S1 = LayerShape("odd_s1", 1, 13, 11, 24, 40)
ODD_S2 = LayerShape("odd_s2", 2, 13, 11, 24, 40, stride=2)
EVEN_S2 = LayerShape("even_s2", 2, 12, 14, 24, 40, stride=2, bias=False)
C3_S2 = LayerShape("c3_s2", 1, 13, 11, 3, 5, stride=2, relu=False)
C3_PLAIN = LayerShape("c3_plain", 2, 12, 10, 3, 5, bias=False, relu=False)
AWKWARD = (ODD_S1, ODD_S2, EVEN_S2, C3_S2, C3_PLAIN)
FEW = (ODD_S2, EVEN_S2)  # for slow compiles (XLA) and repeated code paths

MODULES = {
    "tensorflow": tensorflow_variants,
    "cudnn": cudnn_variants,
    "cublas": cudnn_variants,
    "numpy": reference_variant,
}


def ours() -> dict[str, reg.Variant]:
    """This file's variants. Importing their modules registered them; `reg.all_variants()` would also
    import the Halide variants, which these tests do not need."""
    return {name: v for name, v in reg._REGISTRY.items() if v.framework in MODULES}


def tolerance(variant: reg.Variant) -> float:
    return TF32 if "tf32" in variant.tags else STRICT


def verify(built: reg.Built, shape: LayerShape, tol: float, seed: int = 11) -> float:
    """Place, poison, run, sync, fetch: the harness's sequence, then the error against the reference."""
    inputs = make_inputs(shape, seed)
    placed = built.place(inputs)
    built.poison(placed)
    assert np.isnan(built.fetch(placed)).all(), "poison must make the whole output NaN"
    built.run(placed)
    built.sync()
    out = built.fetch(placed)
    assert out.shape == (shape.n, shape.ho, shape.wo, shape.co)
    err = relative_l2_error(out, reference(shape, inputs))
    assert err < tol, f"relative L2 error {err:.2e} on {shape.label}"
    return err


def cpu_cases() -> list[tuple[str, LayerShape]]:
    cases = []
    for name, v in ours().items():
        for shape in FEW if "xla" in v.tags else AWKWARD:
            if v.skip_reason(shape, CPU) is None:
                cases.append((name, shape))
    return cases


# --- the registry entries ----------------------------------------------------------------------
def test_variant_names_and_kinds() -> None:
    variants = ours()
    tf = sorted(n for n, v in variants.items() if v.framework == "tensorflow")
    assert len(tf) == 12
    assert all(re.fullmatch(r"tf_(separable|twostep)(_nchw)?(_tf32)?(_xla)?", n) for n in tf)
    assert {"tf_separable", "tf_twostep", "tf_separable_xla", "tf_twostep_xla"} <= set(tf)
    for n in tf:
        gpu_only = "_nchw" in n or "_tf32" in n
        assert variants[n].kinds == (("cuda",) if gpu_only else ("cpu", "cuda")), n
    cudnn = {n for n, v in variants.items() if v.framework == "cudnn"}
    assert cudnn == {"cudnn_nchw", "cudnn_nchw_tf32", "cudnn_cl", "cudnn_cl_tf32"}
    cublas = {n for n, v in variants.items() if v.framework == "cublas"}
    assert cublas == {"cublas_mm", "cublas_mm_tf32"}  # apart, so that "best cuDNN" keeps its meaning
    assert all(variants[n].kinds == ("cuda",) for n in cudnn | cublas)
    assert all(variants[n].baseline for n in [*tf, *cudnn, *cublas])
    assert variants["numpy_ref"].kinds == ("cpu",) and variants["numpy_ref"].framework == "numpy"


def test_listing_variants_imports_no_framework() -> None:
    code = (
        "import sys; import kernels.tensorflow_variants, kernels.cudnn_variants, kernels.reference_variant;"
        "heavy = [m for m in ('tensorflow', 'torch') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- on this CPU ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "shape"), cpu_cases(), ids=lambda c: getattr(c, "name", c))
def test_cpu_variant_matches_reference(name: str, shape: LayerShape) -> None:
    variant = ours()[name]
    built = variant.build(shape, CPU, {})
    verify(built, shape, tolerance(variant))
    assert built.compile_s >= 0 and built.target and built.kernel_filter is None
    if variant.framework == "tensorflow":
        assert built.target.startswith("tensorflow-2.") and "-cpu" in built.target
        assert "/device:CPU:0" in built.artifacts["graph.txt"]
        assert ("hlo.txt" in built.artifacts) == ("xla" in variant.tags)


def test_numpy_ref_is_the_reference_in_float64() -> None:
    built = ours()["numpy_ref"].build(ODD_S2, CPU, {})
    inputs = make_inputs(ODD_S2, 3)
    placed = built.place(inputs)
    built.run(placed)
    built.sync()
    out = built.fetch(placed)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, reference(ODD_S2, inputs))


@pytest.mark.parametrize("name", [n for n, v in ours().items() if "cpu" not in v.kinds])
def test_gpu_only_variants_say_why_on_a_cpu(name: str) -> None:
    reason = ours()[name].skip_reason(ODD_S1, CPU)
    assert reason is not None and "no cpu implementation" in reason and "cuda" in reason


GPU_ONLY_TF = [s for s in tensorflow_variants.SPECS if "cpu" not in s.kinds]


@functools.cache
def _tf_cpu_depthwise_takes_nchw() -> bool:
    """Whether TensorFlow's CPU depthwise accepts NCHW: oneDNN's kernel does, TensorFlow's own does not,
    and TensorFlow turns oneDNN on by default only on CPUs with AVX-512 VNNI and later."""
    tf = tensorflow_variants.import_tensorflow()
    try:
        tf.nn.depthwise_conv2d(tf.ones((1, 2, 4, 4)), tf.ones((3, 3, 2, 1)), [1, 1, 1, 1], "SAME", "NCHW")
    except tf.errors.UnimplementedError:
        return False
    return True


@pytest.mark.parametrize("spec", GPU_ONLY_TF, ids=lambda s: s.name)
def test_tensorflow_gpu_code_paths_on_the_cpu(spec: tensorflow_variants.TfSpec) -> None:
    """NCHW and TF32 variants are registered for CUDA only, but TensorFlow's CPU kernels accept NCHW
    where oneDNN is on (and ignore TF32), so the layout plumbing of `place`/`fetch` is checked here."""
    if spec.nchw and not _tf_cpu_depthwise_takes_nchw():
        pytest.skip("TensorFlow's CPU depthwise takes NHWC only here (oneDNN is off on this CPU)")
    for shape in FEW:
        verify(tensorflow_variants.build(spec, shape, CPU), shape, STRICT)


def test_tensorflow_tf32_switch_follows_the_variant() -> None:
    tf = tensorflow_variants.import_tensorflow()
    strict, tf32 = (tensorflow_variants.TfSpec("twostep", tf32=flag) for flag in (False, True))
    try:
        tensorflow_variants.build(tf32, C3_S2, CPU)
        assert tf.config.experimental.tensor_float_32_execution_enabled()
        tensorflow_variants.build(strict, C3_S2, CPU)
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(False)


def test_tensorflow_on_the_cpu_runs_synchronously() -> None:
    """`sync` is a no-op on the CPU only because eager execution is synchronous there."""
    tf = tensorflow_variants.import_tensorflow()
    assert tf.config.experimental.get_synchronous_execution()
    assert not tensorflow_variants.build(tensorflow_variants.TfSpec("separable"), C3_S2, CPU)._sync_needed


def test_tensorflow_gpu_variant_without_a_gpu() -> None:
    tf = tensorflow_variants.import_tensorflow()
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees a GPU here")
    for name in ("tf_separable", "tf_twostep_nchw_tf32"):
        assert ours()[name].skip_reason(ODD_S1, GPU) == tensorflow_variants.NO_GPU
        with pytest.raises(RuntimeError, match="sees no GPU"):
            ours()[name].build(ODD_S1, GPU, {})


def test_tensorflow_names_its_cuda_libraries() -> None:
    """A GPU record of TensorFlow carries the CUDA and cuDNN it was built for and the ones it loaded; where a
    library is not loaded (here: no CUDA at all) the param says so instead of holding a number."""
    tf = tensorflow_variants.import_tensorflow()
    params = tensorflow_variants.cuda_libraries(tf)
    assert set(params) == {"tf.build.cuda", "tf.build.cudnn"} | {
        f"tf.loaded.{name}" for name in tensorflow_variants._VERSION_CALLS
    }
    assert re.fullmatch(r"\d+(\.\d+)*", params["tf.build.cuda"]), params
    for name in tensorflow_variants._VERSION_CALLS:
        assert re.fullmatch(r"\d+|error -?\d+|unknown \(.+\)", params[f"tf.loaded.{name}"]), params


def test_cudnn_check_says_what_is_missing() -> None:
    reason = ours()["cudnn_cl"].skip_reason(ODD_S1, GPU)
    if importlib.util.find_spec("torch") is None:
        assert reason == cudnn_variants.NO_TORCH
    else:
        import torch

        assert reason == (None if torch.cuda.is_available() else cudnn_variants.NO_CUDA)


@pytest.mark.parametrize(
    ("shape", "pads"),
    [(ODD_S1, (1, 1, 1, 1)), (ODD_S2, (1, 1, 1, 1)), (EVEN_S2, (0, 1, 0, 1)), (C3_S2, (1, 1, 1, 1))],
    ids=["odd_s1", "odd_s2", "even_s2", "c3_s2"],
)
def test_same_padding_is_tensorflows(shape: LayerShape, pads: tuple[int, int, int, int]) -> None:
    assert cudnn_variants.same_padding(shape) == pads


@pytest.mark.parametrize("spec", cudnn_variants.SPECS, ids=lambda s: s.name)
def test_cudnn_math_on_the_cpu(spec: cudnn_variants.CudnnSpec) -> None:
    """The cuDNN variants' PyTorch code, run on the CPU: layouts, SAME padding, bias and ReLU."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed (install the `torch` extra)")
    for shape in AWKWARD:
        built = cudnn_variants.build(spec, shape, "cpu")
        verify(built, shape, STRICT)
        assert ("F.pad" in built.artifacts["torch.txt"]) == (shape is EVEN_S2)
        assert torch.backends.cudnn.allow_tf32 is spec.tf32  # set by the run, process-global
        assert torch.backends.cuda.matmul.allow_tf32 is spec.tf32


# --- on a GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name", [n for n, v in ours().items() if "cuda" in v.kinds])
def test_gpu_variant_matches_reference(name: str) -> None:
    variant = ours()[name]
    for shape in FEW if "xla" in variant.tags else AWKWARD:
        reason = variant.skip_reason(shape, GPU)
        if reason is not None:
            pytest.skip(reason)
        verify(variant.build(shape, GPU, {}), shape, tolerance(variant))
