#!/usr/bin/env bash
# The MLflow tracking server, bound to 127.0.0.1 unless MLFLOW_HOST is given (reach a loopback server from
# elsewhere through an SSH tunnel). Clients use MLFLOW_TRACKING_URI=http://HOST:PORT or `tracking=server`;
# artifacts travel over HTTP (--serve-artifacts), so workers and drivers need no shared filesystem.
# It returns to the caller only when the server stops; it says so once /health answers (7-20 s on two
# cores), and gives up, stopping the server, if that takes longer than MLFLOW_HEALTH_TIMEOUT seconds.
#
# Environment (all optional):
#   MLFLOW_HOST=127.0.0.1        address to listen on (`make mlflow-server HOST=...`; 0.0.0.0 only behind a firewall)
#   MLFLOW_PORT=5000             port
#   MLFLOW_BACKEND_URI=...       the store; default sqlite:///<this folder>/mlflow.db (one writer: the
#                                server). For many writers use PostgreSQL, e.g.
#                                postgresql://mlflow@dbhost:5432/mlflow (pip install psycopg2-binary; the
#                                password in ~/.pgpass or PGPASSWORD, never in the URI)
#   MLFLOW_ARTIFACTS_DIR=...     served artifacts folder; default <this folder>/artifacts
#   MLFLOW_HEALTH_TIMEOUT=120    seconds to wait for /health
#   MLFLOW_BIN=...               the mlflow command; default .venv/bin/mlflow, else mlflow on PATH
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
# The mlflow command: MLFLOW_BIN, else the repository's .venv (make install), else the one on PATH (the
# GPU-node kit's, after scripts/install-kit.sh's export line).
mlflow_bin="${MLFLOW_BIN:-$root/.venv/bin/mlflow}"
if [[ -z "${MLFLOW_BIN:-}" && ! -x "$mlflow_bin" ]]; then
  mlflow_bin="$(command -v mlflow || true)"
  [[ -n "$mlflow_bin" ]] || { echo "mlflow/server.sh: no mlflow: run make install (or install the GPU-node kit)" >&2; exit 2; }
fi
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
backend="${MLFLOW_BACKEND_URI:-sqlite:///$here/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DIR:-$here/artifacts}"
timeout="${MLFLOW_HEALTH_TIMEOUT:-120}"
mkdir -p "$artifacts"

"$mlflow_bin" server \
  --backend-store-uri "$backend" \
  --artifacts-destination "$artifacts" \
  --serve-artifacts \
  --host "$host" \
  --port "$port" \
  --workers 1 &
server=$!
# Ctrl-C or a TERM stops the server (and its gunicorn/uvicorn workers) with this script.
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null; exit 130' INT TERM

url="http://$host:$port"
[[ "$host" == "0.0.0.0" ]] && url="http://127.0.0.1:$port"
healthy() {
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
  fi
}
deadline=$((SECONDS + timeout))
until healthy "$url/health"; do
  if ! kill -0 "$server" 2>/dev/null; then
    wait "$server"; rc=$?
    echo "mlflow/server.sh: the server exited (code $rc) before /health answered" >&2
    exit "$(( rc == 0 ? 1 : rc ))"
  fi
  if (( SECONDS >= deadline )); then
    echo "mlflow/server.sh: no answer from $url/health after ${timeout}s; stopping the server" >&2
    kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null
    exit 1
  fi
  sleep 1
done
echo "MLflow tracking server healthy at http://$host:$port (store: ${backend%%://*}; artifacts: $artifacts)"
echo "use it with: MLFLOW_TRACKING_URI=http://$host:$port, or tracking=server"
wait "$server"
