#!/usr/bin/env bash
# The MLflow tracking server on the embedded store, bound to 127.0.0.1 (reach it from elsewhere through an
# SSH tunnel). Clients use MLFLOW_TRACKING_URI=http://127.0.0.1:${MLFLOW_PORT} or `tracking=server`;
# artifacts then travel over HTTP (--serve-artifacts), so no shared filesystem is needed.
# Healthy within 7-20 s on two cores: poll http://127.0.0.1:${MLFLOW_PORT}/health.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
mlflow_bin="${MLFLOW_BIN:-$root/.venv/bin/mlflow}"
port="${MLFLOW_PORT:-5000}"
mkdir -p "$here/artifacts"
exec "$mlflow_bin" server \
  --backend-store-uri "sqlite:///$here/mlflow.db" \
  --artifacts-destination "$here/artifacts" \
  --serve-artifacts \
  --host 127.0.0.1 \
  --port "$port" \
  --workers 1
