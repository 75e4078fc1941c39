#!/usr/bin/env bash
# Session 16, device call 3 (H100): Halide 21 and shared memory past 48 KiB (a probe and the new limit
# test); Nsight Compute's full set on the 7² entry and on the best shared-depthwise tile of the probe.
set -u
T0=$(date +%s)
mkdir -p /tmp/site && tar -xJf .devcache/gpu-bundle.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 export/dev/smem_probe.py 2>&1 | tail -8
python3 -m pytest -q -p no:cacheprovider tests/test_halide_limits.py -k "48_kib" 2>&1 | tail -3
echo "smem done at $(( $(date +%s) - T0 )) s"
NCU=$(command -v ncu || ls -d /usr/local/cuda*/bin/ncu | tail -1)
mkdir -p /tmp/n
for j in tuned dwblock; do
  timeout 200 $NCU --target-processes all --set full --nvtx --nvtx-include dsconv_profile --kernel-name-base demangled \
    --kernel-name 'regex:_kernel_' --launch-count 3 --clock-control none -o /tmp/n/n7_$j -f \
    python3 -m workers.profiling.target export/dev/job7_$j.json --warmup 3 --runs 1 > /tmp/n/run_$j.log 2>&1
  $NCU --import /tmp/n/n7_$j.ncu-rep --page details --print-details all --print-units base > /tmp/n/n7_${j}_details.txt 2>&1
  echo "ncu $j done at $(( $(date +%s) - T0 )) s"
done
(cd /tmp/n && tar -czf $OUT/ncu7.tgz *.txt *.log *.ncu-rep)
grep -E "^  _kernel|Duration|Achieved Occupancy|Issue Slots Busy|Warp Cycles Per Issued|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Stall|Barrier" /tmp/n/n7_*_details.txt | head -60
echo "all done at $(( $(date +%s) - T0 )) s"
