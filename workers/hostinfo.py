"""Facts about the host a job runs on (CPU, cores, library versions, GPUs) and where a job runs.

The device's measured ceilings (the roofline's roofs) are `workers.roofs`'; they cache beside each other
in `cache_dir()`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kernels.device import DeviceSpec
from kernels.host import available_cores, cpu_model

LIBRARIES = ("halide", "tensorflow", "torch", "triton", "numpy")  # versions as tags (triton: torch.compile)
NOT_INSTALLED = "not installed"
KEY_LIBRARIES = ("halide", "tensorflow", "torch")  # versions that enter a job's key when installed
REPO_ROOT = Path(__file__).resolve().parents[1]
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


def git_commit(repo: str = str(REPO_ROOT)) -> str:
    """HEAD's commit, with `-dirty` when tracked files differ from it; `unknown` outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def code_versions(libraries: Sequence[str] = KEY_LIBRARIES, repo: str = str(REPO_ROOT)) -> dict[str, str]:
    """Code and library versions that identify a measurement (a job's `versions`, its key's part): the
    git commit of `repo` and the installed versions of `libraries` (those not installed left out)."""
    found = {"git": git_commit(repo)}
    for lib in libraries:
        version = library_version(lib)
        if version != NOT_INSTALLED:
            found[lib] = version
    return found


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
