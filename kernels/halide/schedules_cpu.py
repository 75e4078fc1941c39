"""Named CPU schedules for the layer in `algorithm.py`, looked up by name in `CPU_SCHEDULES`.

Every schedule reads the shape baked into the `Layer` and picks its tile sizes from it, so that odd
sizes, stride 2 and channel counts that are not a multiple of the vector width stay correct (tiles
never exceed an extent, tails are shifted inwards, the depthwise stage never reads past the input's
channels) and wide layers get a register-blocked, GEMM-like pointwise.

The fusion ablation, from least to most fused:
- `unfused`: the depthwise result for the whole batch in its own buffer, then the pointwise.
- `fused_tile`: the depthwise for one block of output rows, every channel, computed inside the
  parallel task that then runs the pointwise over that block.
- `fused_cblock`: the depthwise for one register tile of pixels and one block of input channels,
  inside the pointwise's channel reduction, recomputed for every tile of output channels.
- `app`: the official app's schedule (`apps/depthwise_separable_conv`), a channel-block fusion
  tuned for 16 output channels.
`unfused`, `fused_tile` and `fused_cblock` share one pointwise micro-kernel (`blocks`, with tile
sizes from `tiling`), so the comparison between them isolates where the depthwise is computed.
"""

from __future__ import annotations

from collections.abc import Callable

import halide as hl

from kernels.halide.algorithm import Layer
from kernels.halide.blocks import (
    depthwise_in_reduction,
    depthwise_root,
    depthwise_vectorized,
    pointwise_in_registers,
    tile_output,
)
from kernels.halide.targets import host_threads, vector_lanes, vector_registers
from kernels.halide.tiling import MicroTile, channel_block, micro_tile, plan_blocks


def target_micro_tile(L: Layer, target: hl.Target) -> MicroTile:
    """The pointwise register tile `micro_tile` chooses for the layer's shape on `target`."""
    return micro_tile(L.shape, vector_lanes(target), vector_registers(target))


def schedule_unfused(L: Layer, target: hl.Target) -> dict[str, object]:
    """Depthwise for the whole batch into its own buffer (parallel over rows), then the pointwise."""
    t = target_micro_tile(L, target)
    threads = host_threads()
    rows = depthwise_root(L, threads, t.lanes, unroll_x=2)
    plan = plan_blocks(L.shape, t, threads, depthwise_in_task=False)
    _, xo = tile_output(L, t, plan)
    pointwise_in_registers(L, xo, t)
    return {"micro_tile": t, "blocks": plan, "depthwise_rows_per_task": rows}


def schedule_fused_tile(L: Layer, target: hl.Target) -> dict[str, object]:
    """Depthwise for a block of output rows and every channel, computed in the task that then runs
    the register-blocked pointwise over the block (the block stays in L2 across co tiles)."""
    t = target_micro_tile(L, target)
    plan = plan_blocks(L.shape, t, host_threads(), depthwise_in_task=True)
    task, xo = tile_output(L, t, plan)
    pointwise_in_registers(L, xo, t)
    L.depthwise.compute_at(L.output, task)
    depthwise_vectorized(L, t.lanes, unroll_x=2)
    return {"micro_tile": t, "blocks": plan}


def schedule_fused_cblock(L: Layer, target: hl.Target) -> dict[str, object]:
    """Depthwise for one register tile of pixels and one block of input channels, inside the
    pointwise reduction: nothing leaves registers and L1, at the price of recomputing the depthwise
    for every tile of output channels."""
    t = target_micro_tile(L, target)
    plan = plan_blocks(L.shape, t, host_threads(), depthwise_in_task=False)
    _, xo = tile_output(L, t, plan)
    kc = channel_block(L.shape.c, t.lanes)
    depthwise_in_reduction(L, pointwise_in_registers(L, xo, t), kc)
    return {"micro_tile": t, "blocks": plan, "channel_block": kc}


def schedule_app(L: Layer, target: hl.Target) -> dict[str, object]:
    """The official app's CPU schedule, re-expressed: output tiles of 16 channels x 6 x 4 pixels (on
    AVX-512), the pointwise accumulated in registers, the depthwise (and the padded input) computed
    on the stack for each 16-channel slice of the pointwise reduction. Tile sizes shrink to fit
    small extents and the slice becomes a divisor of c when 16 does not divide it; the app's
    `specialize` on channel counts is moot here because the shape is baked in."""
    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    vec = vector_lanes(target)
    regs = vector_registers(target)
    if regs == 32 and vec == 16:
        tile_d, tile_w, tile_h = 1, 6, 4
    elif regs == 32 and vec == 4:
        tile_d, tile_w, tile_h = 4, 3, 2
    elif regs == 16 and vec == 8:
        tile_d, tile_w, tile_h = 2, 3, 2
    else:
        tile_d, tile_w, tile_h = 4, 2, 1
    tile_d *= vec
    slice_c = channel_block(s.c, tile_d)
    tile_d, tile_w, tile_h = min(tile_d, s.co), min(tile_w, s.wo), min(tile_h, s.ho)

    di, xi, yi = hl.Var("di"), hl.Var("xi"), hl.Var("yi")
    ro, ri = hl.RVar("ro"), hl.RVar("ri")
    o = L.output
    o.tile([c, x, y], [di, xi, yi], [tile_d, tile_w, tile_h]).vectorize(di).unroll(xi).unroll(yi)
    o.fuse(y, n, n).parallel(n)

    p = L.pointwise
    p.compute_at(o, c).vectorize(c).unroll(x).unroll(y)
    p.update().reorder(c, x, y, L.rc.x, n).vectorize(c).unroll(x).unroll(y).split(L.rc.x, ro, ri, slice_c)

    d = L.depthwise
    d.store_in(hl.MemoryType.Stack).bound_extent(c, slice_c).compute_at(p, ro)
    d.vectorize(c).reorder(x, y, c).unroll(x).unroll(y)

    pad_x = min(4, (tile_w - 1) * s.stride + 3)
    pdi, pxi = hl.Var("pdi"), hl.Var("pxi")
    L.padded.store_in(hl.MemoryType.Stack).compute_at(p, ro).tile(
        c, x, pdi, pxi, slice_c, pad_x, hl.TailStrategy.RoundUp
    ).vectorize(pdi).unroll(pxi)
    return {"tile_co": tile_d, "tile_x": tile_w, "tile_y": tile_h, "channel_slice": slice_c}


# A schedule mutates the Layer's Funcs and returns the decisions it made (tile sizes), for the record.
CpuSchedule = Callable[[Layer, hl.Target], dict[str, object]]

CPU_SCHEDULES: dict[str, CpuSchedule] = {
    "app": schedule_app,
    "unfused": schedule_unfused,
    "fused_tile": schedule_fused_tile,
    "fused_cblock": schedule_fused_cblock,
}
