"""The roofline's roofs, measured on the node that runs a job, once per host CPU or GPU model, and cached.

A roof that a kernel passes is not a roof. So the compute roof is what the FMA units can do, measured
with a register-resident FMA kernel that Halide generates (`kernels.halide.peak`), not a library's GEMM
(NumPy's SGEMM ran at half the host's FMA rate, and the layer's Halide schedules beat it); and the
memory roof is the read bandwidth of the level the layer's working set lives in: the last cache level
(the CPU's last-level cache, the GPU's L2) when it fits there and the timing keeps it warm, DRAM
otherwise, each measured with a read kernel over a buffer sized to that level.

- CPU: FMA peak = the higher of every core at once and one core alone times the cores (on a shared or
  turbo CPU one core alone runs at a higher clock, or undisturbed: the roof takes the higher). SGEMM
  (NumPy's BLAS, every core) is kept as the *attainable* line. LLC: a buffer half the last-level cache;
  DRAM: 256 MiB or eight last-level caches, whichever is more.
- GPU (Halide's CUDA target): FMA peak; L2: a buffer half the L2 (its size from torch); DRAM: 1 GiB or
  sixteen L2s. SGEMM: cuBLAS through torch with TF32 off, when torch is there.

Measurements are cached on disk (`workers.hostinfo.cache_dir()`: `roofs-host-<hostname>.json`,
`roofs-gpu-<hostname>-<model>.json`; older versions' `host-*.json` are left alone) under a file lock,
so concurrent workers of one node measure once and never at the same time. `python -m workers info
--measure` / `--measure-gpu` measure again and print.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.host import available_cores, cpu_model
from workers.hostinfo import cache_dir

SGEMM_N = 2048  # matrix size of the CPU's SGEMM (17 GFLOP a product)
SGEMM_REPEATS = 5
CPU_DRAM_BYTES = 256 * 2**20  # the CPU's DRAM buffer at least
GPU_DRAM_BYTES = 2**30  # the GPU's DRAM buffer at least
CACHE_FRACTION = 2  # a cache level's buffer is 1 / this of the level
GPU_MEASURE_TIMEOUT_S = 600
VERSION = 2  # of the cached files: version 1 held SGEMM as the peak and a copy as the bandwidth


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """A device's measured ceilings: the roofs (FMA peak, cache and DRAM read bandwidth) and SGEMM."""

    model: str  # CPU or GPU model
    fma_gflops: float  # the compute roof
    sgemm_gflops: float  # the attainable line (0: not measured)
    cache_gbps: float  # read bandwidth of the last cache level (0: not measured)
    cache_bytes: int  # its size
    dram_gbps: float
    cores: int = 0  # CPU cores (0 on a GPU)
    sm_count: int = 0  # GPU SMs (0 on a CPU or unknown)
    fma_all_cores_gflops: float = 0.0  # CPU: the FMA kernel on every core at once
    fma_one_core_gflops: float = 0.0  # CPU: ... on one core
    method: str = ""
    measured_at: str = ""
    version: int = VERSION

    def as_lines(self, prefix: str) -> dict[str, str]:
        """Lines for `python -m workers info`: `<prefix>_fma_gflops` and so on, with units in the values."""
        level = "l2" if self.sm_count or prefix == "gpu" else "llc"
        lines = {
            f"{prefix}_model": self.model,
            f"{prefix}_fma_peak_gflops": f"{self.fma_gflops:,.1f} (the compute roof; {self.measured_at})",
            f"{prefix}_sgemm_gflops": f"{self.sgemm_gflops:,.1f} (attainable, TF32 off)"
            if self.sgemm_gflops
            else "not measured",
            f"{prefix}_{level}_gbps": f"{self.cache_gbps:,.1f} ({self.cache_bytes} bytes)"
            if self.cache_gbps
            else "not measured",
            f"{prefix}_dram_gbps": f"{self.dram_gbps:,.1f}",
        }
        if self.fma_one_core_gflops:
            every, one = self.fma_all_cores_gflops, self.fma_one_core_gflops
            lines[f"{prefix}_fma_detail"] = f"all {self.cores} cores {every:,.1f}, one core {one:,.1f}"
        lines[f"{prefix}_roofs_method"] = self.method
        return lines


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- CPU ---------------------------------------------------------------------------------------------
def measure_sgemm_gflops(n: int = SGEMM_N, repeats: int = SGEMM_REPEATS) -> float:
    """Best GFLOP/s of an n×n×n float32 matrix product through NumPy's BLAS (all cores)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)  # warm-up: BLAS threads, pages
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure_cpu() -> Ceilings:
    """The host CPU's ceilings, measured now (a few seconds)."""
    import halide as hl

    from kernels.halide import peak
    from workers.harness import cpu_last_level_cache_bytes

    target = hl.get_host_target()
    cores = available_cores()
    every = peak.measure_fma_gflops(target, parallel=True)
    one = peak.measure_fma_gflops(target, parallel=False)
    llc = cpu_last_level_cache_bytes()
    cache = peak.measure_read_gbps(target, llc // CACHE_FRACTION) if llc else None
    dram = peak.measure_read_gbps(target, max(CPU_DRAM_BYTES, 8 * llc))
    fma = max(every.value, one.value * cores)
    return Ceilings(
        model=cpu_model(),
        fma_gflops=round(fma, 1),
        sgemm_gflops=round(measure_sgemm_gflops(), 1),
        cache_gbps=round(cache.value, 1) if cache else 0.0,
        cache_bytes=llc if cache else 0,
        dram_gbps=round(dram.value, 2),
        cores=cores,
        fma_all_cores_gflops=round(every.value, 1),
        fma_one_core_gflops=round(one.value, 1),
        method=f"FMA: {one.method} (x {cores} cores) and every core; LLC: {cache.method if cache else '-'}; "
        f"DRAM: {dram.method}; SGEMM: numpy n={SGEMM_N}",
        measured_at=_now(),
    )


@contextmanager
def _host_lock() -> Iterator[Path]:
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"host-{socket.gethostname()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory


def _write(path: Path, ceilings: Ceilings) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(ceilings), indent=1))
    os.replace(tmp, path)


def _read(path: Path, model: str, cores: int | None = None) -> Ceilings | None:
    """The cached ceilings if the file parses, is of this version, and was measured on this model."""
    try:
        found = Ceilings(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if found.version != VERSION or found.model != model or found.fma_gflops <= 0 or found.dram_gbps <= 0:
        return None
    if cores is not None and found.cores != cores:
        return None
    return found


def _host_path() -> Path:
    return cache_dir() / f"roofs-host-{socket.gethostname()}.json"


def cached_host_ceilings() -> Ceilings | None:
    """The cached ceilings of this host's CPU, or None when not measured yet (nothing runs)."""
    return _read(_host_path(), cpu_model(), available_cores())


def host_ceilings(refresh: bool = False) -> Ceilings:
    """This host CPU's ceilings, from the cache or measured now (once per host, under the lock)."""
    with _host_lock():
        path = _host_path()
        if not refresh:
            cached = _read(path, cpu_model(), available_cores())
            if cached is not None:
                return cached
        ceilings = measure_cpu()
        _write(path, ceilings)
        return ceilings


# --- GPU ---------------------------------------------------------------------------------------------
def _torch_gpu() -> tuple[Any, str, int, int] | None:
    """(torch, name, SM count, L2 bytes) of the first GPU torch sees, or None without torch or a GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return torch, props.name, props.multi_processor_count, int(getattr(props, "L2_cache_size", 0))
    except Exception:
        return None


def torch_sgemm_gflops(torch: Any, n: int = 8192, repeats: int = 10) -> float:
    """Median GFLOP/s of an n×n×n cuBLAS SGEMM with TF32 off (strict fp32 FMAs), CUDA events."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
        c = torch.empty(n, n, device="cuda")
        torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b, out=c)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return 2 * n**3 / (float(np.median(times)) * 1e-3) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def measure_gpu(sm_count: int = 0, capability: int = 0, model: str = "") -> Ceilings:
    """The first GPU's ceilings, measured now with Halide's CUDA target (and torch for SGEMM and the L2
    size, where installed). Raises kernels.halide.peak.CudaUnavailable without a usable GPU."""
    from kernels.halide import peak

    seen = _torch_gpu()
    l2 = 0
    if seen is not None:
        torch, model, sm_count, l2 = seen
        major, minor = torch.cuda.get_device_capability(0)
        capability = capability or 10 * major + minor
    target = peak.cuda_target(capability)
    peak.require_cuda(target)
    fma = peak.measure_fma_gflops(target, sm_count=sm_count)
    cache = peak.measure_read_gbps(target, l2 // CACHE_FRACTION, sm_count=sm_count) if l2 else None
    dram = peak.measure_read_gbps(target, max(GPU_DRAM_BYTES, 16 * l2), sm_count=sm_count, rotate=False)
    sgemm = torch_sgemm_gflops(seen[0]) if seen is not None else 0.0
    return Ceilings(
        model=model or "CUDA GPU",
        fma_gflops=round(fma.value),
        sgemm_gflops=round(sgemm),
        cache_gbps=round(cache.value) if cache else 0.0,
        cache_bytes=l2 if cache else 0,
        dram_gbps=round(dram.value),
        sm_count=sm_count,
        method=f"FMA: {fma.method}; L2: {cache.method if cache else 'not measured (no torch for its size)'}; "
        f"DRAM: {dram.method}; SGEMM: " + ("cuBLAS 8192^3 TF32 off, median of 10" if seen else "no torch"),
        measured_at=_now(),
    )


def _gpu_name() -> str:
    seen = _torch_gpu()
    if seen is not None:
        return seen[1]
    from workers.hostinfo import host_facts

    return host_facts().get("gpu_model", "")


def gpu_ceilings(device: DeviceSpec | None = None, refresh: bool = False) -> Ceilings:
    """This node's first GPU's ceilings, from the cache (per GPU model) or measured now under the lock.
    `device` (the catalog's entry) lends its SM count and capability where torch cannot tell them."""
    name = _gpu_name()
    if not name:
        from kernels.halide.peak import CudaUnavailable

        raise CudaUnavailable("no GPU on this host (nvidia-smi and torch see none)")
    with _host_lock() as directory:
        safe = re.sub(r"[^\w.-]", "_", name)
        path = directory / f"roofs-gpu-{socket.gethostname()}-{safe}.json"
        if not refresh:
            cached = _read(path, name)
            if cached is not None:
                return cached
        sms, capability = (device.sm_count, device.cuda_capability) if device else (0, 0)
        ceilings = _measure_gpu_apart(sms, capability, name)
        _write(path, ceilings)
        return ceilings


def _measure_gpu_apart(sm_count: int, capability: int, model: str) -> Ceilings:
    """measure_gpu in a process of its own: the caller's CUDA state stays untouched (asked after a JIT
    compilation for a target, Halide 21 says the host cannot run it, which would fail the job's build)."""
    import subprocess
    import sys

    from kernels.halide.peak import CudaUnavailable

    command = [sys.executable, "-m", "workers.roofs", str(sm_count), str(capability), model]
    done = subprocess.run(command, capture_output=True, text=True, timeout=GPU_MEASURE_TIMEOUT_S)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise CudaUnavailable(f"measuring the GPU's roofs failed: {lines[-1] if lines else done.returncode}")
    return Ceilings(**json.loads(done.stdout.strip().splitlines()[-1]))


# --- a job's device, resolved --------------------------------------------------------------------------
def with_ceilings(device: DeviceSpec, found: Ceilings) -> DeviceSpec:
    """`device` with the measured ceilings filled in wherever the catalog left 0."""
    return dataclasses.replace(
        device,
        fma_gflops=device.fma_gflops or found.fma_gflops,
        sgemm_gflops=device.sgemm_gflops or found.sgemm_gflops,
        cache_gbps=device.cache_gbps or found.cache_gbps,
        cache_bytes=device.cache_bytes or found.cache_bytes,
        dram_gbps=device.dram_gbps or found.dram_gbps,
    )


def resolve_device(device: DeviceSpec) -> tuple[DeviceSpec, str]:
    """The device with what the catalog leaves unset (0) measured on this node; returns (device, source).

    Host CPU: with peak and bandwidth in the catalog (a configured device) nothing is measured
    ("catalog"); else the ceilings are measured (cached), and the datasheet-less peak and bandwidth
    are the measured FMA peak and DRAM bandwidth ("measured"). GPU: the ceilings the catalog lacks are
    measured ("measured"); where they cannot be (no GPU, no CUDA for Halide), the datasheet rates stay
    the roofs and the source says why. A GPU is never given the host CPU's measurements.
    """
    if device.kind == "cuda":
        if device.fma_gflops > 0 and device.dram_gbps > 0:
            return device, "catalog"
        try:
            found = gpu_ceilings(device)
        except Exception as exc:  # no GPU, no CUDA for Halide: datasheet rates, said so
            return device, f"datasheet (GPU ceilings not measured: {type(exc).__name__}: {exc})"[:300]
        return with_ceilings(device, found), "measured"
    if device.peak_gflops > 0 and device.mem_gbps > 0:
        return (device if device.cores else dataclasses.replace(device, cores=available_cores())), "catalog"
    found = host_ceilings()
    resolved = with_ceilings(device, found)
    return (
        dataclasses.replace(
            resolved,
            peak_gflops=device.peak_gflops or found.fma_gflops,
            mem_gbps=device.mem_gbps or found.dram_gbps,
            cores=device.cores or found.cores,
        ),
        "measured",
    )


if __name__ == "__main__":  # python -m workers.roofs SM_COUNT CAPABILITY MODEL: one JSON line (gpu_ceilings)
    import sys

    ceilings = measure_gpu(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    print(json.dumps(dataclasses.asdict(ceilings)))
