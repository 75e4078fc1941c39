"""What a variant needs to know about the device it is built for: one entry of the device catalog."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

KINDS = ("cpu", "cuda")
CATALOG = Path(__file__).resolve().parents[1] / "conf" / "catalog" / "devices.yaml"


@dataclass(frozen=True)
class DeviceSpec:
    """A device model from the catalog (`conf/catalog/devices.yaml`), resolved for one job.

    `peak_gflops` is the datasheet's fp32 FMA peak (not a tensor-core rate) and `mem_gbps` its DRAM
    bandwidth, for `% of peak`; on the host CPU, which has no datasheet here, both are measured. The
    roofline's roofs are measured on the device (`workers.roofs`, `python -m workers info --measure`):

    - compute: `fma_gflops`, the fp32 FMA peak of a register-resident FMA kernel (Halide); `tf32_gflops`,
      the datasheet's TF32 tensor-core peak, for variants that run TF32. `sgemm_gflops` (cuBLAS or NumPy
      SGEMM, TF32 off) is the *attainable* line beside them, never a roof: kernels beat it.
    - memory: `cache_gbps`, the read bandwidth of the last cache level (`cache_bytes`: the GPU's L2, the
      CPU's last-level cache), where the layer's working set fits and the timing keeps it warm;
      `dram_gbps` otherwise.

    A roof left at 0 falls back to the datasheet (`peak_gflops`, `mem_gbps`): see `compute_roof`,
    `memory_roof`.
    """

    name: str  # catalog key: cpu, rtx2060, rtx2080ti, rtx3070, h100, ...
    kind: str  # cpu | cuda
    model: str  # human name, e.g. "NVIDIA RTX 2060"
    peak_gflops: float
    mem_gbps: float
    sm_count: int = 0  # streaming multiprocessors (0 on a CPU)
    cuda_capability: int = 0  # e.g. 75 for sm_75 (0 on a CPU)
    cores: int = 0  # CPU cores used (0 on a GPU)
    fma_gflops: float = 0.0  # measured fp32 FMA peak (GFLOP/s); 0 = use peak_gflops
    tf32_gflops: float = 0.0  # datasheet TF32 tensor-core peak, dense (GFLOP/s); 0 = none
    sgemm_gflops: float = 0.0  # measured SGEMM, TF32 off: the attainable line (not a roof); 0 = unknown
    cache_gbps: float = 0.0  # measured read bandwidth of the last cache level (GB/s); 0 = unknown
    cache_bytes: int = 0  # size of that level (GPU L2, CPU last-level cache); 0 = unknown
    dram_gbps: float = 0.0  # measured DRAM read bandwidth (GB/s); 0 = use mem_gbps

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"device {self.name!r}: kind must be one of {list(KINDS)}, got {self.kind!r}")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def cache_level(self) -> str:
        """The name of the cache level of `cache_gbps`: L2 on a GPU, LLC (last-level cache) on a CPU."""
        return "L2" if self.is_gpu else "LLC"

    def compute_roof(self, tf32: bool = False) -> tuple[float, str]:
        """(GFLOP/s, what it is) of the compute roof: the TF32 tensor-core peak for a TF32 variant where
        the device has one, else the measured FMA peak, else the datasheet's (0 when none is known)."""
        if tf32 and self.tf32_gflops > 0:
            return self.tf32_gflops, "TF32 tensor-core peak (datasheet)"
        if self.fma_gflops > 0:
            return self.fma_gflops, "fp32 FMA peak (measured)"
        return self.peak_gflops, "fp32 FMA peak (datasheet)"

    def memory_roof(self, resident_bytes: int, cold: bool = False) -> tuple[float, str]:
        """(GB/s, level) of the memory roof for a working set of `resident_bytes`: the cache level's
        bandwidth where the set fits in it and the timing does not flush it (`cold`), else DRAM's
        (measured, else the datasheet's)."""
        if not cold and self.cache_gbps > 0 and 0 < resident_bytes <= self.cache_bytes:
            return self.cache_gbps, self.cache_level
        return self.dram_gbps or self.mem_gbps, "DRAM"


LEGACY_FIELDS = ("roof_gflops", "roof_gbps")  # DeviceSpec fields of older job files (SGEMM, copy): dropped


def visible_gpu(name: str = "gpu", peak_gflops: float = 0.0, mem_gbps: float = 0.0) -> DeviceSpec:
    """The GPU torch sees first, as a DeviceSpec: its model, SM count and CUDA capability, with the rates
    given (0: unknown). For building and verifying on a GPU the catalog has no entry for. A ValueError
    says why when there is none to see (no PyTorch, or no CUDA GPU visible to it)."""
    try:
        import torch
    except ModuleNotFoundError:
        raise ValueError("reading the GPU's properties needs PyTorch (install the `torch` extra)") from None
    if not torch.cuda.is_available():
        raise ValueError("PyTorch sees no CUDA GPU on this machine")
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    return DeviceSpec(
        name, "cuda", props.name, peak_gflops, mem_gbps, props.multi_processor_count, 10 * major + minor
    )


def catalog_gpu(name: str, catalog: Path = CATALOG) -> DeviceSpec:
    """The catalog's entry for the GPU `name` (its model is what tuning/db.json keys on), checked against
    the GPU torch sees first (SM count and compute capability: a ValueError names both when they differ);
    where the catalog has no such key, or cannot be read (no PyYAML on a bare node), the visible GPU's own
    properties, with a line on stderr saying why."""
    try:
        import yaml

        entries = yaml.safe_load(catalog.read_text())
    except Exception as exc:
        print(f"device catalog unreadable ({exc!r}); using the GPU's own properties", file=sys.stderr)
        return visible_gpu(name)
    if name not in entries:
        gpus = [k for k, v in entries.items() if isinstance(v, dict) and v.get("kind") == "cuda"]
        print(
            f"{name!r} is not in the device catalog (its GPUs: {', '.join(gpus)}); using the GPU's own "
            "properties",
            file=sys.stderr,
        )
        return visible_gpu(name)
    entry = entries[name]
    device = DeviceSpec(name=name, **entry)
    seen = visible_gpu(name)
    if (seen.sm_count, seen.cuda_capability) != (device.sm_count, device.cuda_capability):
        raise ValueError(
            f"GPU {name!r} is {device.model} ({device.sm_count} SMs, sm_{device.cuda_capability}) in the "
            f"catalog, but the visible GPU is {seen.model} ({seen.sm_count} SMs, sm_{seen.cuda_capability})"
        )
    return device
