"""figures.json: the numbers of a report under stable keys, and the check that docs quote them right.

A report writes figures.json beside its tables: `{key: value}`, keys `/`-separated, values rounded to six
significant digits (times in µs, shares in %, speedups as ratios). The keys (docs/figures.md lists them):

    time_us/<device>/<shape>/<variant>          median kernel time (CUPTI on a GPU, wall on a CPU)
    pct_roofline/<device>/<shape>/<variant>     % of the roofline floor
    floor_us/<device>/<shape>[/tf32]            the roofline floor (strict fp32; /tf32: under the TF32 roof)
    compute_us/<device>/<shape>, memory_us/...  its two parts (strict fp32): the FLOPs at the compute roof,
                                                the minimum bytes at the memory roof; the floor is the larger
    kernel_us/<device>/<shape>/<variant>/<Func> one Halide kernel's time (tag kernel_times), by its Func
    speedups/<device>/<shape>/<column>          a column of speedups.csv (`*_ms` columns as `*_us`)
    fusion/..., pointwise/..., peers/...        the same for fusion.csv, pointwise.csv, peers.csv
    cache/<device>/<shape>/<variant>/<column>   a column of cache.csv (warm_us, cold_us, cold_over_warm, ...)
    ncu/<device>/<shape>/<variant>/<column>     a column of ncu.csv
    geomean/<device>/<column>                   geometric mean over the shapes of speedups.csv
    goal/<device>/<kind>[/<baseline>]           a goal's value (conf/report/goals.yaml)
    roof_tflops/<d>, roof_tbps/<d>              the fp32 compute roof and DRAM bandwidth (median of the rows)
    cache_tbps/<d>, sgemm_tflops/<d>, tf32_tflops/<d>   the cache roof, the attainable SGEMM line, TF32
    records/<status>                            record counts
    gpus/concurrency/<run>/<column>, gpus/agreement/<kind>/<framework>/<column>   several GPUs

A doc quotes a figure as a link to the report's figures.json with the key as its fragment:
`[74.3 µs](reports/h100/mobilenet_v1/figures.json#time_us/h100/mbv1_112_32_s1/halide_tuned)`; the first
number of the link text must be the value rounded to the decimals shown (text values must match
exactly). A table of figures follows a comment naming the key with `{row}` (the first cell) and `{col}`
(the header), with optional per-column templates: `<!-- figures: PATH#time_us/h100/{row}/{col}
floor=floor_us/h100/{row} -->`; every number in it must match. `check_docs` finds every mismatch.

    python -m orchestrator.report.quotable [FILE ...]   (default README.md and docs/**/*.md)
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernels.halide.names import kernel_func
from orchestrator import analytics
from orchestrator.report import analysis, gpus
from orchestrator.report.findings.common import Inputs
from orchestrator.report.load import REPO_ROOT, device_facts, ok_rows

FIGURES = "figures.json"
_KEY_PART = re.compile(r"[^\w.\-+@]+")
ROOF_KEYS = (  # figures.json key (TFLOP/s, TB/s) -> device_facts' GFLOP/s, GB/s
    ("roof_tflops", "peak_gflops"), ("roof_tbps", "mem_gbps"), ("cache_tbps", "cache_gbps"),
    ("sgemm_tflops", "sgemm_gflops"), ("tf32_tflops", "tf32_gflops"),
)  # fmt: skip
_SKIP_COLUMNS = {"device", "shape", "label", "run", "halide_run", "variant", "framework"}


def _part(text: Any) -> str:
    """One key segment: anything but letters, digits, . - + @ becomes _."""
    return _KEY_PART.sub("_", str(text)).strip("_") or "_"


def _value(value: Any) -> int | float | str | None:
    """A figure as stored: numbers rounded to six significant digits, text as is, None dropped."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    text = str(value)
    return text or None


def _table(prefix: str, table: Iterable[Mapping[str, Any]], ids: Sequence[str]) -> dict[str, Any]:
    """Every cell of a table under prefix/<id columns>/<column>; a `*_ms` column becomes `*_us`."""
    out: dict[str, Any] = {}
    for entry in table:
        base = "/".join([prefix, *(_part(entry.get(i)) for i in ids)])
        for column, raw in entry.items():
            if column in ids or column in _SKIP_COLUMNS:
                continue
            if column.endswith("_ms") and isinstance(raw, int | float):
                column, raw = column[:-3] + "_us", raw * 1000
            value = _value(raw)
            if value is not None:
                out[f"{base}/{_part(column)}"] = value
    return out


def _records(inp: Inputs) -> dict[str, Any]:
    """time_us, pct_roofline and floor_us per ok record; a (device, shape, variant) measured with several
    options keeps one key per record, suffixed with its job key's digest."""
    out: dict[str, Any] = {}
    rows = ok_rows(inp.dataset.rows)
    seen: dict[tuple[str, str, str], int] = {}
    for r in rows:
        ident = (str(r["device_key"]), str(r["shape_key"]), str(r["variant"]))
        seen[ident] = seen.get(ident, 0) + 1
    for r in rows:
        device, shape, variant = (_part(r[k]) for k in ("device_key", "shape_key", "variant"))
        ident = (str(r["device_key"]), str(r["shape_key"]), str(r["variant"]))
        if seen[ident] > 1:
            variant += "+" + _part(str(r.get("job_key", "")).rsplit(".", 1)[-1])
        out[f"time_us/{device}/{shape}/{variant}"] = _value(r["time_ms"] * 1000)
        pct = _value(analysis.pct_roofline(r))
        if pct is not None:
            out[f"pct_roofline/{device}/{shape}/{variant}"] = pct
        if r.get("roofline_floor_ms"):  # a TF32 variant's floor is under its own (tensor-core) roof
            tf32 = "/tf32" if analytics.is_tf32_group(str(r.get("group", ""))) else ""
            out[f"floor_us/{device}/{shape}{tf32}"] = _value(r["roofline_floor_ms"] * 1000)
            if not tf32:
                out[f"compute_us/{device}/{shape}"] = _value(r["compute_ms"] * 1000)
                out[f"memory_us/{device}/{shape}"] = _value(r["memory_ms"] * 1000)
        funcs = [
            (kernel_func(k), ms)  # Halide's kernels by their Func
            for k, ms in analysis.kernel_times(r).items()
        ]
        if r.get("framework") == "halide" and funcs and all(f for f, _ in funcs):
            names = [f for f, _ in funcs]
            for i, (func, ms) in enumerate(funcs):
                name = func if names.count(func) == 1 else f"{func}{i}"
                out[f"kernel_us/{device}/{shape}/{variant}/{name}"] = _value(ms * 1000)
    return out


def _summary(inp: Inputs) -> dict[str, Any]:
    """Per device: roofs and geometric means; the goals; record counts."""
    from orchestrator.report.findings.goals import load_goals
    from orchestrator.report.findings.question4 import goal_number

    rows = inp.dataset.rows
    out: dict[str, Any] = {}
    for status, n in sorted(analysis.status_counts([*rows, *inp.set_aside]).items()):
        out[f"records/{_part(status)}"] = n
    stated = inp.goals if inp.goals is not None else load_goals()
    for device in analysis.devices(rows):
        d = _part(device)
        facts = device_facts(rows, device)
        for key, fact in ROOF_KEYS:
            if facts.get(fact):
                out[f"{key}/{d}"] = _value(facts[fact] / 1000)
        entries = [e for e in inp.speed if e["device"] == device]
        for column in ("halide_pct_roofline", *(f"{g}_speedup" for g in analysis.BASELINES)):
            values = [e[column] for e in entries if e.get(column)]
            if values:
                out[f"geomean/{d}/{column}"] = _value(analytics.geomean(values))
        for g in stated.goals:
            if not device.startswith(g.device_prefix) or (
                g.experiment and g.experiment != inp.dataset.experiment
            ):
                continue
            value = goal_number(inp, device, g)
            unit_ms = g.kind == "max_time_ms"
            key = f"goal/{d}/{'max_time_us' if unit_ms else g.kind}" + (
                f"/{g.baseline}" if g.baseline else ""
            )
            if value is not None:
                out[key] = _value(value * 1000 if unit_ms else value)
    return out


def _gpus(inp: Inputs) -> dict[str, Any]:
    """Several GPUs of one machine: each run's concurrency, and the agreement of one job across GPUs
    (differences in %)."""
    every = inp.dataset.all_rows
    if not gpus.used_several_gpus(every):
        return {}
    out = _table("gpus/concurrency", gpus.concurrency(every), ("run",))
    for s in gpus.agreement_summary(gpus.agreement(every)):
        base = f"gpus/agreement/{_part(s['kind'])}/{_part(s['framework'])}"
        out[f"{base}/pairs"] = s["pairs"]
        out[f"{base}/within_spread"] = s["within_spread"]
        for column in ("median_diff", "p90_diff", "max_diff"):
            out[f"{base}/{column}_pct"] = _value(s[column] * 100)
    return out


def report_figures(inp: Inputs) -> dict[str, Any]:
    """Every quotable figure of one report, sorted by key."""
    out = {
        **_records(inp),
        **_table("speedups", inp.speed, ("device", "shape")),
        **_table("fusion", inp.fusion, ("device", "shape")),
        **_table("pointwise", inp.pointwise, ("device", "shape")),
        **_table("peers", inp.peers, ("device", "shape")),
        **_table("cache", inp.cache, ("device", "shape", "variant")),
        **_table("ncu", inp.ncu, ("device", "shape", "variant")),
        **_summary(inp),
        **_gpus(inp),
    }
    return {k: out[k] for k in sorted(out)}


def write_figures(inp: Inputs, out: Path) -> Path:
    """out/figures.json, one key a line (a diff shows which figures changed)."""
    figures = report_figures(inp)
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in figures.items()]
    path = out / FIGURES
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path


# --- quoting ---------------------------------------------------------------------------------------
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s#]*" + re.escape(FIGURES) + r")#([^)\s]+)\)")
_TABLE = re.compile(r"<!--\s*figures:\s*([^#\s]+)#(\S+)((?:\s+[^\s=]+=\S+)*)\s*-->")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKUP = re.compile(r"[*`]")


def _matches(text: str, value: Any) -> bool:
    """Whether the quoted text is the value: its first number rounded as shown, or the same text."""
    if isinstance(value, str):
        return _MARKUP.sub("", text).strip() == value
    found = _NUMBER.search(text)
    if not found:
        return False
    shown = found.group().replace(",", "")
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - float(value)) <= 0.5 * 10**-decimals * (1 + 1e-9)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


class _Figures:
    """figures.json files, read once each, relative to the document that names them."""

    def __init__(self) -> None:
        self.files: dict[Path, dict[str, Any]] = {}

    def get(self, doc: Path, target: str, key: str) -> tuple[bool, Any]:
        path = (doc.parent / target).resolve()
        if path not in self.files:
            self.files[path] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        figures = self.files[path]
        return key in figures, figures.get(key)


def check_doc(doc: Path, found: _Figures | None = None) -> tuple[int, list[str]]:
    """(figures checked, one line per mismatch) for one Markdown file."""
    found = found or _Figures()
    lines = doc.read_text(encoding="utf-8").splitlines()
    problems: list[str] = []
    checked = 0

    def check(where: int, text: str, target: str, key: str) -> None:
        nonlocal checked
        checked += 1
        present, value = found.get(doc, target, key)
        if not present:
            problems.append(f"{doc}:{where}: {target}#{key}: no such figure (is the report built?)")
        elif not _matches(text, value):
            problems.append(f"{doc}:{where}: {text!r} quotes {target}#{key}, which is {value!r}")

    for i, line in enumerate(lines, 1):
        for m in _LINK.finditer(line):
            check(i, m.group(1), m.group(2), m.group(3))
        table = _TABLE.search(line)
        if not table:
            continue
        target, template = table.group(1), table.group(2)
        per_column = dict(item.split("=", 1) for item in table.group(3).split())
        body = lines[i:]
        if len(body) < 3 or not body[0].lstrip().startswith("|"):
            problems.append(f"{doc}:{i}: a figures comment must stand right above a table")
            continue
        header = [_MARKUP.sub("", c) for c in _cells(body[0])]
        for j, row_line in enumerate(body[2:], i + 3):
            if not row_line.lstrip().startswith("|"):
                break
            cells = _cells(row_line)
            row = _MARKUP.sub("", cells[0])
            for col, cell in zip(header[1:], cells[1:], strict=False):
                if not _NUMBER.search(cell) or _LINK.search(cell):
                    continue  # a dash or words; a linked cell is checked as a link
                key = per_column.get(col, template).replace("{row}", row).replace("{col}", col)
                check(j, cell, target, key)
    return checked, problems


def default_docs() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def check_docs(docs: Sequence[Path] | None = None) -> tuple[int, list[str]]:
    """(figures checked, mismatches) over the documents (default: README.md and docs/**/*.md)."""
    found, checked, problems = _Figures(), 0, []
    for doc in docs or default_docs():
        n, bad = check_doc(doc, found)
        checked += n
        problems += bad
    return checked, problems


def main(argv: Sequence[str] | None = None) -> int:
    """Check the quoted figures; exit 1 with one line per mismatch."""
    docs = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    missing = [d for d in docs if not d.is_file()]
    if missing:
        print(f"error: no such file: {missing[0]}", file=sys.stderr)
        return 2
    checked, problems = check_docs(docs or None)
    for line in problems:
        print(line)
    print(f"{checked} quoted figure(s) checked, {len(problems)} wrong")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
