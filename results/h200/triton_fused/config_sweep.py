"""Every block configuration of `triton_fused` (kernels/triton_variants.py's CONFIGS that fit the shape),
pinned, built, verified against the float64 reference and timed in turns by the harness (CUPTI kernel time,
median of 5 rounds, warm): how far apart the configurations are and whether triton.autotune's pick (timed
with cold L2 by Triton's do_bench) is the fastest under the project's warm timing.

    PYTHONPATH=. python results/h200/triton_fused/config_sweep.py 4x112x112x32-16 [SHAPE ...]   (on a GPU node)
"""

from __future__ import annotations

import statistics
import sys
import time

from kernels import registry
from kernels.device import visible_gpu
from kernels.layer import make_inputs, reference, relative_l2_error
from kernels.triton_variants import NAME, configs_for
from workers import harness
from workers.paired import ROUND_TIMING, parse_shape

ROUNDS = 5


def sweep(spec: str) -> None:
    device = visible_gpu("h200")
    shape = parse_shape(spec)
    inputs = make_inputs(shape, 7)
    ref = reference(shape, inputs)
    variant = registry.get(NAME)
    auto = variant.build(shape, device, {})
    built = {}
    for cfg in configs_for(shape):
        opts = {"config": [cfg.block_p, cfg.block_c, cfg.block_co, cfg.warps, cfg.stages]}
        try:
            b = variant.build(shape, device, opts)
            placed = b.place(inputs)
            b.run(placed)
            b.sync()
            built[cfg] = (b, placed, relative_l2_error(b.fetch(placed), ref))
        except Exception as exc:  # a configuration Triton cannot compile (shared memory, registers)
            print(f"FAIL {cfg}: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
    times: dict[object, list[float]] = {cfg: [] for cfg in built}
    for _ in range(ROUNDS):
        for cfg, (b, placed, _err) in built.items():
            times[cfg].append(harness.measure(b, [placed], ROUND_TIMING, device).time_ms)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"\n{shape.label}, {when}, {device.model}; CUPTI kernel us, median of {ROUNDS} rounds (warm)")
    print(f"triton.autotune's pick: {auto.config} (build {auto.compile_s:.1f} s)")
    for cfg, t in sorted(times.items(), key=lambda kv: statistics.median(kv[1])):
        us = statistics.median(t) * 1e3
        print(
            f"P {cfg.block_p:3d} C {cfg.block_c:2d} CO {cfg.block_co:3d} warps {cfg.warps} "
            f"stages {cfg.stages}: "
            f"{us:8.2f} us  err {built[cfg][2]:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        sweep(arg)
