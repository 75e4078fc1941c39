"""The terminal summary at the end of an experiment: every result, then Halide against the baselines.

Per device and shape: each variant's median time, GFLOP/s, % of roofline and status; then, per shape,
the best Halide variant against the best variant of each baseline group (TensorFlow, cuDNN, cuBLAS,
torch.compile, ..., strict fp32 and TF32 apart), with the geometric mean of the speedups over the shapes
where both ran; then one line per record whose GPU clock throttled during its timing (`workers.clocks`).
The comparisons are `orchestrator.analytics`'s, as the parent run's metrics and the report's are. Only
`ok` records count as results: a `wrong` one has no speed by design.
"""

from __future__ import annotations

import io
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.table import Table

from orchestrator import analytics
from workers.schema import Record
from workers.table import WIDE, cell

T = TypeVar("T")

STATUS_STYLE = {"ok": "green", "wrong": "bold red", "failed": "red", "skipped": "dim"}


def summary_metrics(records: Sequence[Record]) -> dict[str, float]:
    """Parent-run metrics: the geometric-mean speedup of the best Halide over each baseline group, strict
    fp32 and TF32 apart (`orchestrator.analytics` names them)."""
    return analytics.speedup_metrics(analytics.timed_records(records))


def results_table(records: Sequence[Record], title: str) -> Table:
    """One row per record, grouped by device and shape, in the order the shapes first appear."""
    table = Table(title=title, title_justify="left")
    for col, justify in (
        ("device", "left"),
        ("shape", "left"),
        ("variant", "left"),
        ("framework", "left"),
        ("status", "left"),
        ("time_ms", "right"),
        ("GFLOP/s", "right"),
        ("% roofline", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    order: dict[tuple[str, str], int] = {}
    for r in records:
        order.setdefault((r.params.get("device", "?"), r.params.get("shape", "?")), len(order))
    rows = sorted(
        records,
        key=lambda r: (
            order[(r.params.get("device", "?"), r.params.get("shape", "?"))],
            r.metrics.get("time_ms", math.inf),
            r.params.get("variant", ""),
        ),
    )
    last = None
    for r in rows:
        where = (r.params.get("device", "?"), r.params.get("shape", "?"))
        if last is not None and where != last:
            table.add_section()
        last = where
        status = r.status
        style = STATUS_STYLE.get(status, "")
        table.add_row(
            where[0] + (f" ({_stand_in(r)} stand-in)" if _stand_in(r) else ""),  # not GPU time
            where[1],
            r.params.get("variant", "?"),
            r.params.get("framework", "?"),
            f"[{style}]{status}[/]" if style else status,
            cell(r.metrics.get("time_ms"), ".4g"),
            cell(r.metrics.get("gflops"), ".1f"),
            cell(r.metrics.get("pct_roofline"), ".1f"),
        )
    return table


def speedup_table(records: Sequence[Record]) -> Table | None:
    """Per device and shape, the best Halide against the best of each baseline group (strict fp32 and TF32
    apart), with the geometric mean of each; None when nothing ran beside Halide."""
    results = analytics.timed_records(records)
    best = analytics.best_per_group(results)
    present = analytics.baselines_present(best)
    if not present:
        return None
    table = Table(
        title="best Halide vs best baseline (speedup = baseline time / Halide time)", title_justify="left"
    )
    for col in ("device", "shape", "best Halide", "ms"):
        table.add_column(col, justify="right" if col == "ms" else "left")
    for g in present:
        table.add_column(f"vs {analytics.label(g)}", justify="right")
    for (device, shape), at in best.items():
        if analytics.SUBJECT not in at:
            continue
        h = at[analytics.SUBJECT]
        row = [device, shape, h.variant, f"{h.time_ms:.4g}"]
        for g in present:
            b = at.get(g)
            row.append(f"{b.time_ms / h.time_ms:.2f}x ({b.variant} {b.time_ms:.4g})" if b else "-")
        table.add_row(*row)
    table.add_section()
    row = ["", "geometric mean", "", ""]
    for per_where in analytics.speedups(results, present).values():
        gm = analytics.geomean(per_where.values())
        row.append(f"[bold]{gm:.2f}x[/] ({len(per_where)} shapes)" if gm else "-")
    table.add_row(*row)
    return table


def throttled_lines(records: Sequence[Record]) -> list[str]:
    """One line per record whose GPU clock fell well below its maximum during the timing (tag `throttled`):
    its variant, shape and device, the clocks and the reasons NVML gave."""
    lines = []
    for r in records:
        flat = analytics.flat_record(r)
        if analytics.is_throttled(flat):
            where = f"{flat.get('variant', '?')} on {flat.get('shape', '?')} ({flat.get('device', '?')})"
            lines.append(f"throttled: {where}: {analytics.throttle_text(flat)}")
    return lines


def print_summary(records: Sequence[Record], experiment: str, console: Console | None = None) -> None:
    """Print the results table, the speedup table, a line per throttled record and the status counts."""
    console = console or Console(width=None if sys.stdout.isatty() else WIDE)
    console.print(results_table(records, f"{experiment}: {len(records)} jobs"))
    table = speedup_table(records)
    if table is not None:
        console.print(table)
    for line in throttled_lines(records):
        console.print(line, style="yellow", markup=False, highlight=False)
    counts: defaultdict[str, int] = defaultdict(int)
    for r in records:
        counts[r.status] += 1
    console.print("  ".join(f"{s}: {n}" for s, n in sorted(counts.items())))


# --- across devices ---------------------------------------------------------------------------------
def _stand_in(record: Record) -> str | None:
    return record.params.get("option.stand_in") or record.params.get("stand_in")


def by_shape_variant_device(
    items: Iterable[T], key: Callable[[T], tuple[str, str, str]]
) -> tuple[list[str], dict[tuple[str, str], dict[str, T]]]:
    """(devices in order of appearance, (shape, variant) → device → item), `key` giving an item's
    (shape, variant, device); a later item replaces an earlier one of the same cell. The grouping of
    every cross-device table: the driver's, over Records (`cross_device`), and the report's, over its
    rows (`report.findings`)."""
    devices: list[str] = []
    cells: dict[tuple[str, str], dict[str, T]] = {}
    for item in items:
        shape, variant, device = key(item)
        if device not in devices:
            devices.append(device)
        cells.setdefault((shape, variant), {})[device] = item
    return devices, cells


def cross_device(records: Sequence[Record]) -> tuple[list[str], dict[tuple[str, str], dict[str, Record]]]:
    """`by_shape_variant_device` of Records; rows and columns follow the order of `records` (the driver
    passes them in plan order)."""

    def key(r: Record) -> tuple[str, str, str]:
        return r.params.get("shape", "?"), r.params.get("variant", "?"), r.params.get("device", "?")

    return by_shape_variant_device(records, key)


def _column(device: str, records: Sequence[Record]) -> str:
    stand_ins = {_stand_in(r) for r in records if r.params.get("device") == device} - {None}
    return f"{device} ms" + (f" ({'/'.join(sorted(stand_ins))} stand-in)" if stand_ins else "")  # type: ignore[arg-type]


def _cell(record: Record | None) -> str:
    if record is None:
        return "-"
    t = record.metrics.get("time_ms")
    return f"{t:.4g}" if record.status == "ok" and t is not None else record.status


def cross_device_table(records: Sequence[Record], title: str = "time on each device") -> Table | None:
    """Per shape and variant, the median time on each device model (its status where not ok), and the
    fastest model; None with fewer than two devices. Stand-in columns say so: they are not GPU times."""
    devices, cells = cross_device(records)
    if len(devices) < 2:
        return None
    table = Table(title=title, title_justify="left")
    table.add_column("shape")
    table.add_column("variant")
    for device in devices:
        table.add_column(_column(device, records), justify="right")
    table.add_column("fastest")
    last = None
    for (shape, variant), by_device in cells.items():
        if last is not None and shape != last:
            table.add_section()
        last = shape
        ok = {
            d: r.metrics["time_ms"]
            for d, r in by_device.items()
            if r.status == "ok" and "time_ms" in r.metrics
        }
        fastest = min(ok, key=ok.__getitem__) if ok else "-"
        table.add_row(shape, variant, *(_cell(by_device.get(d)) for d in devices), fastest)
    return table


def cross_device_csv(records: Sequence[Record]) -> str:
    """The cross-device table as CSV: shape, variant, then `<device>_ms` and `<device>_status` per device."""
    devices, cells = cross_device(records)
    lines = [",".join(["shape", "variant", *(f"{d}_{c}" for d in devices for c in ("ms", "status"))])]
    for (shape, variant), by_device in cells.items():
        row = [shape, variant]
        for d in devices:
            r = by_device.get(d)
            t = r.metrics.get("time_ms") if r is not None and r.status == "ok" else None
            row += ["" if t is None else f"{t:.6g}", r.status if r is not None else ""]
        lines.append(",".join(row))
    stand_ins = sorted({f"{r.params.get('device')}={_stand_in(r)}" for r in records if _stand_in(r)})
    if stand_ins:
        lines.append(
            f"# stand-ins (CPU kernels on a node declaring the model, not GPU time): {' '.join(stand_ins)}"
        )
    return "\n".join(lines) + "\n"


def cross_device_artifacts(records: Sequence[Record], experiment: str) -> dict[str, str]:
    """The parent run's comparison artifacts (cross_device.txt, cross_device.csv); empty for one device."""
    table = cross_device_table(records, f"{experiment}: time on each device (median ms)")
    if table is None:
        return {}
    console = Console(record=True, width=WIDE, file=io.StringIO())
    console.print(table)
    return {"cross_device.txt": console.export_text(), "cross_device.csv": cross_device_csv(records)}
