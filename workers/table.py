"""One way to print a closing table of strings: rich where it is installed, aligned plain text where it
is not (a node's bare Python: the GPU-node kit assumes the image has rich). Used by the worker
CLI, the placement probe, the schedule search and, for its cells and width, the experiment summary."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

WIDE = 150  # columns of a table when stdout is not a terminal (a log file, a pipe): do not wrap at 80


def cell(value: Any, spec: str) -> str:
    """`value` formatted by `spec` for a table, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def print_rows(rows: Sequence[Mapping[str, str]], empty: str = "nothing to show") -> None:
    """Print `rows` (each column name → cell text, the first row's columns for all) as one table."""
    if not rows:
        print(empty)
        return
    columns = list(rows[0])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns).rstrip(), flush=True)
        for r in rows:
            print("  ".join(r[c].ljust(widths[c]) for c in columns).rstrip(), flush=True)
        return
    table = Table(*columns)
    for r in rows:
        table.add_row(*(r[c] for c in columns))
    Console(width=None if sys.stdout.isatty() else WIDE).print(table)
