"""One way to print a closing table of strings: rich where it is installed, aligned plain text where it
is not (the GPU nodes' bundle carries Halide and Hydra only). Used by the worker CLI, the placement
probe and the schedule search."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

WIDE = 150  # columns when stdout is not a terminal


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
    console = Console()
    if not console.is_terminal:  # a log or a pipe: no terminal width to fit, so do not wrap at 80
        console = Console(width=WIDE)
    console.print(table)
