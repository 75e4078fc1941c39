"""What executes one job: build → verify → time → derive, the one timing harness, and the offline CLI.

`workers.job.execute(job)` runs inside a Ray task or in the CLI's child process; it never talks to
MLflow: it returns a `Record` and the driver (or `orchestrator.ingest`) is the only writer.
"""
