"""`python -m orchestrator.results`: the committed results tree (results/), kept lean and described.

    python -m orchestrator.results manifest BUNDLE [BUNDLE ...] [--command TEXT] [--note TEXT]
    python -m orchestrator.results pool [TREE]          (default results/)

`manifest` writes each bundle's manifest.json: the command that produced it (as given: a bundle cannot
know the commands run on another machine; "unknown" when not given), the commit its jobs were planned at,
the dates its jobs ran, the machine and the versions, all read from the bundle itself (its records'
tags, `gpu.txt`, the last `wall` line of `run.log`), with `derived_from` saying where each came from.
Nothing is guessed: a fact the bundle does not hold is "unknown". An existing manifest (an export's) keeps
its keys; derived keys are added where missing, and --command / --note replace theirs.

`pool` moves every bundle's shared/ schedule sources into TREE/sources/, one copy per digest
(`workers.bundle.pool_sources`), after a new bundle is added to the tree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError

EXIT_BAD_INPUT = 2
UNKNOWN = "unknown"
RESULTS = Path(__file__).resolve().parents[1] / "results"
# manifest key -> (record tag or param, what it is); a key whose records disagree lists every value
MACHINE_TAGS = {
    "gpu": "gpu_model",
    "gpu_driver": "gpu_driver",
    "gpu_count": "gpu_count",
    "device_model": "device_model",
    "cpu": "cpu_model",
    "cpu_cores": "cpu_cores",
    "host": "host",
    "os": "os",
}
VERSION_TAGS = {
    "python": "python_version",
    "halide": "halide_version",
    "torch": "torch_version",
    "tensorflow": "tensorflow_version",
    "numpy": "numpy_version",
}


def _values(records: Iterable[Any], name: str) -> str | list[str]:
    """The distinct values of a record tag or param, sorted: one as itself, several as a list, none as
    "unknown"."""
    seen = sorted({str(v) for r in records for v in (r.tags.get(name), r.params.get(name)) if v})
    if not seen:
        return UNKNOWN
    return seen[0] if len(seen) == 1 else seen


def _when(records: Sequence[Any]) -> dict[str, str]:
    """The UTC date(s) and the first start and last end of the jobs (tags started_at / ended_at, epoch s)."""

    def stamps(tag: str) -> list[float]:
        out = []
        for r in records:
            try:
                out.append(float(r.tags[tag]))
            except (KeyError, ValueError):
                continue
        return out

    starts, ends = stamps("started_at"), stamps("ended_at")
    if not starts:
        return {"date": UNKNOWN}

    def iso(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")

    first, last = min(starts), max(ends or starts)
    days = sorted({iso(first)[:10], iso(last)[:10]})
    return {"date": " to ".join(days), "first_start": iso(first), "last_end": iso(last)}


def _wall(bundle: Path) -> str:
    """The last `wall ...` line of run.log (the worker CLI's closing line), or unknown."""
    log = bundle / "run.log"
    if not log.is_file():
        return UNKNOWN
    lines = [x.strip() for x in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    walls = [x for x in lines if x.startswith("wall ")]
    return walls[-1] if walls else UNKNOWN


def _gpu_txt(bundle: Path) -> list[str] | str:
    """The data lines of the node's `nvidia-smi` query (gpu.txt), header first, or unknown."""
    path = bundle / "gpu.txt"
    if not path.is_file():
        return UNKNOWN
    return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def derive(bundle: Path) -> dict[str, Any]:
    """What the bundle says about itself: experiment, commit, date, machine, versions, records, roofs."""
    from workers.bundle import BundleError, read_records

    try:
        records = read_records(bundle)
    except BundleError as exc:
        raise ConfigError(str(exc)) from None
    if not records:
        raise ConfigError(f"{bundle} holds no records")
    latest = list({r.key: r for r in records}.values())
    statuses = Counter(r.status for r in latest)
    machine = {key: _values(latest, tag) for key, tag in MACHINE_TAGS.items()}
    machine["gpu_txt"] = _gpu_txt(bundle)
    roofs = {k: _values([r for r in latest if r.status == "ok"], k) for k in ("roof_gflops", "roof_gbps")}
    return {
        "experiment": _values(latest, "experiment"),
        "commit": _values(latest, "planned.git"),
        **_when(latest),
        "machine": machine,
        "versions": {key: _values(latest, tag) for key, tag in VERSION_TAGS.items()},
        "records": {"total": len(latest), **dict(sorted(statuses.items()))},
        "roofs": roofs,
        "wall": _wall(bundle),
        "derived_from": {
            "experiment": "records: param experiment",
            "commit": "records: tag planned.git (the commit the job list was planned at; -dirty: with "
            "uncommitted changes)",
            "date": "records: tags started_at and ended_at (UTC)",
            "machine": "records: tags gpu_model, gpu_driver, gpu_count, cpu_model, cpu_cores, host, os; "
            "param device_model; gpu.txt (nvidia-smi on the node)",
            "versions": "records: tags python_version, halide_version, torch_version, "
            "tensorflow_version, numpy_version",
            "records": "records.jsonl, the last line of each job key",
            "roofs": "ok records: params roof_gflops, roof_gbps (measured on the node by the worker)",
            "wall": "run.log: the worker CLI's last line",
            "command": "given to `python -m orchestrator.results manifest --command`",
        },
    }


def write_manifest(bundle: Path, command: str | None = None, note: str | None = None) -> dict[str, Any]:
    """Write (or complete) BUNDLE/manifest.json; returns what it holds."""
    from workers.bundle import BundleError, read_manifest

    try:
        manifest = dict(read_manifest(bundle))
    except BundleError as exc:
        raise ConfigError(str(exc)) from None
    for key, value in derive(bundle).items():
        if key == "records" or key not in manifest:  # the counts are always the bundle's own (an exported
            manifest[key] = value  # bundle's manifest holds the export's total under the same name)
    if manifest.get("experiment") == UNKNOWN or isinstance(manifest.get("experiment"), list):
        manifest.pop("experiment")  # ingest routes by a single experiment name only
    if command is not None:
        manifest["command"] = command
    manifest.setdefault("command", UNKNOWN)
    if note is not None:
        manifest["note"] = note
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    (bundle / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: manifest BUNDLE... [--command TEXT] [--note TEXT] | pool [TREE]."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.results", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("manifest", help="write each bundle's manifest.json from what the bundle holds")
    m.add_argument("bundles", nargs="+", type=Path, help="results bundles (folders with records.jsonl)")
    m.add_argument("--command", help="the command(s) that produced the bundle (default: unknown)")
    m.add_argument("--note", help="what else a reader should know (a re-run, a replaced run...)")
    p = sub.add_parser("pool", help="store the tree's schedule sources once, in TREE/sources/")
    p.add_argument("tree", nargs="?", type=Path, default=RESULTS, help="default: results/")
    args = parser.parse_args(argv)
    from workers.bundle import BundleError, bundles_in, pool_sources

    try:
        if args.what == "pool":
            moved, dropped = pool_sources(args.tree)
            print(
                f"{args.tree}: {moved} source(s) moved to {args.tree / 'sources'}, {dropped} copies dropped"
            )
            return
        for bundle in bundles_in(args.bundles, print):
            made = write_manifest(bundle, args.command, args.note)
            print(f"{bundle / 'manifest.json'}: {made['records']['total']} records, {made['date']}")
    except (ConfigError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
