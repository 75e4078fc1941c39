"""The Halide targets a build compiles for, and what the host gives Halide (threads, vector unit).

Halide is imported inside the functions that need it, not at the top: this module is read by the
family's space and heuristic and by the tuning database, which the driver uses to plan a search, and
by the variant registry, whose listing must not need Halide (a missing framework disables its variants
with a reason instead of breaking the import).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from typing import Any

from kernels.device import DeviceSpec

# Halide 21's CUDA capability features; a newer GPU runs the highest one's PTX through the driver.
CUDA_CAPABILITIES = (30, 32, 35, 50, 61, 70, 75, 80, 86)


def halide_version() -> str:
    """The installed Halide's version (part of every cache key and tuning-database key)."""
    try:
        return importlib.metadata.version("halide")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def host_threads() -> int:
    """Threads Halide's pool will use (HL_NUM_THREADS, else every core): sets the parallel grain."""
    env = os.environ.get("HL_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1


def cuda_capability_feature(capability: int) -> Any:
    """The highest Halide `cuda_capability_XX` feature not above min(capability, 86)."""
    import halide as hl

    usable = [c for c in CUDA_CAPABILITIES if c <= min(capability, CUDA_CAPABILITIES[-1])]
    if not usable:
        raise ValueError(
            f"CUDA capability {capability} is below Halide's lowest ({CUDA_CAPABILITIES[0]}); "
            f"valid capabilities: {', '.join(map(str, CUDA_CAPABILITIES))} or newer"
        )
    return getattr(hl.TargetFeature, f"CUDACapability{usable[-1]}")


def cpu_target() -> Any:
    """The host CPU target (every ISA feature of this machine), for ahead-of-time compilation."""
    import halide as hl

    return hl.get_host_target()


def cuda_target(device: DeviceSpec) -> Any:
    """The host target plus CUDA at the device's capability (capped at Halide's highest, 86)."""
    import halide as hl

    if not device.is_gpu:
        raise ValueError(f"device {device.name!r} is a {device.kind}, not a CUDA GPU")
    return (
        hl.get_host_target()
        .with_feature(hl.TargetFeature.CUDA)
        .with_feature(cuda_capability_feature(device.cuda_capability))
    )


def vector_lanes(target: Any) -> int:
    """fp32 lanes of the target's natural vector (16 with AVX-512, 8 with AVX2)."""
    import halide as hl

    return target.natural_vector_size(hl.Float(32))


def vector_registers(target: Any) -> int:
    """Vector registers of the target's register file."""
    import halide as hl

    wide = target.has_feature(hl.TargetFeature.AVX512_Skylake) or (
        target.arch == hl.TargetArch.ARM and target.bits == 64
    )
    return 32 if wide else 16


def host_vector() -> tuple[int, int]:
    """(fp32 lanes of the natural vector, vector registers) of this host's CPU target."""
    target = cpu_target()
    return vector_lanes(target), vector_registers(target)


@functools.cache
def _device_usable(target_string: str) -> bool:
    import halide as hl

    return bool(hl.host_supports_target_device(hl.Target(target_string)))


def require_device(target: Any) -> None:
    """Raise a clear error when this host cannot run `target`'s device code (no GPU or driver):
    Halide aborts the process instead of raising if a device operation is attempted. Asked once per
    process and target, before any CUDA compilation: asked after a JIT compilation for the same
    target, Halide 21 can answer False on a host whose GPU runs that code."""
    if not _device_usable(target.to_string()):
        raise RuntimeError(f"no usable CUDA device for Halide target {target.to_string()} on this host")
