"""What a variant needs to know about the device it is built for: one entry of the device catalog."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("cpu", "cuda")


@dataclass(frozen=True)
class DeviceSpec:
    """A device model from the catalog (`conf/catalog/devices.yaml`), resolved for one job.

    `peak_gflops` is the fp32 FMA peak (not a tensor-core rate); `mem_gbps` is DRAM bandwidth: the
    datasheet's, for `% of peak`. `roof_gflops` / `roof_gbps` are the ceilings measured on the device
    (`python -m workers info --measure-gpu`), which the roofline floor uses when present: a floor no
    code reaches is not a floor. For the host CPU, peak and bandwidth are measured on the machine.
    """

    name: str  # catalog key: cpu, rtx2060, rtx2080ti, rtx3070, h100, ...
    kind: str  # cpu | cuda
    model: str  # human name, e.g. "NVIDIA RTX 2060"
    peak_gflops: float
    mem_gbps: float
    sm_count: int = 0  # streaming multiprocessors (0 on a CPU)
    cuda_capability: int = 0  # e.g. 75 for sm_75 (0 on a CPU)
    cores: int = 0  # CPU cores used (0 on a GPU)
    roof_gflops: float = 0.0  # measured attainable fp32 rate (e.g. cuBLAS SGEMM); 0 = use peak_gflops
    roof_gbps: float = 0.0  # measured attainable DRAM bandwidth (a large copy); 0 = use mem_gbps

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"device {self.name!r}: kind must be one of {list(KINDS)}, got {self.kind!r}")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def roofs(self) -> tuple[float, float]:
        """(GFLOP/s, GB/s) of the roofline: measured ceilings where the catalog has them, else datasheet."""
        return (self.roof_gflops or self.peak_gflops, self.roof_gbps or self.mem_gbps)


def visible_gpu(name: str = "gpu", peak_gflops: float = 0.0, mem_gbps: float = 0.0) -> DeviceSpec:
    """The GPU torch sees first, as a DeviceSpec: its model, SM count and CUDA capability, with the rates
    given (0: unknown). For building and verifying on a GPU the catalog has no entry for."""
    import torch

    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    return DeviceSpec(
        name, "cuda", props.name, peak_gflops, mem_gbps, props.multi_processor_count, 10 * major + minor
    )
