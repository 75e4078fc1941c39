"""The timing harness and the derived metrics: stopping rules, quantiles, cold cache, kernel grouping.

The harness runs on a real Built (the NumPy reference, and a Halide variant when one is registered);
the CUDA kernel-time arithmetic is checked on profiler-like event lists without a GPU, and on a GPU
when there is one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
from conftest import requires_gpu

from kernels.device import DeviceSpec
from kernels.layer import LayerShape, make_inputs
from kernels.reference_variant import NumpyReference
from workers import harness, metrics
from workers.harness import DeviceEvent, kernel_samples_ms, kernel_split_ms, median_split, select_kernels
from workers.job import MAX_KERNEL_NAMES, kernel_times_tag
from workers.schema import TimingSpec

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0)
TINY = LayerShape("tiny", n=1, h=9, w=11, c=5, co=7, stride=2)
APP = LayerShape("app", n=4, h=112, w=112, c=32, co=16)


def placed_sets(built: NumpyReference, shape: LayerShape, count: int) -> list:
    return [built.place(make_inputs(shape, seed)) for seed in range(count)]


class CountingReference(NumpyReference):
    """The NumPy reference, remembering which placed set each run used (to check rotation)."""

    def __init__(self, shape: LayerShape) -> None:
        super().__init__(shape)
        self.used: list[int] = []

    def run(self, placed) -> None:
        self.used.append(id(placed))
        super().run(placed)


# --- stopping rules on a real Built ------------------------------------------------------------------


def test_stops_at_max_repeats_with_quantiles() -> None:
    built = NumpyReference(TINY)
    spec = TimingSpec(warmup=2, min_repeats=3, max_repeats=7, min_time_s=0, max_time_s=60, stable_spread=0)
    t = harness.measure(built, placed_sets(built, TINY, 1), spec, CPU)
    assert t.samples == 7 and t.call_samples == 7  # never stable (spread < 0 is impossible): max_repeats
    assert not t.stable
    assert t.time_source == "wall" and t.time_ms == t.call_ms  # on a CPU kernel time is wall time
    assert 0 < t.min_ms <= t.p25_ms <= t.time_ms <= t.p75_ms
    assert t.spread == pytest.approx((t.p75_ms - t.p25_ms) / t.time_ms)


def test_stops_when_stable_after_min_repeats() -> None:
    built = NumpyReference(TINY)
    spec = TimingSpec(warmup=0, min_repeats=4, max_repeats=100, min_time_s=0, stable_spread=math.inf)
    t = harness.measure(built, placed_sets(built, TINY, 1), spec, CPU)
    assert t.samples == 4 and t.stable


def test_stops_at_max_time() -> None:
    built = NumpyReference(TINY)
    spec = TimingSpec(warmup=0, min_repeats=1, max_repeats=10**9, min_time_s=0, max_time_s=0.2)
    spec = dataclasses.replace(spec, stable_spread=0)
    t = harness.measure(built, placed_sets(built, TINY, 1), spec, CPU)
    assert 0.2 <= t.elapsed_s < 2.0 and not t.stable and t.samples > 1


def test_rotates_among_placed_sets() -> None:
    built = CountingReference(TINY)
    sets = placed_sets(built, TINY, 3)
    spec = TimingSpec(warmup=0, min_repeats=6, max_repeats=6, min_time_s=0, stable_spread=0)
    t = harness.measure(built, sets, spec, CPU)
    assert t.input_sets == 3
    assert built.used == [id(sets[i % 3]) for i in range(6)]


def test_halide_variant_when_registered() -> None:
    from kernels import registry

    halide = [v for v in registry.all_variants().values() if v.framework == "halide" and "cpu" in v.kinds]
    if not halide:
        pytest.skip("no Halide CPU variant is registered yet")
    variant = next((v for v in halide if v.name == "halide_app"), halide[0])
    built = variant.build(TINY, CPU, {})
    spec = TimingSpec(warmup=1, min_repeats=3, max_repeats=5, min_time_s=0, stable_spread=0)
    t = harness.measure(built, [built.place(make_inputs(TINY, 1))], spec, CPU)
    assert t.samples == 5 and 0 < t.min_ms <= t.time_ms


# --- summaries and cold cache ------------------------------------------------------------------------


def test_summarize_by_hand() -> None:
    s = harness.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.minimum, s.p25, s.p75, s.n) == (3.0, 1.0, 2.0, 4.0, 5)
    assert s.spread == pytest.approx(2.0 / 3.0)
    with pytest.raises(ValueError, match="no timing samples"):
        harness.summarize([])


def test_parse_cache_size() -> None:
    assert harness.parse_cache_size("32768K\n") == 32 * 2**20
    assert harness.parse_cache_size("1M") == 2**20
    assert harness.parse_cache_size("512") == 512


def test_cpu_last_level_cache_from_sysfs(tmp_path) -> None:
    caches = [(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "1M"), (3, "Unified", "32768K")]
    for i, (level, kind, size) in enumerate(caches):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert harness.cpu_last_level_cache_bytes(tmp_path) == 32 * 2**20
    assert harness.cpu_last_level_cache_bytes(tmp_path / "missing") == 0


def test_cold_cache_sets_exceed_the_last_level_cache() -> None:
    llc = harness.cpu_last_level_cache_bytes()
    assert llc > 0, "this machine's sysfs should report its caches"
    hot = harness.input_sets_needed(APP, TimingSpec(), CPU)
    cold = harness.input_sets_needed(APP, TimingSpec(cold_cache=True), CPU)
    assert hot == 1
    assert cold * APP.min_bytes >= harness.COLD_CACHE_FACTOR * llc
    assert harness.input_sets_needed(TINY, TimingSpec(cold_cache=True), CPU) == harness.MAX_INPUT_SETS
    assert harness.input_sets_needed(APP, TimingSpec(input_sets=3), CPU) == 3


# --- CUDA kernel time from profiler events (no GPU needed) -----------------------------------------


def halide_events(launches: int) -> list[DeviceEvent]:
    """Two Halide kernels per launch, plus a copy and another framework's kernel that must be ignored."""
    events = [DeviceEvent("Memcpy HtoD (Pageable -> Device)", 0.0, 50.0)]
    t = 100.0
    for i in range(launches):
        events.append(DeviceEvent("_kernel_depthwise_s0_y_x_block_id_y", t, 10.0 + i))
        events.append(DeviceEvent("_kernel_output_s0_y_x_block_id_y", t + 20, 30.0))
        t += 100
    events.append(DeviceEvent("void at::native::vectorized_elementwise_kernel<4>", t, 999.0))
    return events


def test_kernel_filter_groups_kernels_per_launch() -> None:
    samples, note = kernel_samples_ms(halide_events(3), r"^_kernel_", 3)
    assert samples == pytest.approx([0.040, 0.041, 0.042])  # (10 + i + 30) us per launch
    assert note == "2 kernel(s) per launch"


def test_no_filter_takes_every_kernel_but_not_copies() -> None:
    kernels = select_kernels(halide_events(2), None)
    assert [k.name for k in kernels][-1].startswith("void at::native")
    assert not any(k.name.startswith("Memcpy") for k in kernels)
    samples, note = kernel_samples_ms(halide_events(2), None, 2)  # 5 kernels over 2 launches: uneven
    assert samples == pytest.approx([(10 + 30 + 11 + 30 + 999) / 1e3 / 2])
    assert "window mean" in note


def test_each_kernel_of_a_launch_is_timed_apart() -> None:
    split = kernel_split_ms(halide_events(3), r"^_kernel_", 3)
    depthwise, output = "_kernel_depthwise_s0_y_x_block_id_y", "_kernel_output_s0_y_x_block_id_y"
    assert [list(t) for t in split] == [[depthwise, output]] * 3  # in launch order
    assert [t[depthwise] for t in split] == pytest.approx([0.010, 0.011, 0.012])
    assert median_split(split) == pytest.approx({depthwise: 0.011, output: 0.030})
    assert kernel_split_ms(halide_events(2), None, 2) == []  # uneven: no split, as no per-launch sample
    twice = [DeviceEvent("gemm", 0.0, 5.0), DeviceEvent("relu", 6.0, 1.0), DeviceEvent("gemm", 8.0, 5.0)]
    assert kernel_split_ms(twice, None, 1) == [pytest.approx({"gemm": 0.010, "relu": 0.001})]


def test_the_kernel_times_tag_keeps_the_slowest_kernels_in_launch_order() -> None:
    many = {f"k{i:02d}" + "x" * 300: float(i) for i in range(MAX_KERNEL_NAMES + 3)}
    tag = json.loads(kernel_times_tag(many))
    assert len(tag) == MAX_KERNEL_NAMES and all(len(n) == 160 for n in tag)
    assert [n[:3] for n in tag] == [f"k{i:02d}" for i in range(3, MAX_KERNEL_NAMES + 3)]
    assert len(kernel_times_tag(many)) < 8000  # fits an MLflow tag value


def test_no_matching_kernel_is_reported() -> None:
    samples, note = kernel_samples_ms(halide_events(2), r"^cudnn", 2)
    assert samples == [] and "no kernel matching" in note
    with pytest.raises(ValueError, match="launches must be positive"):
        kernel_samples_ms([], None, 0)


def test_launches_per_window() -> None:
    spec = TimingSpec(min_repeats=10, max_repeats=200)
    assert harness.launches_per_window(spec, 0.01) == 200  # 50 ms of 10 us launches, capped
    assert harness.launches_per_window(spec, 1.0) == 50
    assert harness.launches_per_window(spec, 100.0) == 10  # at least min_repeats


def test_gpu_path_without_cupti_falls_back_to_host_clock() -> None:
    """Where torch sees no GPU (here), a cuda device's kernel time is host-clock windows, and says so."""
    if harness._torch_profiler()[0] is not None:
        pytest.skip("CUPTI is usable here: the fallback is not taken")
    built = CountingReference(TINY)
    gpu = DeviceSpec("gpu", "cuda", "no such GPU", 1.0, 1.0)
    spec = TimingSpec(warmup=0, min_repeats=4, max_repeats=8, min_time_s=0, stable_spread=0)
    t = harness.measure(built, placed_sets(built, TINY, 2), spec, gpu)
    assert t.time_source == "host" and t.note.startswith(("torch", "no CUDA")) and "windows" in t.note
    window = harness.launches_per_window(spec, t.call_ms)
    assert t.call_samples == 8 and t.samples == 8  # one sample (the mean) per window
    assert len(built.used) == 8 + 8 * window and f"windows of {window} launches" in t.note


@pytest.mark.gpu
@requires_gpu
def test_cupti_kernel_time_on_gpu() -> None:
    """A torch matmul as the Built: kernel time through CUPTI, at most the synced call time."""
    import torch

    class TorchMatmul:
        compile_s, target, artifacts, kernel_filter, build_params = 0.0, "torch-cuda", {}, None, {}

        def place(self, inputs):
            return torch.randn(2048, 2048, device="cuda")

        def poison(self, placed) -> None: ...

        def run(self, placed) -> None:
            placed @ placed

        def sync(self) -> None:
            torch.cuda.synchronize()

        def fetch(self, placed):
            return placed.cpu().numpy()

    gpu = DeviceSpec("gpu", "cuda", torch.cuda.get_device_name(0), 1.0, 1.0)
    built = TorchMatmul()
    spec = TimingSpec(warmup=3, min_repeats=5, max_repeats=50, min_time_s=0.05, max_time_s=2)
    t = harness.measure(built, [built.place(None)], spec, gpu)
    assert t.time_source == "cupti", t.note
    assert 0 < t.time_ms <= t.call_ms * 1.05
    assert harness.gpu_l2_bytes() > 0


# --- derived metrics, by hand -----------------------------------------------------------------------


def test_metrics_by_hand_on_the_app_shape() -> None:
    # flops: 4·112·112 pixels × (2·9·32 depthwise + 2·32·16 pointwise + 16 bias + 16 relu) = 50176 × 1632
    assert APP.flops == 81_887_232
    # bytes: 4 × (input 1_605_632 + dw 288 + pw 512 + bias 16 + output 802_816) = 4 × 2_409_264
    assert APP.min_bytes == 9_637_056
    m = metrics.derive(APP, CPU, time_ms=1.0)  # 100 GFLOP/s peak, 10 GB/s
    assert m["gflops"] == pytest.approx(81.887232)
    assert m["gbps"] == pytest.approx(9.637056)
    assert m["arithmetic_intensity"] == pytest.approx(81_887_232 / 9_637_056)
    assert m["pct_peak"] == pytest.approx(81.887232)
    assert m["floor_ms"] == pytest.approx(0.9637056)  # memory-bound: 9.637 MB at 10 GB/s > 0.819 ms
    assert m["pct_roofline"] == pytest.approx(96.37056)
    assert all(re.fullmatch(r"[/\w.\- ]*", k) for k in m)  # MLflow metric names


def test_metrics_without_device_rates_or_time() -> None:
    unknown = DeviceSpec("gpu", "cuda", "unknown", peak_gflops=0, mem_gbps=0)
    m = metrics.derive(APP, unknown, time_ms=2.0)
    assert set(m) == {"gflops", "gbps", "arithmetic_intensity"}
    assert set(metrics.derive(APP, CPU, time_ms=0.0)) == {"arithmetic_intensity"}
    with pytest.raises(ValueError, match="positive peak"):
        metrics.roofline_floor_ms(APP, 0, 1)


# --- cold L2 on a GPU: the flush's size, the method, and its kernels left out (no GPU needed) ---------

GPU = DeviceSpec("h200", "cuda", "NVIDIA H200", 67000.0, 4800.0, sm_count=132, cuda_capability=90)
COLD = TimingSpec(cold_cache=True)


def test_l2_flush_writes_twice_the_l2() -> None:
    assert harness.l2_flush_bytes(60 * 2**20) == 120 * 2**20
    assert harness.l2_flush_bytes(10) == 24  # whole 4-byte words: 3 words, twice
    with pytest.raises(ValueError, match="L2 size must be positive"):
        harness.l2_flush_bytes(0)


def test_cold_cache_method() -> None:
    assert harness.cold_cache_method(TimingSpec(), GPU, can_flush=True) == "warm"
    assert harness.cold_cache_method(COLD, GPU, can_flush=True) == "l2_flush"
    assert harness.cold_cache_method(COLD, GPU, can_flush=False) == "input_rotation"  # no torch CUDA
    assert harness.cold_cache_method(COLD, CPU, can_flush=True) == "input_rotation"  # the CPU's LLC


def test_cold_cache_lines_of_a_record() -> None:
    assert harness.describe_cold_cache("l2_flush", 2 * 62914560, 62914560) == (
        "L2 flushed before each timed call: 125829120 bytes written (2x the 62914560-byte L2), "
        "outside the timed region"
    )
    assert harness.describe_cold_cache("input_rotation", 96_370_560, 32 * 2**20) == (
        "input rotation: sets spanning 96370560 bytes (2.87x the 33554432-byte last cache)"
    )
    assert harness.describe_cold_cache("warm", 0, 0) == "warm: no flush, no rotation"
    with pytest.raises(ValueError, match="must be one of"):
        harness.describe_cold_cache("cold", 0, 0)


def test_a_gpu_that_flushes_needs_no_extra_input_sets() -> None:
    rotated = math.ceil(harness.COLD_CACHE_FACTOR * harness.last_level_cache_bytes(GPU) / APP.min_bytes) + 1
    expected = 1 if harness.gpu_can_flush() else rotated
    assert harness.input_sets_needed(APP, COLD, GPU) == expected


def test_cpu_cold_cache_still_rotates_inputs() -> None:
    built = CountingReference(TINY)
    spec = TimingSpec(warmup=0, min_repeats=4, max_repeats=4, min_time_s=0, cold_cache=True)
    n = harness.input_sets_needed(TINY, spec, CPU)
    t = harness.measure(built, placed_sets(built, TINY, n), spec, CPU)
    assert t.cold_cache == "input_rotation" and t.input_sets == n > 1 and t.flush_bytes == 0
    assert t.clock_tags["clock_source"] == "none" and not t.clock_metrics


def flushed_window(launches: int) -> list[DeviceEvent]:
    """Per launch, the flush's fill on its own stream (21), then the variant's kernels on torch's stream
    (7): a pad fill of another type, a cuDNN convolution, and a fill with the flush's very name."""
    events, t = [], 0.0
    for _ in range(launches):
        events.append(DeviceEvent("vectorized_elementwise_kernel<4, FillFunctor<int>>", t, 30.0, 21))
        events.append(DeviceEvent("vectorized_elementwise_kernel<4, FillFunctor<float>>", t + 40, 1.0, 7))
        events.append(DeviceEvent("sm90_xmma_fprop_implicit_gemm", t + 42, 20.0, 7))
        events.append(DeviceEvent("vectorized_elementwise_kernel<4, FillFunctor<int>>", t + 63, 2.0, 7))
        t += 100
    return events


def test_the_flush_kernels_are_dropped_by_name_and_stream() -> None:
    signature = {("vectorized_elementwise_kernel<4, FillFunctor<int>>", 21)}
    kept = harness.drop_flush_events(flushed_window(3), signature, 3, per_flush=1)
    assert len(kept) == 9 and all(e.stream == 7 for e in kept)  # the variant's same-named fill is kept
    samples, note = kernel_samples_ms(kept, None, 3)
    assert samples == pytest.approx([0.023] * 3) and note == "3 kernel(s) per launch"
    with pytest.raises(RuntimeError, match="3 of its device events in a window of 3 calls, expected 2"):
        harness.drop_flush_events(flushed_window(3), signature, 3, per_flush=2)


class FlushRecorder:
    """Where a GPU's L2 flush would run: records how many runs the Built had made at each flush."""

    nbytes, l2_bytes, per_flush = 8, 4, 0
    signature: frozenset = frozenset()

    def __init__(self, built: CountingReference) -> None:
        self.built, self.at = built, []

    def __call__(self) -> None:
        self.at.append(len(self.built.used))


def test_without_cupti_a_flushed_gpu_timing_times_each_call_after_its_flush() -> None:
    """The host-clock fallback of a cold GPU timing (here: torch sees no GPU): one flush before every
    call, outside the timed region, and one sample per call (no back-to-back windows)."""
    if harness._torch_profiler()[0] is not None:
        pytest.skip("CUPTI is usable here: the fallback is not taken")
    built = CountingReference(TINY)
    flusher = FlushRecorder(built)
    spec = TimingSpec(warmup=0, min_repeats=5, max_repeats=5, min_time_s=0, stable_spread=0)
    call = harness.summarize([1.0])
    t = harness._measure_gpu_kernels(built, placed_sets(built, TINY, 2), spec, call, flusher)
    assert t.time_source == "host" and t.note.endswith("host clock of each call after its L2 flush")
    assert t.samples == 5 and flusher.at == [0, 1, 2, 3, 4]  # a flush before each of the five calls
