"""Build, verify and roughly time every Halide CUDA schedule on a few shapes, on the GPU at hand.

    python -m kernels.halide.selfcheck --device h100 [--out results.json]

A smoke test for a GPU node (no Ray, MLflow or TensorFlow needed): each schedule is built for the
device of the catalog (`conf/catalog/devices.yaml`; the GPU's own SM count and capability when the
catalog is unreadable), verified against the float64 reference on poisoned outputs, and timed with
a plain loop of launches on resident buffers followed by one device sync (`ms_per_call`, launch
overhead included) and, where torch's profiler can see Halide's kernels, their device time per call
(`kernel_ms`). Rough numbers: kernel timing belongs to the worker's harness.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from kernels.device import DeviceSpec, catalog_gpu
from kernels.halide import builder, names
from kernels.halide.targets import cuda_target, require_device
from kernels.layer import LayerShape, make_inputs, reference, relative_l2_error

SHAPES = (
    LayerShape("app", n=4, h=112, w=112, c=32, co=16),
    LayerShape("mbv1_14_512_s1_b32", n=32, h=14, w=14, c=512, co=512),
    LayerShape("mbv1_7_1024_s1_b32", n=32, h=7, w=7, c=1024, co=1024),
    LayerShape("awkward", n=2, h=13, w=11, c=24, co=40, stride=2),
    LayerShape("tiny", n=1, h=9, w=7, c=3, co=5, bias=False),
)


def check_one(name: str, shape: LayerShape, device: DeviceSpec, calls: int) -> dict[str, Any]:
    """Build, verify and time one schedule on one shape; failures are reported, not raised."""
    row: dict[str, Any] = {"schedule": name, "shape": shape.label}
    try:
        built = builder.build(name, shape, device, {})
        row["compile_s"] = round(built.compile_s, 3)
        inputs = make_inputs(shape, 1)
        placed = built.place(inputs)
        built.poison(placed)
        built.run(placed)
        built.sync()
        row["rel_error"] = relative_l2_error(built.fetch(placed), reference(shape, inputs))
        for _ in range(3):
            built.run(placed)
        built.sync()
        start = time.perf_counter()
        for _ in range(calls):
            built.run(placed)
        built.sync()
        row["ms_per_call"] = round((time.perf_counter() - start) / calls * 1e3, 4)
        row["gflops"] = round(shape.flops / (row["ms_per_call"] * 1e6), 1)
        row["kernel_ms"] = _kernel_ms(built, placed)
        row["kernels"] = sorted(set(_kernels(built.artifacts.get("kernels.ptx", ""))))
        row["status"] = "ok" if row["rel_error"] < 1e-4 else "wrong"
    except Exception as exc:
        row["status"] = "failed"
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        row["trace"] = traceback.format_exc(limit=3)[-800:]
    return row


def _kernel_ms(built: Any, placed: Any, calls: int = 10) -> float | None:
    """Device time of the Halide kernels per call, as torch's profiler (CUPTI) sees them, if it can."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.init()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                built.run(placed)
            built.sync()
        total_us = 0.0
        for event in prof.key_averages():
            if event.key.startswith("_kernel_"):
                total_us += getattr(event, "self_device_time_total", 0.0) or 0.0
        return round(total_us / calls / 1e3, 4) if total_us else None
    except Exception:
        return None


def _kernels(ptx: str) -> list[str]:
    return re.findall(r"\.entry\s+(\w+)\(", ptx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="h100", help="device catalog key (default h100)")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per schedule")
    parser.add_argument(
        "--schedules", default=",".join(s for s in names.SCHEDULES if "cuda" in names.SCHEDULE_KINDS[s])
    )
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    for name in args.schedules.split(","):
        names.check_schedule(name, "cuda")
    by_name = {s.name: s for s in SHAPES}
    unknown = [s for s in args.shapes.split(",") if s not in by_name]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; valid shapes: {', '.join(by_name)}")
    device = catalog_gpu(args.device)
    require_device(cuda_target(device))  # before any CUDA compilation
    print(f"device: {device.model} (SMs {device.sm_count}, capability {device.cuda_capability})", flush=True)
    rows = []
    for shape_name in args.shapes.split(","):
        shape = by_name[shape_name]
        for name in args.schedules.split(","):
            row = check_one(name, shape, device, args.calls)
            rows.append(row)
            shown = {k: v for k, v in row.items() if k not in ("trace", "shape", "schedule")}
            print(f"{shape.label:24s} {name:20s} {json.dumps(shown)}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": device.__dict__, "rows": rows}, indent=1))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
