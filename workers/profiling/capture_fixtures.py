"""Capture the Nsight Compute fixtures of `tests/test_profiling.py` on a GPU, through the real runner.

    python -m workers.profiling.capture_fixtures capture OUT_DIR [--cases ...]   # needs a GPU, ncu,
                                                                                  # Halide and torch
    python -m workers.profiling.capture_fixtures target CASE [launch options]    # the profiled process

The cases: the layer of `kernels.halide.algorithm` as a Halide CUDA pipeline with a fixed schedule of
the capture's own (so fixtures can be re-captured whatever the project's schedules have become), fused
(one kernel) or unfused (depthwise and output: two kernels a run), and cuDNN through PyTorch as the
`cudnn_cl` variant runs it (`kernels.torch_layer`: depthwise conv2d with groups=C in channels-last, then
the 1x1 conv with bias, then ReLU; strict fp32), without cuDNN's benchmark search.
Each case is checked against the float64 reference before it is profiled. `capture` also profiles
the unfused case with warm-ups skipped by count and by tail, to check all three skip modes agree,
and tries Nsight Systems. OUT_DIR/summary.json says what happened.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kernels import cudnn_variants
from kernels.layer import LayerInputs, LayerShape, make_inputs, reference, relative_l2_error
from workers.profiling import ncu, parse, procs
from workers.profiling.runner import profile_target
from workers.profiling.settings import ProfileSettings
from workers.profiling.target import add_launch_arguments, serve

SHAPE = LayerShape("app", n=4, h=112, w=112, c=32, co=16, stride=1)  # the official app's shape
CASES = ("halide_fused", "halide_unfused", "cudnn")
HALIDE_FILTER = r"^_kernel_(depthwise|pointwise|output)_"
MODULE = "workers.profiling.capture_fixtures"


class HalideLayer:
    """The layer of `kernels.halide.algorithm` as a Halide CUDA pipeline (Built protocol), with a fixed
    schedule of its own, fused (one kernel) or unfused (depthwise and output: two), so the fixtures do
    not move when the project's schedules do; buffers resident on the device."""

    def __init__(self, shape: LayerShape, fused: bool) -> None:
        import halide as hl

        from kernels.halide import algorithm

        self.hl, self.shape = hl, shape
        self.target = hl.get_host_target().with_feature(hl.TargetFeature.CUDA)
        self.target = self.target.with_feature(hl.TargetFeature.CUDACapability86)
        self.kernel_filter = HALIDE_FILTER
        self.artifacts: dict[str, str] = {}
        L = algorithm.define(shape)
        c, x, y, n = L.c, L.x, L.y, L.n
        depthwise, pointwise, output = L.depthwise, L.pointwise, L.output

        guard = hl.TailStrategy.GuardWithIf
        co, ci, xo, xi, yn = hl.Var("co"), hl.Var("ci"), hl.Var("xo"), hl.Var("xi"), hl.Var("yn")
        output.split(c, co, ci, 16, guard).split(x, xo, xi, 16, guard).reorder(ci, xi, co, xo, y, n)
        output.fuse(y, n, yn).gpu_blocks(co, xo, yn).gpu_threads(ci, xi)
        pointwise.compute_at(output, ci)
        dco, dci = hl.Var("dco"), hl.Var("dci")
        if fused:  # depthwise tile in shared memory, computed by the output's block
            depthwise.compute_at(output, co).split(c, dco, dci, 32, guard).reorder(dci, x, dco, y, n)
            depthwise.gpu_threads(dci, x)
        else:  # depthwise to global memory in a kernel of its own
            dxo, dxi, dyn = hl.Var("dxo"), hl.Var("dxi"), hl.Var("dyn")
            depthwise.compute_root().split(c, dco, dci, 32, guard).split(x, dxo, dxi, 8, guard)
            depthwise.reorder(dci, dxi, dco, dxo, y, n).fuse(y, n, dyn).gpu_blocks(dco, dxo, dyn)
            depthwise.gpu_threads(dci, dxi)

        self.pipeline = L.pipeline()
        self.arguments = L.arguments
        t0 = time.perf_counter()
        self.fn = self.pipeline.compile_to_callable(self.arguments, self.target)
        self.compile_s = time.perf_counter() - t0
        self._last_out: Any = None

    def place(self, inputs: LayerInputs) -> dict[str, Any]:
        hl, s = self.hl, self.shape
        arrays = [np.ascontiguousarray(a) for a in (inputs.x, inputs.dw, inputs.pw, inputs.bias)]
        buffers = [hl.Buffer(a) for a in arrays]
        for buffer in buffers:
            buffer.set_host_dirty(True)
            buffer.copy_to_device(self.target)
        out = hl.Buffer(hl.Float(32), [s.co, s.wo, s.ho, s.n])
        out.device_malloc(self.target)
        self._last_out = out  # Halide syncs per buffer: sync() waits on the last placed output
        return {"arrays": arrays, "buffers": buffers, "out": out}

    def poison(self, placed: dict[str, Any]) -> None:
        np.asarray(placed["out"])[...] = np.nan
        placed["out"].set_host_dirty(True)
        placed["out"].copy_to_device(self.target)

    def run(self, placed: dict[str, Any]) -> None:
        self.fn(*placed["buffers"], placed["out"])

    def sync(self) -> None:
        if self._last_out is not None:
            self._last_out.device_sync()

    def fetch(self, placed: dict[str, Any]) -> np.ndarray:
        placed["out"].copy_to_host()
        return np.asarray(placed["out"]).copy()  # Halide (co, x, y, n) reads as NumPy (n, y, x, co)


def build_case(case: str) -> tuple[Any, str]:
    """The Built object and framework of a capture case."""
    if case == "halide_fused":
        return HalideLayer(SHAPE, fused=True), "halide"
    if case == "halide_unfused":
        return HalideLayer(SHAPE, fused=False), "halide"
    if case == "cudnn":  # the registered cudnn_cl variant (strict fp32), cuDNN's default algorithm choice
        return cudnn_variants.build(cudnn_variants.CudnnSpec("cl"), SHAPE, "cuda", benchmark=False), "cudnn"
    raise ValueError(f"unknown capture case {case!r}; valid cases: {', '.join(CASES)}")


def check_case(case: str) -> float:
    """Relative L2 error of one run of `case` against the float64 reference (poisoned output first)."""
    built, _ = build_case(case)
    inputs = make_inputs(SHAPE, 1)
    placed = built.place(inputs)
    built.poison(placed)
    built.run(placed)
    built.sync()
    return relative_l2_error(built.fetch(placed), reference(SHAPE, inputs))


def capture(out_dir: Path, cases: list[str], settings: ProfileSettings) -> dict[str, Any]:
    """Profile every case through `profile_target`, plus the extra checks; returns (and writes) a summary."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    capability = 10 * major + minor
    summary: dict[str, Any] = {"device": torch.cuda.get_device_name(), "capability": capability, "cases": {}}
    exe = ncu.find_ncu(settings.ncu_path)
    for case in cases:
        print(f"capturing {case}", flush=True)
        entry: dict[str, Any] = {"rel_error": check_case(case)}
        target = procs.python_argv(settings.python, MODULE, "target", case)
        t0 = time.perf_counter()
        result = profile_target(target, "ncu", settings, out_dir / case, SHAPE, capability)
        entry.update(
            wall_s=time.perf_counter() - t0,
            status=result.status,
            metrics=result.metrics,
            tags=result.tags,
            artifacts={k: str(v) for k, v in result.artifacts.items()},
        )
        report = result.artifacts.get("report.ncu-rep")
        if report and exe:  # the same report in ncu's default (auto-scaled) units, for the unit tests
            auto = procs.run([exe, "--import", str(report), "--csv", "--page", "raw"], 300, cwd=out_dir)
            (out_dir / case / "report_auto_units.csv").write_text(auto.output)
        summary["cases"][case] = entry
        _dump(out_dir, summary)

    if "halide_unfused" in cases and exe:  # the other two skip modes must find the same kernels
        target = procs.python_argv(settings.python, MODULE, "target", "halide_unfused")
        no_nvtx = dataclasses.replace(settings, nvtx=False)
        for mode, plan in (
            ("count", ncu.plan_launches(no_nvtx, None, 2)),
            ("tail", ncu.plan_launches(no_nvtx, None, None)),
        ):
            cap = ncu.capture(exe, target, HALIDE_FILTER, no_nvtx, plan, out_dir / f"unfused_{mode}")
            parsed = parse.summarize(cap.kernels, runs=plan.runs)
            summary[f"unfused_{mode}"] = {
                "status": cap.status,
                "plan": dataclasses.asdict(plan),
                "kernels_profiled": len(cap.kernels),
                "kernels_per_run": parsed.kernels_per_run,
                "names": [k.name for k in cap.kernels],
                "duration_us": parsed.metrics.get("ncu.sum.duration_us"),
            }
            _dump(out_dir, summary)
    if cases:
        target = procs.python_argv(settings.python, MODULE, "target", cases[0])
        timeline = profile_target(target, "nsys", settings, out_dir / "nsys", SHAPE, capability)
        summary["nsys"] = {"status": timeline.status, "metrics": timeline.metrics}
    _dump(out_dir, summary)
    return summary


def _dump(out_dir: Path, summary: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="profile every case and write fixtures under OUT_DIR")
    cap.add_argument("out_dir", type=Path)
    cap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    cap.add_argument("--warmup", type=int, default=2)
    cap.add_argument("--runs", type=int, default=2)
    tgt = sub.add_parser("target", help="the profiled process of one case")
    tgt.add_argument("case", choices=CASES)
    add_launch_arguments(tgt)
    args = parser.parse_args(argv)
    if args.command == "target":
        return serve(args, lambda: build_case(args.case), SHAPE, seed=2)
    settings = ProfileSettings(warmup=args.warmup, runs=args.runs, timeout_s=240)
    summary = capture(args.out_dir, args.cases, settings)
    print(json.dumps(summary, indent=1, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
