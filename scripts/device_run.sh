#!/usr/bin/env bash
# Run exported job lists on a GPU node that has no package registry, Ray or MLflow (issue #3).
#   usage (on the node, repo root): scripts/device_run.sh OUT_DIR EXPORT_DIR... [-- WORKER_ARGS]
#   e.g. scripts/device_run.sh $OUT export/h200/mobilenet_v1 -- --gpus all   (every GPU of the node at once)
# Installs the GPU-node kit (`make gpu-kit` → .devcache/gpu-kit, or KIT_DIR) when Halide is not
# importable, runs `python -m workers run` on each export's jobs.json into
# OUT_DIR/bundles/<experiment>, and packs the bundles into OUT_DIR/bundles.tgz for the trip back;
# `python -m orchestrator.ingest` then logs them into MLflow.
set -uo pipefail
out=$1; shift
exports=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do exports+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if ! python3 -c "import halide" 2>/dev/null; then  # the kit of `make gpu-kit`, copied to KIT_DIR
  kit=${KIT_DIR:-.devcache/gpu-kit}
  kit_env=$(scripts/install-kit.sh "$kit" /tmp/dsconv-kit) || exit 2
  eval "$kit_env"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
mkdir -p "$out/bundles"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
for e in "${exports[@]}"; do
  name=$(basename "$e")
  python3 -m workers run "$e/jobs.json" --out "$out/bundles/$name" "$@" > "$out/bundles/$name.log" 2>&1
  echo "== $name: $(grep -E ' → |^wall ' "$out/bundles/$name.log" | tr '\n' ' ')"
done
tar -C "$out" -czf "$out/bundles.tgz" bundles && rm -rf "$out/bundles"
