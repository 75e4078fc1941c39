"""The report: MLflow records (or results bundles) into figures, tables and findings.md.

    python -m orchestrator.report --experiment NAME [--run-id ID] [--out DIR]

`load` turns records into flat rows, `analysis` computes tables from rows, `figures` draws them,
`findings` writes the four answers; `build_report` ties them together for one Dataset and is what
tests call with rows of their own.
"""

from __future__ import annotations

from orchestrator.report.build import build_report

__all__ = ["build_report"]
