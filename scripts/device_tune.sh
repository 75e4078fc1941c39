#!/usr/bin/env bash
# A schedule search on a GPU node that has no package registry, Ray or MLflow (issue #6).
#   usage (on the node, repo root): scripts/device_tune.sh OUT_DIR TUNE_ARGS...
#   e.g. scripts/device_tune.sh $OUT +experiment=mobilenet_v1 'devices=[h100]' tune=gpu \
#          'tune.resume=[tuning/runs/h100-*/records.jsonl.gz]'
# Installs the GPU-node kit (`make gpu-kit` → .devcache/gpu-kit, or KIT_DIR) when Halide is not
# importable, starts from a copy of the repository's tuning database (OUT_DIR/db.json), runs `python -m orchestrator.tune ... --local` and packs what
# tuning/runs/<name>/ keeps into OUT_DIR/run.tgz: config.yaml, gpu.txt, records.jsonl.gz (the bundle's
# records; artifacts stay behind), summary.json, tune.log. The worker processes' logs go to
# OUT_DIR/logs.tgz, to read when something failed; tuning/runs/ does not keep them. Then, here:
#   mkdir tuning/runs/NAME && tar -xzf run.tgz -C tuning/runs/NAME
#   python -m orchestrator.tune --merge db.json      (the faster entries into tuning/db.json)
set -uo pipefail
out=$1; shift
if ! python3 -c "import halide" 2>/dev/null; then  # the kit of `make gpu-kit`, copied to KIT_DIR
  kit=${KIT_DIR:-.devcache/gpu-kit}
  kit_env=$(scripts/install-kit.sh "$kit" /tmp/dsconv-kit) || exit 2
  eval "$kit_env"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
run=$(mktemp -d /tmp/tune.XXXXXX)
cp tuning/db.json "$out/db.json"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$run/gpu.txt" 2>&1
python3 -m orchestrator.tune "$@" "tune.db=$out/db.json" --local --out "$run/bundle" 2>&1 | tee "$run/tune.log" \
  | grep -vE '^  \S+@\S+ \w+ (ok|wrong|failed|skipped):'   # the per-candidate lines stay in tune.log
status=${PIPESTATUS[0]}
echo "exit status: $status" >> "$run/tune.log"
for f in config.yaml summary.json; do [ -e "$run/bundle/$f" ] && mv "$run/bundle/$f" "$run/"; done
[ -d "$run/bundle/logs" ] && tar -C "$run/bundle" -czf "$out/logs.tgz" logs
[ -f "$run/bundle/records.jsonl" ] && gzip -c "$run/bundle/records.jsonl" > "$run/records.jsonl.gz"
rm -rf "$run/bundle"
tar -C "$run" -czf "$out/run.tgz" . && cp "$run/tune.log" "$out/tune.log"
exit "$status"
