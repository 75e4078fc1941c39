"""Question 3 as a rule: the family's cost model chooses between the named unfused schedule and the best
named fused one (`kernels.halide.family.cost.fusion_choice`); how often does it pick the faster?

A measured pair is a (device, layer geometry) with an ok warm `halide_unfused` record and an ok record
of at least one fused schedule (`halide_app`, `halide_fused_tile`, `halide_fused_cblock`); the faster
side is the lower median of each variant's records (repeated runs of a job count once each). The model
needs the device's SM count and capability, which records do not carry: they come from the device
catalog (conf/catalog/devices.yaml) by the record's device key; its rates are the record's (measured
where it has them).

Two kinds of records time a pair. A job's record times one variant at one moment (`python -m workers
run`, Ray); records timed in turns (`python -m workers.paired --out`, param `timing.method=paired`) time
the variants of a shape one after another, round after round, in one process, so that load from other
work falls on both sides alike: on a shared machine (the 2-vCPU CPU, where two jobs of the same code
minutes apart differ by 10-40%) they are the comparison the project trusts. The score (`score`) therefore
judges a (device, geometry) on its records timed in turns where any bundle has them, and on its job
records otherwise (`judge`, which reads only job records; `judge(..., in_turns=True)` only the others);
the table says which source each pair used and the summary line how many pairs came from each. A pair timed
in turns is `undecided` where its rounds do not tell its sides apart (`sign_test`: two-sided, over the rounds
of one run each side won, p above `SIGN_TEST_P`); the summary line gives the score on the decided pairs
beside the score on all. (A CPU's
device key is `cpu` whatever the host, as in the reports: records of one CPU geometry from two hosts
would meet in one pair.)

    python -m orchestrator.report.fusion_rule                 # every bundle under results/
    python -m orchestrator.report.fusion_rule results/cpu/heldout results/cpu/heldout_paired

A bundle whose `quick` searches stored their trials (`quick-db.json`: every candidate, the named schedules
among them, timed one after another in one process) gets a second table, `judge_trials`: the same choice
against those timings, a cross-check, not part of the score.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kernels.device import DeviceSpec
from kernels.halide.family.cost import fusion_choice
from kernels.halide.tuned import parse_key
from kernels.layer import LayerShape
from orchestrator.config import CONF_DIR
from orchestrator.report.analysis import FUSED, UNFUSED
from orchestrator.report.load import (
    ReportInputError,
    bundle_rows,
    bundles_from_args,
    is_cold,
    shape_of,
)
from workers.paired import METHOD as IN_TURNS

QUICK_DB = "quick-db.json"  # a bundle's copy of the entries its quick searches stored, trials included
FUSED_NAMES = ("app", "fused_tile", "fused_cblock")  # the fused named schedules, as quick's trials name them
NEAR_TIE = 0.05  # a pair whose two sides differ by less than this fraction is a near tie
# A pair timed in turns is undecided where the rounds do not tell its sides apart: the two-sided sign test
# of the rounds the faster side won, against a coin, above this p-value (6 rounds all one way: p = 0.031).
SIGN_TEST_P = 0.05
JOBS = "jobs"  # a verdict's `source`: job records, or records timed in turns (IN_TURNS)


def _catalog() -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "catalog" / "devices.yaml"), resolve=True)  # type: ignore[return-value]


def device_of(row: Mapping[str, Any], catalog: Mapping[str, Any]) -> DeviceSpec | None:
    """The row's device as the cost model needs it: rates from the record, SMs and capability from the
    catalog (None for a GPU the catalog does not have)."""
    key = str(row.get("device_key") or row.get("device") or "")
    kind = str(row.get("device_kind") or ("cuda" if key != "cpu" else "cpu"))
    entry = catalog.get(key) if isinstance(catalog.get(key), Mapping) else {}
    if kind == "cuda" and not entry:
        return None
    return DeviceSpec(
        name=key,
        kind=kind,
        model=str(row.get("device_model", key)),
        peak_gflops=float(row.get("datasheet_gflops") or row.get("peak_gflops") or 0.0),
        mem_gbps=float(row.get("datasheet_gbps") or row.get("mem_gbps") or 0.0),
        sm_count=int(entry.get("sm_count", 0)),  # type: ignore[union-attr]
        cuda_capability=int(entry.get("cuda_capability", 0)),  # type: ignore[union-attr]
        cores=int(row.get("cores") or 0),
        fma_gflops=float(row.get("fma_gflops") or 0.0),
        dram_gbps=float(row.get("dram_gbps") or 0.0),
    )


def timed_in_turns(row: Mapping[str, Any]) -> bool:
    """Whether a record was timed in turns with other variants (`workers.paired`), not as one job."""
    return str(row.get("timing.method", "")) == IN_TURNS


def judge(
    rows: Iterable[Mapping[str, Any]], metric: str = "time_ms", *, in_turns: bool = False
) -> list[dict[str, Any]]:
    """One entry per measured pair: the two sides' times (`metric` of their records: the median
    `time_ms`, or `time_min_ms`, the fastest sample, which load from other work does not raise), the
    faster side, the rule's choice, whether they agree and by how much the faster side wins. Only job
    records count (records timed in turns are left out), or, with `in_turns`, only records timed in
    turns."""
    return [verdict for _, verdict in _judged(rows, metric, in_turns)]


def score(rows: Iterable[Mapping[str, Any]], metric: str = "time_ms") -> list[dict[str, Any]]:
    """The rule's score: `judge`'s entries, a (device, geometry) judged on its records timed in turns
    where it has any and on its job records otherwise; each entry's `source` says which (`jobs`, or
    `paired` with the median `rounds`)."""
    rows = list(rows)
    chosen = dict(_judged(rows, metric, in_turns=False))
    chosen.update(_judged(rows, metric, in_turns=True))
    return [chosen[key] for key in sorted(chosen)]


def _judged(
    rows: Iterable[Mapping[str, Any]], metric: str, in_turns: bool
) -> list[tuple[tuple[str, tuple[Any, ...]], dict[str, Any]]]:
    """`judge`'s entries with their (device key, geometry), of job records or of records timed in turns."""
    catalog = _catalog()
    times: dict[tuple[str, tuple[Any, ...]], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    rounds: dict[tuple[str, tuple[Any, ...]], list[float]] = defaultdict(list)
    first: dict[tuple[str, tuple[Any, ...]], Mapping[str, Any]] = {}
    # per pair, per run (its bundle and variant list), per variant: the rounds' medians in order
    per_round: dict[tuple[str, tuple[Any, ...]], dict[tuple[str, str], dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        if r.get("status") != "ok" or not (r.get(metric) or 0) > 0 or is_cold(r):
            continue
        if r.get("variant") not in (UNFUSED, *FUSED) or timed_in_turns(r) != in_turns:
            continue
        shape = shape_of(r)
        if shape is None:
            continue
        geometry = (shape.n, shape.h, shape.w, shape.c, shape.co, shape.stride, shape.bias, shape.relu)
        key = (str(r.get("device_key") or r.get("device")), geometry)
        times[key][str(r["variant"])].append(float(r[metric]))
        rounds[key].append(float(r.get("rounds") or 0))
        if in_turns:  # rounds pair up within one run of `workers.paired` (its bundle and variant list)
            run = (str(r.get("source")), str(r.get("timing.paired_with")))
            per_round[key][run][str(r["variant"])].extend(_round_medians(r))
        first.setdefault(key, r)
    out = []
    for key, by_variant in sorted(times.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        fused = {v: statistics.median(t) for v, t in by_variant.items() if v in FUSED}
        if UNFUSED not in by_variant or not fused:
            continue
        row = first[key]
        device, shape = device_of(row, catalog), shape_of(row)
        if device is None or shape is None:
            continue
        verdict = _verdict(device, shape, statistics.median(by_variant[UNFUSED]), fused)
        verdict["source"] = IN_TURNS if in_turns else JOBS
        if in_turns:
            verdict["rounds"] = int(statistics.median(rounds[key]))
            runs = [v for v in per_round[key].values() if UNFUSED in v and verdict["best_fused"] in v]
            verdict["p_sign"] = sign_test(
                [t for v in runs for t in v[UNFUSED]], [t for v in runs for t in v[verdict["best_fused"]]]
            )
        out.append((key, verdict))
    return out


def _round_medians(row: Mapping[str, Any]) -> list[float]:
    """The median of each round of a record timed in turns (param `timing.round_medians_ms`), in order."""
    try:
        return [float(v) for v in json.loads(str(row.get("timing.round_medians_ms") or "[]"))]
    except (ValueError, TypeError):
        return []


def sign_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sided sign test's p-value that `a` and `b`, timed round by round (a[i] and b[i] in round i),
    are each as likely to be the faster in a round: how surprising the count of rounds `b` won is for a
    coin. None where the rounds do not pair up (different counts) or there are none; tied rounds count
    for neither side."""
    if not a or len(a) != len(b):
        return None
    wins = sum(y < x for x, y in zip(a, b, strict=True))
    n = sum(y != x for x, y in zip(a, b, strict=True))
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, n - wins) + 1)) / 2**n
    return min(1.0, 2 * tail)


def undecided(j: Mapping[str, Any]) -> bool:
    """Whether the pair's rounds in turns do not tell its two sides apart (`SIGN_TEST_P`); job records,
    with no rounds, are never undecided here."""
    p = j.get("p_sign")
    return p is not None and p > SIGN_TEST_P


def _verdict(
    device: DeviceSpec, shape: LayerShape, unfused_ms: float, fused: Mapping[str, float]
) -> dict[str, Any]:
    """One measured pair judged: `unfused_ms` against the fastest of `fused` (variant -> ms), and the
    cost model's choice for (`shape`, `device`)."""
    best = min(fused, key=lambda v: fused[v])
    faster = "fused" if fused[best] < unfused_ms else "unfused"
    rule = fusion_choice(shape, device)
    return {
        "device": device.name,
        "shape": f"{shape.n}x{shape.h}x{shape.w}x{shape.c}-{shape.co}s{shape.stride}",
        "unfused_ms": unfused_ms,
        "best_fused": best,
        "fused_ms": fused[best],
        "faster": faster,
        "rule": rule,
        "agree": rule == faster,
        "margin": max(unfused_ms, fused[best]) / min(unfused_ms, fused[best]) - 1,
    }


def judge_trials(db_path: Path, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`judge`'s entries from the trials of the `quick` searches stored in `db_path`: per entry, the
    trials of `named:unfused` against the best of `named:app`, `named:fused_tile` and `named:fused_cblock`
    (their quick-timing medians); the device's rates come from `rows` (the bundle's records of it)."""
    catalog = _catalog()
    devices: dict[str, DeviceSpec] = {}
    for r in rows:
        key = str(r.get("device_key") or r.get("device") or "")
        if key not in devices and r.get("status") == "ok":
            spec = device_of(r, catalog)
            if spec is not None:
                devices[key] = spec
    out = []
    for key, entry in json.loads(db_path.read_text()).get("entries", {}).items():
        device, parsed = devices.get(str(entry.get("device"))), parse_key(key)
        trials = {
            str(t["origin"]): float(t["time_ms"])
            for t in entry.get("trials", [])
            if t.get("outcome") == "ok" and (t.get("time_ms") or 0) > 0
        }
        fused = {f"halide_{v}": trials[f"named:{v}"] for v in FUSED_NAMES if f"named:{v}" in trials}
        if device is None or parsed is None or "named:unfused" not in trials or not fused:
            continue
        out.append(_verdict(device, parsed[0], trials["named:unfused"], fused))
    return sorted(out, key=lambda j: (j["device"], j["shape"]))


def _source(j: Mapping[str, Any]) -> str:
    if j.get("source") == IN_TURNS:
        return f"in turns ({j.get('rounds', '?')} rounds)"
    return "jobs" if j.get("source") == JOBS else "quick's trials"


def _table(judged: Sequence[Mapping[str, Any]]) -> None:
    print("| device | shape | halide_unfused ms | best fused | ms | faster | rule | timed | |")
    print("|---|---|---|---|---|---|---|---|---|")
    for j in judged:
        mark = "" if j["agree"] else f"miss ({100 * j['margin']:.1f}% apart)"
        if undecided(j):
            mark = f"{mark}, " if mark else ""
            mark += f"undecided (sign test over the rounds p = {j['p_sign']:.2g})"
        print(
            f"| {j['device']} | {j['shape']} | {j['unfused_ms']:.4g} | {j['best_fused']} "
            f"| {j['fused_ms']:.4g} "
            f"| {j['faster']} | {j['rule']} | {_source(j)} | {mark} |"
        )


def summary_line(judged: Sequence[Mapping[str, Any]], sources: bool = False) -> str:
    """`picks the faster on A of N pairs (P%); M misses, K of them near ties (...)`; where rounds in turns
    leave pairs undecided (`undecided`), how many and the score on the rest; and, with `sources`,
    `; T pairs judged on timings in turns, J on job records` (`score`'s entries)."""
    if not judged:
        return "no measured pair (an ok halide_unfused and an ok fused schedule on one shape and device)"
    agree = sum(j["agree"] for j in judged)
    misses = [j for j in judged if not j["agree"]]
    ties = sum(j["margin"] < NEAR_TIE for j in misses)
    line = f"picks the faster on {agree} of {len(judged)} pairs ({100 * agree / len(judged):.0f}%)"
    if misses:
        line += f"; {len(misses)} misses, {ties} of them near ties (the two within {100 * NEAR_TIE:.0f}%)"
    open_pairs = [j for j in judged if undecided(j)]
    if open_pairs:
        decided = [j for j in judged if not undecided(j)]
        right = sum(j["agree"] for j in decided)
        line += (
            f"; {len(open_pairs)} pairs ({sum(not j['agree'] for j in open_pairs)} of the misses) undecided "
            f"by their rounds in turns (sign test p > {SIGN_TEST_P})"
        )
        if decided:
            share = 100 * right / len(decided)
            line += f": on the other {len(decided)} it picks the faster on {right} ({share:.0f}%)"
    if sources:
        used = [j.get("source") for j in judged]
        line += (
            f"; {used.count(IN_TURNS)} pairs judged on timings in turns, {used.count(JOBS)} on job records"
        )
    return line


def main(argv: Sequence[str] | None = None) -> int:
    try:
        bundles = bundles_from_args(sys.argv[1:] if argv is None else argv)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    judged = score(bundle_rows(bundles))
    _table(judged)
    print(f"\nThe cost model's rule {summary_line(judged, sources=True)}, over {len(bundles)} bundle(s).")
    for bundle in bundles:
        db = bundle / QUICK_DB
        trials = judge_trials(db, bundle_rows([bundle])) if db.is_file() else []
        if trials:
            print(f"\nCross-check, not the score: the named schedules as quick timed them ({db}):\n")
            _table(trials)
            print(f"\nAgainst those trials the rule {summary_line(trials)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
