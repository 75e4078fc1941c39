"""`python -m workers.paired`: variants timed in turns in one process, for comparisons on a shared machine.

A job times one variant at one moment; on a machine where other work comes and goes (the project's
2-core VM), two jobs of the same code minutes apart differed by 10-40%. Here every variant of a shape is
built once, verified, placed on the same inputs, then timed by the one harness in `--rounds` rounds, one
variant after the other each round, so that a burst of load falls on all of them alike. Reported per
variant: the median over rounds of each round's median, and the fastest sample.

    python -m workers.paired --shapes 1x80x80x32-16,2x14x14x480-80 \\
        --variants halide_tuned,halide_app,halide_unfused,halide_fused_tile,halide_fused_cblock \\
        --option halide_tuned:on_miss=heuristic [--rounds 6] [--tolerance 1e-4]

Builds use the variants' options as given (`--option VARIANT:KEY=VALUE`, JSON values); the device is the
host CPU (a GPU: `--gpu`, the first visible one). Bad input: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from kernels import registry
from kernels.device import DeviceSpec, visible_gpu
from kernels.layer import LayerShape, make_inputs, reference, relative_l2_error
from workers import harness
from workers.schema import TimingSpec

SPEC = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)-(\d+)(?:s(\d))?$")
ROUND_TIMING = TimingSpec(
    warmup=2, min_repeats=10, max_repeats=60, min_time_s=0.2, max_time_s=0.6, stable_spread=0.05
)


class PairedError(ValueError):
    """Bad input; one line."""


def parse_shape(text: str) -> LayerShape:
    m = SPEC.match(text)
    if m is None:
        raise PairedError(f"shape {text!r} is not an inline spec NxHxWxC-CO[sS] such as 1x30x30x24-40s2")
    n, h, w, c, co = (int(v) for v in m.groups()[:5])
    return LayerShape(text, n, h, w, c, co, int(m.group(6) or 1))


def parse_options(pairs: Sequence[str], variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {v: {} for v in variants}
    for pair in pairs:
        variant, _, setting = pair.partition(":")
        key, _, value = setting.partition("=")
        if variant not in out or not key or not value:
            raise PairedError(
                f"--option {pair!r}: expected VARIANT:KEY=VALUE with VARIANT one of {', '.join(variants)}"
            )
        try:
            out[variant][key] = json.loads(value)
        except json.JSONDecodeError:
            out[variant][key] = value
    return out


def compare(
    shape: LayerShape, device: DeviceSpec, options: dict[str, dict[str, Any]], rounds: int, tolerance: float
) -> dict[str, dict[str, float]]:
    """Each variant's median of round medians and fastest sample (ms) on `shape`, timed in turns."""
    inputs = make_inputs(shape, 1)
    expected = reference(shape, inputs)
    built, placed = {}, {}
    for variant, opts in options.items():
        b = registry.get(variant).build(shape, device, opts)
        p = b.place(inputs)
        b.poison(p)
        b.run(p)
        b.sync()
        error = relative_l2_error(b.fetch(p), expected)
        if not error <= tolerance:
            raise PairedError(f"{variant} on {shape.label}: relative error {error:.3g} > {tolerance:g}")
        built[variant], placed[variant] = b, [p]
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in built}
    for _ in range(rounds):
        for variant, b in built.items():
            t = harness.measure(b, placed[variant], ROUND_TIMING, device)
            times[variant].append((t.time_ms, t.min_ms))
    return {
        v: {"median_ms": statistics.median(m for m, _ in ts), "fastest_ms": min(f for _, f in ts)}
        for v, ts in times.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.paired", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="inline specs, comma-separated")
    parser.add_argument(
        "--variants", required=True, help="registered variants, comma-separated; the first is compared"
    )
    parser.add_argument("--option", action="append", default=[], help="VARIANT:KEY=VALUE (repeatable)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--gpu", action="store_true", help="time on the first visible GPU instead of the host CPU"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        variants = [v for v in args.variants.split(",") if v]
        for v in variants:
            registry.get(v)
        options = parse_options(args.option, variants)
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
        if args.rounds < 1:
            raise PairedError(f"--rounds must be >= 1, got {args.rounds}")
    except (PairedError, registry.UnknownVariantError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = visible_gpu() if args.gpu else DeviceSpec("cpu", "cpu", "host CPU", 0.0, 0.0)
    first = variants[0]
    command = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`python -m workers.paired {command}`, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"\n| shape | {' | '.join(f'`{v}`' for v in variants)} | `{first}` / best other |")
    print("|---|" + "---|" * (len(variants) + 1))
    for shape in shapes:
        try:
            result = compare(shape, device, options, args.rounds, args.tolerance)
        except PairedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        others = min(r["median_ms"] for v, r in result.items() if v != first)
        cells = [f"{result[v]['median_ms']:.4g} ({result[v]['fastest_ms']:.4g})" for v in variants]
        print(
            f"| `{shape.name}` | {' | '.join(cells)} | {result[first]['median_ms'] / others:.2f} |",
            flush=True,
        )
    print(f"\nms: median over {args.rounds} rounds of each round's median (fastest sample in brackets).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
