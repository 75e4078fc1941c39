"""The schedule family (`kernels/halide/family/`): its space, checks, heuristic, fits, seeds and moves.

Every sampled CPU candidate (and every seed: the depthwise at every level) on two awkward shapes verifies
against the float64 reference; mutations and fits stay valid; the traffic model, the seeds and the
neighbours a search screens first keep their rules; bad parameters are named in one line. The family's
CUDA schedules compiled to PTX are tested in `test_family_ptx.py`.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from conftest import H100, reference_error

from kernels import registry
from kernels.device import DeviceSpec
from kernels.halide import builder, family, names, targets
from kernels.layer import LayerShape

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0)
AWKWARD = (
    LayerShape("odd_s2", n=2, h=13, w=11, c=24, co=40, stride=2),
    LayerShape("odd_s1", n=1, h=6, w=5, c=40, co=17, stride=1, relu=False, bias=False),
)
TOLERANCE = 1e-4


@pytest.mark.parametrize("shape", AWKWARD, ids=lambda s: s.name)
def test_every_sampled_cpu_candidate_verifies(shape: LayerShape) -> None:
    rng = random.Random(7)
    candidates = family.seeds(shape, CPU) + [family.sample(shape, CPU, rng) for _ in range(6)]
    assert {p.dw_at for p in candidates} == set(family.CPU_DW_AT)  # the seeds place the depthwise everywhere
    for params in candidates:
        assert family.check(params, shape, CPU) is None
        built = registry.get("halide_family").build(
            shape, CPU, {"params": family.as_dict(params), "jit": True}
        )
        assert json.loads(built.artifacts["params.json"])["params"] == family.as_dict(params)
        error = reference_error(built, shape)
        assert error < TOLERANCE, f"{params} on {shape.label}: relative L2 error {error:.3g}"


def test_mutations_and_fits_stay_valid() -> None:
    rng = random.Random(1)
    big = LayerShape("big", n=32, h=7, w=7, c=1024, co=1024)
    for shape in (*AWKWARD, big):
        for device in (CPU, H100):
            params = family.heuristic(shape, device)
            for _ in range(30):
                params = family.mutate(params, shape, device, rng, steps=2)
                assert family.check(params, shape, device) is None
            # A schedule tuned for another shape moves to a valid one for this shape.
            other = family.heuristic(AWKWARD[0] if shape is big else big, device)
            assert family.check(family.fit(other, shape, device), shape, device) is None


def test_model_seeds_are_valid_distinct_tiles_that_the_traffic_model_prefers() -> None:
    shape = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    seeds = family.model_seeds(shape, H100)
    assert len(seeds) == family.GPU_MODEL_SEEDS
    assert all(family.check(p, shape, H100) is None for p in seeds)
    assert len({(p.dw_at, p.lanes, p.tx, p.ty) for p in seeds}) == len(seeds)
    assert sum(p.max_registers == 255 for p in seeds) == family.GPU_MODEL_SEEDS // 2
    # The schedule the first H100 search kept for this block (one warp of 128 channels by 7 pixels)
    # re-reads its weight panel for every 7 pixels; every seed asks less of the caches.
    first = family.GpuParams("root", 4, 7, 1, 32, 1, 1, 8, "global", False, 64)
    assert all(family.traffic(p, shape).cost < family.traffic(first, shape).cost / 4 for p in seeds)
    assert family.model_seeds(shape, CPU) == []
    assert set(seeds) <= set(family.seeds(shape, H100))


def test_more_accumulators_only_with_the_whole_register_file() -> None:
    shape = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    wide = {
        "dw_at": "root",
        "lanes": 4,
        "tx": 7,
        "ty": 4,
        "threads_co": 16,
        "threads_x": 2,
        "threads_y": 2,
        "k": 4,
    }
    assert family.from_options({**wide, "max_registers": 255}, shape, H100).lanes == 4
    with pytest.raises(family.ParamsError, match="112 accumulators exceed 64 at max_registers=128"):
        family.from_options({**wide, "max_registers": 128}, shape, H100)


def test_other_caps_keep_the_tile_and_drop_caps_that_do_not_fit() -> None:
    # The 112² entry of h100-2026-11-24v: 96 threads at 64 registers, spilling under Nsight
    shape = LayerShape("b112", n=32, h=112, w=112, c=32, co=64)
    given = {"dw_at": "block", "dw_vec": 2, "dw_rows": 4, "stage_input": False, "lanes": 4, "tx": 2, "ty": 3}
    given |= {"threads_co": 16, "threads_x": 3, "threads_y": 2, "k": 16, "max_registers": 64}
    entry = family.from_options(given, shape, H100)
    assert [
        (q.max_registers, dataclasses.replace(q, max_registers=64))
        for q in family.other_caps(entry, shape, H100)
    ] == [
        (128, entry),
        (255, entry),
    ]
    # a block of 1024 threads cannot have 255 registers each (65536 a block): that cap is not offered
    big = family.from_options(
        {**given, "threads_co": 16, "threads_x": 8, "threads_y": 8, "tx": 1, "ty": 1}, shape, H100
    )
    assert [q.max_registers for q in family.other_caps(big, shape, H100)] == []
    assert family.other_caps(family.CpuParams(), shape, CPU) == []


def test_whole_blocks_tile_the_output_exactly_with_full_warps() -> None:
    # The 7x7 block's entry: blocks of 4 rows by 32 channels, 32 threads, the tail block recomputing
    # a row (8/7 of the work). Its whole-block variants keep the register tile.
    shape = LayerShape("b7", n=32, h=7, w=7, c=1024, co=1024)
    entry = family.from_options(
        {"dw_at": "root", "lanes": 4, "tx": 7, "ty": 1, "threads_co": 8, "threads_x": 1, "threads_y": 4,
         "k": 16, "max_registers": 128, "dw_rows": 4},
        shape,
        H100,
    )  # fmt: skip
    assert family.block_tail_waste(entry, shape) == pytest.approx(8 / 7)
    whole = family.whole_blocks(entry, shape, H100)
    # 8 x 7 = 56 threads would tile exactly but leave a warp a quarter empty: not offered
    assert [(q.threads_co, q.threads_x, q.threads_y) for q in whole] == [(32, 1, 1), (32, 1, 7)]
    for q in whole:
        assert family.block_tail_waste(q, shape) == 1 and q.tile.threads % 32 == 0
        assert (q.lanes, q.tx, q.ty, q.k, q.dw_at, q.dw_rows) == (4, 7, 1, 16, "root", 4)
    exact = dataclasses.replace(entry, threads_co=32, threads_y=7)
    assert family.whole_blocks(exact, shape, H100) == []  # nothing to mend
    assert family.whole_blocks(family.CpuParams(), shape, CPU) == []


def test_longer_steps_unroll_more_channels_a_step_within_the_registers() -> None:
    # The 7² entry (a thread tile of 8 channels by 7 pixels, 16 channels a step at 255 registers) and
    # the 14² one (a warp tile of 448 threads, which cannot have more than 128 registers a thread).
    b7 = LayerShape("b7", n=32, h=7, w=7, c=1024, co=1024)
    thread = family.from_options(
        {"dw_at": "root", "dw_rows": 4, "lanes": 8, "tx": 7, "ty": 1, "threads_co": 32, "threads_x": 1,
         "threads_y": 7, "k": 16, "max_registers": 255},
        b7,
        H100,
    )  # fmt: skip
    longer = family.longer_steps(thread, b7, H100)
    assert [(q.k, q.max_registers) for q in longer] == [(32, 255), (64, 255)]
    assert all(dataclasses.replace(q, k=16) == thread for q in longer)  # the same tile otherwise
    # a step's values beyond 32 channels are not counted: ptxas streams them into the FMAs
    assert family.register_demand(longer[1], b7) == family.register_demand(longer[0], b7) == 56 + 32 * 15
    b14 = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    warp = family.from_options(
        {"dw_at": "cblock", "gemm": "warp", "lanes": 8, "tx": 7, "ty": 1, "threads_co": 32, "threads_x": 2,
         "threads_y": 7, "k": 16, "max_registers": 128},
        b14,
        H100,
    )  # fmt: skip
    assert [(q.k, q.max_registers) for q in family.longer_steps(warp, b14, H100)] == [(32, 128)]
    reason = family.check(dataclasses.replace(warp, k=64), b14, H100)
    assert reason and "k must be <= 32" in reason  # a warp's steps stay inside its chunk
    assert family.longer_steps(family.CpuParams(), b7, CPU) == []

    # the step's body is unrolled: twice the FMAs between two back-edges of the reduction loop
    def body(p: family.GpuParams) -> int:
        ptx = builder.lower_for(names.FAMILY, b7, H100, family.build_options(p, {}))["kernels.ptx"]
        return ptx[ptx.index(".entry _kernel_output") :].count("fma.rn.f32")

    assert body(longer[0]) == 2 * body(thread) == 2 * 16 * 8 * 7


def test_the_heuristic_of_wide_blocks_is_a_whole_block_register_gemm() -> None:
    for h, w, c, rows in ((7, 7, 1024, 7), (14, 14, 512, 7), (28, 28, 256, 7), (13, 13, 384, 4)):
        shape = LayerShape("wide", n=32, h=h, w=w, c=c, co=c)
        p = family.heuristic(shape, H100)
        assert family.check(p, shape, H100) is None
        assert (p.dw_at, p.gemm, p.lanes, p.ty, p.threads_co, p.threads_y, p.k) == (
            "root", "thread", 4, 1, 32, rows, 16
        )  # fmt: skip
        assert p.tx == 7 and (family.block_tail_waste(p, shape) == 1 or h == 13)
    # narrower blocks keep the block's shared depthwise tile
    assert family.heuristic(LayerShape("b56", n=32, h=56, w=56, c=128, co=128), H100).dw_at == "block"


def test_a_recorded_parameter_set_reads_back_as_itself_whatever_the_heuristic() -> None:
    # as_dict leaves gemm, dw_vec and dw_rows out at their defaults; the 7² heuristic has dw_rows = 4,
    # so filling them from the heuristic would build (and record) another schedule than the one asked
    shape = LayerShape("b7", n=32, h=7, w=7, c=1024, co=1024)
    assert family.heuristic(shape, H100).dw_rows == 4
    q = family.GpuParams("root", 4, 7, 1, 8, 1, 4, 16, "global", False, 128)
    assert "dw_rows" not in family.as_dict(q)
    assert family.from_options(family.as_dict(q), shape, H100) == q
    assert family.resolve(shape, H100, {"params": family.as_dict(q)}) == q


def test_bad_params_name_the_valid_choices() -> None:
    shape = AWKWARD[0]
    with pytest.raises(family.ParamsError, match="valid parameters: dw_at, lanes"):
        family.from_options({"tile": 4}, shape, CPU)
    with pytest.raises(
        family.ParamsError, match=r"dw_at must be one of \['root', 'tile', 'cblock', 'inline'\]"
    ):
        family.from_options({"dw_at": "shared"}, shape, CPU)
    with pytest.raises(family.ParamsError, match="threads per block exceed"):
        family.from_options(
            {"threads_co": 8, "threads_x": 16, "threads_y": 16, "tx": 1, "ty": 1},
            LayerShape("w", 1, 64, 64, 8, 64),
            H100,
        )


def test_cache_key_covers_the_parameters() -> None:
    shape, target = AWKWARD[0], targets.cpu_target()
    a = builder._key_parts("family", shape, CPU, target, {"params": {"dw_at": "root"}})
    b = builder._key_parts("family", shape, CPU, target, {"params": {"dw_at": "cblock"}})
    same = builder._key_parts("family", shape, CPU, target, {"params": {"dw_at": "root"}})
    assert a["params"]["dw_at"] == "root"
    assert a == same and a != b


def test_the_traffic_model_counts_load_instructions_per_fma() -> None:
    shape = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    # One output channel a thread: a scalar weight load a channel and a depthwise .v4 per 4 pixels feed
    # only 16 FMAs, above the SM's one load per four FMAs; 8 channels a thread stay far below it.
    narrow = family.GpuParams("root", 1, 2, 8, 32, 4, 2, 8, "global", False, 128)
    wide = family.GpuParams("root", 8, 7, 2, 16, 2, 4, 8, "global", False, 255)
    assert family.traffic(narrow, shape).lsu > 0.25 > 4 * family.traffic(wide, shape).lsu
    # per input channel: narrow, 1 weight load and 16 / 4 depthwise .v4 loads for 16 FMAs; wide, 8 / 4
    # weight .v4 loads and 14 / 4 depthwise ones for 8 x 14 FMAs
    assert family.traffic(narrow, shape).lsu == pytest.approx((1 + 16 / 4) / 16)
    assert family.traffic(wide, shape).lsu == pytest.approx((2 + 14 / 4) / 112)
    # where a thread loads more than it computes (a step of one channel, scalar depthwise loads), the
    # load instructions bind the tile's cost before L1 or L2 bytes do
    column = family.GpuParams("root", 1, 1, 4, 32, 1, 4, 1, "global", False, 128)
    t = family.traffic(column, shape)
    assert t.lsu == pytest.approx((1 + 4) / 4) and t.cost == pytest.approx(family.LSU_TO_L1 * t.lsu)
    assert t.cost > max(t.l1, family.L2_TO_L1_BANDWIDTH * t.l2)


def test_warp_tiles_are_searched_with_their_own_rules() -> None:
    """`gemm` = warp (a warp's lanes over output channels, the depthwise shuffled between lanes): the
    seeds, mutations and errors of the search cover it; earlier parameter sets keep their digests."""
    shape = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    warp = family.model_seeds(shape, H100, family.GPU_WARP_SEEDS, gemm="warp")
    assert len(warp) == family.GPU_WARP_SEEDS and set(warp) <= set(family.seeds(shape, H100))
    assert all(p.gemm == "warp" and p.threads_co == family.WARP for p in warp)
    assert all(family.check(p, shape, H100) is None for p in warp)
    rng = random.Random(2)
    params = warp[0]
    for _ in range(30):
        params = family.mutate(params, shape, H100, rng, steps=2)
        assert family.check(params, shape, H100) is None
    # A step's depthwise values arrive by one shfl a pixel: counted as load instructions.
    p = family.GpuParams("root", 8, 7, 1, 32, 1, 4, 8, "global", False, 128, "warp")
    assert family.traffic(p, shape).lsu == pytest.approx((2 + 7 + 7 / 32) / 56)
    # Asking for warp brings the warp's 32 channel lanes; what it cannot do is named in one line.
    assert family.from_options({"gemm": "warp", "dw_at": "root"}, shape, H100).threads_co == family.WARP
    with pytest.raises(family.ParamsError, match="dw_at must be root, block or cblock"):
        family.from_options({"gemm": "warp", "dw_at": "inline"}, shape, H100)
    with pytest.raises(family.ParamsError, match="weights must be global"):
        family.from_options({"gemm": "warp", "dw_at": "root", "weights": "shared"}, shape, H100)
    with pytest.raises(family.ParamsError, match="c = 24 is not a multiple of 32"):
        family.from_options({"gemm": "warp", "dw_at": "root"}, AWKWARD[0], H100)
    with pytest.raises(family.ParamsError, match=r"gemm must be one of \['thread', 'warp'\]"):
        family.from_options({"gemm": "block"}, shape, H100)
    # `gemm` is recorded only where it is not the default: the parameter sets of the earlier searches
    # (tuning/db.json) keep their digests, and so their job keys.
    thread = family.GpuParams("root", 8, 7, 1, 16, 2, 8, 16, "global", False, 128)
    assert "gemm" not in family.as_dict(thread) and family.as_dict(p)["gemm"] == "warp"
    assert family.digest(thread) == "a9a3968541"  # its digest before `gemm` existed
