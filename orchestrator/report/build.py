"""One report folder from one Dataset: CSVs, figures and findings.md, optionally logged to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.report import analysis, figures, gpus
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
         "roofline_*.png", "fusion_*.png", "speedups_*.png", "gpus_concurrency.csv",
         "gpus_agreement.csv")  # fmt: skip
NCU_FIRST = ("device", "shape", "variant", "framework", "time_ms")


def build_report(dataset: Dataset, out: Path, command: str) -> list[Path]:
    """Write records.csv, speedups.csv, fusion.csv, ncu.csv (when profiled), pointwise.csv (when GPU
    records carry kernel times), the figures per device and findings.md into `out`; returns the files
    written, findings.md last."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OWNED:
        for stale in out.glob(pattern):
            stale.unlink()
    rows = dataset.rows
    written = [analysis.write_csv(out / "records.csv", rows, analysis.RECORD_COLUMNS)]
    speed = analysis.speedup_table(rows)
    fusion = analysis.fusion_table(rows)
    ncu = analysis.ncu_table(rows)
    pointwise = analysis.pointwise_table(rows)
    written.append(analysis.write_csv(out / "speedups.csv", speed, SPEEDUP_FIRST))
    written.append(analysis.write_csv(out / "fusion.csv", fusion, FUSION_FIRST))
    if ncu:
        written.append(analysis.write_csv(out / "ncu.csv", ncu, NCU_FIRST))
    if pointwise:
        written.append(analysis.write_csv(out / "pointwise.csv", pointwise, ("device", "shape")))
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
            "roofline": figures.roofline(rows, device, dataset.experiment, out),
            "fusion": figures.fusion(fusion, device, dataset.experiment, model, out),
            "speedups": figures.speedups(speed, device, dataset.experiment, model, out),
        }
        kept = {k: p for k, p in made.items() if p is not None}
        if kept:
            drawn[device] = {k: Path(p.name) for k, p in kept.items()}
            written.extend(kept.values())
    names = [p.name for p in written] + ["findings.md"]
    text = findings_text(Inputs(dataset, command, speed, fusion, ncu, drawn, names, pointwise))
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
