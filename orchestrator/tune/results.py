"""What a search found (`summary.json`): per pair, the best and baseline times, counts and the winner's
options; and the closing table printed from it."""

from __future__ import annotations

import dataclasses
import datetime
import math
import socket
from collections.abc import Sequence
from typing import Any

from orchestrator.tune.config import TuneConf
from orchestrator.tune.loop import PairResult
from workers.table import cell, print_rows


def summary(pairs: Sequence[PairResult], t: TuneConf, command: str) -> dict[str, Any]:
    """What the search found, per pair: the best and baseline times, counts, the winner's options."""
    rows = []
    for pair in pairs:
        best, base = pair.best(), pair.baseline()
        rows.append(
            {
                "shape": pair.shape.name,
                "label": pair.shape.label,
                "device": pair.device.name,
                "candidates": len(pair.fresh()),
                "candidates_earlier": len(pair.earlier()),
                "statuses": pair.counts(),
                "best_ms": best.final_ms if best else None,
                "best_variant": best.candidate.variant if best else None,
                "best_options": best.candidate.option_dict() if best else None,
                "best_pct_roofline": best.final.metrics.get("pct_roofline") if best and best.final else None,
                "baseline_ms": base.final_ms if base and math.isfinite(base.final_ms) else None,
                "speedup_vs_baseline": (
                    base.final_ms / best.final_ms
                    if best and base and math.isfinite(base.final_ms) and math.isfinite(best.final_ms)
                    else None
                ),
            }
        )
    return {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "tune": dataclasses.asdict(t),
        "pairs": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    """The closing table: per (shape, device), the candidates screened, the best and the baseline."""
    print_rows(
        [
            {
                "shape": row["shape"],
                "device": row["device"],
                "cands": str(row["candidates"]),
                "best ms": cell(row["best_ms"], ".4g"),
                "baseline ms": cell(row["baseline_ms"], ".4g"),
                "x base": cell(row["speedup_vs_baseline"], ".2f"),
                "%roof": cell(row["best_pct_roofline"], ".1f"),
            }
            for row in result["pairs"]
        ],
        empty="no (shape, device) pairs were searched",
    )
