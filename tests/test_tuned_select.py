"""`halide_tuned` on any layer and device (issue 24): the heuristic fitted to the shape and to the SM of
each catalog GPU's compute capability; candidates ranked, fallen back to and, with `on_miss` = quick,
timed by the worker, the winner stored so the next build is a hit; database entries of another Halide
version or corrupt ones skipped with a reason; the job layer's fallback to a variant's next candidate.
Real Halide (CPU builds, JIT), the real worker and tuning database files in tmp_path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import reference_error

from kernels import registry
from kernels.device import DeviceSpec
from kernels.halide import candidates, family, tuned
from kernels.halide.family import cost, limits
from kernels.layer import LayerShape
from workers.job import execute
from workers.schema import Job, TimingSpec

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0)
# The catalog's GPUs by compute capability (conf/catalog/devices.yaml): Turing, GA10x Ampere, Hopper.
GPUS = (
    DeviceSpec("rtx2060", "cuda", "NVIDIA GeForce RTX 2060", 6451.0, 336.0, sm_count=30, cuda_capability=75),
    DeviceSpec("rtx3070", "cuda", "NVIDIA GeForce RTX 3070", 20314.0, 448.0, sm_count=46, cuda_capability=86),
    DeviceSpec("h200", "cuda", "NVIDIA H200 (SXM)", 66900.0, 4800.0, sm_count=132, cuda_capability=90),
)
# Extreme shapes: one channel in or out, 1x1 images, 4096 channels, stride 2 on one-pixel-wide images,
# batch 64; and the two shapes whose heuristic failed to build on the H200 (issue 24).
EXTREME = (
    LayerShape("c1co1_1x1", n=1, h=1, w=1, c=1, co=1),
    LayerShape("c4096_1x1", n=1, h=1, w=1, c=4096, co=3),
    LayerShape("co4096", n=1, h=1, w=3, c=5, co=4096, stride=2),
    LayerShape("wide1_s2", n=2, h=9, w=1, c=16, co=1, stride=2),
    LayerShape("tall1_s2", n=1, h=1, w=7, c=3, co=24, stride=2),
    LayerShape("c4096_co512", n=1, h=2, w=3, c=4096, co=512),
    LayerShape("batch64", n=64, h=3, w=3, c=1, co=5),
    LayerShape("issue_5x5", n=1, h=5, w=5, c=1, co=1),
    LayerShape("issue_odd", n=7, h=13, w=29, c=100, co=3),
)
FAST = TimingSpec(warmup=1, min_repeats=3, max_repeats=5, min_time_s=0.0, max_time_s=0.1)


@pytest.mark.parametrize("device", GPUS, ids=lambda d: d.name)
def test_the_gpu_heuristic_is_valid_for_every_capability_on_extreme_shapes(device: DeviceSpec) -> None:
    lim = limits.sm_limits(device.cuda_capability)
    for shape in EXTREME:
        p = family.heuristic(shape, device)
        assert family.check(p, shape, device) is None, shape.name
        assert p.tile.block_co <= shape.co and p.tile.block_x <= shape.wo and p.tile.block_y <= shape.ho
        assert family.shared_bytes(p, shape) <= family.GPU_SHARED_BYTES
        assert shape.c % p.k == 0 and shape.c % p.dw_vec == 0  # channel blocks divide odd channel counts
        # a warp a block where the output has one, else the whole output a block
        most = min(32, shape.co) * min(16, shape.wo) * min(16, shape.ho)
        assert p.tile.threads >= min(32, most), shape.name
        assert (
            limits.occupancy(p.tile.threads, p.max_registers, family.shared_bytes(p, shape), lim).blocks >= 1
        )
        # the fallback of the fit is valid on its own too
        assert family.check(family.heuristic_fallback(shape, device), shape, device) is None


@pytest.mark.parametrize("device", GPUS, ids=lambda d: d.name)
def test_every_gpu_candidate_on_extreme_shapes_is_valid(device: DeviceSpec, tmp_path: Path) -> None:
    """A miss on each extreme shape plans its candidates (split and unsplit ones among them) without
    failing, each valid for the shape and the device."""
    for shape in EXTREME:
        plan = candidates.plan(shape, device, {"tuning_db": str(tmp_path / "none.json"), "on_miss": "quick"})
        assert plan.candidates, shape.name
        for c in plan.candidates:
            assert c.params is None or family.check(c.params, shape, device) is None, (shape.name, c.origin)


def test_the_sm_table_and_occupancy_follow_the_programming_guide() -> None:
    turing, ampere, hopper = (limits.sm_limits(cc) for cc in (75, 86, 90))
    assert (turing.threads_per_sm, ampere.threads_per_sm, hopper.threads_per_sm) == (1024, 1536, 2048)
    assert limits.sm_limits(120) == hopper  # a newer GPU takes the closest older row
    with pytest.raises(ValueError, match="known capabilities: 30, 32"):
        limits.sm_limits(20)
    # 256 threads at 128 registers: 32 K registers a block, two blocks an SM everywhere
    assert [limits.occupancy(256, 128, 0, lim).blocks for lim in (turing, ampere, hopper)] == [2, 2, 2]
    assert limits.occupancy(256, 128, 0, turing).fraction == 0.5  # half of Turing's 32 warps
    assert limits.occupancy(256, 128, 0, hopper).fraction == 0.25
    # shared memory: 40 KiB a block, one fits Turing's 64 KiB, five Hopper's 228 KiB (1 KiB reserved each)
    assert limits.occupancy(64, 32, 40 * 1024, turing) == limits.Occupancy(1, 2, 2 / 32, "shared")
    assert limits.occupancy(64, 32, 40 * 1024, hopper).blocks == 5
    # a block of 1024 threads: one on Turing (its whole SM), two on Hopper
    assert (
        limits.occupancy(1024, 32, 0, turing).blocks == 1
        and limits.occupancy(1024, 32, 0, hopper).blocks == 2
    )
    # a block over Turing's SM is invalid there and valid on Hopper... none is: 1024 a block is the limit
    shape = LayerShape("b", n=1, h=64, w=64, c=8, co=64)
    big = family.GpuParams("cblock", 1, 1, 1, 16, 8, 8, 4, "global", False, 64)
    assert family.check(big, shape, GPUS[0]) is None and family.check(big, shape, GPUS[2]) is None


def test_the_cpu_heuristic_builds_and_verifies_on_extreme_shapes() -> None:
    for shape in EXTREME:
        p = family.heuristic(shape, CPU)
        assert family.check(p, shape, CPU) is None, shape.name
        built = registry.get("halide_family").build(shape, CPU, {"params": family.as_dict(p), "jit": True})
        assert reference_error(built, shape) < 1e-4, shape.name


def test_candidates_are_ranked_and_include_named_and_nearby_entries(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    near = LayerShape("near", n=1, h=14, w=14, c=48, co=24)
    far = LayerShape("far", n=32, h=112, w=112, c=512, co=1024, stride=2)
    for s in (near, far):
        entry = {"params": family.as_dict(family.heuristic(s, CPU)), "time_ms": 1.0, "kind": "cpu"}
        tuned.store(db, tuned.entry_key(s, CPU), entry)
    other_cpu = DeviceSpec("cpu", "cpu", "host CPU", 1.0, 1.0, cores=64)  # another CPU model key
    shape = LayerShape("mine", n=1, h=12, w=12, c=40, co=24)
    theirs = family.CpuParams("inline", 8, 1, 3, 1, 2, 1, 8, 1)
    tuned.store(
        db,
        tuned.entry_key(shape, other_cpu),
        {"params": family.as_dict(theirs), "time_ms": 0.5, "kind": "cpu"},
    )
    plan = candidates.plan(shape, CPU, {"tuning_db": str(db), "on_miss": "rank"})
    origins = [c.origin for c in plan.candidates]
    assert plan.source == "rank" and "no entry" in plan.reason
    assert {"heuristic", "named:app", "named:unfused", "named:fused_cblock"} <= set(origins)
    assert f"near:{tuned.entry_key(near, CPU)}" in origins and f"near:{tuned.entry_key(far, CPU)}" in origins
    assert f"other:{tuned.entry_key(shape, other_cpu)}" in origins  # another CPU's entry travels
    estimates = [c.estimate_s for c in plan.candidates]
    assert estimates == sorted(estimates) and all(e > 0 for e in estimates)
    for c in plan.candidates:  # every candidate refitted to this shape
        assert c.params is None or family.check(c.params, shape, CPU) is None
    assert candidates.shape_distance(shape, near) < candidates.shape_distance(shape, far)
    heuristic_first = candidates.plan(shape, CPU, {"tuning_db": str(db), "on_miss": "heuristic"})
    assert heuristic_first.candidates[0].origin == "heuristic"
    with pytest.raises(ValueError, match="must be one of heuristic, rank, quick"):
        candidates.plan(shape, CPU, {"tuning_db": str(db), "on_miss": "guess"})


def test_on_a_gpu_miss_the_heuristic_and_other_shapes_entries_come_split_and_unsplit(tmp_path: Path) -> None:
    """A long narrow reduction that does not fill the GPU (960 -> 160 channels on 7 x 7 pixels): the
    heuristic splits it, and `halide_tuned` times the heuristic unsplit beside it, and each nearby entry
    (searched unsplit on a wide layer) both as it is and split, the measurement deciding."""
    h200 = GPUS[2]
    db = tmp_path / "db.json"
    near = LayerShape("b7", n=32, h=7, w=7, c=1024, co=1024)
    entry = {"params": family.as_dict(family.heuristic(near, h200)), "time_ms": 0.1, "kind": "cuda"}
    tuned.store(db, tuned.entry_key(near, h200), entry)
    shape = LayerShape("proj", n=32, h=7, w=7, c=960, co=160)
    plan = candidates.plan(shape, h200, {"tuning_db": str(db), "on_miss": "quick"})
    by_origin = {c.origin: c.params for c in plan.candidates}
    heuristic = by_origin["heuristic"]
    assert isinstance(heuristic, family.GpuParams) and heuristic.split_k > 1
    assert by_origin["heuristic split_k=1"] == replace(heuristic, split_k=1)
    key = f"near:{tuned.entry_key(near, h200)}"
    split = [o for o in by_origin if o.startswith(f"{key} split_k=")]
    assert by_origin[key].split_k == 1 and len(split) == 1 and by_origin[split[0]].split_k > 1
    for c in plan.candidates:
        assert c.params is None or family.check(c.params, shape, h200) is None


def test_quick_times_the_candidates_stores_the_winner_and_the_next_build_is_a_hit(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    shape = LayerShape("q", n=2, h=9, w=7, c=6, co=13, stride=2)
    options = {"tuning_db": str(db), "on_miss": "quick", "quick_trials": 3, "jit": True}
    job = Job("t", "halide_tuned", shape, CPU, FAST, options=options)
    first = execute(job)
    assert first.status == "ok", first.tags.get("error")
    assert first.params["schedule_source"] == "quick" and first.params["candidates_tried"] == "3"
    assert first.metrics["select_trials"] == 3 and first.metrics["select_s"] > 0
    report = json.loads(first.artifacts["tuned.json"])
    timed = [t for t in report["tried"] if t["outcome"] == "ok"]
    assert len(timed) == 3 and report["chosen"]["origin"] == first.params["candidate"]
    # the fastest after the confirming re-timings of the best screened (`screen_ms`: their screening)
    confirmed = [t for t in timed if "screen_ms" in t] or timed
    assert len(confirmed) in (1, 2, 3)
    assert min(confirmed, key=lambda t: t["min_ms"])["origin"] == first.params["candidate"]
    entry = tuned.load(db)["entries"][tuned.entry_key(shape, CPU)]
    assert entry["source"] == "quick" and entry["origin"] == first.params["candidate"]
    chosen = next(t for t in confirmed if t["origin"] == first.params["candidate"])
    assert entry["time_ms"] == chosen["time_ms"] and entry["time_min_ms"] == chosen["min_ms"]
    assert entry["job_key"] == job.key
    assert "stored" in first.tags["tuned.store"]

    second = execute(job)
    assert second.status == "ok" and second.params["schedule_source"] == "db"
    assert second.params["candidates_tried"] == "1" and "select_s" not in second.metrics
    # the same schedule: a named one by name, a family one by its parameters
    assert second.params["schedule"] == first.params["schedule"]
    if first.params["schedule"] == "family":
        assert json.loads(second.artifacts["params.json"]) == json.loads(first.artifacts["params.json"])


def test_foreign_version_and_corrupt_entries_are_skipped_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db.json"
    shape = LayerShape("v", n=1, h=6, w=5, c=8, co=12)
    good = {"params": family.as_dict(family.heuristic(shape, CPU)), "time_ms": 0.01, "kind": "cpu"}
    tuned.store(db, tuned.entry_key(shape, CPU, "20.0.0"), good)  # another Halide version
    data = tuned.load(db)
    near = LayerShape("n", n=1, h=6, w=5, c=8, co=16)
    data["entries"][tuned.entry_key(near, CPU)] = {"params": {"tx": 2}, "time_ms": "fast"}  # corrupt
    data["entries"]["not a key"] = {"params": {}, "time_ms": 1.0}
    db.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="kernels.halide.tuned"):
        built = registry.get("halide_tuned").build(
            shape, CPU, {"tuning_db": str(db), "on_miss": "heuristic", "jit": True}
        )
    assert built.build_params["schedule_source"] == "heuristic"  # a miss, not the other version's entry
    skipped = built.build_tags["tuned.skipped"]
    assert "written by halide 20.0.0" in skipped and "time_ms 'fast' is not a number" in skipped
    assert "not a key: unreadable key" in skipped
    assert sum("tuning database entry skipped" in r.getMessage() for r in caplog.records) == 3
    assert reference_error(built, shape) < 1e-4
    # a database file that is not JSON: the same, with the file's reason
    db.write_text("{oops")
    built = registry.get("halide_tuned").build(
        shape, CPU, {"tuning_db": str(db), "on_miss": "heuristic", "jit": True}
    )
    assert "is unreadable" in built.build_tags["tuned.skipped"] and reference_error(built, shape) < 1e-4


def test_the_job_layer_falls_back_to_the_next_candidate_when_one_is_wrong() -> None:
    import fallback_variant

    shape = LayerShape("f", n=1, h=5, w=4, c=3, co=2)
    record = execute(Job("t", fallback_variant.NAME, shape, CPU, FAST))
    assert record.status == "ok", record.tags.get("error")
    assert record.params["candidate"] == "exact"  # the record says which ran ...
    assert record.params["fallback_reason"].startswith("rel_error")  # ... and why the first did not
    assert record.metrics["rel_error"] < 1e-6


def test_the_fusion_rule_picks_fused_on_small_layers_and_unfused_on_the_h200s_wide_blocks() -> None:
    h200 = GPUS[2]
    assert cost.fusion_choice(LayerShape("app", 4, 112, 112, 32, 16), h200) == "fused"
    assert cost.fusion_choice(LayerShape("b7", 32, 7, 7, 1024, 1024), h200) == "unfused"
    for shape in EXTREME:
        assert cost.fusion_choice(shape, h200) in ("fused", "unfused")
        assert cost.fusion_choice(shape, CPU) in ("fused", "unfused")


def test_paired_times_variants_in_turns_and_names_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    from workers import paired

    argv = ["--shapes", "1x9x7x8-5s2", "--variants", "halide_app,numpy_ref", "--rounds", "2"]
    argv += ["--option", "halide_app:jit=true"]
    assert paired.main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| `1x9x7x8-5s2`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and float(cells[-1]) > 0  # app / numpy_ref, both timed
    assert paired.main(["--shapes", "9x9", "--variants", "halide_app"]) == 2
    assert "inline spec" in capsys.readouterr().err
    assert paired.main(["--shapes", "1x9x7x8-5", "--variants", "nope"]) == 2
    assert "valid variants" in capsys.readouterr().err


def test_on_miss_enters_halide_tuneds_job_options_and_key_only() -> None:
    from hydra import compose, initialize_config_dir

    from orchestrator.config import CONF_DIR, ConfigError
    from orchestrator.plan import make_plan

    def plan(*overrides: str) -> list[Job]:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["+experiment=heldout", "shapes=[3x17x23x40-24]", *overrides])
        return make_plan(cfg)

    jobs = {j.variant: j for j in plan("variants=[halide_tuned,halide_app]")}
    assert jobs["halide_tuned"].options == {"on_miss": "quick"} and jobs["halide_app"].options == {}
    ranked = {j.variant: j for j in plan("variants=[halide_tuned,halide_app]", "tuned.on_miss=rank")}
    assert ranked["halide_tuned"].options == {"on_miss": "rank"}
    assert (
        ranked["halide_tuned"].key != jobs["halide_tuned"].key
        and ranked["halide_app"].key == jobs["halide_app"].key
    )
    budget = plan("variants=[halide_tuned]", "tuned.quick_budget_s=20")[0]
    assert budget.options == {"on_miss": "quick", "quick_budget_s": 20.0}
    with pytest.raises(ConfigError, match=r"tuned\.on_miss must be one of heuristic, rank, quick, got 'gue"):
        plan("variants=[halide_tuned]", "tuned.on_miss=guess")
