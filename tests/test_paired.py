"""`python -m workers.paired --out`: variants timed in turns written as a results bundle that the report code
loads, in the jobs' record format, each record saying it was timed in turns (real Halide builds, a tiny
shape, two rounds: a few seconds)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest

from kernels import device as device_module
from kernels.device import DeviceSpec
from kernels.halide import tuned
from orchestrator.report import fusion_rule
from orchestrator.report.load import bundle_rows, load_bundles
from workers import paired
from workers.bundle import read_bundle

SHAPE = "1x9x7x8-5s2"


def test_out_writes_records_timed_in_turns_that_the_report_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    argv = ["--shapes", SHAPE, "--variants", "halide_unfused,halide_fused_tile", "--rounds", "2"]
    assert paired.main([*argv, "--out", str(out), "--experiment", "tiny_paired"]) == 0
    assert f"records: {out / 'records.jsonl'}" in capsys.readouterr().out
    records = read_bundle(out)
    assert sorted(r.params["variant"] for r in records) == ["halide_fused_tile", "halide_unfused"]
    for r in records:
        assert r.status == "ok" and r.key == r.tags["job_key"]
        assert r.params["timing.method"] == "paired" and r.params["timing.rounds"] == "2"
        assert r.params["timing.paired_with"] == "halide_unfused,halide_fused_tile"
        assert r.params["timing.order"] == "shuffled (seed 0)"
        assert r.params["timing.input_sets_used"] == str(paired.INPUT_SETS)
        assert r.params["timing.inputs"] == "shared"
        medians = json.loads(r.params["timing.round_medians_ms"])
        assert len(medians) == 2 and r.metrics["rounds"] == 2
        assert r.metrics["time_ms"] == pytest.approx(statistics.median(medians), rel=1e-4)
        assert 0 < r.metrics["time_min_ms"] <= r.metrics["time_ms"]
        assert r.metrics["rel_error"] < 1e-4 and r.metrics["samples"] >= 2 * paired.ROUND_TIMING.min_repeats
        # what every job record carries: the host, the date, the commit and versions, the schedule's source
        assert r.tags["cpu_model"] and r.tags["host"] and r.tags["halide_version"] != "not installed"
        assert r.tags["planned.git"] and float(r.tags["started_at"]) <= float(r.tags["ended_at"])
        assert r.params["experiment"] == "tiny_paired" and r.params["shape"] == SHAPE
        assert "schedule.py" in r.artifacts
    [dataset] = load_bundles([out])
    assert dataset.experiment == "tiny_paired" and len(dataset.rows) == 2
    assert {row["timing.method"] for row in dataset.rows} == {"paired"}
    rows = bundle_rows([out])
    assert fusion_rule.judge(rows) == []  # job records only: there are none
    [verdict] = fusion_rule.score(rows)
    assert verdict["source"] == "paired" and verdict["rounds"] == 2 and verdict["shape"] == SHAPE
    assert verdict["best_fused"] == "halide_fused_tile"


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--shapes", SHAPE, "--variants", "halide_unfused"]
    assert paired.main([*base, "--rounds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --rounds must be >= 1, got 0"
    assert paired.main([*base, "--order", "sorted"]) == 2
    assert capsys.readouterr().err.strip() == "error: --order 'sorted': expected one of shuffled, fixed"
    assert paired.main([*base, "--input-sets", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --input-sets must be >= 1, got 0"
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert paired.main([*base, "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    # halide_tuned on a miss with on_miss=quick would search: refused, with what to give instead
    db = tmp_path / "empty-db.json"
    db.write_text('{"format": 1, "entries": {}}')
    tuned = ["--shapes", SHAPE, "--variants", "halide_tuned", "--out", str(tmp_path / "b")]
    assert (
        paired.main(
            [*tuned, "--option", f"halide_tuned:tuning_db={db}", "--option", "halide_tuned:on_miss=quick"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would search" in err[0] and "on_miss=heuristic or rank" in err[0]
    assert not (tmp_path / "b" / "records.jsonl").exists()
    # a parameter the host's family does not take (split_k is the GPU family's): its valid ones, no traceback
    family = [
        "--shapes",
        SHAPE,
        "--variants",
        "halide_family",
        "--option",
        'halide_family:params={"split_k":1}',
    ]
    assert paired.main(family) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown cpu schedule parameter 'split_k'; valid parameters: dw_at" in err[0]


def test_rounds_take_the_variants_in_shuffled_or_fixed_order() -> None:
    """Shuffled (the default): every round is a permutation of the variants, and over six rounds each of
    the two is timed first at least once (seed 0); fixed: always in the given order."""
    from kernels.device import DeviceSpec

    shape = paired.parse_shape(SHAPE)
    device = DeviceSpec("cpu", "cpu", "host CPU", 0.0, 0.0)
    options = {"halide_unfused": {}, "halide_fused_tile": {}}
    shuffled = paired.compare(shape, device, options, 6, 1e-4)
    places = list(zip(*(t.positions for t in shuffled.values()), strict=True))
    assert len(places) == 6 and all(sorted(p) == [0, 1] for p in places)
    assert {p[0] for p in places} == {0, 1}
    fixed = paired.compare(shape, device, options, 2, 1e-4, order="fixed")
    assert [t.positions for t in fixed.values()] == [[0, 0], [1, 1]]
    with pytest.raises(paired.PairedError, match="expected one of shuffled, fixed"):
        paired.compare(shape, device, options, 1, 1e-4, order="sorted")


def test_every_variant_reads_the_same_input_arrays() -> None:
    """The place of a layer's inputs in memory alone moved a CPU build's time by 19-40% on the 2-core VM
    (results/cpu/heldout_paired/placement.txt), so every variant of a shape is placed on the same input
    sets: on a CPU the very same arrays (the same addresses), in the same rotation; each variant keeps an
    output of its own."""
    shape = paired.parse_shape(SHAPE)
    device = DeviceSpec("cpu", "cpu", "host CPU", 0.0, 0.0)
    options = {"halide_unfused": {}, "halide_fused_tile": {}, "halide_app": {}}
    turns = paired.compare(shape, device, options, 1, 1e-4, input_sets=2)
    addresses = {
        v: [tuple(a.ctypes.data for a in placed.arrays) for placed in t.placed] for v, t in turns.items()
    }
    first = addresses["halide_unfused"]
    assert len(first) == 2 and first[0] != first[1]
    assert all(a == first for a in addresses.values())
    outputs = {placed.out.ctypes.data for t in turns.values() for placed in t.placed}
    assert len(outputs) == 6


# --- --gpu KEY: the catalog's entry, checked against the visible GPU ------------------------------
# No GPU here: `visible_gpu` (what torch reports of the first GPU) is replaced by the properties of the GPU
# each case pretends to see.
H200_SEEN = DeviceSpec("h200", "cuda", "NVIDIA H200", 0.0, 0.0, sm_count=132, cuda_capability=90)
RTX2060_SEEN = DeviceSpec(
    "rtx2060", "cuda", "NVIDIA GeForce RTX 2060", 0.0, 0.0, sm_count=30, cuda_capability=75
)


def test_gpu_key_takes_the_catalogs_model_which_the_tuning_database_keys_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        device_module, "visible_gpu", lambda name="gpu": dataclasses.replace(H200_SEEN, name=name)
    )
    device = device_module.catalog_gpu("h200")
    assert device.model == "NVIDIA H200 (SXM)" and device.sm_count == 132 and device.peak_gflops > 0
    assert tuned.device_model(device) in {
        k.split(" | ")[1] for k in json.loads(tuned.DEFAULT_DB.read_text())["entries"]
    }


def test_gpu_key_of_another_gpu_is_one_line_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        device_module, "visible_gpu", lambda name="gpu": dataclasses.replace(RTX2060_SEEN, name=name)
    )
    assert paired.main(["--shapes", SHAPE, "--variants", "halide_unfused", "--gpu", "h200"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and "NVIDIA H200 (SXM) (132 SMs, sm_90)" in err
        and "RTX 2060 (30 SMs, sm_75)" in err
    )


def test_gpu_key_missing_from_the_catalog_is_the_visible_gpu_said_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        device_module, "visible_gpu", lambda name="gpu": dataclasses.replace(H200_SEEN, name=name)
    )
    device = device_module.catalog_gpu("h300")
    assert (device.name, device.model) == ("h300", "NVIDIA H200")
    assert "'h300' is not in the device catalog (its GPUs: rtx2060, " in capsys.readouterr().err


def test_no_gpu_to_see_is_one_line() -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed: the line for a machine without it is not reachable here")
    with pytest.raises(ValueError, match=r"^reading the GPU's properties needs PyTorch"):
        device_module.visible_gpu()
