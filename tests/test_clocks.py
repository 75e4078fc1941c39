"""The clock fields of GPU records (workers.clocks) without a GPU: the throttle rule, the NVML reason
names, the device lookup, and what a record says when it cannot read clocks (a CPU, no pynvml, no driver).
The NVML reads themselves run on a GPU: tests/test_torch_compile.py::test_gpu_records_carry_their_clocks.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from workers import clocks
from workers.clocks import ClockSample, nvml_target, reason_names, summarize, throttle_decision
from workers.job import execute
from workers.schema import Job, TimingSpec

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0, cores=2)
GPU = DeviceSpec("h200", "cuda", "NVIDIA H200", 67000.0, 4800.0, sm_count=132, cuda_capability=90)
MAX = 1980.0  # MHz: an H100/H200 SXM's maximum SM clock, as NVML reports it
IDLE, POWER, THERMAL = 0x1, 0x4, 0x40


def test_reason_names() -> None:
    assert reason_names(0) == []
    assert reason_names(POWER | THERMAL) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert reason_names(IDLE | 0x1000) == ["gpu_idle", "0x1000"]  # an unknown bit is kept, in hex


def test_throttled_when_a_busy_sample_falls_below_three_quarters_of_the_maximum() -> None:
    steady = [ClockSample(1980), ClockSample(1755, POWER), ClockSample(1485)]  # 1485 = 75% exactly
    assert throttle_decision(steady, MAX) == (False, "lowest busy sample 1485 MHz >= 75% of 1980 MHz")
    slow = [*steady, ClockSample(1200, THERMAL)]
    throttled, why = throttle_decision(slow, MAX)
    assert throttled
    assert (
        why
        == "1 of 4 busy samples below 75% of 1980 MHz (lowest 1200 MHz; reasons then: hw_thermal_slowdown)"
    )


def test_an_idle_gpu_lowering_its_clock_is_not_throttling() -> None:
    samples = [ClockSample(1980), ClockSample(345, IDLE)]
    assert throttle_decision(samples, MAX)[0] is False
    assert throttle_decision([ClockSample(345, IDLE)], MAX) == (
        False,
        "no busy sample among 1 (the GPU was idle at every read)",
    )
    with pytest.raises(ValueError, match="must be positive"):
        throttle_decision(samples, 0)


def test_summary_metrics_and_tags() -> None:
    samples = [ClockSample(1980, POWER), ClockSample(1900), ClockSample(300, IDLE), ClockSample(1700, POWER)]
    report = summarize(samples, MAX, before=(1980.0, 41.0), after=(1890.0, 44.0), temps=[41.0, 45.0, 44.0])
    assert report.metrics == {
        "sm_clock_mhz_before": 1980.0,
        "sm_clock_mhz_after": 1890.0,
        "sm_clock_max_mhz": MAX,
        "clock_samples": 4.0,
        "clock_busy_samples": 3.0,
        "sm_clock_mhz_min": 1700.0,  # the idle read (300 MHz) is not the clock a kernel ran at
        "sm_clock_mhz_median": 1900.0,
        "gpu_temp_c_before": 41.0,
        "gpu_temp_c_after": 44.0,
        "gpu_temp_c_max": 45.0,
    }
    assert report.tags == {
        "clock_source": "nvml",
        "throttled": "false",
        "throttle_note": "lowest busy sample 1700 MHz >= 75% of 1980 MHz",
        "clock_event_reasons": "gpu_idle,sw_power_cap",
    }
    bare = summarize([], MAX, before=(1980.0, None), after=(1980.0, None))
    assert "gpu_temp_c_before" not in bare.metrics and "sm_clock_mhz_min" not in bare.metrics
    assert bare.tags["throttled"] == "false" and bare.tags["clock_event_reasons"] == "none"


@pytest.mark.parametrize(
    ("visible", "index", "target"),
    [
        (None, 0, ("index", 0)),
        ("2,3", 0, ("index", 2)),
        ("2, 3", 1, ("index", 3)),
        (
            "GPU-8f3a9c1e-0000-1111-2222-333344445555,1",
            0,
            ("uuid", "GPU-8f3a9c1e-0000-1111-2222-333344445555"),
        ),
    ],
)
def test_nvml_device_of_a_cuda_device(visible: str | None, index: int, target: tuple[str, object]) -> None:
    assert nvml_target(visible, index) == target


@pytest.mark.parametrize(("visible", "message"), [("3", "has no device 1"), ("MIG-1,MIG-2", "MIG")])
def test_nvml_device_that_cannot_be_found(visible: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nvml_target(visible, 1)


def test_a_cpu_has_no_sm_clock() -> None:
    with clocks.watch(CPU) as watched:
        pass
    assert watched.report.metrics == {}
    assert watched.report.tags == {"clock_source": "none", "clock_note": "cpu device: no SM clock to read"}


def test_without_pynvml_the_record_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError, as uninstalled
    with clocks.watch(GPU) as watched:
        pass
    assert watched.report.metrics == {}
    assert watched.report.tags["clock_note"].startswith("pynvml not installed")


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is None, reason="nvidia-ml-py (pynvml) not installed")
def test_without_a_driver_the_record_says_so() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here (a GPU driver is loaded)")
    with clocks.watch(GPU) as watched:
        pass
    assert watched.report.metrics == {} and watched.report.tags["clock_note"].startswith("NVML unavailable")


def test_a_cpu_record_names_its_cache_method_and_why_it_has_no_clock() -> None:
    shape = LayerShape("tiny", n=1, h=9, w=11, c=5, co=7, stride=2)
    quick = TimingSpec(warmup=0, min_repeats=2, max_repeats=3, min_time_s=0, max_time_s=1)
    record = execute(
        Job(experiment="test_clocks", variant="numpy_ref", shape=shape, device=CPU, timing=quick)
    )
    assert record.status == "ok", record.tags.get("error")
    assert record.tags["clock_source"] == "none" and "no SM clock" in record.tags["clock_note"]
    assert not any(k.startswith(("sm_clock", "gpu_temp")) for k in record.metrics)
    assert record.params["timing.cold_cache_method"] == "warm"
    assert record.tags["cold_cache"] == "warm: no flush, no rotation"
    assert "cold_cache_bytes" not in record.metrics
