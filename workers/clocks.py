"""The GPU's SM clock and temperature around a timing, read through NVML (`pynvml`, from nvidia-ml-py).

A kernel's time depends on the clock it ran at, and a GPU lowers its clock when it reaches its power or
thermal limits. NVBench watches the clock while it samples and discards samples taken while it was low;
this project records instead, so that a reader can tell a slow kernel from a slow GPU: every GPU record
carries the SM clock and the temperature just before and just after its timing, the lowest and median SM
clock seen during it (a background thread reads NVML every SAMPLE_INTERVAL_S), the device's maximum SM
clock, and every clock event reason NVML reported during the timing (power cap, thermal slowdown, ...).

`throttled` is true when, during the timing, a sample taken while the GPU was busy (NVML's `gpu_idle`
reason not set: an idle GPU lowers its clock by design) found the SM clock below THROTTLE_FRACTION of the
device's maximum SM clock. GPU Boost moves the clock by a few hundred MHz under a power cap in ordinary
operation; a quarter below the maximum is a slowdown, the kind of drop NVBench discards samples for.
The reasons are recorded whatever the decision, so a record shows `sw_power_cap` even when the clock
stayed above the threshold.

Nothing here changes a clock or any other setting. pynvml is imported lazily: without it, without a
driver, or on a CPU the clock fields are absent and the `clock_note` tag says why.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kernels.device import DeviceSpec

SAMPLE_INTERVAL_S = 0.01  # between two NVML reads during a timing (each read takes tens of microseconds)
THROTTLE_FRACTION = 0.75  # a busy sample below this fraction of the maximum SM clock means throttled
GPU_IDLE = 0x1  # NVML clock event reason: nothing running on the GPU
# NVML's clock event (formerly "throttle") reasons, nvmlClocksEventReason* (a stable bit mask of the API).
REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def reason_names(mask: int) -> list[str]:
    """The names of the reasons set in an NVML clock event reason mask (unknown bits as hex)."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    unknown = mask & ~sum(REASONS)
    return names + ([hex(unknown)] if unknown else [])


@dataclass(frozen=True)
class ClockSample:
    """One NVML read during a timing."""

    sm_mhz: float
    reasons: int = 0  # clock event reasons active at the read (0 when NVML cannot tell)

    @property
    def busy(self) -> bool:
        return not self.reasons & GPU_IDLE


def throttle_decision(
    samples: Sequence[ClockSample], max_mhz: float, fraction: float = THROTTLE_FRACTION
) -> tuple[bool, str]:
    """(throttled, why): throttled when a busy sample's SM clock is below `fraction` of `max_mhz`."""
    if max_mhz <= 0:
        raise ValueError(f"the maximum SM clock must be positive, got {max_mhz}")
    busy = [s for s in samples if s.busy]
    if not busy:
        return False, f"no busy sample among {len(samples)} (the GPU was idle at every read)"
    floor = fraction * max_mhz
    low = [s for s in busy if s.sm_mhz < floor]
    lowest = min(s.sm_mhz for s in busy)
    if low:
        seen = sorted({n for s in low for n in reason_names(s.reasons)}) or ["none reported"]
        return True, (
            f"{len(low)} of {len(busy)} busy samples below {fraction:.0%} of {max_mhz:g} MHz "
            f"(lowest {lowest:g} MHz; reasons then: {', '.join(seen)})"
        )
    return False, f"lowest busy sample {lowest:g} MHz >= {fraction:.0%} of {max_mhz:g} MHz"


@dataclass
class ClockReport:
    """What a record gets: metrics (MHz, °C, counts) and tags; both empty but `clock_note` without NVML."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def unavailable(reason: str) -> ClockReport:
    """The report of a timing whose clocks could not be read, saying why."""
    return ClockReport(tags={"clock_source": "none", "clock_note": reason})


def summarize(
    samples: Sequence[ClockSample],
    max_mhz: float,
    before: tuple[float, float | None],
    after: tuple[float, float | None],
    temps: Sequence[float] = (),
) -> ClockReport:
    """The metrics and tags of one timing: SM clock (MHz) and temperature (°C) before and after as
    (clock, temperature or None), the samples' lowest and median busy clock (all samples' when none was
    busy), the reasons seen, and the throttle decision."""
    busy = [s.sm_mhz for s in samples if s.busy] or [s.sm_mhz for s in samples]
    metrics = {
        "sm_clock_mhz_before": before[0],
        "sm_clock_mhz_after": after[0],
        "sm_clock_max_mhz": max_mhz,
        "clock_samples": float(len(samples)),
        "clock_busy_samples": float(sum(s.busy for s in samples)),
    }
    if busy:
        metrics["sm_clock_mhz_min"] = min(busy)
        metrics["sm_clock_mhz_median"] = statistics.median(busy)
    for name, value in (("gpu_temp_c_before", before[1]), ("gpu_temp_c_after", after[1])):
        if value is not None:
            metrics[name] = value
    if temps:
        metrics["gpu_temp_c_max"] = max(temps)
    mask = 0
    for s in samples:
        mask |= s.reasons
    throttled, why = throttle_decision(samples, max_mhz) if samples else (False, "no sample during timing")
    tags = {
        "clock_source": "nvml",
        "throttled": str(throttled).lower(),
        "throttle_note": why,
        "clock_event_reasons": ",".join(reason_names(mask)) or "none",
    }
    return ClockReport(metrics, tags)


def nvml_target(visible: str | None, index: int = 0) -> tuple[str, str | int]:
    """Which NVML device is CUDA device `index` of this process, from CUDA_VISIBLE_DEVICES (`visible`):
    ("index", n) or ("uuid", "GPU-..."). NVML numbers every GPU of the machine, CUDA only the visible ones.
    Raises ValueError for what NVML cannot look up (a MIG instance, an unknown entry)."""
    if visible is None:
        return "index", index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise ValueError(f"CUDA_VISIBLE_DEVICES={visible!r} has no device {index}")
    entry = entries[index]
    if entry.isdigit():
        return "index", int(entry)
    if entry.startswith("GPU-"):
        return "uuid", entry
    raise ValueError(f"CUDA_VISIBLE_DEVICES entry {entry!r}: not an index or a GPU UUID (MIG: unsupported)")


def _torch_uuid() -> str | None:
    """The UUID ("GPU-...") of torch's current CUDA device, when torch is already imported and sees one:
    the surest way to find the device NVML calls by another number."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def _handle(nvml: Any) -> Any:
    """The NVML handle of this process's CUDA device."""
    uuid = _torch_uuid()
    if uuid is not None:
        return nvml.nvmlDeviceGetHandleByUUID(uuid.encode())
    kind, key = nvml_target(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if kind == "uuid":
        return nvml.nvmlDeviceGetHandleByUUID(str(key).encode())
    return nvml.nvmlDeviceGetHandleByIndex(int(key))


class _Sampler:
    """Reads the SM clock, the reasons and the temperature of one NVML device in a background thread."""

    def __init__(self, nvml: Any, handle: Any, interval_s: float) -> None:
        self.nvml, self.handle, self.interval_s = nvml, handle, interval_s
        self.samples: list[ClockSample] = []
        self.temps: list[float] = []
        self.error: str | None = None  # why the thread stopped reading early
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-clock-sampler", daemon=True)
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        self._reasons = reasons or getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)

    def sm_mhz(self) -> float:
        return float(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))

    def temperature(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetTemperature(self.handle, self.nvml.NVML_TEMPERATURE_GPU))
        except self.nvml.NVMLError:  # not supported on this device or driver
            return None

    def reasons(self) -> int:
        if self._reasons is None:
            return 0
        try:
            return int(self._reasons(self.handle))
        except self.nvml.NVMLError:
            return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(ClockSample(self.sm_mhz(), self.reasons()))
            except Exception as exc:  # the reads stop; what was read is kept, and the record says so
                self.error = f"{type(exc).__name__}: {exc}"
                return
            temp = self.temperature()
            if temp is not None:
                self.temps.append(temp)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ClockWatch:
    """What `watch` yields: the report, filled in when the watched block ends."""

    def __init__(self) -> None:
        self.report = ClockReport()


@contextmanager
def watch(device: DeviceSpec, interval_s: float = SAMPLE_INTERVAL_S) -> Iterator[ClockWatch]:
    """Read the SM clock and temperature before, during (every `interval_s`) and after the block; the
    yielded ClockWatch's `report` holds the result afterwards (or why there is none). Never raises for
    NVML's sake: a timing is not lost because the clocks could not be read."""
    result = ClockWatch()
    if not device.is_gpu:
        result.report = unavailable(f"{device.kind} device: no SM clock to read")
        yield result
        return
    try:
        import pynvml as nvml
    except ImportError:
        result.report = unavailable("pynvml not installed (nvidia-ml-py, in the `gpu` and `torch` extras)")
        yield result
        return
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        result.report = unavailable(f"NVML unavailable ({type(exc).__name__}: {exc})")
        yield result
        return
    sampler = None
    try:
        try:
            handle = _handle(nvml)
            sampler = _Sampler(nvml, handle, interval_s)
            max_mhz = float(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM))
            before = (sampler.sm_mhz(), sampler.temperature())
            sampler.start()
        except Exception as exc:
            result.report = unavailable(f"NVML could not read the device ({type(exc).__name__}: {exc})")
            sampler = None
        yield result
        if sampler is not None:
            sampler.stop()
            try:
                after = (sampler.sm_mhz(), sampler.temperature())
                result.report = summarize(sampler.samples, max_mhz, before, after, sampler.temps)
                if sampler.error:
                    result.report.tags["clock_note"] = f"sampling stopped early: {sampler.error}"
            except Exception as exc:
                result.report = unavailable(f"NVML failed after timing ({type(exc).__name__}: {exc})")
    finally:
        if sampler is not None and sampler._thread.is_alive():
            sampler.stop()
        nvml.nvmlShutdown()
