"""One report folder from one Dataset: CSVs, figures and findings.md, optionally logged to MLflow."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from orchestrator.report import analysis, conditions, figures, gpus
from orchestrator.report.findings import Inputs, findings_text
from orchestrator.report.load import Dataset, device_facts

SPEEDUP_FIRST = ("device", "shape", "label", "bound", "halide_variant", "halide_ms", "halide_pct_roofline")
FUSION_FIRST = (
    "device",
    "shape",
    "label",
    "halide_unfused_ms",
    "best_fused",
    "best_fused_ms",
    "fusion_speedup",
)
# What a report writes (and removes from its folder before writing, so nothing stale lingers)
OWNED = ("findings.md", "records.csv", "speedups.csv", "fusion.csv", "ncu.csv", "pointwise.csv",
         "peers.csv", "cache.csv", "paths.csv", "roofline_*.png", "fusion_*.png", "speedups_*.png",
         "gpus_concurrency.csv", "gpus_agreement.csv", "figures.json")  # fmt: skip
NCU_FIRST = ("device", "shape", "variant", "framework", "time_ms")
JOB_FIRST = ("device", "shape", "variant", "framework")


def build_report(
    dataset: Dataset, out: Path, command: str, *, title: str = "", stamp: bool = True, draw: bool = True
) -> list[Path]:
    """Write records.csv, speedups.csv, fusion.csv, ncu.csv (when profiled), pointwise.csv (when GPU
    records carry kernel times), peers.csv (when peers beyond question 1's ran), cache.csv (jobs timed
    warm and cold), paths.csv (jobs run through Ray and the worker CLI), the figures per device,
    figures.json (the quotable numbers) and findings.md into `out`; returns the files written,
    findings.md last. `title` heads findings.md; without `stamp` it names no time (a published report
    changes only when its data or the code does); without `draw` the figures are named, not drawn."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OWNED:
        for stale in out.glob(pattern):
            stale.unlink()
    written = [analysis.write_csv(out / "records.csv", dataset.rows, analysis.RECORD_COLUMNS)]
    rows, set_aside = conditions.split_cold(dataset.rows)  # the questions compare warm with warm
    compared = dataclasses.replace(dataset, rows=rows) if set_aside else dataset
    speed = analysis.speedup_table(rows)
    peers = analysis.peer_table(rows)
    fusion = analysis.fusion_table(rows)
    ncu = analysis.ncu_table(rows)
    pointwise = analysis.pointwise_table(rows)
    cache = conditions.cache_table(dataset.rows)
    paths = conditions.path_pairs(dataset.all_rows)
    written.append(analysis.write_csv(out / "speedups.csv", speed, SPEEDUP_FIRST))
    written.append(analysis.write_csv(out / "fusion.csv", fusion, FUSION_FIRST))
    if ncu:
        written.append(analysis.write_csv(out / "ncu.csv", ncu, NCU_FIRST))
    if pointwise:
        written.append(analysis.write_csv(out / "pointwise.csv", pointwise, ("device", "shape")))
    if set(analysis.peer_groups(peers)) - set(analysis.BASELINES):
        written.append(analysis.write_csv(out / "peers.csv", peers, ("device", "shape", "halide_variant")))
    if cache:
        written.append(analysis.write_csv(out / "cache.csv", cache, JOB_FIRST))
    if paths:
        written.append(analysis.write_csv(out / "paths.csv", conditions.path_table(paths), JOB_FIRST))
    if gpus.used_several_gpus(dataset.all_rows):
        concurrency, pairs = gpus.concurrency(dataset.all_rows), gpus.agreement(dataset.all_rows)
        written.append(
            analysis.write_csv(out / "gpus_concurrency.csv", concurrency, ("run", "device", "gpus"))
        )
        written.append(analysis.write_csv(out / "gpus_agreement.csv", pairs, ("kind", "variant", "shape")))
    drawn: dict[str, dict[str, Path]] = {}
    for device in analysis.devices(rows):
        model = device_facts(rows, device)["model"]
        made: dict[str, Path | None] = {
            "roofline": figures.roofline(rows, device, dataset.experiment, out, draw),
            "fusion": figures.fusion(fusion, device, dataset.experiment, model, out, draw),
            "speedups": figures.speedups(peers, device, dataset.experiment, model, out, draw),
        }
        kept = {k: p for k, p in made.items() if p is not None}
        if kept:
            drawn[device] = {k: Path(p.name) for k, p in kept.items()}
            written.extend(kept.values())
    # imported here: `python -m orchestrator.report.quotable` must not find it imported by the package
    from orchestrator.report import quotable

    names = [p.name for p in written] + [quotable.FIGURES, "findings.md"]
    inputs = Inputs(compared, command, speed, fusion, ncu, drawn, names, pointwise, peers=peers, cache=cache,
                    paths=paths, set_aside=set_aside, title=title, stamp=stamp)  # fmt: skip
    written.append(quotable.write_figures(inputs, out))
    text = findings_text(inputs)
    findings = out / "findings.md"
    findings.write_text(text, encoding="utf-8")
    written.append(findings)
    return written


def log_to_parent(tracking_uri: str, run_id: str, files: list[Path]) -> None:
    """Attach the report's files to the parent run's artifacts under `report/`."""
    from mlflow.tracking import MlflowClient

    client: Any = MlflowClient(tracking_uri=tracking_uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")
