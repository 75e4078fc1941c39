"""How an experiment ended, for a person and for a script: each failed or wrong job with its one-line
reason, and the exit code of `python -m orchestrator`.

Exit codes: 0 every job of the experiment is ok or skipped (a variant that cannot run there); 1 some
job failed or gave a wrong answer (with `allow_failures=true`: 0); 2 bad input (one line on stderr,
nothing run); 130 interrupted. The jobs counted are those the summary shows: this run's and, on a
resume, the records of the experiment's jobs that earlier runs made.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from workers.schema import Record

EXIT_OK = 0
EXIT_FAILED = 1
PROBLEMS = ("failed", "wrong")


def problems(records: Sequence[Record]) -> list[Record]:
    """The failed and wrong records, in their order."""
    return [r for r in records if r.status in PROBLEMS]


def failures_table(records: Sequence[Record]) -> Table | None:
    """variant, shape, device, status and the one-line reason of each failed or wrong job; None if none."""
    bad = problems(records)
    if not bad:
        return None
    table = Table(title=f"{len(bad)} job(s) failed or wrong", title_justify="left", title_style="bold red")
    for column in ("variant", "shape", "device", "status", "reason"):
        table.add_column(column, overflow="fold")
    for r in bad:
        p = r.params
        reason = r.tags.get("error", "").splitlines()[0] if r.tags.get("error") else "(no reason recorded)"
        style = "bold red" if r.status == "wrong" else "red"
        table.add_row(p.get("variant", r.key.split(".")[0]), p.get("shape", "?"), p.get("device", "?"),
                      f"[{style}]{r.status}[/]", reason)  # fmt: skip
    return table


def print_failures(records: Sequence[Record], console: Console) -> None:
    """Print `failures_table`, when there is anything in it."""
    table = failures_table(records)
    if table is not None:
        console.print(table)


def exit_code(records: Sequence[Record], allow_failures: bool = False) -> int:
    """EXIT_FAILED when a record failed or is wrong (unless `allow_failures`), else EXIT_OK."""
    return EXIT_FAILED if problems(records) and not allow_failures else EXIT_OK
