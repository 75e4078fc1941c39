"""Facts about the host a job runs on: its CPU's measured fp32 peak and memory bandwidth, and tags.

The device catalog leaves the host CPU's peak and bandwidth at 0 ("measured"): nominal figures of a
virtual machine mean little, so the practical ceilings are measured once per host and cached on disk
(`~/.cache/dsconv/host-<hostname>.json`, or `$DSCONV_CACHE_DIR`):

- peak: a large float32 matrix product through NumPy's BLAS on every core (sgemm, 2·n³ FLOP), the
  best of several; a practical fp32 peak, as a tuned GEMM is the best a CPU kernel does.
- bandwidth: a large copy split across one thread per core (NumPy releases the GIL for it), counting
  the bytes read and written, the best of several; arrays many times the last-level cache.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from kernels.device import DeviceSpec
from kernels.host import available_cores, cpu_model

SGEMM_N = 2048  # matrix size of the peak measurement (17 GFLOP a product)
COPY_BYTES = 256 * 2**20  # bytes per array of the bandwidth measurement
REPEATS = 5  # best of this many (twice as many copies: each is short)
LIBRARIES = ("halide", "tensorflow", "torch", "triton", "numpy")  # versions as tags (triton: torch.compile)
NOT_INSTALLED = "not installed"
MISMATCH_LABEL = "gpu_model_mismatch"  # node label and job tag: true | false | unknown | none
DISPATCH_TAG = "dispatch"  # how a record reached its driver: ray | worker-cli


def cache_dir() -> Path:
    """Where measurements are cached: $DSCONV_CACHE_DIR, else ~/.cache/dsconv."""
    return Path(os.environ.get("DSCONV_CACHE_DIR") or Path.home() / ".cache" / "dsconv")


def library_version(name: str) -> str:
    """The installed version of a distribution, or "not installed" (no import: TF and torch are slow)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def gpu_indices() -> list[str]:
    """Indices of this machine's GPUs (`0`, `1`, ...), as many as `gpu_count` says; empty without one."""
    return [str(i) for i in range(int(_gpu_facts().get("gpu_count", 0)))]


def _gpu_facts() -> dict[str, str]:
    """GPU model and driver from nvidia-smi, else from torch where an NVIDIA driver is loaded; empty
    without a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip().splitlines()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            out = []
        if out:
            name, _, driver = out[0].partition(",")
            return {"gpu_model": name.strip(), "gpu_driver": driver.strip(), "gpu_count": str(len(out))}
    has_driver = Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()
    if has_driver and library_version("torch") != NOT_INSTALLED:  # importing torch costs seconds
        try:
            import torch

            if torch.cuda.is_available():
                return {
                    "gpu_model": torch.cuda.get_device_name(0),
                    "gpu_count": str(torch.cuda.device_count()),
                    "cuda_runtime": str(torch.version.cuda),
                }
        except Exception:
            pass
    return {}


@functools.cache
def host_facts() -> dict[str, str]:
    """Host facts for tags and `python -m workers info`: hostname, CPU, cores, versions, GPU."""
    facts = {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": str(available_cores()),
        "python_version": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    facts.update({f"{lib}_version": library_version(lib) for lib in LIBRARIES})
    facts.update(_gpu_facts())
    return facts


# --- measured peak and bandwidth --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostPeak:
    """The host CPU's measured practical fp32 peak and memory bandwidth."""

    peak_gflops: float
    mem_gbps: float
    cpu_model: str
    cores: int
    method: str
    measured_at: str


def measure_sgemm_gflops(n: int = SGEMM_N, repeats: int = REPEATS) -> float:
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


def measure_copy_gbps(
    nbytes: int = COPY_BYTES, repeats: int = 2 * REPEATS, threads: int | None = None
) -> float:
    """Best GB/s of a large copy split over `threads` (default: one per core), read + write bytes."""
    threads = threads or available_cores()
    src = np.ones(nbytes // 4, np.float32)
    dst = np.zeros_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [(dst[lo:hi], src[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repeats + 1):  # the first pass faults the pages in
            t0 = time.perf_counter()
            list(pool.map(lambda p: np.copyto(*p), parts))
            if i:
                best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def measure_gpu_roofs(n: int = 8192, copy_bytes: int = 4 << 30, repeats: int = 10) -> dict[str, float | str]:
    """The GPU's attainable ceilings, measured through PyTorch with CUDA events (median of `repeats`).

    fp32: an n×n×n cuBLAS SGEMM on random data with TF32 off (strict fp32 FMAs, the rate a CUDA-core
    kernel such as Halide's can reach). Bandwidth: a device-to-device copy of `copy_bytes`, counting bytes
    read plus bytes written. These are the roofline's ceilings (`roof_gflops`, `roof_gbps` in the catalog).
    """
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")

    def median_ms(fn: Any) -> float:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return float(np.median(times))

    a, b = (torch.randn(n, n, device=dev) for _ in range(2))
    c = torch.empty(n, n, device=dev)
    gemm_ms = median_ms(lambda: torch.matmul(a, b, out=c))
    src = torch.randn(copy_bytes // 4, device=dev)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    return {
        "gpu": torch.cuda.get_device_name(0),
        "roof_gflops": round(2 * n**3 / (gemm_ms * 1e-3) / 1e9),
        "roof_gbps": round(2 * src.numel() * 4 / (copy_ms * 1e-3) / 1e9),
        "method": f"torch {torch.__version__}: SGEMM {n}^3 TF32 off; D2D copy {copy_bytes >> 20} MiB "
        f"(read+write); CUDA events, median of {repeats}",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cache_path() -> Path:
    return cache_dir() / f"host-{socket.gethostname()}.json"


def cached_host_peak() -> HostPeak | None:
    """The cached measurement of this host, or None when it has not been measured (nothing runs)."""
    return _read_cached(_cache_path(), cpu_model(), available_cores())


def host_peak(refresh: bool = False) -> HostPeak:
    """The host's measured peak and bandwidth, from the per-host cache or measured now (once per host:
    a file lock keeps concurrent workers from measuring at the same time and disturbing each other)."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = _cache_path()
    model, cores = cpu_model(), available_cores()
    with open(directory / f"host-{socket.gethostname()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not refresh:
            cached = _read_cached(path, model, cores)
            if cached is not None:
                return cached
        peak = HostPeak(
            peak_gflops=round(measure_sgemm_gflops(), 1),
            mem_gbps=round(measure_copy_gbps(), 2),
            cpu_model=model,
            cores=cores,
            method=f"numpy sgemm n={SGEMM_N}; {cores}-thread copy of {COPY_BYTES >> 20} MiB (read+write)",
            measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(peak), indent=1))
        os.replace(tmp, path)
        return peak


def _read_cached(path: Path, model: str, cores: int) -> HostPeak | None:
    """The cached measurement if it exists, parses, and was taken on this CPU with these cores."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        peak = HostPeak(**data)
    except (OSError, ValueError, TypeError):
        return None
    if peak.cpu_model != model or peak.cores != cores or peak.peak_gflops <= 0 or peak.mem_gbps <= 0:
        return None
    return peak


def gpu_roofs(refresh: bool = False) -> dict[str, Any]:
    """This node's GPU ceilings (`measure_gpu_roofs`), measured once per GPU model and cached on disk
    under the same lock as the CPU's, so concurrent workers do not measure at the same time."""
    import torch

    name = torch.cuda.get_device_name(0)
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    safe_name = re.sub(r"[^\w.-]", "_", name)
    path = directory / f"gpu-{socket.gethostname()}-{safe_name}.json"
    with open(directory / f"host-{socket.gethostname()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not refresh:
            try:
                cached: dict[str, Any] = json.loads(path.read_text())
                if cached.get("gpu") == name and cached["roof_gflops"] > 0 and cached["roof_gbps"] > 0:
                    return cached
            except (OSError, ValueError, KeyError, TypeError):
                pass
        roofs = measure_gpu_roofs()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(roofs, indent=1))
        os.replace(tmp, path)
        return roofs


def resolve_device(device: DeviceSpec) -> tuple[DeviceSpec, str]:
    """The device with what the catalog leaves unset (0) measured on this node.

    A host CPU's peak, bandwidth and cores; a GPU's attainable ceilings (`roof_gflops`, `roof_gbps`),
    which the roofline floor uses. Returns (device, source): "catalog" when nothing was measured,
    "measured" when a value came from this node; a GPU whose ceilings cannot be measured here (no
    PyTorch) keeps its datasheet rates, and the source says so.
    """
    if device.kind == "cuda":
        if device.roof_gflops > 0 and device.roof_gbps > 0:
            return device, "catalog"
        try:
            roofs = gpu_roofs()
        except Exception as exc:  # no torch / no GPU visible to torch: datasheet rates, said so
            return device, f"datasheet (GPU ceilings not measured: {type(exc).__name__})"
        return (
            dataclasses.replace(
                device,
                roof_gflops=device.roof_gflops or float(roofs["roof_gflops"]),
                roof_gbps=device.roof_gbps or float(roofs["roof_gbps"]),
            ),
            "measured",
        )
    if device.peak_gflops > 0 and device.mem_gbps > 0 and device.cores > 0:
        return device, "catalog"
    if device.peak_gflops > 0 and device.mem_gbps > 0:
        return dataclasses.replace(device, cores=available_cores()), "catalog"
    peak = host_peak()
    return (
        dataclasses.replace(
            device,
            peak_gflops=device.peak_gflops or peak.peak_gflops,
            mem_gbps=device.mem_gbps or peak.mem_gbps,
            cores=device.cores or peak.cores,
        ),
        "measured",
    )


# --- where a job runs ---------------------------------------------------------------------------------
def _node_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "unknown"


def _ray_labels() -> dict[str, str]:
    """The labels of the Ray node this process runs on (a Ray worker), else {}."""
    ray = sys.modules.get("ray")  # only where Ray is already loaded: a Ray worker
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return {}
    labels = ray.get_runtime_context().get_node_labels() or {}
    return {str(k): v if isinstance(v, str) else ",".join(v) for k, v in labels.items()}


def placement(kind: str) -> dict[str, str]:
    """Where a job of device kind `kind` (cpu|cuda) runs, as params: node (hostname), node_ip, node_id,
    node_gpu_model, gpu_index, cuda_visible_devices.

    In a Ray task: the Ray node's id, IP and declared `gpu_model` label, and the GPUs Ray assigned to the
    task. Elsewhere (`python -m workers run`): node_id `none`, the model `none` (nothing declared) and
    the first GPU CUDA_VISIBLE_DEVICES shows (the device the job uses). gpu_index is `none` on a CPU.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    facts = {
        "node": socket.gethostname(),
        "node_ip": _node_ip(),
        "node_id": "none",
        "node_gpu_model": "none",
        "gpu_index": "none" if kind != "cuda" else (visible.split(",")[0].strip() if visible else "0"),
        "cuda_visible_devices": visible if visible is not None else "unset",
    }
    ray = sys.modules.get("ray")  # only where Ray is already loaded: a Ray worker
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ctx = ray.get_runtime_context()
        facts.update(
            node_ip=ray.util.get_node_ip_address(),
            node_id=ctx.get_node_id(),
            node_gpu_model=_ray_labels().get("gpu_model", "none"),
        )
        if kind == "cuda":
            facts["gpu_index"] = ",".join(ctx.get_accelerator_ids().get("GPU", [])) or "none"
    return facts


# --- is the declared GPU model the GPU this node has? ---------------------------------------------------
@functools.cache
def gpu_names() -> dict[str, str]:
    """Physical GPU index → its name as the driver reports it (`nvidia-smi`); {} where none answers."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split(",", 1) for line in out.splitlines() if "," in line)
    return {index.strip(): name.strip() for index, name in pairs}


def visible_gpu_names() -> list[str]:
    """Names of the GPUs this process may use (CUDA_VISIBLE_DEVICES by index respected)."""
    names = gpu_names()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(names.values())
    return [names[i.strip()] for i in visible.split(",") if i.strip() in names]


def _model_words(name: str) -> str:
    """A GPU name reduced for comparison: lower case, no vendor word, no notes in parentheses, no
    punctuation (`NVIDIA H100 80GB HBM3 (SXM5)` and `NVIDIA H100 80GB HBM3` → `h100 80gb hbm3`)."""
    name = re.sub(r"\([^)]*\)", " ", name.lower())
    return " ".join(w for w in re.split(r"[^0-9a-z]+", name) if w and w != "nvidia")


def same_gpu_model(catalog_name: str, gpu_name: str) -> bool:
    """True when the driver's `gpu_name` is the device catalog's model `catalog_name` (its `model:`
    field): the same words, less the vendor and the catalog's notes in parentheses. `NVIDIA H200` is
    `NVIDIA H200 (SXM)`; `NVIDIA H200 NVL`, `NVIDIA GeForce RTX 2060 SUPER` for an RTX 2060 are not."""
    return bool(_model_words(catalog_name)) and _model_words(catalog_name) == _model_words(gpu_name)


def gpu_model_check(catalog_name: str, gpu_names: Sequence[str]) -> str:
    """`false` when every GPU in `gpu_names` is the model `catalog_name`, `true` when one is not,
    `unknown` when there is no GPU name to compare with (a CPU-only node, no driver answering)."""
    if not gpu_names:
        return "unknown"
    return "false" if all(same_gpu_model(catalog_name, n) for n in gpu_names) else "true"


def gpu_identity(device: DeviceSpec, where: Mapping[str, str]) -> dict[str, str]:
    """Tags saying which GPU a job's node really has: `node_gpu_name` (the driver's names of the GPU(s)
    the job used, else of the node's GPUs, else `none`) and `gpu_model_mismatch`: for a CUDA job, its
    device's catalog model against the GPU it ran on; otherwise the node's own check at `make worker` (its
    label), else `unknown` where a model was declared or asked for and `none` where none was."""
    names = gpu_names()
    used = [names[i] for i in where.get("gpu_index", "none").split(",") if i in names]
    if device.kind != "cuda":
        used = []
    node_names = sorted(set(names.values()))
    if used:
        mismatch = gpu_model_check(device.model, used)
    else:
        declared = where.get("node_gpu_model", "none") != "none"
        fallback = "unknown" if declared or device.kind == "cuda" else "none"
        mismatch = _ray_labels().get(MISMATCH_LABEL, fallback)
    return {"node_gpu_name": ",".join(used or node_names) or "none", MISMATCH_LABEL: mismatch}
