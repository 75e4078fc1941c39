"""Does a kernel's time depend on where its buffers lie in device memory? A probe, not a benchmark.

    python -m workers.placement JOBS.json --out DIR [--only SUBSTRING] [--offsets 0,2,4] [--modes between]

Why: where a kernel's inputs and output are about the size of the GPU's L2 (32x28x28x256->256 on an
H100: 51.6 MB against 50 MB), which cache lines conflict depends on the buffers' physical addresses, and
timing runs of one build can fall into groups by run (docs/evidence/kernels.md, "placement"). How much of
a warm-cache time is the placement of the buffers?

For each job (Halide variants on a CUDA device), built and verified as `workers.job` does it, the probe
times the kernel with the one harness and the job's own timing spec on a fresh input set placed after a
spacer allocation of each offset (MiB):

- `before`: the spacer is allocated ahead of the whole set, so every buffer moves;
- `between`: the inputs are placed first, then the spacer, then the output, so the output moves against
  the inputs.

It also measures the job cold (`TimingSpec.cold_cache`: L2 flushed before each call, where torch runs
CUDA; else input sets rotated past twice the L2). Rows go to
DIR/placement.jsonl, one per measurement, and a table of each job's fastest, median and slowest
placement to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kernels import registry
from kernels.device import DeviceSpec
from kernels.layer import make_inputs
from workers import harness
from workers.__main__ import CliError, load_jobs
from workers.job import TIMING, derive_seed, time_job, verify
from workers.schema import Job
from workers.table import print_rows

MODES = ("before", "between")
DEFAULT_OFFSETS_MIB = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
MIB = 2**20


class _Spacer:
    """`mib` MiB of device memory allocated through Halide's runtime (the allocator the buffers use)."""

    def __init__(self, mib: int, target: str) -> None:
        import halide as hl

        self.buffer = None
        if mib > 0:
            self.buffer = hl.Buffer(hl.Float(32), [mib * MIB // 4])
            code = self.buffer.device_malloc(hl.DeviceAPI.CUDA, hl.Target(target))
            if code != 0:
                raise RuntimeError(f"device_malloc of a {mib} MiB spacer failed with error {code}")

    def free(self) -> None:
        if self.buffer is not None:
            self.buffer.device_free()
            self.buffer = None


def _place(built: Any, job: Job, mode: str, mib: int, index: int) -> tuple[Any, _Spacer]:
    """One fresh timing input set, placed after a spacer of `mib` MiB (`mode`: before it, or before
    only its output); returns the set and the spacer (to free after timing)."""
    import halide as hl

    inputs = make_inputs(job.shape, derive_seed(job.seed, TIMING, index))
    if mode == "before":
        spacer = _Spacer(mib, built.target)
        return built.place(inputs), spacer
    placed = built.place(inputs)
    out = placed.buffers[-1]  # Halide's Placed: the output buffer is last
    out.device_free()
    spacer = _Spacer(mib, built.target)
    code = out.device_malloc(hl.DeviceAPI.CUDA, hl.Target(built.target))
    if code != 0:
        raise RuntimeError(f"device_malloc of the output failed with error {code}")
    return placed, spacer


def _row(job: Job, mode: str, mib: int | None, timing: harness.Timing) -> dict[str, Any]:
    return {
        "key": job.key,
        "variant": job.variant,
        "shape": job.shape.name,
        "mode": mode,
        "offset_mib": mib,
        "time_ms": timing.time_ms,
        "p25_ms": timing.p25_ms,
        "p75_ms": timing.p75_ms,
        "samples": timing.samples,
        "stable": timing.stable,
        "time_source": timing.time_source,
    }


def probe(job: Job, offsets: Sequence[int], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Build and verify `job`, then time it at each (mode, offset) and cold; one row per measurement."""
    if not job.variant.startswith("halide") or job.device.kind != "cuda":
        raise CliError(
            f"{job.key}: the probe places Halide buffers on a CUDA device, "
            f"not {job.variant} on {job.device.kind}"
        )
    variant = registry.get(job.variant)
    reason = variant.skip_reason(job.shape, job.device)
    if reason:
        raise CliError(f"{job.key}: cannot run here: {reason}")
    # The job's own device: the probe derives nothing from the roofs that `roofs.resolve_device` would
    # measure (FMA peak, L2 and DRAM reads and an SGEMM on a node without its cache), and no build reads them.
    device: DeviceSpec = job.device
    try:
        built = variant.build(job.shape, device, job.options)
        error, detail = verify(built, job)
    except Exception as exc:  # one line for the table; the worker's own runs keep tracebacks
        raise CliError(f"{job.key}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None
    if not error <= job.tolerance:
        raise CliError(f"{job.key}: wrong answer ({detail}); not timed")
    rows = []
    index = 0
    for mode in modes:
        for mib in offsets:
            placed, spacer = _place(built, job, mode, mib, index)
            index += 1
            try:
                rows.append(_row(job, mode, mib, harness.measure(built, [placed], job.timing, device)))
            finally:
                spacer.free()
                for buffer in placed.buffers:  # the set's device memory, before the next set is placed
                    buffer.device_free()
            print(
                f"  {job.shape.name} {mode:7s} {mib:3d} MiB  {rows[-1]['time_ms'] * 1e3:8.1f} µs", flush=True
            )
    cold = dataclasses.replace(job, timing=dataclasses.replace(job.timing, cold_cache=True))
    timing, n_sets = time_job(built, cold, device, first=index)
    rows.append(_row(job, f"cold ({timing.cold_cache}, {n_sets} sets)", None, timing))
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Per job and mode: the fastest, median and slowest placement's time (µs), and the cold time."""
    out = []
    for key in dict.fromkeys(r["key"] for r in rows):
        mine = [r for r in rows if r["key"] == key]
        for mode in dict.fromkeys(r["mode"] for r in mine):
            t = np.array([r["time_ms"] for r in mine if r["mode"] == mode]) * 1e3
            out.append(
                {
                    "shape": mine[0]["shape"],
                    "variant": mine[0]["variant"],
                    "mode": mode,
                    "placements": str(len(t)),
                    "fastest_us": f"{t.min():.1f}",
                    "median_us": f"{np.median(t):.1f}",
                    "slowest_us": f"{t.max():.1f}",
                }
            )
    return out


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated MiB such as 0,2,4, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"offsets must be >= 0 MiB, got {text!r}")
    return values


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(text.split(","))
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown mode {bad[0]!r}; valid modes: {', '.join(MODES)}")
    return modes


def main(argv: Sequence[str] | None = None) -> int:
    """Probe every job of JOBS.json whose key contains each --only substring; bad input exits 2."""
    parser = argparse.ArgumentParser(prog="python -m workers.placement", description=__doc__.split("\n")[0])
    parser.add_argument("jobs", type=Path, help="JSON: a list of Job dicts (an export's jobs.json)")
    parser.add_argument("--out", type=Path, required=True, help="directory for placement.jsonl")
    parser.add_argument(
        "--only", action="append", default=[], metavar="SUBSTRING", help="keep jobs whose key contains it"
    )
    parser.add_argument(
        "--offsets", type=_ints, default=DEFAULT_OFFSETS_MIB, help="spacer sizes, MiB (default %(default)s)"
    )
    parser.add_argument(
        "--modes", type=_modes, default=MODES, help=f"where the spacer goes: {', '.join(MODES)}"
    )
    args = parser.parse_args(argv)
    try:
        jobs = [j for j in load_jobs(args.jobs) if all(s in j.key for s in args.only)]
        if not jobs:
            raise CliError(f"no job of {args.jobs} matches --only {args.only}")
        args.out.mkdir(parents=True, exist_ok=True)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    failed = 0
    with open(args.out / "placement.jsonl", "a") as f:
        for job in jobs:
            print(f"{job.key}", flush=True)
            try:
                found = probe(job, args.offsets, args.modes)
            except CliError as exc:  # this job only: the others are still probed
                print(f"  not probed: {exc}", file=sys.stderr)
                failed += 1
                continue
            for row in found:
                f.write(json.dumps(row) + "\n")
            rows.extend(found)
    if not rows:
        return 1
    print_rows(summary(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
