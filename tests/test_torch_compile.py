"""torch.compile variants, the GPU's cold-L2 timing and its clock fields.

Without a GPU (and without PyTorch, as in CI): the variants are registered in their own framework and
say why they cannot run; with PyTorch on the CPU, the compiled function is checked against the reference
through Inductor's C++ backend, and the TF32 switches are shown to be set and restored.

On a GPU (`-m gpu`; PyTorch with Triton): every torch.compile variant verifies against the float64
reference on awkward shapes; a job is timed by the harness with every kernel of a call counted; a
cold-L2 time is no faster than a warm one on a shape whose data fits in L2, the flush's own kernels left
out; and every GPU record carries its clocks. Runs as `python3 -m pytest -m gpu tests/test_torch_compile.py`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, requires_gpu
from omegaconf import OmegaConf

from kernels import registry as reg
from kernels import torch_compile_variants as tcv
from kernels import torch_layer
from kernels.device import DeviceSpec
from kernels.layer import LayerShape, make_inputs, reference, relative_l2_error
from workers.job import execute
from workers.schema import Job, TimingSpec

STRICT = 1e-4  # fp32 against float64 (conf/config.yaml `tolerance`)
TF32 = 1e-3  # TF32 keeps 10 mantissa bits (conf/config.yaml `tolerance_tf32`)
NAMES = {"torch_compile", "torch_compile_tf32", "torch_compile_max", "torch_compile_max_tf32"}

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0, cores=2)
GPU = DeviceSpec("h200", "cuda", "NVIDIA H200", 67000.0, 4800.0, sm_count=132, cuda_capability=90)

# Awkward shapes: odd sizes, channels no multiple of 4, stride 2 on odd sizes (symmetric SAME padding)
# and on even sizes (TensorFlow's asymmetric padding: an explicit F.pad), no bias, no ReLU, one channel.
AWKWARD = (
    LayerShape("odd_c7_s1", 2, 13, 11, 7, 10),
    LayerShape("odd_c6_s2", 1, 13, 11, 6, 9, stride=2),
    LayerShape("even_c5_s2", 2, 12, 14, 5, 3, stride=2, bias=False),
    LayerShape("c1", 1, 9, 9, 1, 4, relu=False),
)
HAS_TORCH = importlib.util.find_spec("torch") is not None


def tolerance(name: str) -> float:
    return TF32 if "tf32" in reg.get(name).tags else STRICT


def verify(built: reg.Built, shape: LayerShape, tol: float, seed: int = 5) -> float:
    """The harness's sequence (place, poison, run, sync, fetch), then the error against the reference."""
    inputs = make_inputs(shape, seed)
    placed = built.place(inputs)
    built.poison(placed)
    assert np.isnan(built.fetch(placed)).all()
    built.run(placed)
    built.sync()
    out = built.fetch(placed)
    assert out.shape == (shape.n, shape.ho, shape.wo, shape.co)
    err = relative_l2_error(out, reference(shape, inputs))
    assert err < tol, f"relative L2 error {err:.2e} on {shape.label}"
    return err


# --- registered, and skipped with a reason (CPU, no PyTorch needed) ------------------------------
def test_the_four_variants_are_registered_in_their_own_framework() -> None:
    assert "torch_compile" in reg.FRAMEWORKS and "kernels.torch_compile_variants" in reg.VARIANT_MODULES
    mine = {name: v for name, v in reg.all_variants().items() if v.framework == "torch_compile"}
    assert set(mine) == NAMES == {s.name for s in tcv.SPECS}
    for name, v in mine.items():
        assert v.kinds == ("cuda",) and v.baseline
        assert ("tf32" in v.tags) == name.endswith("_tf32")  # the marker plan._tolerance reads
        assert ("max_autotune" in v.tags) == ("_max" in name)
    cudnn = {n for n, v in reg.all_variants().items() if v.framework == "cudnn"}
    assert not cudnn & NAMES  # "best cuDNN" keeps its meaning


def test_modes_are_inductors() -> None:
    assert {s.mode for s in tcv.SPECS} == {"default", "max-autotune-no-cudagraphs"}
    with pytest.raises(ValueError, match="mode must be one of"):
        tcv.CompileSpec("max-autotune")  # with CUDA graphs: a call would replay a graph


@pytest.mark.parametrize("name", sorted(NAMES))
def test_no_cpu_implementation_says_so(name: str) -> None:
    reason = reg.get(name).skip_reason(AWKWARD[0], CPU)
    assert reason == f"{name} has no cpu implementation (supports: cuda)"


def test_gpu_skip_reason_names_what_is_missing() -> None:
    reason = reg.get("torch_compile").skip_reason(AWKWARD[0], GPU)
    if not HAS_TORCH:
        assert reason == torch_layer.NO_TORCH
        with pytest.raises(RuntimeError, match="PyTorch not installed"):
            reg.get("torch_compile").build(AWKWARD[0], GPU, {})
        return
    import torch

    if not torch.cuda.is_available():
        assert reason == torch_layer.NO_CUDA
    elif importlib.util.find_spec("triton") is None:
        assert reason == tcv.NO_TRITON
    else:
        assert reason is None


def test_listing_variants_imports_no_torch() -> None:
    code = "import sys, kernels.torch_compile_variants; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_tf32_variants_get_the_tf32_tolerance() -> None:
    from orchestrator.plan import _tolerance

    cfg = OmegaConf.create({"tolerance": STRICT, "tolerance_tf32": TF32})
    assert {name: _tolerance(cfg, name) for name in sorted(NAMES)} == {
        "torch_compile": STRICT,
        "torch_compile_max": STRICT,
        "torch_compile_max_tf32": TF32,
        "torch_compile_tf32": TF32,
    }


# --- with PyTorch on the CPU (skipped where it is not installed) --------------------------------
@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_flags_are_set_inside_and_restored_after(tf32: bool) -> None:
    torch = pytest.importorskip("torch", reason=torch_layer.NO_TORCH)
    b = torch.backends
    before = tcv.read_flags(torch)
    with tcv.tf32_flags(torch, tf32, benchmark=True):
        assert b.cudnn.allow_tf32 is tf32 and b.cuda.matmul.allow_tf32 is tf32 and b.cudnn.benchmark
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    assert tcv.read_flags(torch) == before


def test_compiled_layer_on_the_cpu_matches_the_reference() -> None:
    """Inductor's C++ backend compiles the same function: padding, bias, ReLU and the flags' restoration
    are checked without a GPU (two shapes: a compile takes seconds on two cores)."""
    torch = pytest.importorskip("torch", reason=torch_layer.NO_TORCH)
    before = tcv.read_flags(torch)
    for shape in (AWKWARD[2], AWKWARD[3]):
        built = tcv.build(tcv.CompileSpec("default", tf32=True), shape, "cpu")
        verify(built, shape, STRICT)  # on the CPU TF32 does not exist: strict
        assert built.compile_s > 0 and built.kernel_filter is None
        assert "inductor-default" in built.target
        text = built.artifacts["torch_compile.txt"]
        assert "cudnn.allow_tf32=True" in text and ("F.pad" in text) == (shape is AWKWARD[2])
        assert "def call(" in built.artifacts["inductor_code.py"]  # the generated wrapper
        assert tcv.read_flags(torch) == before


def test_a_run_after_another_build_fails_instead_of_recompiling() -> None:
    """Each build resets Dynamo: an older build's function would recompile, which a run refuses."""
    torch = pytest.importorskip("torch", reason=torch_layer.NO_TORCH)
    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip(f"torch {torch.__version__} has no torch.compiler.set_stance")
    first = tcv.build(tcv.CompileSpec("default"), AWKWARD[3], "cpu")
    tcv.build(tcv.CompileSpec("default"), AWKWARD[2], "cpu")  # another shape: first's guards fail
    placed = first.place(make_inputs(AWKWARD[3], 1))
    with pytest.raises(Exception, match="fail_on_recompile"):
        first.run(placed)


# --- on a GPU ----------------------------------------------------------------------------------
def local_gpu() -> DeviceSpec:
    """This machine's GPU (rates unknown: the worker measures its ceilings)."""
    from kernels.device import visible_gpu

    return visible_gpu("local_gpu")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("shape", AWKWARD, ids=lambda s: s.name)
@pytest.mark.parametrize("name", sorted(NAMES))
def test_gpu_variant_matches_reference(name: str, shape: LayerShape) -> None:
    import torch

    variant = reg.get(name)
    device = local_gpu()
    reason = variant.skip_reason(shape, device)
    if reason is not None:
        pytest.skip(reason)
    before = tcv.read_flags(torch)
    built = variant.build(shape, device, {})
    assert tcv.read_flags(torch) == before  # the build restored the process's switches
    verify(built, shape, tolerance(name))
    verify(built, shape, tolerance(name), seed=6)  # again: no recompilation (a run would raise)
    assert tcv.read_flags(torch) == before
    assert built.compile_s > 0 and built.kernel_filter is None
    assert built.target.startswith(f"torch-{torch.__version__}-inductor-{variant_mode(name)}-triton-")
    assert "inductor_code.py" in built.artifacts


def variant_mode(name: str) -> str:
    return "max-autotune-no-cudagraphs" if "_max" in name else "default"


def gpu_job(variant: str, shape: LayerShape, cold: bool, **timing: float) -> Job:
    spec = TimingSpec(warmup=3, min_repeats=20, max_repeats=200, max_time_s=2.0, cold_cache=cold, **timing)
    return Job(experiment="test_torch_compile", variant=variant, shape=shape, device=local_gpu(), timing=spec)


MID = LayerShape("mid_28_64", 8, 28, 28, 64, 64)  # a few hundred microseconds of kernels at most


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name", ["torch_compile", "torch_compile_max_tf32"])
def test_harness_counts_every_kernel_of_a_compiled_call(name: str) -> None:
    """The harness's kernels of a call are exactly what CUPTI lists for one call of the same build."""
    from workers import harness

    device = local_gpu()
    built = reg.get(name).build(MID, device, {})
    placed = built.place(make_inputs(MID, 2))
    spec = TimingSpec(warmup=3, min_repeats=20, max_repeats=100, max_time_s=2.0)
    timing = harness.measure(built, [placed], spec, device)
    assert timing.time_source == "cupti", timing.note

    def one_call() -> None:
        built.run(placed)
        built.sync()

    called = [
        e.name for e in harness._profiled_device_events(one_call) if not harness.NOT_KERNELS.match(e.name)
    ]
    assert called
    assert set(timing.kernels) == set(called), f"timed {sorted(timing.kernels)}, a call runs {sorted(called)}"
    assert timing.note == f"{len(called)} kernel(s) per launch"
    assert 0 < timing.time_ms <= timing.call_ms * 1.05

    record = execute(gpu_job(name, MID, cold=False))  # and through the worker: the record's fields
    assert record.status == "ok", record.tags.get("error")
    assert record.metrics["compile_s"] > 0 and record.params["compile_mode"] == variant_mode(name)
    assert record.tags["time_source"] == "cupti" and "kernel_times" in record.tags


# The app shape (4 x 112^2 x 32 -> 16): 9.6 MB of inputs, weights and output, well inside an L2 of tens
# of MB, so a warm call reads from L2 and a cold one from DRAM.
APP = LayerShape("app", n=4, h=112, w=112, c=32, co=16)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("variant", ["cudnn_cl", "halide_app", "torch_compile"])
def test_cold_l2_is_no_faster_than_warm_and_says_so(variant: str) -> None:
    """cudnn_cl and torch_compile launch on torch's stream; halide_app in Halide's own CUDA context on the
    null stream. The flush's kernels must be told apart in every case (CUPTI, not the host fallback)."""
    import torch

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    assert APP.min_bytes < l2 / 2, f"the app shape's {APP.min_bytes} bytes do not fit in the {l2}-byte L2"
    if reg.get(variant).skip_reason(APP, local_gpu()):
        pytest.skip(reg.get(variant).skip_reason(APP, local_gpu()))
    warm, cold = (execute(gpu_job(variant, APP, cold=c)) for c in (False, True))
    for r in (warm, cold):
        assert r.status == "ok", r.tags.get("error")
        assert r.tags["time_source"] == "cupti", r.tags.get("time_note")
        assert r.params["timing.input_sets_used"] == "1"
    assert warm.params["timing.cold_cache_method"] == "warm" and "cold_cache_bytes" not in warm.metrics
    assert cold.params["timing.cold_cache_method"] == "l2_flush"
    assert cold.metrics["cold_cache_bytes"] == 2 * l2
    assert cold.tags["cold_cache"].startswith(f"L2 flushed before each timed call: {2 * l2} bytes written")
    assert warm.tags["time_note"] == cold.tags["time_note"]  # as many kernels a call: no flush kernel
    # Medians of 20-200 samples: 1% below the warm one is still "equal" (the noise of a median here)
    assert cold.metrics["time_ms"] >= 0.99 * warm.metrics["time_ms"], (
        f"cold {cold.metrics['time_ms'] * 1e3:.2f} us < warm {warm.metrics['time_ms'] * 1e3:.2f} us"
    )


@pytest.mark.gpu
@requires_gpu
def test_l2_flush_kernels_are_learnt_and_dropped() -> None:
    import torch

    from workers import harness

    flusher = harness._flusher()
    assert flusher.nbytes == 2 * torch.cuda.get_device_properties(0).L2_cache_size
    flusher()  # as in the harness, where the untimed calls flush before the flush is learnt
    flusher.learn()
    assert flusher.per_flush >= 1 and all(stream is not None for _, stream in flusher.signature)
    x = torch.randn(1 << 20, device="cuda")

    def window() -> None:
        for _ in range(3):
            flusher()
            x.mul_(1.0)
        torch.cuda.synchronize()

    events = harness._profiled_device_events(window)
    kept = harness.drop_flush_events(events, flusher.signature, 3, flusher.per_flush)
    assert all("Mul" in e.name for e in kept), [e.name for e in kept]
    assert len(kept) == 3 and not {(e.name, e.stream) for e in kept} & flusher.signature


@pytest.mark.gpu
@requires_gpu
def test_gpu_records_carry_their_clocks() -> None:
    pytest.importorskip("pynvml", reason="nvidia-ml-py (pynvml) not installed")
    record = execute(gpu_job("cudnn_cl", MID, cold=False))
    assert record.status == "ok", record.tags.get("error")
    assert record.tags["clock_source"] == "nvml", record.tags.get("clock_note")
    m = record.metrics
    for key in ("sm_clock_mhz_before", "sm_clock_mhz_after", "sm_clock_mhz_min", "sm_clock_mhz_median"):
        assert 0 < m[key] <= m["sm_clock_max_mhz"] * 1.01, key
    assert m["clock_samples"] >= 1 and 0 < m["gpu_temp_c_before"] < 120 and 0 < m["gpu_temp_c_after"] < 120
    assert record.tags["throttled"] in ("true", "false") and record.tags["throttle_note"]
    assert record.tags["clock_event_reasons"]
    no_clock = dataclasses.replace(gpu_job("cudnn_cl", MID, cold=False), device=CPU, variant="numpy_ref")
    cpu_record = execute(dataclasses.replace(no_clock, shape=AWKWARD[0]))
    assert "sm_clock_mhz_before" not in cpu_record.metrics and cpu_record.tags["clock_source"] == "none"
