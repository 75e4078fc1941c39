"""The one timing harness: warm-up, repeats until stable, quantiles. Variants never time themselves.

Modelled on tritonbench's `do_bench` and Kernel Tuner's benchmark loop. Two clocks:

- `call_ms`: wall time of one `run()` + `sync()` from Python (perf_counter_ns), what a caller pays.
- `time_ms`: kernel time. On a CPU it is `call_ms` (the kernel runs on the calling thread's pool).
  On CUDA it is the sum of the durations of this variant's kernels as CUPTI records them (through
  `torch.profiler`, CUDA activity), per launch. CUPTI sees the kernels of every CUDA context in the
  process, which matters because Halide launches on its own context and the null stream: CUDA events
  recorded by another framework do not bracket Halide's kernels. Without torch or CUPTI the harness
  falls back to the host clock around back-to-back launches ended by one sync, and says so in
  `Timing.time_source`.

Inputs are placed by the caller once, outside any timed region, and the harness rotates among the
placed sets. A cold cache (`TimingSpec.cold_cache`) is had two ways (`cold_cache_method`):

- `l2_flush`, on a GPU where torch runs CUDA: before every timed call, outside the timed region, the
  harness waits for the variant, overwrites a device buffer of COLD_CACHE_FACTOR times the L2 size on a
  stream of its own and waits for that too. The flush's kernels are told apart in the CUPTI window by
  their name and stream, learnt from profiling one flush alone, and left out of the kernel time.
- `input_rotation`, on a CPU (or a GPU without torch): the caller places `input_sets_needed(...)` fresh
  sets, together larger than COLD_CACHE_FACTOR last-level caches, and the harness rotates among them.

On a GPU the SM clock and temperature are read around the timing (`workers.clocks`).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.layer import LayerShape
from kernels.registry import Built
from workers import clocks
from workers.schema import TimingSpec

CPU_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
DEFAULT_GPU_L2_BYTES = 64 * 2**20  # used when torch cannot report the GPU's L2 size
COLD_CACHE_FACTOR = 2  # the L2 flush writes, or the rotated sets together span, this many last-level caches
COLD_METHODS = ("warm", "l2_flush", "input_rotation")  # how a timing treated the cache (`cold_cache_method`)
MAX_INPUT_SETS = 512  # a cap for tiny shapes, whose sets would otherwise number in the thousands
PROFILER_WINDOW_S = 0.05  # a CUPTI window spans at least this much launch time (amortises its cost)
NOT_KERNELS = re.compile(r"^(Memcpy|Memset)\b")  # device activities that are copies, not kernels
TIME_SOURCES = ("wall", "cupti", "host")  # wall: CPU; cupti: kernel time; host: GPU fallback


@dataclass(frozen=True)
class Timing:
    """What the harness measured. All times in milliseconds; quantiles are over `samples`."""

    time_ms: float  # median kernel time per launch
    min_ms: float
    p25_ms: float
    p75_ms: float
    spread: float  # (p75 - p25) / median
    samples: int  # kernel-time samples taken
    call_ms: float  # median wall time of run() + sync() per call, from Python
    call_samples: int
    time_source: str  # one of TIME_SOURCES
    input_sets: int  # placed sets rotated through
    stable: bool  # whether the spread fell under spec.stable_spread before a limit stopped it
    elapsed_s: float  # time spent sampling, warm-up excluded
    note: str = ""  # why the CUDA path fell back to the host clock, or how kernels were grouped
    # CUPTI only: median time per launch (ms) of each kernel name of a launch, in launch order, so that
    # a two-kernel variant's depthwise and pointwise are told apart without Nsight (`kernel_split_ms`).
    kernels: dict[str, float] = field(default_factory=dict)
    cold_cache: str = "warm"  # one of COLD_METHODS
    flush_bytes: int = 0  # l2_flush: bytes each flush wrote
    l2_bytes: int = 0  # l2_flush: the L2 size the flush was sized from
    # GPU: SM clock and temperature around the timing (`workers.clocks`), or a tag saying why not
    clock_metrics: dict[str, float] = field(default_factory=dict)
    clock_tags: dict[str, str] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return self.time_ms

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    """Quantiles of one list of samples (milliseconds)."""

    median: float
    minimum: float
    p25: float
    p75: float
    spread: float
    n: int


def summarize(samples_ms: Sequence[float]) -> Summary:
    """Median, min, quartiles and the relative interquartile spread of `samples_ms`."""
    if not samples_ms:
        raise ValueError("no timing samples to summarize")
    a = np.asarray(samples_ms, dtype=np.float64)
    p25, median, p75 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    spread = (p75 - p25) / median if median > 0 else math.inf
    return Summary(median, float(a.min()), p25, p75, spread, len(a))


def should_stop(samples_ms: Sequence[float], elapsed_s: float, spec: TimingSpec) -> tuple[bool, bool]:
    """The stopping rule: (stop, stable).

    Stable once at least `min_repeats` samples and `min_time_s` seconds are in and the relative
    interquartile spread is under `stable_spread`; stop regardless at `max_repeats` or `max_time_s`.
    """
    n = len(samples_ms)
    enough = n >= spec.min_repeats and elapsed_s >= spec.min_time_s
    if enough and summarize(samples_ms).spread < spec.stable_spread:
        return True, True
    return n >= spec.max_repeats or elapsed_s >= spec.max_time_s, False


def _sample_until_stable(
    sample: Callable[[int], Iterable[float]], spec: TimingSpec
) -> tuple[list[float], bool, float]:
    """Call `sample(have)` (which returns one or more samples, ms, given how many are in) until
    `should_stop`; returns the samples, whether they were stable, and the seconds spent."""
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.extend(sample(len(samples)))
        elapsed = time.perf_counter() - start
        stop, stable = should_stop(samples, elapsed, spec)
        if stop:
            return samples, stable, elapsed


# --- cold cache -----------------------------------------------------------------------------------


def parse_cache_size(text: str) -> int:
    """Bytes from a sysfs cache size such as `32768K`, `1M` or `512`."""
    text = text.strip().upper()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def cpu_last_level_cache_bytes(cache_dir: Path = CPU_CACHE_DIR) -> int:
    """Size of the highest-level data or unified cache of cpu0, from sysfs (0 when unreadable)."""
    caches: list[tuple[int, int]] = []  # (level, bytes)
    for index in cache_dir.glob("index*"):
        try:
            if (index / "type").read_text().strip() in ("Data", "Unified"):
                level = int((index / "level").read_text())
                caches.append((level, parse_cache_size((index / "size").read_text())))
        except (OSError, ValueError):
            continue
    return max(caches)[1] if caches else 0


def gpu_l2_bytes() -> int:
    """The current GPU's L2 size from torch, or 64 MiB when torch cannot tell."""
    try:
        import torch

        size = int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0))
    except Exception:
        size = 0
    return size or DEFAULT_GPU_L2_BYTES


def last_level_cache_bytes(device: DeviceSpec) -> int:
    """The cache a cold-cache measurement must overflow on `device`."""
    return gpu_l2_bytes() if device.is_gpu else cpu_last_level_cache_bytes()


def cold_cache_method(spec: TimingSpec, device: DeviceSpec, can_flush: bool) -> str:
    """How a timing keeps the cache cold (one of COLD_METHODS): `warm` unless `spec.cold_cache`; on a GPU
    whose L2 the harness can flush (`can_flush`: torch runs CUDA here), `l2_flush`; else `input_rotation`."""
    if not spec.cold_cache:
        return "warm"
    return "l2_flush" if device.is_gpu and can_flush else "input_rotation"


def l2_flush_bytes(l2_bytes: int) -> int:
    """Bytes one L2 flush writes: COLD_CACHE_FACTOR times the L2, in whole 4-byte words."""
    if l2_bytes <= 0:
        raise ValueError(f"the L2 size must be positive, got {l2_bytes}")
    return COLD_CACHE_FACTOR * math.ceil(l2_bytes / 4) * 4


def describe_cold_cache(method: str, nbytes: int, cache_bytes: int) -> str:
    """One line for a record: what was done to the cache, and the bytes (flushed, or spanned by the sets)."""
    if method == "l2_flush":
        return (
            f"L2 flushed before each timed call: {nbytes} bytes written "
            f"({nbytes / cache_bytes:.3g}x the {cache_bytes}-byte L2), outside the timed region"
        )
    if method == "input_rotation":
        ratio = f"{nbytes / cache_bytes:.3g}x" if cache_bytes > 0 else "an unknown multiple of"
        return f"input rotation: sets spanning {nbytes} bytes ({ratio} the {cache_bytes}-byte last cache)"
    if method == "warm":
        return "warm: no flush, no rotation"
    raise ValueError(f"cold-cache method must be one of {list(COLD_METHODS)}, got {method!r}")


def input_sets_needed(shape: LayerShape, spec: TimingSpec, device: DeviceSpec) -> int:
    """How many input sets the caller should place: `spec.input_sets`, raised for a cold cache kept by
    input rotation so that the sets (inputs, weights and output each) span COLD_CACHE_FACTOR last-level
    caches (an L2 flush needs no more sets)."""
    n = max(1, spec.input_sets)
    if cold_cache_method(spec, device, device.is_gpu and gpu_can_flush()) == "input_rotation":
        llc = last_level_cache_bytes(device)
        n = max(n, math.ceil(COLD_CACHE_FACTOR * llc / shape.min_bytes) + 1)
    return min(n, MAX_INPUT_SETS)


def gpu_can_flush() -> bool:
    """Whether torch runs CUDA here, which the L2 flush uses."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


class L2Flusher:
    """Overwrites `l2_flush_bytes(l2_bytes)` of device memory on a CUDA stream of its own and waits for it:
    called between timed calls, so that each call starts with an L2 that holds none of its data. L2 is
    physical, so the flush, made in torch's CUDA context, also evicts what a Halide kernel in its own
    context left."""

    def __init__(self, torch: Any, l2_bytes: int) -> None:
        self.torch, self.l2_bytes = torch, l2_bytes
        self.nbytes = l2_flush_bytes(l2_bytes)
        self.stream = torch.cuda.Stream()
        self.buffer = torch.empty(self.nbytes // 4, dtype=torch.int32, device="cuda")
        self.signature: set[tuple[str, int | None]] = set()  # (name, stream) of the flush's device events
        self.per_flush = 0  # device events of one flush

    def __call__(self) -> None:
        with self.torch.cuda.stream(self.stream):
            self.buffer.zero_()
        self.stream.synchronize()

    def learn(self) -> None:
        """Profile one flush alone: the names and stream of its device events, and how many there are."""
        events = _profiled_device_events(self)
        self.signature = {(e.name, e.stream) for e in events}
        self.per_flush = len(events)
        if not events:
            raise _NoKernels("profiler saw no kernel of the L2 flush")


# --- CUDA kernel time from profiler events ----------------------------------------------------------


@dataclass(frozen=True)
class DeviceEvent:
    """One device activity as a profiler reports it: name, start and duration in microseconds."""

    name: str
    start_us: float
    duration_us: float
    stream: int | None = None  # the profiler's stream id (device_resource_id), where it reports one


def select_kernels(events: Iterable[DeviceEvent], kernel_filter: str | None) -> list[DeviceEvent]:
    """The kernels that belong to the variant, in start order.

    With a filter: events whose name matches the regex (re.search). Without: every kernel, i.e.
    every device event except memory copies and memsets.
    """
    pattern = re.compile(kernel_filter) if kernel_filter else None
    chosen = [e for e in events if (pattern.search(e.name) if pattern else not NOT_KERNELS.match(e.name))]
    return sorted(chosen, key=lambda e: e.start_us)


def drop_flush_events(
    events: Iterable[DeviceEvent], signature: set[tuple[str, int | None]], launches: int, per_flush: int
) -> list[DeviceEvent]:
    """`events` without the L2 flush's (those whose (name, stream) is in `signature`), after checking
    that there are exactly `per_flush` of them per launch: a kernel of the flush must never be counted
    as the variant's, and a variant's kernel never dropped as the flush's."""
    events = list(events)
    kept = [e for e in events if (e.name, e.stream) not in signature]
    dropped = len(events) - len(kept)
    if dropped != launches * per_flush:
        raise RuntimeError(
            f"L2 flush: {dropped} of its device events in a window of {launches} calls, "
            f"expected {per_flush} per call"
        )
    return kept


def kernel_samples_ms(
    events: Iterable[DeviceEvent], kernel_filter: str | None, launches: int
) -> tuple[list[float], str]:
    """Per-launch kernel time (ms) from one profiled window of `launches` back-to-back launches.

    When the matching kernels divide evenly among the launches (k per launch, in start order, which
    holds on one stream), each launch gives one sample: the sum of its k kernels. Otherwise the window
    gives a single sample, total / launches. Returns (samples, note); no matching kernel → ([], note).
    """
    if launches <= 0:
        raise ValueError(f"launches must be positive, got {launches}")
    kernels = select_kernels(events, kernel_filter)
    if not kernels:
        what = f"matching {kernel_filter!r}" if kernel_filter else "at all"
        return [], f"profiler saw no kernel {what} in a window of {launches} launches"
    grouped = _per_launch(kernels, launches)
    if grouped:
        return [
            sum(e.duration_us for e in ks) / 1e3 for ks in grouped
        ], f"{len(grouped[0])} kernel(s) per launch"
    total_ms = sum(e.duration_us for e in kernels) / 1e3
    return [total_ms / launches], f"{len(kernels)} kernels in {launches} launches (window mean)"


def kernel_split_ms(
    events: Iterable[DeviceEvent], kernel_filter: str | None, launches: int
) -> list[dict[str, float]]:
    """Per launch, the time (ms) of each kernel name in it, in launch order (a name launched twice in a
    launch is summed); empty when the matching kernels do not divide evenly among the launches, the
    same rule as `kernel_samples_ms`."""
    split: list[dict[str, float]] = []
    for ks in _per_launch(select_kernels(events, kernel_filter), launches):
        times: dict[str, float] = {}
        for e in ks:
            times[e.name] = times.get(e.name, 0.0) + e.duration_us / 1e3
        split.append(times)
    return split


def _per_launch(kernels: Sequence[DeviceEvent], launches: int) -> list[Sequence[DeviceEvent]]:
    """The kernels (in start order) cut into `launches` equal groups, one per launch; empty when there
    are none or they do not divide evenly (then no kernel can be assigned to its launch)."""
    if launches <= 0 or not kernels or len(kernels) % launches:
        return []
    k = len(kernels) // launches
    return [kernels[i * k : (i + 1) * k] for i in range(launches)]


def median_split(split: Sequence[dict[str, float]]) -> dict[str, float]:
    """The median time of each kernel name over the launches of `kernel_split_ms` (a launch without
    the name counts 0), names in order of first launch."""
    names = list(dict.fromkeys(name for times in split for name in times))
    return {name: float(np.median([times.get(name, 0.0) for times in split])) for name in names}


def _torch_profiler() -> tuple[Any, str]:
    """(torch, "") when CUPTI kernel tracing through torch.profiler is usable here, else (None, why)."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, supported_activities
    except Exception as exc:  # torch missing or broken
        return None, f"torch.profiler unavailable ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    if ProfilerActivity.CUDA not in supported_activities():
        return None, "torch.profiler does not support CUDA activity (no CUPTI/kineto)"
    return torch, ""


def _profiled_device_events(launch: Callable[[], None]) -> list[DeviceEvent]:
    """Run `launch()` under torch.profiler (CUDA activity) and return the device events it recorded."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        launch()
    # FunctionEvent.device_type is DeviceType.CUDA for kernels, memcpys and memsets; times are in us.
    return [
        DeviceEvent(
            e.name,
            float(e.time_range.start),
            float(e.time_range.elapsed_us()),
            getattr(e, "device_resource_id", None),
        )
        for e in prof.events()
        if str(e.device_type).endswith("CUDA")
    ]


# --- the harness ----------------------------------------------------------------------------------


def measure(built: Built, placed_sets: Sequence[Any], spec: TimingSpec, device: DeviceSpec) -> Timing:
    """Time `built` on already-placed input sets (rotated) according to `spec` on `device`."""
    if not placed_sets:
        raise ValueError("measure needs at least one placed input set")
    n_sets = len(placed_sets)
    for i in range(max(spec.warmup, 0)):
        built.run(placed_sets[i % n_sets])
    built.sync()
    method = cold_cache_method(spec, device, device.is_gpu and gpu_can_flush())
    flusher = _flusher() if method == "l2_flush" else None
    before_call = _before_call(built, flusher)

    def one_call(have: int) -> list[float]:
        placed = placed_sets[have % n_sets]
        before_call()
        t0 = time.perf_counter_ns()
        built.run(placed)
        built.sync()
        return [(time.perf_counter_ns() - t0) / 1e6]

    gc_was_enabled = gc.isenabled()
    gc.collect()  # a collection pause inside a sample would be measured as kernel time
    gc.disable()
    try:
        with clocks.watch(device) as watched:  # on a CPU, only the tag saying there is no SM clock
            calls, stable, elapsed = _sample_until_stable(one_call, spec)
            call = summarize(calls)
            if device.is_gpu:
                timing = _measure_gpu_kernels(built, placed_sets, spec, call, flusher)
            else:
                timing = Timing(
                    call.median, call.minimum, call.p25, call.p75, call.spread, call.n,
                    call.median, call.n, "wall", n_sets, stable, elapsed,
                )  # fmt: skip
        return dataclasses.replace(
            timing,
            cold_cache=method,
            flush_bytes=flusher.nbytes if flusher else 0,
            l2_bytes=flusher.l2_bytes if flusher else 0,
            clock_metrics=watched.report.metrics,
            clock_tags=watched.report.tags,
        )
    finally:
        if gc_was_enabled:
            gc.enable()


def _flusher() -> L2Flusher:
    """An L2 flusher for torch's current CUDA device, sized from the L2 the device reports."""
    import torch

    return L2Flusher(torch, int(torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size))


def _before_call(built: Built, flusher: L2Flusher | None) -> Callable[[], None]:
    """What runs before each timed call, outside its timed region: nothing when warm; with an L2 flush,
    wait for the variant's last call (a flush that overlapped it would slow it down), then flush."""
    if flusher is None:
        return lambda: None

    def flush() -> None:
        built.sync()
        flusher()

    return flush


def launches_per_window(spec: TimingSpec, call_ms: float) -> int:
    """Launches in one profiled window: enough to span PROFILER_WINDOW_S, at least min_repeats,
    at most max_repeats."""
    wanted = math.ceil(PROFILER_WINDOW_S * 1e3 / call_ms) if call_ms > 0 else spec.max_repeats
    return max(1, min(spec.max_repeats, max(spec.min_repeats, wanted)))


def _measure_gpu_kernels(
    built: Built, placed_sets: Sequence[Any], spec: TimingSpec, call: Summary, flusher: L2Flusher | None
) -> Timing:
    """Kernel time on a GPU: CUPTI windows when available, else host-clock windows. With `flusher`, every
    launch follows a flush whose device events are dropped from the window (`drop_flush_events`)."""
    n_sets = len(placed_sets)
    window = launches_per_window(spec, call.median)
    launched = [0]
    before_call = _before_call(built, flusher)

    def launch(count: int) -> None:
        for _ in range(count):
            before_call()
            built.run(placed_sets[launched[0] % n_sets])
            launched[0] += 1
        built.sync()

    def window_size(have: int) -> int:  # per-launch samples: the last window stops at max_repeats
        return max(1, min(window, spec.max_repeats - have))

    torch, note = _torch_profiler()
    if torch is not None:
        notes: list[str] = []
        split: list[dict[str, float]] = []

        def cupti_window(have: int) -> list[float]:
            count = window_size(have)
            events = _profiled_device_events(lambda: launch(count))
            if flusher is not None:
                events = drop_flush_events(events, flusher.signature, count, flusher.per_flush)
            samples, how = kernel_samples_ms(events, built.kernel_filter, count)
            if not samples:
                raise _NoKernels(how)
            notes.append(how)
            split.extend(kernel_split_ms(events, built.kernel_filter, count))
            return samples

        try:
            torch.cuda.init()
            _profiled_device_events(lambda: launch(1))  # CUPTI's first session pays its set-up
            if flusher is not None:
                flusher.learn()
            samples, stable, elapsed = _sample_until_stable(cupti_window, spec)
        except _NoKernels as exc:
            note = f"{exc}; fell back to the host clock"
        except Exception as exc:  # the profiler broke; a launch that fails fails again below, and raises
            note = f"torch.profiler failed ({type(exc).__name__}: {str(exc).strip()[:200]}); host clock"
        else:
            s = summarize(samples)
            return Timing(
                s.median, s.minimum, s.p25, s.p75, s.spread, s.n, call.median, call.n,
                "cupti", n_sets, stable, elapsed, notes[-1], median_split(split),
            )  # fmt: skip

    if flusher is not None:  # a flush between launches: each call timed alone, the flush outside

        def flushed_call(have: int) -> list[float]:
            before_call()
            t0 = time.perf_counter_ns()
            built.run(placed_sets[launched[0] % n_sets])
            launched[0] += 1
            built.sync()
            return [(time.perf_counter_ns() - t0) / 1e6]

        samples, stable, elapsed = _sample_until_stable(flushed_call, spec)
        how = "host clock of each call after its L2 flush"
    else:

        def host_window(have: int) -> list[float]:  # one sample per window: the window's mean
            t0 = time.perf_counter_ns()
            launch(window)
            return [(time.perf_counter_ns() - t0) / 1e6 / window]

        samples, stable, elapsed = _sample_until_stable(host_window, spec)
        how = f"means of back-to-back windows of {window} launches"
    s = summarize(samples)
    return Timing(
        s.median, s.minimum, s.p25, s.p75, s.spread, s.n, call.median, call.n,
        "host", n_sets, stable, elapsed, f"{note}; {how}",
    )  # fmt: skip


class _NoKernels(RuntimeError):
    """The profiler recorded no kernel of the variant: its filter or CUPTI does not see them."""
