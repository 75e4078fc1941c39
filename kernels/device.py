"""What a variant needs to know about the device it is built for: one entry of the device catalog."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("cpu", "cuda")


@dataclass(frozen=True)
class DeviceSpec:
    """A device model from the catalog (`conf/catalog/devices.yaml`), resolved for one job.

    `peak_gflops` is the fp32 FMA peak (not a tensor-core rate); `mem_gbps` is DRAM bandwidth.
    For the host CPU both are measured on the machine unless configured.
    """

    name: str  # catalog key: cpu, rtx2060, rtx2080ti, rtx3070, h100, ...
    kind: str  # cpu | cuda
    model: str  # human name, e.g. "NVIDIA RTX 2060"
    peak_gflops: float
    mem_gbps: float
    sm_count: int = 0  # streaming multiprocessors (0 on a CPU)
    cuda_capability: int = 0  # e.g. 75 for sm_75 (0 on a CPU)
    cores: int = 0  # CPU cores used (0 on a GPU)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"device {self.name!r}: kind must be one of {list(KINDS)}, got {self.kind!r}")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"
