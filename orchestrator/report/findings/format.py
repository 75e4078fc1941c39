"""Formatting shared by the sections of findings.md: times, ratios, percentages, tables, ranges."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def ft(ms: float | None) -> str:
    """A time: `812 us` under a millisecond, `1.23 ms` above."""
    if ms is None:
        return "-"
    return f"{ms * 1e3:.3g} us" if ms < 1 else f"{ms:.3g} ms"


def fx(ratio: float | None) -> str:
    """A ratio: `2.43x`."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def fp(pct: float | None) -> str:
    """A percentage: `41.2%`."""
    return "-" if pct is None else f"{pct:.1f}%"


def short(run_id: str | None) -> str:
    """The first 8 characters of a run id (records.csv has the whole one)."""
    return (run_id or "")[:8] or "-"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def value_range(values: Sequence[float | None], fmt: Any) -> str:
    """`lo to hi` of the values as `fmt` writes them (one value when both read the same); `-` for none."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    lo, hi = min(present), max(present)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)} to {fmt(hi)}"


def of_shapes(count: int, total: int) -> str:
    """`3 of 5 shapes`."""
    return f"{count} of {total} shape{'s' if total != 1 else ''}"


def num(value: float | None, spec: str) -> str:
    """`value` in format `spec`, or `-` for None."""
    return "-" if value is None else format(value, spec)


def mean(entries: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The mean of `key` over the entries that have it, or None."""
    values = [e[key] for e in entries if e.get(key) is not None]
    return statistics.fmean(values) if values else None


def clip(text: str, n: int = 160) -> str:
    """`text` on one line, backticks made quotes, cut to `n` characters."""
    text = " ".join(str(text).split()).replace("`", "'")
    return text if len(text) <= n else text[: n - 3] + "..."
