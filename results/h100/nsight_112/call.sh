#!/usr/bin/env bash
# Session 15, device call 4 (H100): Nsight Compute's full set on the new 112² entry (clocks left alone);
# a fresh search of 56² (two-lane loads are single accesses now); then the goals run twice with the
# database it leaves.
set -u
T0=$(date +%s)
mkdir -p /tmp/site && tar -xJf .devcache/gpu-bundle.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
NCU=$(command -v ncu || ls -d /usr/local/cuda*/bin/ncu | tail -1)
timeout 150 $NCU --target-processes all --set full --nvtx --nvtx-include dsconv_profile \
  --kernel-name-base demangled --kernel-name 'regex:_kernel_' --launch-count 1 --clock-control none \
  -o /tmp/n112 -f python3 -m workers.profiling.target export/dev/job112.json --warmup 3 --runs 1 > $OUT/ncu_run.log 2>&1
$NCU --import /tmp/n112.ncu-rep --page details --print-details all --print-units base > $OUT/ncu112_details.txt 2>&1
$NCU --import /tmp/n112.ncu-rep --page raw --csv --print-units base > $OUT/ncu112_raw.csv 2>&1
echo "ncu done at $(( $(date +%s) - T0 )) s"
timeout 240 scripts/device_tune.sh $OUT +experiment=mobilenet_v1 'devices=[h100]' 'shapes=[mbv1_56_128_s1]' \
  tune=gpu tune.budget=300 tune.generation=24 tune.parallel=14 tune.promote=2 tune.seed=41 tune.time_limit_s=190 \
  tune.job_timeout_s=90 | tail -4
echo "tune done at $(( $(date +%s) - T0 )) s"
cp $OUT/db.json tuning/db.json && rm -f $OUT/db.json.lock
for g in goals goals2; do
  left=$(( 590 - ($(date +%s) - T0) ))
  timeout $left scripts/device_run.sh /tmp/$g export/h100/mobilenet_v1_goals
  mv /tmp/$g/bundles.tgz $OUT/$g.tgz
  echo "$g done at $(( $(date +%s) - T0 )) s"
done
