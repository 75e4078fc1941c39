"""`python -m workers.paired`: variants timed in turns in one process, for comparisons on a shared machine.

A job times one variant at one moment; on a machine where other work comes and goes (the project's
2-core VM), two jobs of the same code minutes apart differed by 10-40%. Here every variant of a shape is
built once, verified as a job is (fresh inputs, poisoned output, the float64 reference), placed on the
job's timing inputs, then timed by the one harness (`workers.harness.measure`) in `--rounds` rounds, one
variant after the other each round, so that a burst of load falls on all of them alike. Each round takes
the variants in a fresh random order (`--order shuffled`, the default, seeded by `--seed`), as Google
Benchmark's random interleaving does: with a fixed order the variant timed first or second in every round
would carry any effect of its place (none was found on the 2-core VM: a variant's round medians are the same
at every place, results/cpu/heldout_paired/manifest.json). Every variant of a shape reads the same inputs:
the job's timing input set (`--input-sets` N: N sets, rotated in the same order in each variant's rounds,
with colder caches than a job's warm timing) is drawn once for the shape and each variant is placed on it
(on a CPU the very same arrays, no copy). On the 2-core VM the place of a layer's input arrays in memory
alone moved a build's time by 19-40%: four builds of one schedule, each on inputs of its own, kept their
fast or slow times pass after pass, and agreed within 2-7% on one shared set
(results/cpu/heldout_paired/placement.txt), so inputs of its own would give each variant a bias that no
number of rounds removes. Reported per variant: the median over rounds of each round's median, and the
fastest sample.

    python -m workers.paired --shapes 1x80x80x32-16,2x14x14x480-80 \\
        --variants halide_tuned,halide_app,halide_unfused,halide_fused_tile,halide_fused_cblock \\
        --option halide_tuned:on_miss=heuristic [--rounds 6] [--order shuffled|fixed] [--seed 0] \\
        [--input-sets 1] [--tolerance 1e-4] [--out DIR [--experiment NAME]]

Builds use the variants' options as given (`--option VARIANT:KEY=VALUE`, JSON values); a `halide_tuned`
build that would search (a miss with `on_miss=quick`) is refused: the search is the job layer's, so give it
the entries (`tuning_db=...`) or another `on_miss`. The device is the host CPU (a GPU: `--gpu KEY`, the first
visible one as the catalog's entry KEY, such as `h200`: its model, which the tuning database keys on, and its
SM count, which the reports read; a KEY the catalog lacks is the GPU's own properties, recorded as KEY), with
its rates as a job resolves them (`workers.roofs`).

With `--out DIR` the results are also a results bundle (`workers.bundle`), one record per variant and shape
in the jobs' record format (`workers.job.base_record`: the job's params, the host's tags, the git commit and
library versions as `planned.*`), appended once a shape's rounds are done, with:

- param `timing.method` = `paired` (a job's record has none), `timing.rounds`, `timing.round_medians_ms`
  (JSON list, one per round), `timing.paired_with` (the variants timed in turns), `timing.order`
  (`fixed`, or `shuffled` with the seed), `timing.round_positions` (JSON list: its place in each round,
  0 first), `timing.input_sets_used` (the input sets every variant of the shape was timed on, the same
  for all: `timing.inputs` = `shared`);
- metrics `time_ms` = the median of the round medians, `time_min_ms` = the fastest sample of any round,
  `time_p25_ms` / `time_p75_ms` / `time_spread` = the quartiles of the round medians, `samples` and
  `timing_s` summed over the rounds, `call_ms` the median of the rounds' `call_ms`;
- tags `started_at` / `ended_at`: the shape's comparison, from the first build to the last round.

`orchestrator.report.fusion_rule` judges question 3 on such records where a (device, shape) has them.
Bad input: one line naming the valid choices, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernels import registry
from kernels.device import DeviceSpec, catalog_gpu, visible_gpu
from kernels.layer import LayerShape, make_inputs
from workers import bundle, harness, hostinfo, roofs
from workers import job as jobs
from workers.schema import Job, Record, TimingSpec

SPEC = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)-(\d+)(?:s(\d))?$")
ROUND_TIMING = TimingSpec(
    warmup=2, min_repeats=10, max_repeats=60, min_time_s=0.2, max_time_s=0.6, stable_spread=0.05
)
METHOD = "paired"  # param timing.method of a record timed in turns
ORDERS = ("shuffled", "fixed")  # how each round orders the variants
INPUT_SETS = 1  # timing input sets a shape's variants share (the job's warm timing uses one)
DEFAULT_EXPERIMENT = "paired"


class PairedError(ValueError):
    """Bad input; one line."""


@dataclass
class Turns:
    """One variant of a comparison: its job (what its record describes), build, verification and the
    harness's timing of each round."""

    job: Job
    built: Any
    placed: list[Any]
    rel_error: float
    build_s: float
    verify_s: float
    rounds: list[harness.Timing] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # its place in each round (0: timed first)

    @property
    def medians_ms(self) -> list[float]:
        """Each round's median (ms)."""
        return [t.time_ms for t in self.rounds]

    @property
    def median_ms(self) -> float:
        """The median of the round medians (ms)."""
        return statistics.median(self.medians_ms)

    @property
    def fastest_ms(self) -> float:
        """The fastest sample of any round (ms)."""
        return min(t.min_ms for t in self.rounds)

    def timing(self) -> harness.Timing:
        """The rounds as one Timing (the first round's cache treatment and clocks): `time_ms` the median of
        the round medians, `min_ms` the fastest sample, the quartiles and spread of the round medians,
        samples and sampling time summed, `call_ms` the median of the rounds'; no kernel split or note."""
        medians, median = self.medians_ms, self.median_ms
        p25, p75 = (float(v) for v in np.percentile(medians, [25, 75]))
        return dataclasses.replace(
            self.rounds[0],
            time_ms=median,
            min_ms=self.fastest_ms,
            p25_ms=p25,
            p75_ms=p75,
            spread=(p75 - p25) / median if median > 0 else math.inf,
            call_ms=statistics.median(r.call_ms for r in self.rounds),
            samples=sum(r.samples for r in self.rounds),
            call_samples=sum(r.call_samples for r in self.rounds),
            stable=all(r.stable for r in self.rounds),
            elapsed_s=sum(r.elapsed_s for r in self.rounds),
            note="",
            kernels={},
        )


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
    shape: LayerShape,
    device: DeviceSpec,
    options: Mapping[str, Mapping[str, Any]],
    rounds: int,
    tolerance: float,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    versions: Mapping[str, str] | None = None,
    seed: int = 0,
    order: str = "shuffled",
    input_sets: int = INPUT_SETS,
) -> dict[str, Turns]:
    """Build and verify each variant of `options` (variant -> build options) on `shape`, then time them
    in turns, `rounds` rounds, each round in a random order drawn from `seed` (`order="shuffled"`) or in
    the order of `options` (`"fixed"`), every variant on the same `input_sets` input sets (the job's
    timing inputs, drawn once); each variant's Turns, in the order of `options`."""
    if order not in ORDERS:
        raise PairedError(f"order {order!r}: expected one of {', '.join(ORDERS)}")
    if input_sets < 1:
        raise PairedError(f"input sets must be >= 1, got {input_sets}")
    turns: dict[str, Turns] = {}
    # the job's timing inputs (`workers.job.time_job`'s seeds), drawn once: every variant reads these arrays
    shared = [make_inputs(shape, jobs.derive_seed(seed, jobs.TIMING, i)) for i in range(input_sets)]
    try:
        for variant, opts in options.items():
            job = Job(experiment, variant, shape, device, ROUND_TIMING, tolerance, seed, dict(opts),
                      dict(versions or {}))  # fmt: skip
            entry = registry.get(variant)
            reason = entry.skip_reason(shape, device)
            if reason:
                raise PairedError(f"{variant} cannot run on {shape.label}: {reason}")
            t0 = time.perf_counter()
            try:
                built = entry.build(shape, device, job.options)
            except ValueError as exc:  # an option the variant does not take here: bad input, one line
                raise PairedError(f"{variant} on {shape.label}: {exc}") from exc
            build_s = time.perf_counter() - t0
            alternatives = getattr(built, "alternatives", None)
            if alternatives is not None and alternatives.trials:
                raise PairedError(
                    f"{variant} on {shape.label} is a miss that would search (on_miss=quick, a job's "
                    f"search): give {variant}:tuning_db=PATH with its entries, or "
                    f"{variant}:on_miss=heuristic or rank"
                )
            t0 = time.perf_counter()
            error, detail = jobs.verify(built, job)
            if not error <= tolerance:
                raise PairedError(f"{variant} on {shape.label}: {detail}")
            verify_s = time.perf_counter() - t0
            placed = [built.place(inputs) for inputs in shared]  # once, for every round
            turns[variant] = Turns(job, built, placed, error, build_s, verify_s)
    finally:
        jobs.verification_case.cache_clear()  # a large layer's reference is hundreds of MB
    draw = random.Random(seed)
    for _ in range(rounds):
        now = list(turns.values())
        if order == "shuffled":
            draw.shuffle(now)
        for place, t in enumerate(now):
            t.positions.append(place)
            t.rounds.append(harness.measure(t.built, t.placed, ROUND_TIMING, device))
    return turns


def records(
    turns: Mapping[str, Turns],
    device: DeviceSpec,
    peak_source: str,
    started: float,
    ended: float,
    *,
    order: str,
) -> list[Record]:
    """One ok Record per variant of a comparison, in the jobs' format, saying it was timed in turns
    (`order`: how `compare` ordered each round; `timing.order` adds the seed of a shuffled one)."""
    out = []
    for variant, t in turns.items():
        shape, entry = t.job.shape, registry.get(variant)
        record = jobs.base_record(t.job)
        record.params["framework"] = entry.framework
        jobs.take_device(record, device, peak_source)
        jobs.take_build(record, t.built)
        record.params.update(
            {
                "timing.method": METHOD,
                "timing.rounds": str(len(t.rounds)),
                "timing.round_medians_ms": json.dumps([float(f"{m:.7g}") for m in t.medians_ms]),
                "timing.paired_with": ",".join(turns),
                "timing.order": order if order == "fixed" else f"{order} (seed {t.job.seed})",
                "timing.round_positions": json.dumps(t.positions),
                "timing.input_sets_used": str(len(t.placed)),
                "timing.inputs": "shared",
            }
        )
        record.metrics.update(rel_error=t.rel_error, build_s=t.build_s, verify_s=t.verify_s)
        record.metrics["rounds"] = float(len(t.rounds))
        jobs.take_timing(record, t.timing(), shape, device, shape.min_bytes, tf32="tf32" in entry.tags)
        record.params.update(hostinfo.placement(device.kind))
        record.tags.update(status="ok", started_at=f"{started:.6f}", ended_at=f"{ended:.6f}")
        record.tags.update(started=jobs.iso_time(started), ended=jobs.iso_time(ended))
        out.append(record)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.paired", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="inline specs, comma-separated")
    parser.add_argument(
        "--variants", required=True, help="registered variants, comma-separated; the first is compared"
    )
    parser.add_argument("--option", action="append", default=[], help="VARIANT:KEY=VALUE (repeatable)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--order", default="shuffled",
        help="each round's order of the variants: shuffled (a fresh random one, seeded by --seed) or fixed "
        "(the given one)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="inputs' and rounds' order seed")
    parser.add_argument(
        "--input-sets", type=int, default=INPUT_SETS,
        help="input sets drawn once a shape, the same for every variant, rotated in each round",
    )  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--gpu", nargs="?", const="gpu", metavar="KEY",
        help="time on the first visible GPU instead of the host CPU, as the catalog's device KEY (e.g. h200: "
        "its model, which the tuning database keys on, and its SM count; default: gpu, the GPU's own "
        "properties)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the records as a results bundle in DIR")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="the records' experiment")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        variants = [v for v in args.variants.split(",") if v]
        for v in variants:
            registry.get(v)
        options = parse_options(args.option, variants)
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
        if args.rounds < 1:
            raise PairedError(f"--rounds must be >= 1, got {args.rounds}")
        if args.input_sets < 1:
            raise PairedError(f"--input-sets must be >= 1, got {args.input_sets}")
        if args.order not in ORDERS:
            raise PairedError(f"--order {args.order!r}: expected one of {', '.join(ORDERS)}")
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise PairedError(f"--out {args.out} is a file, not a folder for a results bundle")
    except (PairedError, registry.UnknownVariantError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        device = DeviceSpec("cpu", "cpu", "host CPU", 0.0, 0.0)
        if args.gpu:
            device = visible_gpu() if args.gpu == "gpu" else catalog_gpu(args.gpu)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device, peak_source = roofs.resolve_device(device)  # the rates a job of this device would record
    versions = hostinfo.code_versions()
    first = variants[0]
    command = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`python -m workers.paired {command}`, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"\n| shape | {' | '.join(f'`{v}`' for v in variants)} | `{first}` / best other |")
    print("|---|" + "---|" * (len(variants) + 1))
    for shape in shapes:
        started = time.time()
        try:
            result = compare(
                shape, device, options, args.rounds, args.tolerance,
                experiment=args.experiment, versions=versions, seed=args.seed, order=args.order,
                input_sets=args.input_sets,
            )  # fmt: skip
        except PairedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ended = time.time()
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            for record in records(result, device, peak_source, started, ended, order=args.order):
                bundle.append_record(args.out, record)
        others = [r.median_ms for v, r in result.items() if v != first]
        ratio = f"{result[first].median_ms / min(others):.2f}" if others else "—"
        cells = [f"{result[v].median_ms:.4g} ({result[v].fastest_ms:.4g})" for v in variants]
        print(f"| `{shape.name}` | {' | '.join(cells)} | {ratio} |", flush=True)
    print(f"\nms: median over {args.rounds} rounds of each round's median (fastest sample in brackets).")
    if args.out is not None:
        print(f"records: {args.out / bundle.RECORDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
