"""The family's CUDA schedules compiled to PTX without a GPU (Halide compiles a CUDA target anywhere):
kernels, loads, shuffles and spills of the warp and depthwise tiles on shapes with tails; on a GPU the
same schedules against the float64 reference.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest
from conftest import H100, reference_error, requires_gpu

from kernels import registry
from kernels.device import DeviceSpec, visible_gpu
from kernels.halide import algorithm, builder, family, names
from kernels.halide.family.heuristic import FILL_THREADS_PER_SM, SPLIT_K_PART_CHANNELS
from kernels.layer import LayerShape

AWKWARD = (
    LayerShape("odd_s2", n=2, h=13, w=11, c=24, co=40, stride=2),
    LayerShape("odd_s1", n=1, h=6, w=5, c=40, co=17, stride=1, relu=False, bias=False),
)
TOLERANCE = 1e-4


@pytest.mark.parametrize("shape", AWKWARD, ids=lambda s: s.name)
def test_sampled_gpu_candidates_compile_for_cuda(shape: LayerShape) -> None:
    rng = random.Random(3)
    candidates = family.seeds(shape, H100) + [family.sample(shape, H100, rng) for _ in range(4)]
    assert {p.dw_at for p in candidates} == set(family.GPU_DW_AT)
    for params in candidates:
        artifacts = builder.lower_for("family", shape, H100, {"params": family.as_dict(params)})
        kernels = re.findall(r"\.entry\s+(\w+)\(", artifacts["kernels.ptx"])
        assert kernels and all(re.match(names.KERNEL_FILTER, k) for k in kernels), kernels
        assert len(kernels) == ((2 + (params.split_k > 1)) if params.dw_at == "root" else 1)
        assert ("GPUShared" in artifacts["lowered.stmt"]) == (family.shared_bytes(params, shape) > 0)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_warp_computes_each_chunks_depthwise_once_in_the_layers_one_kernel(stride: int) -> None:
    """`gemm` = warp with `dw_at` = cblock: no depthwise kernel and no depthwise buffer; in each chunk of
    32 input channels a lane loads the input taps of its channel for the warp's pixels once, shared
    between neighbouring pixels, and its 9 weights, where at root it loads one value a pixel."""
    shape = LayerShape("b28", n=32, h=28, w=28, c=256, co=256 * stride, stride=stride)
    tile = {"gemm": "warp", "lanes": 4, "tx": 7, "ty": 2, "threads_x": 1, "threads_y": 1, "k": 16}
    tile |= {"max_registers": 128}
    fused = family.from_options({**tile, "dw_at": "cblock"}, shape, H100)
    assert fused in family.depthwise_levels(
        family.from_options({**tile, "dw_at": "root"}, shape, H100), shape, H100
    )
    ptx = builder.lower_for("family", shape, H100, family.build_options(fused, {}))["kernels.ptx"]
    assert re.findall(r"\.entry _kernel_([a-z]+)", ptx) == ["output"]
    assert "__local_depot" not in ptx
    chunk = re.search(r'rc\$x\.rxo"(.*?)rxi', ptx, re.S)  # the chunk loop's body, before its steps
    assert chunk is not None
    taps = ((tile["tx"] - 1) * stride + 3) * ((tile["ty"] - 1) * stride + 3)
    assert len(re.findall(r"ld\.global\.nc\.b32", chunk.group(1))) == taps + 9


# gemm=warp on shapes whose tiles leave tails (co, x and y not multiples of the block; stride 2; no bias
# or ReLU): the depthwise in its own kernel, or in shared memory with the input staged.
WARP_CASES = (
    (LayerShape("warp_s1", n=2, h=9, w=11, c=64, co=80), {"dw_at": "root", "lanes": 1, "tx": 3, "ty": 2}),
    (
        LayerShape("warp_s1", n=2, h=9, w=11, c=64, co=80),
        {"dw_at": "block", "lanes": 2, "tx": 2, "ty": 3, "threads_y": 2, "k": 8, "stage_input": True},
    ),
    (
        LayerShape("warp_s2", n=1, h=13, w=10, c=96, co=64, stride=2, relu=False, bias=False),
        {"dw_at": "root", "lanes": 2, "tx": 5, "ty": 1, "threads_x": 1, "threads_y": 2, "k": 16},
    ),
    # the depthwise computed by the warp, a chunk at a time, at the image's edges and tails
    (LayerShape("warp_s1", n=2, h=9, w=11, c=64, co=80), {"dw_at": "cblock", "lanes": 2, "tx": 3, "ty": 2}),
    (
        LayerShape("warp_s2", n=1, h=13, w=10, c=96, co=64, stride=2, relu=False, bias=False),
        {"dw_at": "cblock", "lanes": 1, "tx": 5, "ty": 2, "threads_x": 1, "threads_y": 2, "k": 8},
    ),
    # a whole chunk a step (`longer_steps`)
    (LayerShape("warp_s1", n=2, h=9, w=11, c=64, co=80), {"dw_at": "cblock", "lanes": 2, "tx": 3, "k": 32}),
)


WARP_BASE = {
    "gemm": "warp",
    "threads_x": 2,
    "threads_y": 1,
    "k": 4,
    "stage_input": False,
    "max_registers": 128,
}


def _warp_case_id(case: tuple[LayerShape, dict[str, object]]) -> str:
    """A WARP_CASES test id: the shape, where the depthwise is, and the step (WARP_BASE's unless given)."""
    shape, given = case
    return f"{shape.name}-{given['dw_at']}-k{given.get('k', WARP_BASE['k'])}"


@pytest.mark.parametrize("case", WARP_CASES, ids=_warp_case_id)
def test_warp_tiles_with_tails_compile_for_cuda(case: tuple[LayerShape, dict[str, object]]) -> None:
    shape, given = case
    params = family.from_options({**WARP_BASE, **given}, shape, H100)
    artifacts = builder.lower_for("family", shape, H100, family.build_options(params, {}))
    assert "shfl.sync" in artifacts["kernels.ptx"] and "__local_depot" not in artifacts["kernels.ptx"]


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", WARP_CASES, ids=_warp_case_id)
def test_warp_tiles_with_tails_match_the_reference_on_a_gpu(
    case: tuple[LayerShape, dict[str, object]],
) -> None:
    shape, given = case
    device = visible_gpu("gpu", 1.0, 1.0)
    params = family.from_options({**WARP_BASE, **given}, shape, device)
    built = registry.get("halide_family").build(shape, device, family.build_options(params, {}))
    assert reference_error(built, shape) < TOLERANCE


# The depthwise in its own kernel with vectors of channels and unrolled rows, on shapes that leave
# tails: channels not a multiple of the block's 32 x dw_vec, rows not a multiple of dw_rows (shifted
# inwards), stride 2, and a thread tile of the pointwise of either layout after it.
DW_KERNEL_CASES = (
    (LayerShape("dwk_s1", n=2, h=9, w=11, c=72, co=40), {"dw_vec": 4, "dw_rows": 4}),
    (LayerShape("dwk_s2", n=1, h=13, w=10, c=96, co=64, stride=2, relu=False), {"dw_vec": 2, "dw_rows": 2}),
    (LayerShape("dwk_c6", n=2, h=5, w=3, c=6, co=13), {"dw_vec": 2, "dw_rows": 4}),
    (
        LayerShape("dwk_warp", n=2, h=7, w=9, c=64, co=80),
        {**WARP_BASE, "lanes": 2, "dw_vec": 4, "dw_rows": 2},
    ),
    # 64 channels a reduction step, unrolled (`longer_steps`), with the whole register file
    (
        LayerShape("dwk_k64", n=2, h=7, w=9, c=128, co=72),
        {"dw_vec": 2, "dw_rows": 2, "lanes": 4, "tx": 3, "ty": 1, "k": 64, "max_registers": 255},
    ),
)


def _ptx_loads(params: family.Params, shape: LayerShape, space: str, kernel: str = "") -> dict[str, int]:
    """The vector and scalar loads from state space `space` (a regex: `shared`, `global\\.nc`) in the
    PTX of `params` for `shape` on the H100: in the kernel named `kernel`, or in all of them."""
    ptx = builder.lower_for("family", shape, H100, family.build_options(params, {}))["kernels.ptx"]
    if kernel:
        start = ptx.index(f".entry {kernel}")
        ptx = ptx[start : ptx.find(".entry", start + 1)]
    loads = re.findall(rf"ld\.{space}\.(v[24]\.)?b\d+", ptx)
    return {"vector": sum(1 for v in loads if v), "scalar": sum(1 for v in loads if not v)}


def test_the_depthwise_kernel_is_searched_with_its_own_tile() -> None:
    shape = LayerShape("b28", n=32, h=28, w=28, c=256, co=256)
    # the axes exist where the depthwise has its own kernel, and only there
    q = family.from_options({"dw_at": "root", "dw_vec": 4, "dw_rows": 2}, shape, H100)
    assert (q.dw_vec, q.dw_rows) == (4, 2) and family.as_dict(q)["dw_vec"] == 4
    inside = family.from_options({"dw_at": "cblock", "tx": 2, "k": 4, "dw_vec": 4, "dw_rows": 2}, shape, H100)
    assert (inside.dw_vec, inside.dw_rows) == (1, 1)
    with pytest.raises(family.ParamsError, match=r"dw_vec must be one of \[1, 2\]"):
        family.from_options({"dw_at": "root", "dw_vec": 4}, DW_KERNEL_CASES[2][0], H100)  # c = 6
    # at their defaults they are left out: the earlier searches' parameter sets keep their digests
    thread = family.GpuParams("root", 8, 7, 1, 16, 2, 8, 16, "global", False, 128)
    assert "dw_vec" not in family.as_dict(thread) and family.digest(thread) == "a9a3968541"

    # and the kernel they make loads each tap as one vector, reusing input rows between its rows
    def depthwise_ops(**given: int) -> dict[str, int]:
        p = family.from_options({"dw_at": "root", **given}, shape, H100)
        return _ptx_loads(p, shape, r"global\.nc", kernel="_kernel_depthwise")

    assert depthwise_ops() == {"vector": 0, "scalar": 36}  # two paths (the channel tail's guard) of 18
    one_row, two_rows = depthwise_ops(dw_vec=4), depthwise_ops(dw_vec=4, dw_rows=2)
    assert one_row["scalar"] == two_rows["scalar"] == 0
    assert two_rows["vector"] < 2 * one_row["vector"]  # the second row reuses two of the three input rows


def test_the_blocks_depthwise_tile_is_searched_and_reuses_input_rows_in_registers() -> None:
    shape = LayerShape("b56", n=32, h=56, w=56, c=128, co=128)
    block = {"dw_at": "block", "lanes": 4, "tx": 2, "ty": 2, "threads_co": 32, "threads_x": 2}
    block |= {"threads_y": 4, "k": 16, "stage_input": True, "max_registers": 128}
    q = family.from_options({**block, "dw_vec": 4, "dw_rows": 4}, shape, H100)
    assert (q.dw_vec, q.dw_rows) == (4, 4)
    assert len(family.depthwise_tiles(q, shape, H100)) == 8
    with pytest.raises(family.ParamsError, match=r"dw_rows = 4 exceeds the block's 2 rows"):
        family.from_options({**block, "threads_y": 1, "dw_rows": 4}, shape, H100)

    def shared_loads(**given: int) -> dict[str, int]:
        return _ptx_loads(family.from_options({**block, **given}, shape, H100), shape, "shared")

    one = shared_loads()
    assert one["scalar"] == 9  # one channel a thread: a scalar load a tap (the pointwise reads vectors)
    vec = shared_loads(dw_vec=4)
    assert vec == {"vector": one["vector"] + 9, "scalar": 0}  # a vector of four channels a tap
    # four rows a thread: the 6 x 3 input taps they share, once each, instead of 4 x 9
    assert shared_loads(dw_vec=4, dw_rows=4) == {"vector": one["vector"] + 6 * 3, "scalar": 0}


def test_a_two_channel_depthwise_tile_loads_each_tap_as_one_access() -> None:
    # The 112² entry's tile: two channels by four rows a thread, the input read through the caches. The
    # layer's inputs declare their alignment (tiling.HOST_ALIGNMENT), so each pair of channels is one
    # 8-byte load; at Halide's default alignment each was two 4-byte loads (54 in all).
    shape = LayerShape("b112", n=32, h=112, w=112, c=32, co=64)
    given = {"dw_at": "block", "dw_vec": 2, "dw_rows": 4, "stage_input": False, "lanes": 4, "tx": 2, "ty": 2}
    given |= {"threads_co": 16, "threads_x": 4, "threads_y": 2, "k": 4, "max_registers": 64}
    L = algorithm.define(shape)
    assert [q.host_alignment() for q in (L.input, L.depthwise_filter, L.pointwise_filter)] == [16] * 3
    assert L.bias.host_alignment() == 4  # Halide's default: the 7² entry ran 3.7% slower with it declared
    p = family.from_options(given, shape, H100)
    ptx = builder.lower_for("family", shape, H100, family.build_options(p, {}))["kernels.ptx"]
    widths = re.findall(r"\tld\.global\.nc\.((?:v[24]\.)?b\d+)", ptx)
    assert "b32" not in widths, widths
    assert widths.count("b64") + widths.count("v2.b32") == 6 * 3 + 9  # the input taps and the weights


# The block's depthwise tile in shared memory with vectors and rows, on shapes that leave tails: block
# rows not a multiple of dw_rows, stride 2, the input staged in shared memory or read through the caches.
DW_BLOCK_BASE = {
    "dw_at": "block",
    "lanes": 4,
    "tx": 1,
    "ty": 2,
    "threads_co": 4,
    "threads_x": 2,
    "threads_y": 3,
}


DW_BLOCK_CASES = (
    (LayerShape("dwb_s1", n=2, h=9, w=11, c=72, co=40), {"dw_vec": 4, "dw_rows": 2, "stage_input": True}),
    (
        LayerShape("dwb_s2", n=1, h=13, w=10, c=96, co=64, stride=2, relu=False),
        {"dw_vec": 2, "dw_rows": 4, "stage_input": False},
    ),
    (LayerShape("dwb_c6", n=2, h=5, w=3, c=6, co=13), {"dw_vec": 2, "dw_rows": 4, "stage_input": True}),
)


DW_TILE_CASES = [("root", c) for c in DW_KERNEL_CASES] + [("block", c) for c in DW_BLOCK_CASES]


def _tile_params(dw_at: str, case: tuple[LayerShape, dict[str, object]], device: DeviceSpec) -> family.Params:
    """The schedule of a depthwise-tile case: the depthwise in its own kernel (the case's parameters over
    the heuristic's) or in the block's shared tile (over `DW_BLOCK_BASE`, fitted to the shape)."""
    shape, given = case
    if dw_at == "root":
        return family.from_options({"dw_at": "root", **given}, shape, device)
    return family.fit(family.GpuParams(**{**DW_BLOCK_BASE, **given}), shape, device)


@pytest.mark.parametrize("case", DW_BLOCK_CASES, ids=lambda c: c[0].name)
def test_block_depthwise_tiles_with_tails_compile_for_cuda(
    case: tuple[LayerShape, dict[str, object]],
) -> None:
    shape, given = case
    params = _tile_params("block", case, H100)
    assert (params.dw_vec, params.dw_rows, params.dw_at) == (given["dw_vec"], given["dw_rows"], "block")
    artifacts = builder.lower_for("family", shape, H100, family.build_options(params, {}))
    assert "__local_depot" not in artifacts["kernels.ptx"]


@pytest.mark.parametrize("case", DW_KERNEL_CASES, ids=lambda c: c[0].name)
def test_depthwise_kernel_tiles_with_tails_compile_for_cuda(
    case: tuple[LayerShape, dict[str, object]],
) -> None:
    shape, _ = case
    params = _tile_params("root", case, H100)
    artifacts = builder.lower_for("family", shape, H100, family.build_options(params, {}))
    assert len(re.findall(r"\.entry\s+(\w+)\(", artifacts["kernels.ptx"])) == 2


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dw_at,case", DW_TILE_CASES, ids=lambda v: v if isinstance(v, str) else v[0].name)
def test_depthwise_tiles_with_tails_match_the_reference_on_a_gpu(
    dw_at: str, case: tuple[LayerShape, dict[str, object]]
) -> None:
    shape, _ = case
    device = visible_gpu("gpu", 1.0, 1.0)
    params = _tile_params(dw_at, case, device)
    built = registry.get("halide_family").build(shape, device, family.build_options(params, {}))
    assert reference_error(built, shape) < TOLERANCE


# A split reduction (split-K: `split_k` parts of the input channels, each its own blocks of partial sums,
# added by the output kernel) on shapes with tails: output channels not a multiple of the block's or of
# the output kernel's vector, pixels not a multiple of the tile, stride 2, no bias or ReLU.
SPLIT_CASES = (
    (
        LayerShape("sk_narrow", n=2, h=7, w=7, c=192, co=40),
        {
            "split_k": 4,
            "lanes": 4,
            "tx": 7,
            "ty": 1,
            "threads_co": 8,
            "threads_x": 1,
            "threads_y": 7,
            "k": 16,
        },
    ),
    (
        LayerShape("sk_s2", n=1, h=13, w=10, c=96, co=24, stride=2, relu=False, bias=False),
        {"split_k": 2, "lanes": 2, "tx": 2, "ty": 1, "threads_co": 4, "threads_x": 2, "threads_y": 4, "k": 8},
    ),
    (
        LayerShape("sk_odd", n=3, h=5, w=3, c=64, co=13),
        {"split_k": 2, "lanes": 4, "tx": 1, "ty": 1, "threads_co": 3, "threads_x": 3, "threads_y": 4, "k": 4},
    ),
)


def _split_params(case: tuple[LayerShape, dict[str, object]], device: DeviceSpec) -> family.Params:
    shape, given = case
    return family.from_options({"dw_at": "root", "max_registers": 128, **given}, shape, device)


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c[0].name)
def test_a_split_reduction_is_a_kernel_of_partial_sums_split_k_times_the_blocks(
    case: tuple[LayerShape, dict[str, object]],
) -> None:
    shape, given = case
    params = _split_params(case, H100)
    assert params.split_k == given["split_k"]
    artifacts = builder.lower_for("family", shape, H100, family.build_options(params, {}))
    kernels = re.findall(r"\.entry\s+_kernel_([a-z]+)", artifacts["kernels.ptx"])
    assert kernels == ["depthwise", "pointwise", "output"]
    assert "__local_depot" not in artifacts["kernels.ptx"]  # accumulators, weights and taps in registers
    t = params.tile
    blocks = -(-shape.co // t.block_co) * -(-shape.wo // t.block_x) * -(-shape.ho // t.block_y) * shape.n
    stmt = artifacts["lowered.stmt"]
    grid = re.findall(r"gpu_block<CUDA> \(pointwise\S*_intm\S*block_id_([xyz])(?:\$\d+)?, 0, (\d+)\)", stmt)
    extents = {axis: int(extent) for axis, extent in grid}
    assert extents["x"] * extents["y"] * extents["z"] == blocks * params.split_k
    # the partial sums of every part, in one buffer of the pointwise's extents times split_k
    parts = re.search(r"allocate pointwise\S*_intm\S*\[float32 \* ([\d *]+)\]", stmt)
    assert parts is not None
    dims = [int(v) for v in parts.group(1).split(" * ")]
    assert dims == [shape.co, shape.wo, shape.ho, shape.n, params.split_k]


def test_split_k_is_checked_kept_by_fit_and_left_out_of_records_at_one() -> None:
    shape = LayerShape("b7", n=32, h=7, w=7, c=960, co=160)
    assert family.space(shape, H100)["split_k"] == (1, 2, 4, 8, 16)
    assert family.space(LayerShape("c144", n=1, h=8, w=8, c=144, co=24), H100)["split_k"] == (1, 2, 4)
    with pytest.raises(family.ParamsError, match="split_k = 4 needs dw_at=root and gemm=thread"):
        family.from_options({"dw_at": "block", "split_k": 4}, shape, H100)
    with pytest.raises(family.ParamsError, match="k = 16 does not divide the 120 channels of a split_k = 8"):
        family.from_options({"dw_at": "root", "split_k": 8, "k": 16}, shape, H100)
    with pytest.raises(family.ParamsError, match=r"split_k must be one of \[1, 2, 4\]"):
        family.from_options(
            {"dw_at": "root", "split_k": 8, "k": 2}, LayerShape("c144", 1, 8, 8, 144, 24), H100
        )
    q = family.from_options({"dw_at": "root", "split_k": 4, "k": 16}, shape, H100)
    assert family.as_dict(q)["split_k"] == 4 and "split_k" not in family.as_dict(replace(q, split_k=1))
    # fit keeps a split where the new shape allows it, and the largest valid one below it where not
    assert family.fit(q, LayerShape("c144", 1, 8, 8, 144, 24), H100).split_k in (1, 2, 4)
    assert family.fit(q, shape, H100) == q
    # only the depthwise's own kernel and the per-thread GEMM split: elsewhere split_k is 1
    assert family.canonical(replace(q, dw_at="block"), shape).split_k == 1


def test_the_heuristic_splits_a_long_narrow_reduction_and_wastes_no_channels() -> None:
    """An inverted residual block's projection, 960 -> 160 channels on 7 x 7 pixels at batch 32: a block
    of 32 x 4 channels computes 256 of 160 (the tail recomputed), and its 64 blocks fill half the SMs.
    The heuristic takes a block of channels that divides co and splits the reduction until the grid fills
    the device, keeping a register tile of 4 x 7; a layer that fills the device unsplit stays unsplit."""
    shape = LayerShape("proj", n=32, h=7, w=7, c=960, co=160)
    p = family.heuristic(shape, H100)
    t = p.tile
    assert shape.co % t.block_co == 0 and (p.lanes, p.tx, p.ty) == (4, 7, 1)
    blocks = shape.co // t.block_co * -(-shape.wo // t.block_x) * -(-shape.ho // t.block_y) * shape.n
    assert p.split_k > 1 and blocks * p.split_k >= H100.sm_count
    assert blocks * p.split_k * t.threads >= FILL_THREADS_PER_SM * H100.sm_count
    assert shape.c // p.split_k >= SPLIT_K_PART_CHANNELS
    wide = LayerShape("b7", n=32, h=7, w=7, c=1024, co=1024)
    assert family.heuristic(wide, H100).split_k == 1
    # a search starts from the heuristic both split and unsplit, and from its other seeds split where
    # their grids do not fill the device
    seeds = family.seeds(shape, H100)
    assert seeds[0] == p and replace(p, split_k=1) in seeds
    assert sum(1 for q in seeds if q.split_k > 1) > 1
    assert all(family.check(q, shape, H100) is None for q in seeds)


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c[0].name)
def test_a_split_reduction_matches_the_reference_on_a_gpu(case: tuple[LayerShape, dict[str, object]]) -> None:
    shape, _ = case
    device = visible_gpu("gpu", 1.0, 1.0)
    params = _split_params(case, device)
    built = registry.get("halide_family").build(shape, device, family.build_options(params, {}))
    assert reference_error(built, shape) < TOLERANCE
