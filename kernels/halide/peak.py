"""The device's ceilings, generated with Halide: an fp32 FMA peak kernel and a read-bandwidth kernel.

The roofline's compute roof is what the FMA units can do, not what a library reaches (NumPy's SGEMM on
a two-core host ran at half of it while the layer's Halide schedules ran faster than that SGEMM). The
FMA kernel keeps every value in registers: each output element runs `chains` independent chains of
`steps` dependent `x = x * a + b` per loop trip (a, b runtime Params, so nothing folds; the loop count
`iterations` is a Param too), enough chains to cover the FMA latency times the FMA units:

- CPU: the chains are the vector registers (less four), each a natural vector of lanes, unrolled; the
  outer dimension is parallel over Halide's thread pool (or serial: one core alone);
- CUDA: one thread per element (`gpu_blocks` x `gpu_threads`), `CUDA_CHAINS` chains unrolled in its
  registers, blocks enough for several waves on every SM.

The read kernel sums a buffer sized to the memory level under test (the last-level cache, or several
times it for DRAM), `passes` times, vectors at a time: on the CPU each thread reads a contiguous
chunk with four independent vector accumulators; on CUDA, thread t reads float4 number t + T·j, so a
warp's loads are coalesced, and pass p starts at chunk p, so that no load repeats from one pass to the
next (a repeated one would be hoisted out of the loop). Bytes read / time is the level's bandwidth.

Everything is timed with the host clock around a run that lasts milliseconds (CUDA: realize, then
`device_sync`), the best of `repeats`: a ceiling is the best a device was seen to do. A host without a
usable CUDA device gets `CudaUnavailable` with the reason, never a crash (Halide aborts the process on
a device call without one, so this is asked first).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHAIN_STEPS = 16  # dependent FMAs a chain does per loop trip (unrolled), so loop overhead is amortised
CUDA_CHAINS = 8  # independent chains per CUDA thread: with a few warps per scheduler, FMA latency is hidden
CUDA_THREADS = 256  # threads per block
CUDA_WAVES = 8  # blocks = sm_count x (2048 / CUDA_THREADS) x CUDA_WAVES: the last wave's tail is small
CUDA_BLOCKS_UNKNOWN_SMS = 8192  # blocks when the SM count is not known
CPU_READ_VECTORS = 4  # independent vector accumulators of a CPU read thread
CUDA_READ_UNROLL = 8  # loads a CUDA read thread has in flight
RUN_S = {"cpu": 0.004, "cuda": 0.02}  # aim of one timed run's length (seconds): short on a shared CPU


class CudaUnavailable(RuntimeError):
    """No CUDA device usable by Halide on this host (no GPU, no driver)."""


@dataclass(frozen=True)
class Rate:
    """A measured ceiling: `value` (GFLOP/s or GB/s) from the best of `runs` runs of `work` units."""

    value: float
    best_s: float
    work: float  # FLOPs or bytes of one run
    runs: int
    method: str


def cuda_target(capability: int = 0) -> Any:
    """The host target with CUDA at the highest Halide capability feature not above `capability`
    (0: Halide's baseline); a newer GPU JIT-compiles the PTX in its driver."""
    import halide as hl

    target = hl.get_host_target().with_feature(hl.TargetFeature.CUDA)
    known = (30, 32, 35, 50, 61, 70, 75, 80, 86)
    usable = [c for c in known if c <= capability]
    if usable:
        target = target.with_feature(getattr(hl.TargetFeature, f"CUDACapability{usable[-1]}"))
    return target


def require_cuda(target: Any) -> None:
    """Raise CudaUnavailable unless this host can run `target`'s CUDA code (ask before any device call)."""
    if not _cuda_usable(target.to_string()):
        raise CudaUnavailable(f"no usable CUDA device for Halide target {target.to_string()} on this host")


@functools.cache
def _cuda_usable(target_string: str) -> bool:
    """Asked once per process and target, before any CUDA compilation: asked after a JIT compilation for
    the same target, Halide 21 answered False on an H100 (kernels.halide.variants.require_device)."""
    import halide as hl

    return bool(hl.host_supports_target_device(hl.Target(target_string)))


def cpu_chains(target: Any) -> int:
    """Independent vector chains of the CPU FMA kernel: the vector register file less four (a, b, the
    loop's term, a spare): 12 with AVX2's 16 registers, 28 with AVX-512's 32."""
    import halide as hl

    wide = target.has_feature(hl.TargetFeature.AVX512_Skylake) or (
        target.arch == hl.TargetArch.ARM and target.bits == 64
    )
    return (32 if wide else 16) - 4


# --- the FMA kernel ------------------------------------------------------------------------------------
@dataclass
class FmaKernel:
    """The FMA pipeline and its Params; `flops(iterations)` is the work of one run."""

    pipeline: Any
    iterations: Any  # hl.Param(Int(32))
    a: Any
    b: Any
    zero: Any
    sizes: list[int]  # output extents
    lanes: int  # elements computed side by side (vector lanes on a CPU, 1 on CUDA)
    chains: int
    elements: int  # chains run = elements x chains

    def flops(self, iterations: int) -> float:
        return 2.0 * CHAIN_STEPS * self.chains * self.elements * iterations


def _fma_chain(f: Any, r: Any, a: Any, b: Any, zero: Any, at: list[Any]) -> Any:
    """`steps` dependent FMAs on f[at]. The loop's own term (r·zero, zero = 0 at run time) ties the update
    to the RDom, once per trip for all chains: Halide needs the reduction variable in the definition."""
    import halide as hl

    value = f[at]
    add = b + hl.cast(hl.Float(32), r.x) * zero
    for _ in range(CHAIN_STEPS):
        value = value * a + add
    return value


def fma_kernel(
    target: Any, parallel: bool = True, tasks: int = 0, sm_count: int = 0, jit: bool = True
) -> FmaKernel:
    """The register-resident FMA kernel for `target` (CPU or CUDA), compiled with the JIT (unless not `jit`).

    CPU: output (lanes, tasks); `parallel` spreads the tasks over Halide's threads (tasks: 4 per core
    by default), else one core runs one task. CUDA: one element per thread, blocks from `sm_count`.
    """
    import halide as hl

    iterations = hl.Param(hl.Int(32), "iterations")
    a, b, zero = (hl.Param(hl.Float(32), n) for n in ("a", "b", "zero"))
    r = hl.RDom([(0, iterations)], "r")
    chains = hl.Func("fma_chains")
    out = hl.Func("fma_peak")
    if target.has_gpu_feature():
        c, t = hl.Var("c"), hl.Var("t")
        n_chains = CUDA_CHAINS
        blocks = sm_count * (2048 // CUDA_THREADS) * CUDA_WAVES if sm_count > 0 else CUDA_BLOCKS_UNKNOWN_SMS
        elements = blocks * CUDA_THREADS
        chains[c, t] = hl.cast(hl.Float(32), t % 1024 + c) * hl.f32(1e-3)
        chains[c, t] = _fma_chain(chains, r, a, b, zero, [c, t])
        out[t] = sum((chains[i, t] for i in range(n_chains)), hl.f32(0))
        tb, ti = hl.Var("tb"), hl.Var("ti")
        out.gpu_tile(t, tb, ti, CUDA_THREADS)
        chains.compute_at(out, ti).store_in(hl.MemoryType.Register).unroll(c)
        chains.update().reorder(c, r.x).unroll(c)
        sizes, lanes = [elements], 1
    else:
        v, c, k = hl.Var("v"), hl.Var("c"), hl.Var("k")
        lanes = target.natural_vector_size(hl.Float(32))
        n_chains = cpu_chains(target)
        tasks = tasks or (4 * _cores() if parallel else 1)
        chains[v, c, k] = hl.cast(hl.Float(32), v + lanes * c + k % 64) * hl.f32(1e-3)
        chains[v, c, k] = _fma_chain(chains, r, a, b, zero, [v, c, k])
        out[v, k] = sum((chains[v, i, k] for i in range(n_chains)), hl.f32(0))
        out.bound(v, 0, lanes).vectorize(v)
        if parallel:
            out.parallel(k)
        chains.compute_at(out, k).store_in(hl.MemoryType.Register).vectorize(v).unroll(c)
        chains.update().reorder(v, c, r.x).vectorize(v).unroll(c)
        sizes, elements = [lanes, tasks], lanes * tasks
    pipeline = hl.Pipeline(out)
    if jit:
        pipeline.compile_jit(target)
    return FmaKernel(pipeline, iterations, a, b, zero, sizes, lanes, n_chains, elements)


def fma_source(target: Any, kind: str = "device_code") -> str:
    """The FMA kernel's generated code for `target` without running it (CUDA: its PTX; CPU: assembly),
    so tests can count the FMA instructions on a host without a GPU."""
    kernel = fma_kernel(target, jit=False)
    return _source(kernel.pipeline, [kernel.iterations, kernel.a, kernel.b, kernel.zero], target, kind)


def read_source(target: Any, nbytes: int = 1 << 20, kind: str = "device_code", rotate: bool = True) -> str:
    """The read kernel's generated code for `target` without running it (as `fma_source`)."""
    kernel = read_kernel(target, nbytes, jit=False, rotate=rotate)
    return _source(kernel.pipeline, [kernel.source, kernel.passes], target, kind)


def _source(pipeline: Any, args: list[Any], target: Any, kind: str) -> str:
    import tempfile
    from pathlib import Path

    import halide as hl

    file_type = hl.OutputFileType.device_code if kind == "device_code" else hl.OutputFileType.assembly
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.txt")
        pipeline.compile_to({file_type: str(path)}, args, "kernel", target)
        return path.read_text(errors="replace")


def measure_fma_gflops(
    target: Any, parallel: bool = True, repeats: int = 30, sm_count: int = 0, run_s: float | None = None
) -> Rate:
    """Best GFLOP/s of the FMA kernel on `target` over `repeats` runs of about `run_s` seconds each
    (iterations calibrated on a short run first). CUDA: CudaUnavailable where no device can run it."""
    import halide as hl

    gpu = target.has_gpu_feature()
    if gpu:
        require_cuda(target)
    kernel = fma_kernel(target, parallel=parallel, sm_count=sm_count)
    kernel.a.set(0.999)  # x -> b / (1 - a): bounded, never denormal
    kernel.b.set(0.001)
    kernel.zero.set(0.0)
    out = hl.Buffer(hl.Float(32), kernel.sizes)
    if gpu:
        _check(out.device_malloc(hl.DeviceAPI.CUDA, target), "device_malloc")

    def run(iterations: int) -> float:
        kernel.iterations.set(iterations)
        t0 = time.perf_counter()
        kernel.pipeline.realize(out, target)
        if gpu:
            _check(out.device_sync(), "device_sync")
        return time.perf_counter() - t0

    aim = run_s if run_s is not None else RUN_S["cuda" if gpu else "cpu"]
    iterations = _calibrate(run, aim)
    best = min(run(iterations) for _ in range(repeats))
    flops = kernel.flops(iterations)
    where = "CUDA" if gpu else ("every core" if parallel else "one core")
    method = (
        f"Halide {target.to_string()}: {kernel.elements} x {kernel.chains} chains of {CHAIN_STEPS} "
        f"dependent FMAs x {iterations} trips, registers only, {where}; best of {repeats}"
    )
    return Rate(flops / best / 1e9, best, flops, repeats, method)


def _calibrate(run: Callable[[int], float], aim_s: float) -> int:
    """Iterations that make one run last about `aim_s`, from a warm-up (JIT, pool) and a short run."""
    run(1)
    n = 8
    while True:
        elapsed = min(run(n), run(n))
        if elapsed >= aim_s / 4 or n >= 1 << 24:
            return max(1, min(1 << 26, round(n * aim_s / max(elapsed, 1e-9))))
        n *= 4


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"Halide CUDA {what} failed with error {code}")


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- the read kernel -----------------------------------------------------------------------------------
@dataclass
class ReadKernel:
    """The read pipeline for one buffer size: its input Param, passes Param and geometry."""

    pipeline: Any
    source: Any  # hl.ImageParam(Float(32), 1)
    passes: Any  # hl.Param(Int(32))
    sizes: list[int]
    elements: int  # floats of the buffer read each pass

    def bytes(self, passes: int) -> float:
        return 4.0 * self.elements * passes


def _select(condition: bool, then: int, otherwise: int) -> int:
    return then if condition else otherwise


def read_chunk(
    thread: Any,
    step: Any,
    pass_: Any,
    threads: int,
    steps: int,
    select: Callable[..., Any] = _select,
    rotate: bool = True,
) -> Any:
    """The chunk (`width` floats) a CUDA read thread loads at `step` of pass `pass_`: each pass reads
    every chunk once, and from one pass to the next the whole assignment moves by one block, so a block
    reads what another block (on another SM) read the pass before, and its own data again only after as
    many passes as there are blocks. A buffer that fits the L2 is then read from the L2: a fixed
    assignment keeps each SM's share (the buffer over the SMs, about 190 KiB of a 25 MiB buffer on 132
    SMs) in that SM's L1 after the first pass, and measures the L1. Loads also differ from pass to pass,
    so the compiler cannot hoist them out of the loop. Works on ints and on Halide Exprs (`hl.select`).

    Not for DRAM (`rotate=False`: each block reads the same chunks every pass): nothing keeps the blocks
    in step, and a block that drifts a pass ahead of its neighbour would read what the neighbour reads at
    about the same moment, from the L2 (5.14 TB/s "DRAM" on the H200, above its 4.8 TB/s datasheet); a
    DRAM-sized buffer gives each SM a share far larger than its L1 anyway."""
    if not rotate:
        return thread + threads * step
    total = threads * steps
    chunk = thread + threads * step + (pass_ * CUDA_THREADS) % total
    return select(chunk >= total, chunk - total, chunk)


def read_kernel(
    target: Any, nbytes: int, sm_count: int = 0, jit: bool = True, rotate: bool = True
) -> ReadKernel:
    """The read kernel over a buffer of about `nbytes` (rounded down to whole steps), compiled with the JIT
    (unless not `jit`); on CUDA, `rotate` moves each block's chunks every pass (`read_chunk`: for a buffer
    that fits the L2), else each block reads its own chunks every pass (for DRAM)."""
    import halide as hl

    source = hl.ImageParam(hl.Float(32), 1, "source")
    passes = hl.Param(hl.Int(32), "passes")
    acc = hl.Func("read_acc")
    out = hl.Func("read_bandwidth")
    v, t = hl.Var("v"), hl.Var("t")
    floats = max(1, nbytes // 4)
    if target.has_gpu_feature():
        width = 4  # a float4 load per thread and step
        blocks = sm_count * (2048 // CUDA_THREADS) if sm_count > 0 else 1024
        threads = blocks * CUDA_THREADS
        steps = max(1, floats // (width * threads))
        r = hl.RDom([(0, steps), (0, passes)], "r")
        chunk = read_chunk(t, r.x, r.y, threads, steps, hl.select, rotate)
        acc[v, t] = hl.f32(0)
        acc[v, t] += source[v + width * hl.clamp(chunk, 0, threads * steps - 1)]  # (clamp: for bounds)
        out[v, t] = acc[v, t]
        tb, ti = hl.Var("tb"), hl.Var("ti")
        out.bound(v, 0, width).vectorize(v).gpu_tile(t, tb, ti, CUDA_THREADS)
        acc.compute_at(out, ti).store_in(hl.MemoryType.Register).vectorize(v)
        rxo, rxi = hl.RVar("rxo"), hl.RVar("rxi")
        unroll = min(CUDA_READ_UNROLL, steps)
        acc.update().reorder(v, r.x, r.y).vectorize(v).split(r.x, rxo, rxi, unroll).unroll(rxi)
    else:
        lanes = target.natural_vector_size(hl.Float(32))
        width = lanes * CPU_READ_VECTORS
        threads = _cores()
        steps = max(1, floats // (width * threads))
        r = hl.RDom([(0, steps), (0, passes)], "r")
        acc[v, t] = hl.f32(0)
        acc[v, t] += source[v + width * (r.x + steps * t)]  # each thread a contiguous chunk
        out[v, t] = acc[v, t]
        out.bound(v, 0, width).vectorize(v, lanes).parallel(t)
        acc.compute_at(out, t).store_in(hl.MemoryType.Register).vectorize(v)
        acc.update().reorder(v, r.x, r.y).vectorize(v)
    elements = width * threads * steps
    source.dim(0).set_min(0)
    pipeline = hl.Pipeline(out)
    if jit:
        pipeline.compile_jit(target)
    return ReadKernel(pipeline, source, passes, [width, threads], elements)


def measure_read_gbps(
    target: Any,
    nbytes: int,
    repeats: int = 20,
    sm_count: int = 0,
    run_s: float | None = None,
    rotate: bool = True,
) -> Rate:
    """Best GB/s reading a buffer of about `nbytes` on `target` (bytes read / time), `repeats` runs of
    about `run_s` seconds each; the first pass of each run warms a cache-sized buffer into its level.
    `rotate`: see `read_kernel` (True for a cache, False for DRAM)."""
    import halide as hl
    import numpy as np

    gpu = target.has_gpu_feature()
    if gpu:
        require_cuda(target)
    kernel = read_kernel(target, nbytes, sm_count, rotate=rotate)
    data = np.full(kernel.elements, 1.0, np.float32)
    buffer = hl.Buffer(data)
    out = hl.Buffer(hl.Float(32), kernel.sizes)
    if gpu:
        _check(buffer.copy_to_device(hl.DeviceAPI.CUDA, target), "copy to device")
        _check(out.device_malloc(hl.DeviceAPI.CUDA, target), "device_malloc")
    kernel.source.set(buffer)

    def run(passes: int) -> float:
        kernel.passes.set(passes)
        t0 = time.perf_counter()
        kernel.pipeline.realize(out, target)
        if gpu:
            _check(out.device_sync(), "device_sync")
        return time.perf_counter() - t0

    aim = run_s if run_s is not None else RUN_S["cuda" if gpu else "cpu"]
    passes = _calibrate(run, aim)
    best = min(run(passes) for _ in range(repeats))
    moved = kernel.bytes(passes)
    method = (
        f"Halide {target.to_string()}: read {kernel.elements * 4} bytes x {passes} passes, "
        f"{kernel.sizes[1]} threads, {'chunks moving between blocks' if rotate else 'fixed chunks'}; "
        f"best of {repeats}"
    )
    return Rate(moved / best / 1e9, best, moved, repeats, method)
