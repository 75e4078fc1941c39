"""CPU schedule building blocks that the named schedules (`schedules_cpu`) and the search family
(`family.cpu`) share: one pointwise micro-kernel over parallel tasks of register tiles, and the places
the depthwise can be computed. Sharing them is what makes the family's `dw_at` = root / tile / cblock
with `schedules_cpu`'s own tile choices reproduce its `unfused` / `fused_tile` / `fused_cblock`.
"""

from __future__ import annotations

import math

import halide as hl

from kernels.halide.algorithm import Layer
from kernels.halide.tiling import BlockPlan, MicroTile, depthwise_rows_per_task


def tile_output(L: Layer, t: MicroTile, plan: BlockPlan) -> tuple[hl.Var, hl.Var]:
    """Split the output into parallel tasks (row blocks x co chunks) of register tiles.

    Inside a task the co tiles loop outside the pixel tiles, so a panel of pointwise weights serves
    every pixel of the block. Returns (task var, pixel-tile var)."""
    s = L.shape
    c, x, y, n = L.c, L.x, L.y, L.n
    o = L.output
    co, ci, xo, xi = hl.Var("co"), hl.Var("ci"), hl.Var("xo"), hl.Var("xi")
    yb, yr, yo, yi, cc = hl.Var("yb"), hl.Var("yr"), hl.Var("yo"), hl.Var("yi"), hl.Var("cc")
    o.split(y, yb, yr, plan.rows, hl.TailStrategy.ShiftInwards)
    o.split(yr, yo, yi, t.ty, hl.TailStrategy.ShiftInwards)
    o.split(c, co, ci, t.co, hl.TailStrategy.ShiftInwards)
    o.split(x, xo, xi, t.tx, hl.TailStrategy.ShiftInwards)
    per_chunk = math.ceil(math.ceil(s.co / t.co) / plan.chunks)
    o.split(co, cc, co, per_chunk, hl.TailStrategy.GuardWithIf)
    o.reorder(ci, xi, yi, xo, yo, co, yb, cc, n)
    o.vectorize(ci, t.lanes).unroll(ci).unroll(xi).unroll(yi)
    o.fuse(yb, cc, yb).fuse(yb, n, yb).parallel(yb)
    return yb, xo


def pointwise_in_registers(L: Layer, at: hl.Var, t: MicroTile) -> hl.Stage:
    """Compute `pointwise` for one register tile at the output's loop `at`: co vectors x pixels.

    The channel reduction runs outermost inside the tile, so the accumulators stay in registers
    while each step loads `t.vectors` weight vectors and broadcasts one depthwise value per pixel.
    Returns the pointwise's update stage.
    """
    c, x, y = L.c, L.x, L.y
    p = L.pointwise
    p.compute_at(L.output, at).vectorize(c, t.lanes).unroll(c).unroll(x).unroll(y)
    u = p.update()
    u.reorder(c, x, y, L.rc.x).vectorize(c, t.lanes).unroll(c).unroll(x).unroll(y)
    return u


def depthwise_vectorized(L: Layer, lanes: int, unroll_x: int) -> None:
    """Vectorize the depthwise stage over channels; tails shift inwards, never past channel c-1."""
    d = L.depthwise
    d.vectorize(L.c, min(lanes, L.shape.c))
    if unroll_x > 1 and L.shape.wo >= unroll_x:
        d.unroll(L.x, unroll_x)


def depthwise_root(L: Layer, threads: int, lanes: int, unroll_x: int) -> int:
    """The depthwise for the whole batch into its own buffer, in parallel tasks of output rows (about
    four a thread), vectorized; returns the rows a task covers."""
    d = L.depthwise
    dyo, dyi = hl.Var("dyo"), hl.Var("dyi")
    rows = depthwise_rows_per_task(L.shape, threads)
    d.compute_root().split(L.y, dyo, dyi, rows, hl.TailStrategy.ShiftInwards)
    d.reorder(L.c, L.x, dyi, dyo, L.n).fuse(dyo, L.n, dyo).parallel(dyo)
    depthwise_vectorized(L, lanes, unroll_x)
    return rows


def depthwise_in_reduction(L: Layer, update: hl.Stage, kc: int) -> None:
    """The depthwise of a register tile's pixels for `kc` input channels at a time, on the stack inside
    the pointwise reduction (`update`, from `pointwise_in_registers`), recomputed for every tile of
    output channels."""
    ro, ri = hl.RVar("rco"), hl.RVar("rci")
    update.split(L.rc.x, ro, ri, kc).reorder(L.c, L.x, L.y, ri, ro)
    d = L.depthwise
    d.compute_at(L.pointwise, ro).store_in(hl.MemoryType.Stack).bound_extent(L.c, kc)
    d.reorder(L.c, L.x, L.y).vectorize(L.c, kc).unroll(L.x).unroll(L.y)
