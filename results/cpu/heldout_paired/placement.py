"""Four builds of one schedule timed in turns, each on input arrays of its own, then all on one shared
input set: does a build's time follow its code or the place of its inputs in memory? With `--rotate K`,
also each build on K input sets of its own, rotated call by call (as the harness rotates a cold timing's
sets): does spreading a build over several places even the builds out?

    .venv/bin/python results/cpu/heldout_paired/placement.py [SHAPE] [--variant V] [--gpu] [--rotate K]

Wall time per call (ms, the median of 8 rounds' medians, `workers.paired.ROUND_TIMING`), the builds taken in
a fresh random order each round; then, for each build's own input array `x`, the share of its pages the
kernel backs with transparent huge pages (/proc/self/pagemap and /proc/kpageflags: needs root) and its
offset in a 4 KiB and a 2 MiB page, to tell placement effects apart. The evidence behind `workers.paired`
placing every variant on the same inputs (earlier-runs.md)."""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import struct
import time

from kernels import registry
from kernels.device import DeviceSpec, visible_gpu
from kernels.layer import make_inputs
from workers import harness
from workers.paired import ROUND_TIMING, parse_shape

ROUNDS, BUILDS = 8, 4


def in_turns(pairs: list[tuple[object, list[object]]], device: DeviceSpec, seed: int) -> list[float]:
    """Each (build, placed inputs) timed once a round, ROUNDS rounds in shuffled order: medians (ms)."""
    times: list[list[float]] = [[] for _ in pairs]
    draw = random.Random(seed)
    for _ in range(ROUNDS):
        order = list(range(len(pairs)))
        draw.shuffle(order)
        for i in order:
            built, placed = pairs[i]
            times[i].append(harness.measure(built, placed, ROUND_TIMING, device).time_ms)
    return [statistics.median(t) for t in times]


def huge_page_share(a: object) -> str:
    """The share of `a`'s pages (every 64th) backed by a transparent huge page, or why it is unknown."""
    try:
        with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as flags:
            start = a.ctypes.data // 4096  # type: ignore[attr-defined]
            end = (a.ctypes.data + a.nbytes) // 4096  # type: ignore[attr-defined]
            huge = seen = 0
            for page in range(start, end, 64):
                pagemap.seek(8 * page)
                entry = struct.unpack("<Q", pagemap.read(8))[0]
                if entry >> 63 and entry & ((1 << 55) - 1):
                    flags.seek(8 * (entry & ((1 << 55) - 1)))
                    huge += (struct.unpack("<Q", flags.read(8))[0] >> 22) & 1  # KPF_THP
                    seen += 1
            return f"{huge / seen:.2f}" if seen else "no pages seen (needs root)"
    except OSError as exc:
        return f"unknown ({exc.strerror})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", nargs="?", default="64x14x14x576-96")
    parser.add_argument("--variant", default="halide_fused_tile")
    parser.add_argument("--gpu", action="store_true", help="the first visible GPU (each build's device copy)")
    parser.add_argument("--rotate", type=int, default=0, help="also K input sets of its own a build, rotated")
    args = parser.parse_args()
    shape = parse_shape(args.shape)
    device = visible_gpu() if args.gpu else DeviceSpec("cpu", "cpu", "host CPU", 0.0, 0.0)
    builds = [registry.get(args.variant).build(shape, device, {}) for _ in range(BUILDS)]
    own = [[b.place(make_inputs(shape, 7))] for b in builds]
    one = make_inputs(shape, 7)
    shared = [[b.place(one)] for b in builds]
    where = device.model if device.is_gpu else platform.machine()
    print(f"{args.variant} x {BUILDS} builds at {shape.name}, {where}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    modes = [("own inputs", own), ("one shared set", shared)]
    if args.rotate > 1:
        rotated = [[b.place(make_inputs(shape, 7 + k)) for k in range(args.rotate)] for b in builds]
        modes.append((f"{args.rotate} own, rotated", rotated))
    for seed, (label, placed) in enumerate(modes * 2):
        ms = in_turns(list(zip(builds, placed, strict=True)), device, seed)
        spread = max(ms) / min(ms) - 1
        print(f"{label:>17}: " + "  ".join(f"{m:.4g}" for m in ms) + f" ms, spread {spread:.0%}")
    for i, placed in enumerate(own if not device.is_gpu else []):
        x = placed[0].arrays[0]
        offsets = f"{x.ctypes.data % 4096} B in 4 KiB, {x.ctypes.data % (2 << 20) >> 10} KiB in 2 MiB"
        print(f"build {i}'s own x: huge-page share {huge_page_share(x)}, offset {offsets}")


if __name__ == "__main__":
    main()
