"""Probe: the H200's tuning-database entry at 112^2 x 32->64 (batch 32) with more resident warps: 2-warp
blocks and register caps below 64 (48, 40, 32), each built, verified against the float64 reference and timed
by the harness (CUPTI kernel time, median of 5 rounds). The family's space allows caps 64, 128 and 255 only,
so this ran with `MAX_REGISTERS = (32, 40, 48, 64, 128, 255)` in kernels/halide/family/params.py, an edit not
committed; output in probe-register-caps.txt:

    python results/h200/nsight_112_warm/probe_register_caps.py   (on a GPU node, the kit of make gpu-kit)
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from kernels import registry
from kernels.device import visible_gpu
from kernels.halide import family
from kernels.halide.family.params import GpuParams
from kernels.layer import make_inputs, reference, relative_l2_error
from workers import harness
from workers.paired import ROUND_TIMING, parse_shape

ENTRY = GpuParams(  # tuning/db.json's H200 entry for mbv1_112_32_s1
    dw_at="block", lanes=4, tx=2, ty=2, threads_co=16, threads_x=1, threads_y=2, k=16, weights="global",
    stage_input=False, max_registers=64, dw_vec=2, dw_rows=4,
)  # fmt: skip
TRIED = [  # (threads_y, k, max_registers)
    (2, 16, 64), (2, 8, 64), (4, 16, 64), (4, 8, 64), (2, 8, 48), (4, 16, 48), (4, 8, 48),
    (4, 16, 40), (4, 8, 40), (4, 8, 32),
]  # fmt: skip


def main() -> None:
    device = visible_gpu("h200")
    shape = parse_shape("32x112x112x32-64")
    inputs = make_inputs(shape, 7)
    ref = reference(shape, inputs)
    built = {}
    for threads_y, k, cap in TRIED:
        p = dataclasses.replace(ENTRY, threads_y=threads_y, k=k, max_registers=cap)
        try:
            b = registry.get("halide_family").build(shape, device, family.build_options(p, {}))
            placed = b.place(inputs)
            b.poison(placed)
            b.run(placed)
            b.sync()
            built[p] = (b, placed, relative_l2_error(b.fetch(placed), ref))
        except Exception as exc:
            print("FAIL", threads_y, k, cap, type(exc).__name__, str(exc)[:200], flush=True)
    times: dict[GpuParams, list[float]] = {p: [] for p in built}
    for _ in range(5):
        for p, (b, placed, _err) in built.items():
            times[p].append(harness.measure(b, [placed], ROUND_TIMING, device).time_ms)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"112^2 probe, {when}, {device.model}; CUPTI kernel us, median of 5 rounds")
    for p, t in sorted(times.items(), key=lambda kv: statistics.median(kv[1])):
        threads = f"{p.threads_co}x{p.threads_x}x{p.threads_y}"
        us = statistics.median(t) * 1e3
        print(f"threads {threads} k {p.k:2d} cap {p.max_registers:3d}: {us:7.2f} us  err {built[p][2]:.1e}")


if __name__ == "__main__":
    main()
