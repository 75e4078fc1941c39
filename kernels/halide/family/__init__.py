"""A parameterised family of Halide schedules of the layer, for CPU and CUDA: what the search explores.

One frozen dataclass of parameters per device kind (`CpuParams`, `GpuParams`). For a shape and a device,
`space` gives the valid values of each parameter, `check` the constraints between them, `heuristic` a
good guess without measuring, `seeds` and the search's moves (`sample`, `mutate`) where a search goes,
and `cpu.apply_cpu` / `gpu.apply_gpu` schedule the layer of `algorithm.py` with a parameter set.
The `halide_family` variant builds `options["params"]` (fields left out take the heuristic's values,
the later ones their defaults: `from_options`) through the ordinary build path (`builder`), so the
CPU compile cache keys on the resolved parameters and every candidate of a search is an ordinary Job.

Modules: `params` (the dataclasses and their plain form), `space` (valid values, constraints,
canonical form), `heuristic` (heuristic, fit, from_options), `seeds` (starting points and the traffic
model), `sampling` (random moves), `cpu` and `gpu` (the schedules in Halide). Everything but `cpu` and
`gpu` is plain Python, which the driver uses to plan and record a search without Halide; those two
import Halide and are imported by `builder` alone, so this package does not re-export them.

The parameters, as the issue lists them:
- where the depthwise result lives (`dw_at`): `root` (its own buffer; on the GPU its own kernel), per
  output tile (`tile` on the CPU: the rows of a parallel task, every channel; `block` on the GPU: a
  thread block's pixels, every channel, in shared memory), per channel block inside the pointwise
  reduction (`cblock`: a register tile's pixels, `kc` / `k` channels at a time; with `gemm` = warp, a
  warp's pixels and a chunk of 32 channels, one a lane), or `inline`;
- tile sizes over output channels and pixels: the register tile (`lanes` x `vectors` channels by
  `tx` x `ty` pixels on the CPU; `lanes` x `tx` x `ty` per thread on the GPU) and the task or block
  around it (`row_tiles` and `chunks` on the CPU; `threads_co` x `threads_x` x `threads_y` on the GPU);
- vector width (`lanes`), unrolling (`dw_unroll` on the CPU; the reduction step `k`, fully unrolled,
  on the GPU), rows per parallel task (CPU), thread mapping, shared-memory staging of the input
  (`stage_input`) and of the pointwise weights (`weights`), and the register cap (`max_registers`);
- the pointwise's layout over the threads (`gemm`): a register tile per thread, or a tile striped over a
  warp's lanes with the depthwise values passed between lanes (`shfl`), as Halide's `gpu_lanes` apps do.
- where the depthwise is a GPU stage of its own (its own kernel, or the block's shared tile), that
  stage's thread tile: `dw_vec` channels (a vector) by `dw_rows` output rows a thread.
- where the depthwise is its own kernel and the pointwise a thread's register tile, the pointwise's
  reduction split into `split_k` parts over the input channels (split-K, by `rfactor`): a kernel of
  partial sums with `split_k` times the blocks, added with the bias by the output kernel.

The CPU code reuses the building blocks of `schedules_cpu` (`blocks`, so `dw_at` = root / tile / cblock
with that module's own choices reproduces its `unfused` / `fused_tile` / `fused_cblock`); the GPU code
generalises `schedules_gpu`'s register-tiled pointwise. Tiles never exceed an extent (tails shift
inwards), so every valid parameter set is correct on any shape; `check` rejects what would not launch
(threads, registers and shared memory per block).
"""

from kernels.halide.family.heuristic import (
    WIDE_CHANNELS,
    fit,
    from_options,
    heuristic,
    heuristic_fallback,
    resolve,
    split_alternative,
    split_reduction,
)
from kernels.halide.family.params import (
    CPU_DW_AT,
    CPU_MAX_VECTORS,
    GPU_DW_AT,
    GPU_DW_ROWS,
    GPU_DW_STAGED,
    GPU_DW_VEC,
    GPU_GEMM,
    GPU_SPLIT_K,
    GPU_STEPS,
    GPU_WEIGHTS,
    LATER_DEFAULTS,
    MAX_REGISTERS,
    WARP,
    CpuParams,
    GpuParams,
    Params,
    ParamsError,
    as_dict,
    build_options,
    digest,
    params_class,
)
from kernels.halide.family.sampling import mutate, sample
from kernels.halide.family.seeds import (
    GPU_MODEL_SEEDS,
    GPU_WARP_SEEDS,
    L2_TO_L1_BANDWIDTH,
    LSU_TO_L1,
    Traffic,
    block_tail_waste,
    depthwise_levels,
    depthwise_tiles,
    longer_steps,
    model_seeds,
    named,
    other_caps,
    seeds,
    traffic,
    whole_blocks,
)
from kernels.halide.family.space import (
    GPU_MAX_ACCUMULATORS,
    GPU_MAX_THREADS,
    GPU_REGISTERS_PER_BLOCK,
    GPU_SHARED_BYTES,
    STREAMED_STEP,
    accumulator_cap,
    canonical,
    check,
    register_demand,
    shared_bytes,
    space,
)

__all__ = [
    "CPU_DW_AT",
    "CPU_MAX_VECTORS",
    "GPU_DW_AT",
    "GPU_DW_ROWS",
    "GPU_DW_STAGED",
    "GPU_DW_VEC",
    "GPU_GEMM",
    "GPU_MAX_ACCUMULATORS",
    "GPU_MAX_THREADS",
    "GPU_MODEL_SEEDS",
    "GPU_REGISTERS_PER_BLOCK",
    "GPU_SHARED_BYTES",
    "GPU_SPLIT_K",
    "GPU_STEPS",
    "GPU_WARP_SEEDS",
    "GPU_WEIGHTS",
    "L2_TO_L1_BANDWIDTH",
    "LATER_DEFAULTS",
    "LSU_TO_L1",
    "MAX_REGISTERS",
    "STREAMED_STEP",
    "WARP",
    "WIDE_CHANNELS",
    "CpuParams",
    "GpuParams",
    "Params",
    "ParamsError",
    "Traffic",
    "accumulator_cap",
    "as_dict",
    "block_tail_waste",
    "build_options",
    "canonical",
    "check",
    "depthwise_levels",
    "depthwise_tiles",
    "digest",
    "fit",
    "from_options",
    "heuristic",
    "heuristic_fallback",
    "longer_steps",
    "model_seeds",
    "mutate",
    "named",
    "other_caps",
    "params_class",
    "register_demand",
    "resolve",
    "sample",
    "seeds",
    "shared_bytes",
    "space",
    "split_alternative",
    "split_reduction",
    "traffic",
    "whole_blocks",
]
