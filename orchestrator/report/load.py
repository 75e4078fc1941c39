"""Records into rows: one flat dict per job (params, metrics, tags, and what the layer's cost model adds).

The report works on plain rows so that tests (and anyone with a results bundle) can feed records
without MLflow. Rows come from three places, all through `row_from_parts`:

- `load_mlflow`: the child runs of an experiment in an MLflow store (one parent run, or all of them);
- `load_bundles`: results bundles written by `python -m workers run`, read directly;
- `rows_from_records`: `workers.schema.Record` objects already in memory.

Selection rule (the default, documented in findings.md): every child run of the experiment, and where
several runs measured the same thing (same variant, shape geometry, device, build options and cache
condition, warm or cold, whatever the code version or the path that dispatched it), only the newest is
kept. A newer `failed` run therefore replaces an older `ok` one: the report shows what the code does now.
A cold-cache timing is another measurement than a warm one (as in `workers.schema.Job.key`): both are kept.

A row that is not `ok` never carries a speed: its timing metrics are dropped on load, so no table or
figure can quote a wrong or failed result as a time.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels.layer import LayerShape, ShapeError
from orchestrator import analytics
from orchestrator.report import roofs

Row = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STORE = REPO_ROOT / "mlflow" / "mlflow.db"
ROLE_TAG = "dsconv.role"  # parent | child (orchestrator.record)
PARENT_TAG = "mlflow.parentRunId"
INT_PARAMS = ("n", "h", "w", "c", "co", "stride", "cores", "cache_bytes")
FLOAT_PARAMS = ("peak_gflops", "mem_gbps", "roof_gflops", "roof_gbps", *roofs.ROOF_PARAMS)
BOOL_PARAMS = ("bias", "relu")
# Metrics that state a speed: present only on ok rows.
SPEED_METRICS = ("call_ms", "gflops", "gbps", "pct_peak", "pct_roofline", "floor_ms")
SPEED_PREFIXES = ("time_", "ncu.", "nsys.")


class ReportInputError(ValueError):
    """Bad input to the report (unknown experiment or run, no store, no records): one line for stderr."""


# --- rows ---------------------------------------------------------------------------------------------
def _number(text: Any, kind: type) -> Any:
    if text is None:
        return None
    try:
        if kind is bool:
            return str(text).strip().lower() in ("true", "1", "yes")
        value = kind(float(text)) if kind is int else kind(text)
    except (TypeError, ValueError):
        return None
    return value if kind is not float or math.isfinite(value) else None


def row_from_parts(
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    *,
    run_id: str = "",
    parent_run_id: str = "",
    start_time: float | None = None,
    source: str = "",
) -> Row:
    """One flat row: tags, then params, then metrics (later ones win on a name clash), typed, with the
    layer's flops and bytes added; a row that is not ok loses its speed metrics."""
    row: Row = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    row.update(params)
    status = str(tags.get("status", "failed"))
    for key, value in metrics.items():
        if status != "ok" and (key in SPEED_METRICS or key.startswith(SPEED_PREFIXES)):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            row[key] = number
    for names, kind in ((INT_PARAMS, int), (FLOAT_PARAMS, float), (BOOL_PARAMS, bool)):
        for name in names:
            if name in row:
                row[name] = _number(row[name], kind)
    row.update(
        status=status,
        error=str(tags.get("error", "")),
        job_key=str(tags.get("job_key", "")),
        run_id=run_id,
        parent_run_id=parent_run_id or str(tags.get(PARENT_TAG, "")),
        start_time=start_time,
        source=source,
    )
    row.setdefault("variant", row["job_key"].split(".")[0] if row["job_key"] else "?")
    row.setdefault("framework", "?")
    row.setdefault("shape", "?")
    row.setdefault("device", "?")
    row["group"] = analytics.group(str(row["framework"]), str(row["variant"]))  # strict fp32 or TF32
    # The roofline's roofs: those the worker's floor used, or recomputed for older records (report.roofs);
    # the datasheet rates stay as datasheet_*.
    roofs.apply(row, _is_cpu(row))
    _add_cost_model(row)
    return row


def shape_of(row: Mapping[str, Any]) -> LayerShape | None:
    """The row's LayerShape, or None when its geometry params are missing or invalid."""
    try:
        return LayerShape(
            name=str(row.get("shape", "?")),
            n=row["n"],
            h=row["h"],
            w=row["w"],
            c=row["c"],
            co=row["co"],
            stride=row.get("stride") or 1,
            bias=bool(row.get("bias", True)),
            relu=bool(row.get("relu", True)),
        )
    except (KeyError, ShapeError, TypeError):
        return None


def _add_cost_model(row: Row) -> None:
    """flops, min_bytes, intermediate_bytes, arithmetic_intensity; the device's ridge point and floor."""
    shape = shape_of(row)
    if shape is None:
        return
    row["flops"] = shape.flops
    row["min_bytes"] = shape.min_bytes
    row["intermediate_bytes"] = shape.intermediate_bytes
    row["arithmetic_intensity"] = shape.arithmetic_intensity
    peak, bw = row.get("peak_gflops"), row.get("memory_roof_gbps")
    if peak and bw and peak > 0 and bw > 0:
        row["ridge_flop_per_byte"] = peak / bw
        row["compute_ms"] = shape.flops / (peak * 1e9) * 1e3
        row["memory_ms"] = shape.min_bytes / (bw * 1e9) * 1e3
        row["roofline_floor_ms"] = max(row["compute_ms"], row["memory_ms"])


def rows_from_records(records: Iterable[Any], source: str = "") -> list[Row]:
    """Rows of `workers.schema.Record`s (their order is their age: a later one is newer)."""
    return [
        row_from_parts(r.params, r.metrics, r.tags, start_time=float(i), source=source)
        for i, r in enumerate(records)
    ]


# --- one dataset ------------------------------------------------------------------------------------
@dataclass
class ParentRun:
    """A parent run whose children are in the report."""

    run_id: str
    name: str
    start_time: float | None
    source: str  # ray | ingest
    bundle: str = ""  # the ingested bundle's path (ingest only)
    children: int = 0  # children used by the report


@dataclass
class Dataset:
    """The rows of one experiment and where they came from (named in findings.md)."""

    experiment: str
    rows: list[Row]
    origin: str  # "MLflow store URI" or "results bundle(s) ..."
    selection: str  # the rule that picked the rows
    parents: list[ParentRun] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    superseded: int = 0  # older runs of the same measurement left out
    log_to: str | None = None  # parent run that receives the report as artifacts
    all_rows: list[Row] = field(default_factory=list)  # before the newest-per-measurement rule (gpus.py)


def finish_rows(rows: Sequence[Row]) -> tuple[list[Row], int]:
    """Name devices and shapes unambiguously, then keep the newest row per measurement.

    A device name used by more than one host of kind cpu becomes `cpu@host`; a shape name used with
    more than one geometry (the batch differs) becomes `name@nN`. Returns (rows, superseded count).
    """
    hosts: dict[str, set[str]] = defaultdict(set)
    geometries: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for r in rows:
        if _is_cpu(r):
            hosts[r["device"]].add(str(r.get("host", "")))
        geometries[r["shape"]].add(_geometry(r))
    for r in rows:
        r["device_key"] = (
            f"{r['device']}@{r.get('host', '?')}"
            if _is_cpu(r) and len(hosts[r["device"]]) > 1
            else r["device"]
        )
        r["shape_key"] = f"{r['shape']}@n{r.get('n')}" if len(geometries[r["shape"]]) > 1 else r["shape"]
    newest: dict[tuple[Any, ...], Row] = {}
    for r in sorted(rows, key=lambda r: (r.get("start_time") is None, r.get("start_time") or 0.0)):
        newest[_identity(r)] = r  # later start wins
    kept = list(newest.values())
    return kept, len(rows) - len(kept)


def _is_cpu(r: Mapping[str, Any]) -> bool:
    return r.get("device_kind") == "cpu" or (r.get("device_kind") is None and r.get("device") == "cpu")


def _geometry(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(r.get(k) for k in ("n", "h", "w", "c", "co", "stride", "bias", "relu"))


def _identity(r: Mapping[str, Any]) -> tuple[Any, ...]:
    options = tuple(sorted((k, str(v)) for k, v in r.items() if k.startswith("option.")))
    return (r["variant"], r["shape"], _geometry(r), r["device_key"], options, is_cold(r))


def is_cold(r: Mapping[str, Any]) -> bool:
    """Whether the row was timed with a cold cache (param `timing.cold_cache`)."""
    return str(r.get("timing.cold_cache", "False")).strip().lower() in ("true", "1")


def cache_method(r: Mapping[str, Any]) -> str:
    """How the timing treated the cache: `warm`, `l2_flush` or `input_rotation` (param
    `timing.cold_cache_method`; a cold record from before that param rotated its inputs)."""
    if not is_cold(r):
        return "warm"
    return str(r.get("timing.cold_cache_method") or "input_rotation")


def cache_note(rows: Iterable[Row]) -> str:
    """What the selection rule adds when cold-cache records are among the rows: warm and cold are apart."""
    if not any(is_cold(r) for r in rows):
        return ""
    return "; a warm and a cold-cache timing of one job are two measurements, both kept"


def ok_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows with status ok and a positive median time: the only ones that count as speeds."""
    return [r for r in rows if r.get("status") == "ok" and (r.get("time_ms") or 0) > 0]


def device_facts(rows: Sequence[Row], device_key: str) -> dict[str, Any]:
    """Model, kind, roofs (median over its rows) and hosts of one device: `peak_gflops` the fp32 compute
    roof (of its strict fp32 rows), `mem_gbps` DRAM, `cache_gbps` the cache level's (`cache_level`),
    `sgemm_gflops` the attainable line, `tf32_gflops` the TF32 roof (where TF32 rows have one)."""
    mine = [r for r in rows if r.get("device_key") == device_key]
    fp32 = [r for r in mine if not str(r.get("group", "")).endswith("_tf32")] or mine
    peaks = [r["peak_gflops"] for r in fp32 if r.get("peak_gflops")]
    bws = [r["mem_gbps"] for r in mine if r.get("mem_gbps")]
    kinds = {r.get("device_kind") for r in mine if r.get("device_kind")}
    models = [str(r.get("device_model", "")) for r in mine if r.get("device_model")]
    cpu_models = {str(r["cpu_model"]) for r in mine if r.get("cpu_model")}
    model = max(set(models), key=models.count) if models else device_key
    if model == "host CPU" and cpu_models:
        model = f"host CPU ({', '.join(sorted(cpu_models))})"
    peak = statistics.median(peaks) if peaks else None
    bw = statistics.median(bws) if bws else None
    # records without the device_kind param: only the host CPU is called cpu
    guessed = ("cpu" if _is_cpu(mine[0]) else "cuda") if mine else "?"
    kind = kinds.pop() if len(kinds) == 1 else guessed

    def median(key: str, of: Sequence[Row] = mine) -> float | None:
        values = [r[key] for r in of if r.get(key)]
        return statistics.median(values) if values else None

    tf32 = [r for r in mine if str(r.get("group", "")).endswith("_tf32")]
    computes = [str(r["roof_compute"]) for r in fp32 if r.get("roof_compute")]
    return {
        "device": device_key,
        "model": model,
        "kind": kind,
        "peak_gflops": peak,
        "mem_gbps": bw,
        "cache_gbps": median("cache_gbps"),
        "cache_level": "L2" if kind == "cuda" else "LLC",
        "sgemm_gflops": median("sgemm_gflops"),
        "tf32_gflops": median("peak_gflops", tf32) if tf32 else None,
        "roof_compute": max(set(computes), key=computes.count) if computes else "",
        "peak_spread": (max(peaks) / min(peaks) - 1) if peaks else 0.0,
        "ridge": peak / bw if peak and bw else None,
        "hosts": sorted({str(r.get("host")) for r in mine if r.get("host")}),
        "cores": sorted({r["cores"] for r in mine if r.get("cores")}),
    }


# --- MLflow -----------------------------------------------------------------------------------------
def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the repository's embedded store (mlflow/mlflow.db)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"


def client_for(uri: str) -> Any:
    """An MlflowClient of `uri`, after checking the store exists (a sqlite file) or answers (a server)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ReportInputError(
                f"no MLflow store at {path}; run an experiment (python -m orchestrator) or ingest a bundle "
                "first"
            )
    elif uri.startswith(("http://", "https://")):
        from orchestrator.config import ConfigError
        from orchestrator.record import check_tracking

        try:
            check_tracking(uri)
        except ConfigError as exc:
            raise ReportInputError(str(exc)) from None
    os.environ.pop("MLFLOW_RUN_ID", None)
    return MlflowClient(tracking_uri=uri)


def experiment_names(client: Any) -> list[str]:
    """Names of the experiments in the store that hold runs."""
    names = []
    for exp in client.search_experiments():
        if client.search_runs([exp.experiment_id], max_results=1):
            names.append(exp.name)
    return sorted(names)


def _all_runs(client: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_mlflow(tracking_uri: str, experiment: str | None = None, run_id: str | None = None) -> Dataset:
    """The rows of one experiment (all parents, newest per measurement) or of one parent run."""
    from mlflow.exceptions import MlflowException

    if not experiment and not run_id:
        raise ReportInputError("give --experiment NAME or --run-id ID")
    client = client_for(tracking_uri)
    parent = None
    if run_id:
        try:
            parent = client.get_run(run_id)
        except MlflowException:
            raise ReportInputError(f"no run {run_id!r} in {tracking_uri}") from None
        if PARENT_TAG in parent.data.tags:
            raise ReportInputError(
                f"run {run_id} is a job's child run; give its parent run: {parent.data.tags[PARENT_TAG]}"
            )
        exp = client.get_experiment(parent.info.experiment_id)
        if experiment and exp.name != experiment:
            raise ReportInputError(f"run {run_id} belongs to experiment {exp.name!r}, not {experiment!r}")
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ReportInputError(
                f"unknown experiment {experiment!r} in {tracking_uri}; valid: "
                + (", ".join(experiment_names(client)) or "(none: the store has no runs)")
            )
    runs = _all_runs(client, exp.experiment_id)
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    if parent is not None:
        children = [r for r in children if r.data.tags[PARENT_TAG] == run_id]
    if not children:
        where = f"parent run {run_id}" if run_id else f"experiment {exp.name!r}"
        raise ReportInputError(f"{where} in {tracking_uri} has no job runs to report")
    rows = [
        row_from_parts(
            r.data.params,
            r.data.metrics,
            r.data.tags,
            run_id=r.info.run_id,
            start_time=float(r.info.start_time or 0),
            source=tracking_uri,
        )
        for r in children
    ]
    every = rows
    rows, superseded = finish_rows(rows)
    used: defaultdict[str, int] = defaultdict(int)
    for r in rows:
        used[r["parent_run_id"]] += 1
    by_id = {r.info.run_id: r for r in runs}
    parents = []
    for pid, count in sorted(
        used.items(), key=lambda kv: by_id[kv[0]].info.start_time if kv[0] in by_id else 0
    ):
        p = by_id.get(pid)
        parents.append(
            ParentRun(
                run_id=pid,
                name=p.data.tags.get("mlflow.runName", "") if p else "",
                start_time=float(p.info.start_time) if p else None,
                source=p.data.tags.get("dsconv.source", "?") if p else "?",
                bundle=p.data.params.get("bundle", "") if p else "",
                children=count,
            )
        )
    if run_id:
        selection = f"the child runs of parent run {run_id}"
    else:
        selection = (
            f"every child run of experiment {exp.name!r} ({len(parents)} parent run(s)); where several runs "
            "measured the same variant, shape, device and options, the newest" + cache_note(rows)
        )
    log_to = run_id or (parents[0].run_id if len(parents) == 1 else None)
    origin = f"MLflow store `{tracking_uri}`"
    return Dataset(exp.name, rows, origin, selection, parents, [], superseded, log_to, every)


def load_bundles(
    bundles: Sequence[Path], experiment: str | None = None, root: Path | None = None
) -> list[Dataset]:
    """One Dataset per experiment found in the bundles (later bundles and lines are newer); with `root`,
    the bundles are paths relative to it, and named so in the report."""
    from workers.bundle import BundleError, read_bundle

    records: list[tuple[Any, str]] = []
    for bundle in bundles:
        try:
            where = root / bundle if root is not None else bundle
            records.extend((r, Path(bundle).as_posix()) for r in read_bundle(where))
        except BundleError as exc:
            raise ReportInputError(str(exc)) from None
    by_experiment: dict[str, list[Row]] = defaultdict(list)
    for i, (record, bundle) in enumerate(records):
        name = experiment or record.params.get("experiment") or record.tags.get("experiment") or "bundle"
        row = row_from_parts(record.params, record.metrics, record.tags, start_time=float(i), source=bundle)
        by_experiment[name].append(row)
    if not by_experiment:
        raise ReportInputError(f"no records in {', '.join(map(str, bundles))}")
    out = []
    for name, rows in by_experiment.items():
        kept, superseded = finish_rows(rows)
        used = sorted({r["source"] for r in kept})
        selection = (
            "every record of the bundle(s); a later line or bundle replaces an earlier one of the same "
            "measurement (variant, shape, device, options)" + cache_note(kept)
        )
        origin = "results bundle(s), read directly"
        out.append(Dataset(name, kept, origin, selection, [], used, superseded, None, rows))
    return out


def dataset_from_rows(
    experiment: str, rows: Sequence[Row], origin: str = "rows given by the caller"
) -> Dataset:
    """A Dataset of rows already made (tests, notebooks): devices and shapes named, newest kept."""
    every = list(rows)
    kept, superseded = finish_rows(every)
    return Dataset(experiment, kept, origin, "the rows given", [], [], superseded, None, every)


def bundles_under(root: Path) -> list[Path]:
    """Every results bundle (a folder with records.jsonl) under `root`."""
    return sorted(p.parent for p in root.rglob("records.jsonl"))


def bundles_from_args(args: Sequence[str]) -> list[Path]:
    """The results bundles a command line names, or every one under results/ when it names none; a path
    that is not a bundle is a ReportInputError."""
    bundles = [Path(a) for a in args] or bundles_under(REPO_ROOT / "results")
    for b in bundles:
        if not (b / "records.jsonl").is_file():
            raise ReportInputError(f"{b} is not a results bundle (no records.jsonl)")
    return bundles


def bundle_rows(bundles: Sequence[Path]) -> list[Row]:
    """The rows of the bundles' records (artifacts not read), the newest of each measurement a bundle."""
    from workers.bundle import read_records

    rows: list[Row] = []
    for bundle in bundles:
        kept, _ = finish_rows(rows_from_records(read_records(bundle), source=str(bundle)))
        rows.extend(kept)
    return rows
