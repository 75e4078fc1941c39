"""Facts about the host a job runs on (CPU, cores, library versions, GPUs) and where a job runs.

The device's measured ceilings (the roofline's roofs) are `workers.roofs`'; they cache beside each other
in `cache_dir()`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from kernels.host import available_cores, cpu_model

LIBRARIES = ("halide", "tensorflow", "torch", "triton", "numpy")  # versions as tags (triton: torch.compile)
NOT_INSTALLED = "not installed"


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


# --- where a job runs ---------------------------------------------------------------------------------
def _node_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "unknown"


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
        model = (ctx.get_node_labels() or {}).get("gpu_model", "none")
        facts.update(
            node_ip=ray.util.get_node_ip_address(),
            node_id=ctx.get_node_id(),
            node_gpu_model=model if isinstance(model, str) else ",".join(model),
        )
        if kind == "cuda":
            facts["gpu_index"] = ",".join(ctx.get_accelerator_ids().get("GPU", [])) or "none"
    return facts
