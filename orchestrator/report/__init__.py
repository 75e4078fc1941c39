"""The report: MLflow records (or results bundles) into figures, tables and findings.md.

    python -m orchestrator.report --experiment NAME [--run-id ID] [--out DIR]

`load` turns records into flat rows, `analysis` computes tables from rows, `figures` draws them,
`findings` writes the four answers; `build.build_report` ties them together for one Dataset and is what
tests call with rows of their own. Nothing is imported here, so that `python -m orchestrator.report.X`
runs module X once, not a second copy of it that the package had already imported.
"""
