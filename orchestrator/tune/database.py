"""The tuning database (`tuning/db.json`, kept by `kernels.halide.tuned`): each pair's winner with its time,
the command and the date, which is what the variant `halide_tuned` serves; and the merge of another
database (a GPU node's) into it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError
from orchestrator.tune.config import TuneConf, db_path
from orchestrator.tune.loop import PairResult, say


def db_entry(pair: PairResult, t: TuneConf, command: str) -> dict[str, Any] | None:
    """The database entry of a pair's winner (family strategies only), or None when nothing ran ok."""
    from kernels.halide import tuned

    best = pair.best()
    if best is None or best.candidate.variant != "halide_family" or best.final is None:
        return None
    record = best.final
    baseline = pair.baseline()
    heuristic_ms = baseline.final_ms if baseline else math.inf
    metrics = record.metrics
    entry: dict[str, Any] = {
        "shape": {k: v for k, v in dataclasses.asdict(pair.shape).items() if k != "name"},
        "shape_name": pair.shape.name,
        "device": pair.device.name,
        "device_model": tuned.device_model(pair.device),
        "halide": tuned.halide_version(),
        "kind": pair.device.kind,
        "params": json.loads(dict(best.candidate.options)["params"]),
        "time_ms": metrics["time_ms"],
        "time_p25_ms": metrics.get("time_p25_ms"),
        "time_p75_ms": metrics.get("time_p75_ms"),
        "time_source": record.tags.get("time_source", "?"),
        "gflops": metrics.get("gflops"),
        "pct_roofline": metrics.get("pct_roofline"),
        "heuristic_time_ms": heuristic_ms if math.isfinite(heuristic_ms) else None,
        "speedup_vs_heuristic": heuristic_ms / metrics["time_ms"] if math.isfinite(heuristic_ms) else None,
        "candidates": len(pair.fresh()),
        "candidates_ok": sum(math.isfinite(o.screen_ms) for o in pair.fresh()),
        "candidates_earlier": len(pair.earlier()),
        "strategy": t.strategy,
        "budget": t.budget,
        "seed": t.seed,
        "job_key": record.key,
        "git": pair.base.versions.get("git", "unknown"),
        "host": record.tags.get("host", socket.gethostname()),
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return entry


def write_db(pairs: Sequence[PairResult], t: TuneConf, command: str) -> list[str]:
    """Store each pair's winner in the tuning database (per tune.db_mode); returns the keys written."""
    from kernels.halide import tuned

    if t.db_mode == "none":
        return []
    path = db_path(t)
    written = []
    for pair in pairs:
        entry = db_entry(pair, t, command)
        if entry is None:
            continue
        key = tuned.entry_key(pair.shape, pair.device)
        if tuned.store(path, key, entry, keep_better=t.db_mode == "better"):
            written.append(key)
    say(f"tuning database {path}: {len(written)} entr{'y' if len(written) == 1 else 'ies'} written")
    return written


def merge_db(source: Path, tune_args: Sequence[str]) -> dict[str, Any]:
    """Merge the entries of another tuning database (a GPU node's) into tune.db, per tune.db_mode."""
    from kernels.halide import tuned

    dest = tuned.DEFAULT_DB
    mode = "better"
    for arg in tune_args:
        key, _, value = arg.partition("=")
        if key == "tune.db":
            dest = Path(value).expanduser()
        elif key == "tune.db_mode":
            mode = value
        else:
            raise ConfigError(f"--merge takes tune.db and tune.db_mode only, got {arg!r}")
    if mode not in ("better", "always"):
        raise ConfigError(f"--merge: tune.db_mode must be better or always, got {mode!r}")
    if not source.is_file():
        raise ConfigError(f"--merge {source}: no such file; give a tuning database, e.g. a search's db.json")
    try:
        entries = tuned.load(source)["entries"]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    written = [k for k, e in entries.items() if tuned.store(dest, k, e, keep_better=mode == "better")]
    say(f"{dest}: {len(written)} of {len(entries)} entries from {source} written")
    return {"db_written": written}
