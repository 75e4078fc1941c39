"""The schedule family, the tuning database and the search (issue #6), with real Halide, Ray and MLflow.

- the family's space is valid: every sampled CPU candidate (and every seed: the depthwise at every
  level) on two awkward shapes verifies against the float64 reference; sampled GPU candidates compile
  to CUDA (PTX) without a GPU;
- `halide_tuned` serves a database entry and falls back to the heuristic, saying which;
- the search runs end to end on a tiny shape with a tiny budget through the local executor (child
  worker processes, a results bundle) and through the orchestrator's Ray dispatch into MLflow.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import re
import sys
from pathlib import Path

import pytest
from conftest import H100, requires_gpu

from kernels import registry
from kernels.device import DeviceSpec, visible_gpu
from kernels.halide import algorithm, family, tuned, variants
from kernels.layer import LayerShape, make_inputs, reference, relative_l2_error
from orchestrator import tune
from orchestrator.config import ConfigError
from workers import bundle

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0)
H200 = DeviceSpec("h200", "cuda", "NVIDIA H200", 60000.0, 4800.0, sm_count=132, cuda_capability=90)
A100 = DeviceSpec("a100", "cuda", "NVIDIA A100", 19500.0, 2000.0, sm_count=108, cuda_capability=80)
AWKWARD = (
    LayerShape("odd_s2", n=2, h=13, w=11, c=24, co=40, stride=2),
    LayerShape("odd_s1", n=1, h=6, w=5, c=40, co=17, stride=1, relu=False, bias=False),
)
TOLERANCE = 1e-4


def _error(built: registry.Built, shape: LayerShape, seed: int = 1) -> float:
    inputs = make_inputs(shape, seed)
    placed = built.place(inputs)
    built.poison(placed)
    built.run(placed)
    built.sync()
    return relative_l2_error(built.fetch(placed), reference(shape, inputs))


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
        error = _error(built, shape)
        assert error < TOLERANCE, f"{params} on {shape.label}: relative L2 error {error:.3g}"


@pytest.mark.parametrize("shape", AWKWARD, ids=lambda s: s.name)
def test_sampled_gpu_candidates_compile_for_cuda(shape: LayerShape) -> None:
    rng = random.Random(3)
    candidates = family.seeds(shape, H100) + [family.sample(shape, H100, rng) for _ in range(4)]
    assert {p.dw_at for p in candidates} == set(family.GPU_DW_AT)
    for params in candidates:
        artifacts = variants.lower_for("family", shape, H100, {"params": family.as_dict(params)})
        kernels = re.findall(r"\.entry\s+(\w+)\(", artifacts["kernels.ptx"])
        assert kernels and all(re.match(variants.KERNEL_FILTER, k) for k in kernels), kernels
        assert len(kernels) == (2 if params.dw_at == "root" else 1)
        assert ("GPUShared" in artifacts["lowered.stmt"]) == (family.shared_bytes(params, shape) > 0)


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


def test_an_evolve_search_starts_from_the_database_entry(tmp_path: Path) -> None:
    shape = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    best = family.GpuParams("root", 4, 7, 2, 16, 2, 4, 8, "global", False, 128)
    db = tmp_path / "db.json"
    assert tuned.store(db, tuned.entry_key(shape, H100), {"params": family.as_dict(best), "time_ms": 0.1})
    search = tune.FamilySearch(shape, H100, tune.TuneConf(db=str(db)), random.Random(0))
    assert search.seeds[0] == family.heuristic(shape, H100) and search.seeds[1] == best
    plain = tune.FamilySearch(shape, H100, tune.TuneConf(db=str(tmp_path / "none.json")), random.Random(0))
    assert best not in plain.seeds


def test_a_search_also_starts_from_other_gpus_entries(tmp_path: Path) -> None:
    shape = LayerShape("b28", n=32, h=28, w=28, c=256, co=256)
    own = family.GpuParams("root", 4, 7, 2, 16, 2, 4, 8, "global", False, 128)
    warp = family.from_options(
        {"dw_at": "root", "gemm": "warp", "tx": 7, "ty": 2, "threads_x": 4, "threads_y": 4, "k": 4},
        shape,
        H200,
    )
    slower = family.GpuParams("root", 8, 7, 1, 16, 4, 4, 8, "global", False, 128)
    db = tmp_path / "db.json"
    for device, params, ms in ((H100, own, 0.14), (H200, warp, 0.13), (A100, slower, 0.3)):
        tuned.store(
            db,
            tuned.entry_key(shape, device),
            {"params": family.as_dict(params), "time_ms": ms, "kind": "cuda"},
        )
    # Entries of another Halide version, another shape, and one this device cannot build are not relatives.
    tuned.store(
        db, tuned.entry_key(shape, A100, "20.0.0"), {"params": {"lanes": 2}, "time_ms": 0.01, "kind": "cuda"}
    )
    odd = LayerShape("odd", n=32, h=28, w=28, c=256, co=128)
    tuned.store(db, tuned.entry_key(odd, A100), {"params": {"lanes": 2}, "time_ms": 0.01, "kind": "cuda"})
    cpu = DeviceSpec("cpu", "cpu", "host CPU", 1.0, 1.0, cores=2)
    tuned.store(db, tuned.entry_key(shape, cpu), {"params": {"tx": 2}, "time_ms": 0.01, "kind": "cpu"})
    l4 = DeviceSpec("l4", "cuda", "NVIDIA L4", 30000.0, 300.0, sm_count=58, cuda_capability=89)
    tuned.store(db, tuned.entry_key(shape, l4), {"time_ms": 0.01, "kind": "cuda"})  # no params: no seed
    assert tuned.relatives(shape, H100, {"tuning_db": str(db)}) == [warp, slower]
    search = tune.FamilySearch(shape, H100, tune.TuneConf(db=str(db)), random.Random(0))
    tiles = family.depthwise_tiles(own, shape, H100)  # own's other depthwise-kernel tiles come next
    assert len(tiles) == 8 and {(q.dw_vec, q.dw_rows) for q in tiles} == {
        (v, r) for v in (1, 2, 4) for r in (1, 2, 4) if (v, r) != (1, 1)
    }
    whole = family.whole_blocks(own, shape, H100)  # own's 8-row blocks leave a tail on 28 rows
    assert whole and all(28 % q.block_y == 0 and q.threads % 32 == 0 for q in whole)
    longer = family.longer_steps(own, shape, H100)  # and its longer reduction steps
    same = [dataclasses.replace(q, k=own.k, max_registers=own.max_registers) for q in longer]
    assert longer and all(q.k > own.k for q in longer) and set(same) == {own}
    caps = family.other_caps(own, shape, H100)  # and its other register caps
    assert caps and all(dataclasses.replace(q, max_registers=own.max_registers) == own for q in caps)
    ahead = [own, *tiles, *whole, *longer, *caps, warp, slower]
    assert search.seeds[: 1 + len(ahead)] == [family.heuristic(shape, H100), *ahead]
    assert len(search.seeds) == len(set(search.seeds))
    assert tuned.relatives(shape, H100, {"tuning_db": str(tmp_path / "none.json")}) == []


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
    assert family._tail_waste(entry, shape) == pytest.approx(8 / 7)
    whole = family.whole_blocks(entry, shape, H100)
    # 8 x 7 = 56 threads would tile exactly but leave a warp a quarter empty: not offered
    assert [(q.threads_co, q.threads_x, q.threads_y) for q in whole] == [(32, 1, 1), (32, 1, 7)]
    for q in whole:
        assert family._tail_waste(q, shape) == 1 and q.threads % 32 == 0
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
        ptx = variants.lower_for(variants.FAMILY, b7, H100, family.build_options(p, {}))["kernels.ptx"]
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
        assert p.tx == 7 and (family._tail_waste(p, shape) == 1 or h == 13)
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


def test_the_heuristic_stays_the_baseline_when_an_entry_equals_it(tmp_path: Path) -> None:
    # The H200's first 112² entry was the heuristic's tile; a search that moved it up as "its own entry"
    # timed another seed as the baseline and stored a wrong heuristic time (tuning/README.md).
    shape = LayerShape("b112", n=32, h=112, w=112, c=32, co=64)
    heuristic = family.heuristic(shape, H200)
    staged = dataclasses.replace(heuristic, stage_input=True)
    db = tmp_path / "db.json"
    for device, params in ((H200, heuristic), (H100, staged), (A100, heuristic)):
        entry = {"params": family.as_dict(params), "time_ms": 0.1, "kind": "cuda"}
        tuned.store(db, tuned.entry_key(shape, device), entry)
    search = tune.FamilySearch(shape, H200, tune.TuneConf(db=str(db)), random.Random(0))
    # the entry's other depthwise tiles come next, then its depthwise at the other levels, its longer
    # reduction steps (its blocks are whole already)
    tiles = family.depthwise_tiles(heuristic, shape, H200)
    levels = family.depthwise_levels(heuristic, shape, H200)
    longer = family.longer_steps(heuristic, shape, H200)
    assert len(tiles) == 8 and [p.dw_at for p in levels] == ["root", "cblock", "inline"]
    assert family.whole_blocks(heuristic, shape, H200) == [] and [p.k for p in longer] == [8, 16, 32]
    caps = family.other_caps(heuristic, shape, H200)
    assert [p.max_registers for p in caps] == [
        m for m in family.MAX_REGISTERS if m != heuristic.max_registers
    ]
    ahead = [heuristic, *tiles, *levels, *longer, *caps, staged]
    assert search.seeds[: len(ahead)] == ahead
    assert len(search.seeds) == len(set(search.seeds))
    first = search.propose(3, [])
    assert [c.baseline for c in first] == [True, False, False]
    assert json.loads(dict(first[0].options)["params"]) == family.as_dict(heuristic)


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
    shape, target = AWKWARD[0], variants.cpu_target()
    a = variants._key_parts("family", shape, CPU, target, {"params": {"dw_at": "root"}})
    b = variants._key_parts("family", shape, CPU, target, {"params": {"dw_at": "cblock"}})
    same = variants._key_parts("family", shape, CPU, target, {"params": {"dw_at": "root"}})
    assert a["params"]["dw_at"] == "root"
    assert a == same and a != b


def test_tuned_serves_the_db_entry_else_the_heuristic(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    shape, other = AWKWARD
    params = family.fit(family.CpuParams(dw_at="cblock", vectors=1, tx=2, ty=2, kc=8), shape, CPU)
    assert tuned.store(db, tuned.entry_key(shape, CPU), {"params": family.as_dict(params), "time_ms": 1.0})
    assert not tuned.store(db, tuned.entry_key(shape, CPU), {"params": {}, "time_ms": 2.0})  # slower: kept
    options = {"tuning_db": str(db), "jit": True}

    built = registry.get("halide_tuned").build(shape, CPU, options)
    info = json.loads(built.artifacts["build.json"])
    assert built.build_params == {"schedule_source": "db"}  # a param of the record: db or heuristic
    assert info["source"] == "db" and json.loads(built.artifacts["tuned.json"])["params"] == family.as_dict(
        params
    )
    assert _error(built, shape) < TOLERANCE

    fallback = registry.get("halide_tuned").build(other, CPU, options)
    info = json.loads(fallback.artifacts["build.json"])
    assert info["source"] == "heuristic" and "no entry" in info["reason"]
    assert fallback.build_params == {"schedule_source": "heuristic"}
    assert json.loads(fallback.artifacts["tuned.json"])["params"] == family.as_dict(
        family.heuristic(other, CPU)
    )
    assert _error(fallback, other) < TOLERANCE

    # An entry the family no longer accepts falls back too, with the reason.
    tuned.store(db, tuned.entry_key(other, CPU), {"params": {"dw_at": "gone"}, "time_ms": 1.0})
    info = json.loads(registry.get("halide_tuned").build(other, CPU, options).artifacts["build.json"])
    assert info["source"] == "heuristic" and "unusable" in info["reason"]


def test_db_key_names_shape_device_model_and_halide() -> None:
    key = tuned.entry_key(AWKWARD[1], H100)
    assert key == f"1x6x5x40-17s1-nobias-norelu | NVIDIA H100 | halide {tuned.halide_version()}"
    assert "cores)" in tuned.entry_key(AWKWARD[1], CPU)


def test_merge_keeps_the_faster_entry(tmp_path: Path) -> None:
    node, repo = tmp_path / "node.json", tmp_path / "repo.json"
    fast, slow = {"params": {}, "time_ms": 1.0}, {"params": {}, "time_ms": 2.0}
    tuned.store(node, "a", fast)
    tuned.store(node, "b", slow)
    tuned.store(repo, "b", fast)
    assert tune.run(["--merge", str(node), f"tune.db={repo}"])["db_written"] == ["a"]
    assert {k: e["time_ms"] for k, e in tuned.load(repo)["entries"].items()} == {"a": 1.0, "b": 1.0}


def test_search_end_to_end_local(tmp_path: Path) -> None:
    db, out = tmp_path / "db.json", tmp_path / "out"
    argv = [
        "+experiment=smoke", "shapes=[tiny_s2]", "tune.budget=4", "tune.generation=2", "tune.promote=1",
        f"tune.db={db}", "--local", "--out", str(out),
    ]  # fmt: skip
    result = tune.run(argv)
    (row,) = result["pairs"]
    assert row["candidates"] == 4 and row["best_ms"] > 0 and row["statuses"] == {"ok": 4}
    records = bundle.read_bundle(out)
    screened = [r for r in records if r.tags[tune.RUNG_TAG] == "0"]
    assert all(r.status == "ok" for r in records)
    # the best screening re-timed, and the heuristic's schedule (the baseline) beside it unless it is the
    # best: a re-timing is a measurement of its own (the experiment's timing, so its own job key)
    finals = [r for r in records if r.tags[tune.RUNG_TAG] == "1"]
    assert len(finals) in (1, 2) and len(screened) == 4
    assert len({r.key for r in records}) == 4 + len(finals)
    assert row["best_ms"] == min(r.metrics["time_ms"] for r in finals)
    assert [r.tags["tune.baseline"] for r in finals].count("true") == 1
    entry = json.loads(db.read_text())["entries"][result["db_written"][0]]
    assert entry["time_ms"] == row["best_ms"] and entry["command"].startswith("python -m orchestrator.tune")
    assert entry["candidates"] == 4 and entry["halide"] == tuned.halide_version()
    shape = LayerShape("tiny_s2", n=2, h=10, w=7, c=6, co=13, stride=2)
    built = registry.get("halide_tuned").build(shape, CPU, {"tuning_db": str(db), "jit": True})
    assert json.loads(built.artifacts["build.json"])["source"] == "db"

    # A second search goes on from the first (its bundle, or its records kept gzipped as tuning/runs
    # keeps them, found by a glob): nothing screened twice, and the earlier best re-timed beside its own.
    kept = tmp_path / "runs" / "first" / "records.jsonl.gz"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(gzip.compress((out / bundle.RECORDS).read_bytes()))
    for n, source in enumerate((str(out), str(tmp_path / "runs" / "*" / "records.jsonl.gz"))):
        again = tmp_path / f"again{n}"
        argv2 = [*argv[:4], "tune.budget=2", "tune.db_mode=none", f"tune.resume=[{source}]"]
        (row2,) = tune.run([*argv2, "--local", "--out", str(again)])["pairs"]
        assert row2["candidates"] == 2 and row2["candidates_earlier"] == 4 and row2["statuses"] == {"ok": 2}
        before = {r.params["option.params"] for r in screened}
        new = bundle.read_records(again)
        assert not before & {r.params["option.params"] for r in new if r.tags[tune.RUNG_TAG] == "0"}
        best = json.dumps(entry["params"], sort_keys=True)
        assert best in {r.params["option.params"] for r in new if r.tags[tune.RUNG_TAG] == "1"}
    with pytest.raises(ConfigError, match=r"tune\.resume: .*names no records file"):
        tune.run([*argv[:4], f"tune.resume=[{tmp_path / 'nothing*'}]", "--local", "--out", str(again)])


def test_autoscheduler_gets_the_same_budget(tmp_path: Path) -> None:
    argv = [
        "+experiment=smoke", "shapes=[tiny_s1]", "tune.strategy=adams2019", "tune.budget=2", "tune.promote=1",
        "tune.db_mode=none", "--local", "--out", str(tmp_path),
    ]  # fmt: skip
    result = tune.run(argv)
    (row,) = result["pairs"]
    assert row["candidates"] == 2 and row["best_variant"] == "halide_auto_adams2019" and row["best_ms"] > 0
    screened = [r for r in bundle.read_bundle(tmp_path) if r.tags[tune.RUNG_TAG] == "0"]  # not re-timings
    options = [json.loads(r.params.get("option.autoscheduler", "{}")) for r in screened]
    seeds = sorted(o.get("random_dropout_seed", -1) for o in options)
    assert seeds == [-1, 0]  # the configured run, then a greedy run with random dropout (tune.seed 0)
    # resumed, the autoscheduler's search knows both and goes on with a third
    cfg, t = tune.compose(argv[:2], argv[2:5])
    (pair,) = tune.plan_pairs(cfg, t)
    assert tune.load_prior([pair], [tmp_path]) == {pair.name: 2} and pair.baseline() is not None
    (third,) = pair.strategy.propose(1, pair.outcomes)
    assert third.option_dict()["autoscheduler"]["random_dropout_seed"] not in seeds


@pytest.mark.slow
def test_search_through_ray_into_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "+experiment=smoke", "shapes=[tiny_s1]", "tune.budget=2", "tune.promote=1", "tune.db_mode=none",
        f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path / 'artifacts'}", "cluster.num_cpus=2",
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    result = tune.run(argv)
    assert result["pairs"][0]["best_ms"] > 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tune_smoke")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("dsconv.role") == "child"]
    parent = next(r for r in runs if r.data.tags.get("dsconv.role") == "parent")
    rungs = [r.data.tags[tune.RUNG_TAG] for r in children]
    # Two screened; the best re-timed, and the heuristic's schedule too when it is not the best.
    assert rungs.count("0") == 2 and rungs.count("1") in (1, 2)
    assert parent.info.status == "FINISHED" and any(k.startswith("best_ms.") for k in parent.data.metrics)


def test_bad_tune_input_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert tune.main(["+experiment=smoke", "tune.strategy=nope", "--local"]) == 2
    # called in-process, it leaves no HYDRA_FULL_ERROR behind (processes started later would print
    # tracebacks instead of one line)
    assert "HYDRA_FULL_ERROR" not in os.environ
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "valid strategies: evolve, random, adams2019" in err
    assert tune.main(["+experiment=smoke", "tune.budgets=3"]) == 2
    assert "keys: budget, strategy" in capsys.readouterr().err
    assert tune.main(["+experiment=smoke", "tune=fast"]) == 2
    assert "valid tune options: default, gpu" in capsys.readouterr().err
    assert tune.main(["+experiment=smoke", "devices=[cpu]", "tune.strategy=anderson2021", "--local"]) == 2
    assert "schedules cuda only" in capsys.readouterr().err


def test_the_traffic_model_counts_load_instructions_per_fma() -> None:
    shape = LayerShape("b14", n=32, h=14, w=14, c=512, co=512)
    # One output channel a thread: a scalar weight load a channel and a depthwise .v4 per 4 pixels feed
    # only 16 FMAs, above the SM's one load per four FMAs; 8 channels a thread stay far below it.
    narrow = family.GpuParams("root", 1, 2, 8, 32, 4, 2, 8, "global", False, 128)
    wide = family.GpuParams("root", 8, 7, 2, 16, 2, 4, 8, "global", False, 255)
    assert family.traffic(narrow, shape).lsu > 0.25 > 4 * family.traffic(wide, shape).lsu
    assert family.traffic(narrow, shape).cost >= family.LSU_TO_L1 * family.traffic(narrow, shape).lsu


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
    ptx = variants.lower_for("family", shape, H100, family.build_options(fused, {}))["kernels.ptx"]
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
    artifacts = variants.lower_for("family", shape, H100, family.build_options(params, {}))
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
    assert _error(built, shape) < TOLERANCE


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
    ptx = variants.lower_for("family", shape, H100, family.build_options(params, {}))["kernels.ptx"]
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
    ptx = variants.lower_for("family", shape, H100, family.build_options(p, {}))["kernels.ptx"]
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
    artifacts = variants.lower_for("family", shape, H100, family.build_options(params, {}))
    assert "__local_depot" not in artifacts["kernels.ptx"]


@pytest.mark.parametrize("case", DW_KERNEL_CASES, ids=lambda c: c[0].name)
def test_depthwise_kernel_tiles_with_tails_compile_for_cuda(
    case: tuple[LayerShape, dict[str, object]],
) -> None:
    shape, _ = case
    params = _tile_params("root", case, H100)
    artifacts = variants.lower_for("family", shape, H100, family.build_options(params, {}))
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
    assert _error(built, shape) < TOLERANCE


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
