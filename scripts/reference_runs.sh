#!/usr/bin/env bash
# The reference runs of a GPU node, through the project's live path: an MLflow server and a Ray head on
# the node (its GPU model declared), every experiment dispatched through Ray and logged to that server
# while it runs, then exported into results bundles (python -m orchestrator.export) for the trip home.
#
#   usage (on the node, repo root, the install kit's export line evaluated):
#     scripts/reference_runs.sh OUT_DIR STAGE...
#   Logs and bundles accumulate under STATE/run across invocations; each invocation ends by packing them
#   into OUT_DIR/reference-runs.tgz (what has been exported so far, every log).
#   stages, in the order a session runs them:
#     up        start (or find) the MLflow server and (re)start the Ray head; both outlive the call (setsid)
#     checks    the GPU tests of the new code paths, and the device's measured roofs
#     sweep     make sweep-all-gpus, interrupted with SIGINT after INTERRUPT_S seconds, then run again
#     mobilenet +experiment=mobilenet_v1 devices=[auto] through Ray (less max-autotune)
#     max       torch.compile max-autotune (strict fp32) on the app shape and the five stride-1 blocks
#     nsight    +experiment=nsight devices=[auto] profile=ncu through Ray
#     cli       the same sweep and mobilenet_v1 jobs through `python -m workers run` (no Ray, no MLflow)
#     heldout   +experiment=heldout devices=[auto] (halide_tuned's on_miss search on unseen layers)
#     cold      the five MobileNetV1 stride-1 blocks with timing.cold_cache=true (L2 flushed per call)
#     export    every experiment of the server as a bundle, packed into OUT_DIR/bundles.tgz
# Environment: GPU (the catalog model this node declares; default h200), STATE (server store, Ray and
# kit state; default /tmp/dsconv-node), INTERRUPT_S (default 45), MLFLOW_PORT (default 5000), RUN_ARGS
# (overrides added to every experiment, e.g. 'stand_in=cpu timing=quick' for a dry run on a CPU).
set -uo pipefail
pack_to=${1:?usage: scripts/reference_runs.sh OUT_DIR STAGE...}; shift
gpu=${GPU:-h200}
state=${STATE:-/tmp/dsconv-node}
out=$state/run
port=${MLFLOW_PORT:-5000}
export MLFLOW_TRACKING_URI=http://127.0.0.1:$port PYTHONUNBUFFERED=1 DSCONV_JOURNAL_DIR=$state/journal
mkdir -p "$out" "$pack_to"
py=python3
make_=(make --no-print-directory PY=$py)
read -r -a run_args <<<"${RUN_ARGS:-}"
say() { echo "== $(date -u +%H:%M:%S) $*"; }

up() {
  if ! curl -sf "http://127.0.0.1:$port/health" >/dev/null; then
    say "MLflow server on 127.0.0.1:$port, store $state/mlflow.db"
    MLFLOW_BACKEND_URI=sqlite:///$state/mlflow.db MLFLOW_ARTIFACTS_DIR=$state/artifacts \
      setsid "${make_[@]}" mlflow-server >"$state/mlflow-server.log" 2>&1 < /dev/null &
    for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
    curl -sf "http://127.0.0.1:$port/health" >/dev/null || { tail -20 "$state/mlflow-server.log"; return 1; }
  fi
  # A Ray head started by an earlier invocation runs its workers from that invocation's checkout: restart it.
  ray stop --force >/dev/null 2>&1
  say "Ray head declaring GPU=$gpu"
  setsid "${make_[@]}" head GPU="$gpu" >"$state/ray-head.log" 2>&1 < /dev/null
  tail -3 "$state/ray-head.log"
  "${make_[@]}" ray-status
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv \
    > "$out/gpu.txt" 2>&1
}

checks() {
  say "GPU tests of the torch.compile variants (default mode), cold L2 and clocks"
  "$py" -m pytest -q -m gpu -p no:cacheprovider -k "not max" tests/test_torch_compile.py tests/test_clocks.py \
    2>&1 | tee "$out/gpu-tests.log" | tail -25
  say "the device's roofs"
  "$py" -m workers info --measure-gpu 2>&1 | tee "$out/roofs.txt"
}

orchestrate() {  # one experiment through Ray, logged to the node's server
  "$py" -m orchestrator "$@" cluster=ray tracking=server "${run_args[@]}"
}

sweep() {
  say "make sweep-all-gpus, interrupted after ${INTERRUPT_S:-45} s"
  # Job control on: the sweep gets its own process group and SIGINT as a terminal's Ctrl-C delivers it (a
  # script's background job would otherwise start with SIGINT ignored, and Python would never see it).
  set -m
  "${make_[@]}" sweep-all-gpus TRACKING=server ARGS="${RUN_ARGS:-}" >"$out/sweep-interrupted.log" 2>&1 &
  local pid=$!
  set +m
  sleep "${INTERRUPT_S:-45}"
  kill -INT -- "-$pid" 2>/dev/null
  wait "$pid"; echo "interrupted sweep: exit $?" | tee -a "$out/sweep-interrupted.log"
  tail -5 "$out/sweep-interrupted.log"
  say "make sweep-all-gpus again: it finishes the rest"
  "${make_[@]}" sweep-all-gpus TRACKING=server ARGS="${RUN_ARGS:-}" 2>&1 | tee "$out/sweep.log" | tail -40
}

# mobilenet_v1's variants less torch.compile's max-autotune pair, which the `max` stage runs on fewer shapes
# (it compiles for about 40 s a shape), and less Anderson2021, whose autoscheduling takes about 11 s a job
# (its H200 records: results/h200x2/mobilenet_v1); a node's time is short
MOBILENET_VARIANTS=halide_app,halide_unfused,halide_fused_tile,halide_fused_cblock,halide_tuned,\
halide_auto_li2018,tf_separable,tf_twostep,tf_separable_xla,tf_twostep_xla,\
tf_separable_nchw,tf_twostep_nchw,tf_separable_tf32,tf_twostep_tf32,tf_separable_tf32_xla,tf_twostep_tf32_xla,\
tf_separable_nchw_tf32,tf_twostep_nchw_tf32,cudnn_nchw,cudnn_nchw_tf32,cudnn_cl,cudnn_cl_tf32,torch_compile,\
torch_compile_tf32
BLOCKS=mbv1_112_32_s1,mbv1_56_128_s1,mbv1_28_256_s1,mbv1_14_512_s1,mbv1_7_1024_s1  # the stride-1 blocks

mobilenet() {
  say "mobilenet_v1 through Ray"
  orchestrate +experiment=mobilenet_v1 'devices=[auto]' "variants=[$MOBILENET_VARIANTS]" 2>&1 \
    | tee "$out/mobilenet_v1.log" | tail -30
}

max() {
  say "torch.compile max-autotune (strict fp32) on the app shape and the stride-1 blocks through Ray"
  orchestrate +experiment=mobilenet_v1 'devices=[auto]' 'variants=[torch_compile_max]' "shapes=[app,$BLOCKS]" \
    2>&1 | tee "$out/max.log" | tail -12
}

nsight() {
  say "nsight through Ray"
  orchestrate +experiment=nsight 'devices=[auto]' profile=ncu 'shapes=[app,mbv1_14_512_s1]' 2>&1 | tee "$out/nsight.log" | tail -20
}

cli() {
  say "the same jobs through python -m workers run"
  local e
  local halide=halide_app,halide_unfused,halide_fused_tile,halide_fused_cblock
  for e in "sweep variants=[$halide,cudnn_cl,cudnn_nchw]" "mobilenet_v1 variants=[halide_tuned]"; do
    read -r -a args <<<"$e"
    "$py" -m orchestrator +experiment="${args[0]}" "devices=[$gpu]" "${args[@]:1}" dispatch=export \
      dispatch.out="$state/export/${args[0]}" "${run_args[@]}" >/dev/null || return 1
    "$py" -m workers run "$state/export/${args[0]}/jobs.json" --out "$out/cli/${args[0]}" 2>&1 \
      | tee "$out/cli-${args[0]}.log" | tail -4
  done
}

heldout() {
  say "held-out layers through Ray"
  orchestrate +experiment=heldout 'devices=[auto]' 2>&1 | tee "$out/heldout.log" | tail -30
  cp tuning/db.json "$out/db.json"
}

cold() {
  say "cold L2 on the five stride-1 blocks through Ray"
  orchestrate +experiment=mobilenet_v1 'devices=[auto]' timing.cold_cache=true \
    'variants=[halide_tuned,cudnn_cl,cudnn_cl_tf32,torch_compile_tf32]' \
    "shapes=[$BLOCKS]" \
    2>&1 | tee "$out/cold.log" | tail -20
}

export_() {
  say "exporting every experiment from the node's MLflow"
  local e
  for e in sweep mobilenet_v1 nsight heldout; do
    "$py" -m orchestrator.export --experiment "$e" --out "$state/bundles/$e" --tracking server --force 2>&1 | tail -2
  done
  if [ -d "$out/cli" ]; then rm -rf "$state/bundles/cli"; cp -r "$out/cli" "$state/bundles/cli"; fi
}

pack() {
  tar -C "$state" -czf "$pack_to/reference-runs.tgz" run $(cd "$state" && ls -d bundles 2>/dev/null) \
    && ls -l "$pack_to/reference-runs.tgz"
}

for stage in "$@"; do
  case $stage in
    up|checks|sweep|mobilenet|max|nsight|cli|heldout|cold) $stage ;;
    export) export_ ;;
    *) echo "reference_runs.sh: unknown stage $stage (up checks sweep mobilenet max nsight cli heldout cold export)" >&2
       exit 2 ;;
  esac
done
pack
