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
#     checks    the device's measured roofs, then the GPU tests of the new code paths (CHECKS_K: pytest's -k;
#               default 'not max': max-autotune compiles for tens of seconds a shape)
#     sweep     make sweep-all-gpus, interrupted with SIGINT after INTERRUPT_S seconds, then run again
#     mobilenet +experiment=mobilenet_v1 devices=[auto] through Ray (less max-autotune)
#     max       torch.compile max-autotune (strict fp32) on the app shape and the five stride-1 blocks
#     nsight    +experiment=nsight devices=[auto] profile=ncu through Ray, with the overrides NSIGHT_ARGS
#               (default 'shapes=[app,mbv1_14_512_s1]')
#     cli       the same sweep and mobilenet_v1 jobs through `python -m workers run` (no Ray, no MLflow)
#     heldout   +experiment=heldout devices=[auto] (halide_tuned's on_miss search on unseen layers)
#     cold      the five MobileNetV1 stride-1 blocks with timing.cold_cache=true (L2 flushed per call)
#     splitk    issue 24's split-K: the split schedules' GPU tests, then the family's heuristic (split where
#               its grid does not fill the device) and the same heuristic unsplit, each timed in turns with
#               cublas_mm on the held-out layers of long narrow reductions (python -m workers.paired, no Ray:
#               bundles splitk and splitk_unsplit)
#     faults    issue 23's drills: a worker declaring a model the catalog lacks; a head declaring a model that
#               is not its GPU (jobs tagged gpu_model_mismatch); the MLflow server stopped mid-sweep, then
#               orchestrator.sync (each in its own experiment, faults_*); ends with `up` again
#     tensorflow  TensorFlow's GPU variants beside halide_tuned and cuDNN on the app shape and the stride-1
#               blocks through Ray, with the kit's TensorFlow (make gpu-kit KIT_EXTRA=...: see tf_cuda_libs)
#     tuned     halide_tuned and halide_app on the app shape and the stride-1 blocks through Ray, with the
#               tuning database TUNED_DB when set (a search's db.json, copied over tuning/db.json first)
#     export    every experiment of the server that has runs, as a bundle
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

restart_head() {  # stop any Ray head, start one declaring GPU model $1; its output in STATE/ray-head.log
  ray stop --force >/dev/null 2>&1
  setsid "${make_[@]}" head GPU="$1" >"$state/ray-head.log" 2>&1 < /dev/null
}

up() {
  if ! curl -sf "http://127.0.0.1:$port/health" >/dev/null; then
    say "MLflow server on 127.0.0.1:$port, store $state/mlflow.db"
    MLFLOW_BACKEND_URI=sqlite:///$state/mlflow.db MLFLOW_ARTIFACTS_DIR=$state/artifacts \
      setsid "${make_[@]}" mlflow-server >>"$state/mlflow-server.log" 2>&1 < /dev/null &
    echo $! >"$state/mlflow-server.pgid"  # setsid made it a process group's leader: `faults` stops the group
    for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
    curl -sf "http://127.0.0.1:$port/health" >/dev/null || { tail -20 "$state/mlflow-server.log"; return 1; }
  fi
  # A Ray head started by an earlier invocation runs its workers from that invocation's checkout: restart it.
  say "Ray head declaring GPU=$gpu"
  restart_head "$gpu"
  tail -3 "$state/ray-head.log"
  "${make_[@]}" ray-status
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv \
    > "$out/gpu.txt" 2>&1
}

checks() {
  say "the device's roofs"
  "$py" -m workers info --measure-gpu 2>&1 | tee "$out/roofs.txt"
  say "GPU tests of the torch.compile variants, cold L2 and clocks (-k '${CHECKS_K:-not max}')"
  "$py" -m pytest -q -m gpu -p no:cacheprovider -k "${CHECKS_K:-not max}" tests/test_torch_compile.py \
    tests/test_clocks.py 2>&1 | tee "$out/gpu-tests.log" | tail -25
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
  local extra
  read -r -a extra <<<"${NSIGHT_ARGS:-shapes=[app,mbv1_14_512_s1]}"
  orchestrate +experiment=nsight 'devices=[auto]' profile=ncu "${extra[@]}" 2>&1 | tee -a "$out/nsight.log" | tail -20
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

# Held-out layers whose pointwise is a long reduction into few channels, where cuBLAS beat halide_tuned
# (results/h200/heldout) or the heuristic now splits the reduction
SPLITK_SHAPES=32x7x7x960-160,32x14x14x384-64,64x14x14x576-96,2x14x14x480-80,16x24x24x144-24

splitk() {
  say "split-K: the split schedules against the float64 reference on the GPU"
  "$py" -m pytest -q -m gpu -p no:cacheprovider -k split tests/test_family_ptx.py 2>&1 \
    | tee "$out/splitk-tests.log" | tail -5
  local name option
  for name in splitk splitk_unsplit; do
    option=()
    [ "$name" = splitk_unsplit ] && option=(--option 'halide_family:params={"split_k":1}')
    say "split-K: halide_family ($name) and cublas_mm in turns, ${SPLITK_ROUNDS:-6} rounds"
    "$py" -m workers.paired --gpu "$gpu" --shapes "${SPLITK_SHAPES}" --variants halide_family,cublas_mm \
      "${option[@]}" --rounds "${SPLITK_ROUNDS:-6}" --experiment "$name" --out "$state/bundles/$name" 2>&1 \
      | tee "$out/$name.log" | tail -12
  done
}

cold() {
  say "cold L2 on the five stride-1 blocks through Ray"
  orchestrate +experiment=mobilenet_v1 'devices=[auto]' timing.cold_cache=true \
    'variants=[halide_tuned,cudnn_cl,cudnn_cl_tf32,torch_compile_tf32]' \
    "shapes=[$BLOCKS]" \
    2>&1 | tee "$out/cold.log" | tail -20
}

faults() {
  local runs=("$py" scripts/node_runs.py) shapes="app,mbv1_7_1024_s1,mbv1_14_512_s1,mbv1_28_256_s1,mbv1_56_128_s1"
  say "faults 1: make worker declaring a GPU model the catalog lacks (GPU=nope)"
  "${make_[@]}" worker HEAD=127.0.0.1:6379 GPU=nope; echo "make worker GPU=nope: exit $?"

  say "faults 2: the head declares GPU=rtx2060 on this node; two variants on the app shape through Ray"
  restart_head rtx2060
  grep -E '^(warning|note|error)' "$state/ray-head.log"
  "${make_[@]}" ray-status
  orchestrate +experiment=mobilenet_v1 name=faults_mismatch 'devices=[auto]' 'variants=[halide_app,cudnn_cl]' \
    'shapes=[app]' timing=quick 2>&1 | tail -8
  "${runs[@]}" show faults_mismatch

  say "faults 3: the MLflow server stopped mid-sweep (after 2 jobs), the sweep finishes, then orchestrator.sync"
  if [ ! -s "$state/mlflow-server.pgid" ]; then  # a server this script did not start: not ours to stop
    echo "faults 3 skipped: the MLflow server on :$port was not started by this script (no $state/mlflow-server.pgid)"
    return 1
  fi
  restart_head "$gpu"
  orchestrate +experiment=mobilenet_v1 name=faults_outage 'devices=[auto]' 'variants=[halide_app]' "shapes=[$shapes]" \
    timing.min_time_s=1.5 timing.max_time_s=2.0 timing.max_repeats=100000 >"$out/faults-outage.log" 2>&1 &
  local pid=$!
  "${runs[@]}" wait faults_outage 2 240
  say "stopping the MLflow server (process group $(cat "$state/mlflow-server.pgid"))"
  kill -TERM -- "-$(cat "$state/mlflow-server.pgid")"
  wait "$pid"; echo "the sweep without its server: exit $?"
  grep -E 'MLflow unreachable|journal|^(ok|failed|wrong|skipped):|error|Traceback' "$out/faults-outage.log"
  up >/dev/null  # the server back on the same store (and the head as $gpu)
  say "python -m orchestrator.sync, twice"
  "$py" -m orchestrator.sync --journal "$state/journal" --experiment faults_outage 2>&1 | tail -4
  "$py" -m orchestrator.sync --journal "$state/journal" --experiment faults_outage 2>&1 | tail -2
  "${runs[@]}" show faults_outage
}

tuned() {
  if [ -n "${TUNED_DB:-}" ]; then cp "$TUNED_DB" tuning/db.json; fi
  say "halide_tuned and halide_app on the app shape and the stride-1 blocks through Ray (database ${TUNED_DB:-tuning/db.json})"
  # rerun=true: a job's key holds the commit, not the database copied over it, so the jobs would be skipped
  orchestrate +experiment=mobilenet_v1 'devices=[auto]' 'variants=[halide_tuned,halide_app]' "shapes=[app,$BLOCKS]" \
    rerun=true 2>&1 | tee "$out/tuned.log" | tail -16
}

# TensorFlow 2.20's GPU build opens CUDA 12's runtime, cuBLAS, cuBLASLt, cuFFT 11, cuSOLVER 11, cuSPARSE 12 and
# cuDNN 9 at start-up and registers no GPU if one is missing. The kit brings the runtime, cuBLAS and ptxas (XLA)
# of CUDA 12 (KIT_EXTRA='tensorflow==2.20.0 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cublas-cu12==12.9.1.4
# nvidia-cuda-nvcc-cu12==12.9.86'). cuDNN 9 is PyTorch's own (one process loads one libcudnn.so.9, and the
# worker's PyTorch loads it first); cuSPARSE 12 is the image's CUDA 13 build of that soname; cuFFT and cuSOLVER,
# which the layer never calls, are opened under their CUDA 12 names from the image's CUDA 13 files. All of them
# are links in one folder put first on LD_LIBRARY_PATH: the image's CUDA 13 folder also holds an older cuDNN
# (9.14), which must not come before PyTorch's. Leaving out the and-cuda extra's other 2.2 GB is what lets the
# kit reach a node at 64 MiB a call (docs/evidence/tensorflow-gpu.md).
tf_cuda_libs() {
  local links=$state/tf-cuda-libs dirs found image_lib cudnn name lib want have
  dirs=$("$py" -c 'import site; print(" ".join(site.getsitepackages()))')
  found=$(find $dirs /usr/local/cuda/lib64 -name 'libcusparse.so.12' 2>/dev/null | grep -v '/cuda_runtime/\|/cublas/' | head -1)
  [ -n "$found" ] || { echo "tf_cuda_libs: no CUDA 13 libcusparse.so.12 in $dirs /usr/local/cuda/lib64"; return 1; }
  image_lib=${found%/*}
  cudnn=$(env -u LD_LIBRARY_PATH "$py" -c 'import torch; torch.backends.cudnn.version()
print(next(l.split()[-1] for l in open("/proc/self/maps") if "libcudnn.so.9" in l))')
  [ -f "$cudnn" ] || { echo "tf_cuda_libs: PyTorch loaded no libcudnn.so.9 ($cudnn)"; return 1; }
  rm -rf "$links" && mkdir -p "$links"
  ln -s "${cudnn%/*}"/libcudnn*.so.9 "$links/"
  ln -s "$image_lib/libcusparse.so.12" "$links/libcusparse.so.12"
  for name in cufft:11:12 cusolver:11:12; do
    IFS=: read -r lib want have <<<"$name"
    ln -s "$image_lib/lib$lib.so.$have" "$links/lib$lib.so.$want"
  done
  export LD_LIBRARY_PATH=$links:$image_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  say "TensorFlow's CUDA libraries: kit (runtime, cuBLAS 12), PyTorch's cuDNN (${cudnn%/*}), $image_lib (cuSPARSE; cuFFT, cuSOLVER)"
  TF_CPP_MIN_LOG_LEVEL=0 "$py" -c 'import torch, tensorflow as tf; print("TensorFlow", tf.__version__, "GPUs:",
    tf.config.list_physical_devices("GPU"), tf.sysconfig.get_build_info().get("cuda_version"), "PyTorch cuDNN",
    torch.backends.cudnn.version())' 2>&1 \
    | grep -v "^WARNING: All log messages\|cpu_feature_guard\|oneDNN\|rebuild TensorFlow" | tail -12 | tee "$out/tensorflow-gpu.txt"
}

TF_VARIANTS=tf_separable,tf_twostep,tf_separable_xla,tf_twostep_xla,tf_separable_nchw,tf_twostep_nchw,\
tf_separable_tf32,tf_twostep_tf32,tf_separable_tf32_xla,tf_twostep_tf32_xla,tf_separable_nchw_tf32,tf_twostep_nchw_tf32

tensorflow() {
  tf_cuda_libs || return 1
  restart_head "$gpu"  # Ray's workers take LD_LIBRARY_PATH from the head
  say "TensorFlow beside halide_tuned and cuDNN on the app shape and the stride-1 blocks through Ray"
  orchestrate +experiment=mobilenet_v1 name=mobilenet_v1_tensorflow 'devices=[auto]' \
    "variants=[$TF_VARIANTS,halide_tuned,cudnn_cl,cudnn_cl_tf32]" "shapes=[app,$BLOCKS]" \
    2>&1 | tee "$out/tensorflow.log" | tail -30
}

export_() {
  say "exporting every experiment from the node's MLflow"
  local e
  for e in $("$py" scripts/node_runs.py experiments); do
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
    up|checks|sweep|mobilenet|max|nsight|cli|heldout|cold|splitk|tuned|tensorflow) $stage ;;
    faults) faults 2>&1 | tee "$out/faults.log" ;;
    export) export_ ;;
    *) echo "reference_runs.sh: unknown stage $stage (up checks sweep mobilenet max nsight cli heldout cold splitk faults tuned tensorflow export)" >&2
       exit 2 ;;
  esac
done
pack
