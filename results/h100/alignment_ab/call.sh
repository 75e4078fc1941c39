#!/usr/bin/env bash
# Session 15, device call 3 (H100): A/B of the inputs' declared alignment on one machine (the tuned
# entries of 112², 56², 14², 7², this tree against the same tree with the previous algorithm.py, twice
# in turn); then Nsight Compute's full set on the new 112² entry, with its memory tables and raw L1 counters.
set -u
T0=$(date +%s)
mkdir -p /tmp/site && tar -xJf .devcache/gpu-bundle.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/old && cp -r kernels workers orchestrator conf tuning pyproject.toml /tmp/old/
cp export/dev/algorithm_unaligned.py /tmp/old/kernels/halide/algorithm.py
mkdir -p /tmp/ab
for i in 1 2; do
  python3 -m workers run export/dev/ab_jobs.json --out /tmp/ab/aligned$i > /tmp/ab/aligned$i.log 2>&1
  (cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old python3 -m workers run $OLDPWD/export/dev/ab_jobs.json --out /tmp/ab/unaligned$i > /tmp/ab/unaligned$i.log 2>&1)
  echo "round $i done at $(( $(date +%s) - T0 )) s"
done
(cd /tmp/ab && tar -czf $OUT/ab.tgz */records.jsonl *.log)
NCU=$(command -v ncu || ls -d /usr/local/cuda*/bin/ncu | tail -1)
timeout 200 $NCU --set full --nvtx --nvtx-include 'dsconv_profile/' -k regex:_kernel_ -o /tmp/n112 -f \
  python3 -m workers.profiling.target export/dev/job112.json --warmup 3 --runs 1 > $OUT/ncu_run.log 2>&1
$NCU --import /tmp/n112.ncu-rep --page details --print-details all --print-units base > $OUT/ncu112_details.txt 2>&1
$NCU --import /tmp/n112.ncu-rep --page raw --csv --print-units base > $OUT/ncu112_raw.csv 2>&1
echo "all done at $(( $(date +%s) - T0 )) s"
