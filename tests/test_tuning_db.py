"""The tuning database (`kernels/halide/tuned.py`): its keys, load and store, the choice `halide_tuned`
builds (the database's entry, else the family's heuristic, saying which) and the entries other GPUs
keep for a shape (`relatives`), with real Halide builds verified against the float64 reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import H100, reference_error

from kernels import host, registry
from kernels.device import DeviceSpec
from kernels.halide import family, tuned
from kernels.halide.targets import host_vector
from kernels.layer import LayerShape

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0)
H200 = DeviceSpec("h200", "cuda", "NVIDIA H200", 60000.0, 4800.0, sm_count=132, cuda_capability=90)
A100 = DeviceSpec("a100", "cuda", "NVIDIA A100", 19500.0, 2000.0, sm_count=108, cuda_capability=80)
AWKWARD = (
    LayerShape("odd_s2", n=2, h=13, w=11, c=24, co=40, stride=2),
    LayerShape("odd_s1", n=1, h=6, w=5, c=40, co=17, stride=1, relu=False, bias=False),
)
TOLERANCE = 1e-4


def test_tuned_serves_the_db_entry_else_the_heuristic(tmp_path: Path) -> None:
    db = tmp_path / "db.json"
    shape, other = AWKWARD
    params = family.fit(family.CpuParams(dw_at="cblock", vectors=1, tx=2, ty=2, kc=8), shape, CPU)
    assert tuned.store(db, tuned.entry_key(shape, CPU), {"params": family.as_dict(params), "time_ms": 1.0})
    assert not tuned.store(db, tuned.entry_key(shape, CPU), {"params": {}, "time_ms": 2.0})  # slower: kept
    options = {"tuning_db": str(db), "jit": True, "on_miss": "heuristic"}

    built = registry.get("halide_tuned").build(shape, CPU, options)
    info = json.loads(built.artifacts["build.json"])
    key = tuned.entry_key(shape, CPU)
    # params of the record: where the schedule came from, which candidate ran, how many were tried
    assert built.build_params == {
        "schedule_source": "db", "candidate": f"db:{key}", "candidates_tried": "1", "schedule": "family"
    }  # fmt: skip
    assert info["source"] == "db" and json.loads(built.artifacts["tuned.json"])["params"] == family.as_dict(
        params
    )
    assert reference_error(built, shape) < TOLERANCE

    fallback = registry.get("halide_tuned").build(other, CPU, options)
    info = json.loads(fallback.artifacts["build.json"])
    assert info["source"] == "heuristic" and "no entry" in info["reason"]
    assert fallback.build_params["schedule_source"] == "heuristic"
    assert fallback.build_params["candidate"] == "heuristic"
    assert json.loads(fallback.artifacts["tuned.json"])["params"] == family.as_dict(
        family.heuristic(other, CPU)
    )
    assert reference_error(fallback, other) < TOLERANCE

    # An entry the family no longer accepts falls back too, with the reason.
    tuned.store(db, tuned.entry_key(other, CPU), {"params": {"dw_at": "gone"}, "time_ms": 1.0})
    info = json.loads(registry.get("halide_tuned").build(other, CPU, options).artifacts["build.json"])
    assert info["source"] == "heuristic" and "unusable" in info["reason"]


def test_db_key_names_shape_device_model_and_halide() -> None:
    key = tuned.entry_key(AWKWARD[1], H100)
    assert key == f"1x6x5x40-17s1-nobias-norelu | NVIDIA H100 | halide {tuned.halide_version()}"
    # the host CPU: its model and the cores the kernels get (the job's, else this process's)
    cores = host.available_cores()
    # ... and the fp32 lanes of its vectors, which decide which schedules are valid there
    lanes, _ = host_vector()
    assert lanes in (4, 8, 16)
    assert tuned.device_model(CPU) == f"{host.cpu_model()} ({cores} cores, {lanes} fp32 lanes)"
    four = DeviceSpec("cpu", "cpu", "host CPU", 1.0, 1.0, cores=4)
    key = tuned.entry_key(AWKWARD[0], four, "20.0.0")
    assert key == f"2x13x11x24-40s2 | {host.cpu_model()} (4 cores, {lanes} fp32 lanes) | halide 20.0.0"


def test_store_keeps_the_faster_entry_sorted_and_nothing_else(tmp_path: Path) -> None:
    db = tmp_path / "tuning" / "db.json"
    assert tuned.store(db, "b", {"params": {}, "time_ms": 2.0})
    assert tuned.store(db, "a", {"params": {}, "time_ms": 3.0})
    assert not tuned.store(db, "b", {"params": {"tx": 1}, "time_ms": 2.5})  # slower: the old one stays
    assert tuned.store(db, "b", {"params": {"tx": 2}, "time_ms": 1.5})  # faster: replaces it
    assert tuned.store(db, "a", {"params": {"tx": 3}, "time_ms": 9.0}, keep_better=False)  # told to
    data = tuned.load(db)
    assert data["format"] == tuned.DB_FORMAT and list(data["entries"]) == ["a", "b"]
    assert {k: (e["params"], e["time_ms"]) for k, e in data["entries"].items()} == {
        "a": ({"tx": 3}, 9.0),
        "b": ({"tx": 2}, 1.5),
    }
    assert sorted(p.name for p in db.parent.iterdir()) == ["db.json", "db.json.lock"]  # no temporary left
    assert tuned.load(tmp_path / "none.json") == {"format": tuned.DB_FORMAT, "entries": {}}


def test_a_bad_database_is_named_and_the_heuristic_serves(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"tuning database .*bad\.json is unreadable"):
        tuned.load(bad)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": 0, "entries": {}}))
    with pytest.raises(ValueError, match="has format 0, expected 1"):
        tuned.load(old)
    choice = tuned.choose(AWKWARD[0], H100, {"tuning_db": str(old)})
    assert choice.source == "heuristic" and "has format 0" in choice.reason
    assert choice.params == family.heuristic(AWKWARD[0], H100)
    assert tuned.relatives(AWKWARD[0], H100, {"tuning_db": str(bad)}) == []


def test_relatives_are_other_gpus_entries_of_the_shape_fastest_first(tmp_path: Path) -> None:
    shape = LayerShape("b28", n=32, h=28, w=28, c=256, co=256)
    own = family.GpuParams("root", 4, 7, 2, 16, 2, 4, 8, "global", False, 128)
    warp = family.from_options(
        {"dw_at": "root", "gemm": "warp", "tx": 7, "ty": 2, "threads_x": 4, "threads_y": 4, "k": 4},
        shape,
        H200,
    )
    slower = family.GpuParams("root", 8, 7, 1, 16, 4, 4, 8, "global", False, 128)
    db = tmp_path / "db.json"
    for device, params, ms in ((H100, own, 0.14), (A100, slower, 0.3), (H200, warp, 0.13)):
        entry = {"params": family.as_dict(params), "time_ms": ms, "kind": "cuda"}
        tuned.store(db, tuned.entry_key(shape, device), entry)
    # Not relatives: another Halide version, another shape, the CPU's, and an entry without parameters;
    # one whose parameters this device rejects is left out too.
    tuned.store(db, tuned.entry_key(shape, A100, "20.0.0"), {"params": {}, "time_ms": 0.01, "kind": "cuda"})
    odd = LayerShape("odd", n=32, h=28, w=28, c=256, co=128)
    tuned.store(db, tuned.entry_key(odd, A100), {"params": {}, "time_ms": 0.01, "kind": "cuda"})
    cpu = DeviceSpec("cpu", "cpu", "host CPU", 1.0, 1.0, cores=2)
    tuned.store(db, tuned.entry_key(shape, cpu), {"params": {"tx": 2}, "time_ms": 0.01, "kind": "cpu"})
    l4 = DeviceSpec("l4", "cuda", "NVIDIA L4", 30000.0, 300.0, sm_count=58, cuda_capability=89)
    tuned.store(db, tuned.entry_key(shape, l4), {"time_ms": 0.01, "kind": "cuda"})
    t4 = DeviceSpec("t4", "cuda", "NVIDIA T4", 8000.0, 300.0, sm_count=40, cuda_capability=75)
    tuned.store(db, tuned.entry_key(shape, t4), {"params": {"lanes": 3}, "time_ms": 0.02, "kind": "cuda"})
    options = {"tuning_db": str(db)}
    assert tuned.relatives(shape, H100, options) == [warp, slower]
    assert tuned.relatives(shape, A100, options) == [warp, own]
    assert tuned.relatives(shape, H100, {"tuning_db": str(tmp_path / "none.json")}) == []
