"""The terminal summary at the end of an experiment: every result, then Halide against the baselines.

Per device and shape: each variant's median time, GFLOP/s, % of roofline and status; then, per shape,
the best Halide variant against the best TensorFlow (and cuDNN, where it ran) variant, with the
geometric mean of the speedups over the shapes where both ran. Only `ok` records count as results:
a `wrong` one has no speed by design.
"""

from __future__ import annotations

import io
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.table import Table

from workers.schema import Record
from workers.table import WIDE, cell

T = TypeVar("T")

BASELINES = ("tensorflow", "cudnn")  # frameworks Halide is compared against, in column order
STATUS_STYLE = {"ok": "green", "wrong": "bold red", "failed": "red", "skipped": "dim"}


@dataclass(frozen=True)
class Best:
    """The fastest `ok` variant of a framework on one shape."""

    variant: str
    time_ms: float


def best_by_framework(records: Sequence[Record]) -> dict[tuple[str, str], dict[str, Best]]:
    """(device, shape) → framework → its fastest ok variant."""
    best: dict[tuple[str, str], dict[str, Best]] = defaultdict(dict)
    for r in records:
        t = r.metrics.get("time_ms")
        if r.status != "ok" or t is None or not t > 0:
            continue
        where = (r.params.get("device", "?"), r.params.get("shape", "?"))
        framework = r.params.get("framework", "?")
        if framework not in best[where] or t < best[where][framework].time_ms:
            best[where][framework] = Best(r.params.get("variant", "?"), t)
    return best


def geomean(values: Sequence[float]) -> float | None:
    """Geometric mean of positive values; None when there are none."""
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def speedups(records: Sequence[Record]) -> dict[str, dict[tuple[str, str], float]]:
    """baseline framework → (device, shape) → best baseline time / best Halide time."""
    out: dict[str, dict[tuple[str, str], float]] = {b: {} for b in BASELINES}
    for where, fw in best_by_framework(records).items():
        if "halide" not in fw:
            continue
        for b in BASELINES:
            if b in fw:
                out[b][where] = fw[b].time_ms / fw["halide"].time_ms
    return out


def summary_metrics(records: Sequence[Record]) -> dict[str, float]:
    """Parent-run metrics: geometric-mean speedup of the best Halide over each baseline framework."""
    metrics = {}
    for baseline, per_shape in speedups(records).items():
        g = geomean(list(per_shape.values()))
        if g is not None:
            metrics[f"geomean_speedup_halide_vs_{baseline}"] = g
    return metrics


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
    """Best Halide vs best baseline per shape, with the geometric mean; None when nothing to compare."""
    best = best_by_framework(records)
    present = [b for b in BASELINES if any("halide" in fw and b in fw for fw in best.values())]
    if not present:
        return None
    table = Table(
        title="best Halide vs best baseline (speedup = baseline time / Halide time)", title_justify="left"
    )
    for col in ("device", "shape", "best Halide", "ms"):
        table.add_column(col, justify="right" if col == "ms" else "left")
    for b in present:
        table.add_column(f"best {b}")
        table.add_column("ms", justify="right")
        table.add_column("speedup", justify="right")
    for (device, shape), fw in best.items():
        if "halide" not in fw:
            continue
        h = fw["halide"]
        row = [device, shape, h.variant, f"{h.time_ms:.4g}"]
        for b in present:
            if b in fw:
                row += [fw[b].variant, f"{fw[b].time_ms:.4g}", f"{fw[b].time_ms / h.time_ms:.2f}x"]
            else:
                row += ["-", "-", "-"]
        table.add_row(*row)
    table.add_section()
    row = ["", "geometric mean", "", ""]
    for b, per_shape in speedups(records).items():
        if b in present:
            g = geomean(list(per_shape.values()))
            row += ["", f"{len(per_shape)} shapes", f"[bold]{g:.2f}x[/]" if g else "-"]
    table.add_row(*row)
    return table


def print_summary(records: Sequence[Record], experiment: str, console: Console | None = None) -> None:
    """Print the results table, the speedup table and the status counts."""
    console = console or Console(width=None if sys.stdout.isatty() else WIDE)
    console.print(results_table(records, f"{experiment}: {len(records)} jobs"))
    table = speedup_table(records)
    if table is not None:
        console.print(table)
    counts = defaultdict(int)
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
