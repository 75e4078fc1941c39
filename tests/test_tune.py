"""The schedule search (issue #6) and its command line, with real Halide, Ray and MLflow.

- a search starts from the database's entry, the other GPUs' entries and their neighbours, and keeps
  the heuristic as its baseline;
- the search runs end to end on a tiny shape with a tiny budget through the local executor (child
  worker processes, a results bundle) and through the orchestrator's Ray dispatch into MLflow;
- bad input is one line naming the valid choices.

The family itself is tested in `test_family.py` and `test_family_ptx.py`, the tuning database in
`test_tuning_db.py`.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import sys
from pathlib import Path

import pytest
from conftest import H100

from kernels import registry
from kernels.device import DeviceSpec
from kernels.halide import family, tuned
from kernels.layer import LayerShape
from orchestrator import tune
from orchestrator.config import ConfigError
from workers import bundle

CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0)
H200 = DeviceSpec("h200", "cuda", "NVIDIA H200", 60000.0, 4800.0, sm_count=132, cuda_capability=90)
A100 = DeviceSpec("a100", "cuda", "NVIDIA A100", 19500.0, 2000.0, sm_count=108, cuda_capability=80)


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
    assert whole and all(28 % q.tile.block_y == 0 and q.tile.threads % 32 == 0 for q in whole)
    longer = family.longer_steps(own, shape, H100)  # and its longer reduction steps
    same = [dataclasses.replace(q, k=own.k, max_registers=own.max_registers) for q in longer]
    assert longer and all(q.k > own.k for q in longer) and set(same) == {own}
    caps = family.other_caps(own, shape, H100)  # and its other register caps
    assert caps and all(dataclasses.replace(q, max_registers=own.max_registers) == own for q in caps)
    ahead = [own, *tiles, *whole, *longer, *caps, warp, slower]
    assert search.seeds[: 1 + len(ahead)] == [family.heuristic(shape, H100), *ahead]
    assert len(search.seeds) == len(set(search.seeds))
    assert tuned.relatives(shape, H100, {"tuning_db": str(tmp_path / "none.json")}) == []


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


def test_merge_keeps_the_faster_entry(tmp_path: Path) -> None:
    node, repo = tmp_path / "node.json", tmp_path / "repo.json"
    fast, slow = {"params": {}, "time_ms": 1.0}, {"params": {}, "time_ms": 2.0}
    tuned.store(node, "a", fast)
    tuned.store(node, "b", slow)
    tuned.store(repo, "b", fast)
    assert tune.run(["--merge", str(node), f"tune.db={repo}"])["db_written"] == ["a"]
    assert {k: e["time_ms"] for k, e in tuned.load(repo)["entries"].items()} == {"a": 1.0, "b": 1.0}
    with pytest.raises(ConfigError, match="no such file; give a tuning database"):  # a typo writes nothing
        tune.run(["--merge", str(tmp_path / "nope.json"), f"tune.db={repo}"])


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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
