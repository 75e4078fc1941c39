"""`python -m workers.placement`: bad input gets one line naming the valid choices; a job it cannot probe
is skipped with the reason while the others go on; on a GPU it times one build at every spacer and cold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import requires_gpu

from kernels.device import DeviceSpec, visible_gpu
from kernels.layer import LayerShape
from workers import placement
from workers.schema import Job, TimingSpec

TINY = LayerShape("tiny_s1", n=1, h=9, w=11, c=8, co=16)
CPU = DeviceSpec("cpu", "cpu", "host CPU", peak_gflops=100.0, mem_gbps=10.0)
QUICK = TimingSpec(warmup=1, min_repeats=3, max_repeats=5, min_time_s=0.0, max_time_s=0.2)


def _jobs(tmp_path: Path, *jobs: Job) -> Path:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([j.to_dict() for j in jobs]))
    return path


def test_bad_modes_and_offsets_name_the_valid_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = _jobs(tmp_path, Job("e", "halide_unfused", TINY, CPU))
    for bad, said in (
        (["--modes", "before,after"], "unknown mode 'after'; valid modes: before, between"),
        (["--offsets", "0,two"], "expected comma-separated MiB such as 0,2,4"),
        (["--offsets", "-2"], "offsets must be >= 0 MiB"),
    ):
        with pytest.raises(SystemExit) as exit_:
            placement.main([str(jobs), "--out", str(tmp_path / "out"), *bad])
        assert exit_.value.code == 2 and said in capsys.readouterr().err
    assert placement.main([str(jobs), "--out", str(tmp_path / "out"), "--only", "nothing_like_it"]) == 2
    assert "matches --only ['nothing_like_it']" in capsys.readouterr().err


def test_a_job_it_cannot_probe_is_skipped_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = _jobs(tmp_path, Job("e", "halide_unfused", TINY, CPU), Job("e", "numpy_ref", TINY, CPU))
    assert placement.main([str(jobs), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert (
        err.count("not probed:") == 2
        and "places Halide buffers on a CUDA device, not halide_unfused on cpu" in err
    )
    assert (tmp_path / "out" / "placement.jsonl").read_text() == ""  # nothing measured, nothing invented


@requires_gpu
@pytest.mark.gpu
def test_one_build_is_timed_at_every_spacer_and_cold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = Job("e", "halide_unfused", TINY, visible_gpu(), timing=QUICK)
    assert placement.main([str(_jobs(tmp_path, job)), "--out", str(tmp_path), "--offsets", "0,3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "placement.jsonl").read_text().splitlines()]
    assert [(r["mode"], r["offset_mib"]) for r in rows[:4]] == [
        ("before", 0),
        ("before", 3),
        ("between", 0),
        ("between", 3),
    ]
    assert rows[4]["mode"].startswith("cold (") and rows[4]["offset_mib"] is None
    assert all(r["time_ms"] > 0 and r["time_source"] == "cupti" and r["key"] == job.key for r in rows)
    table = capsys.readouterr().out
    # a row per mode and cold, shape then variant (the progress lines name the job key, variant first)
    assert "fastest_us" in table and len(re.findall(r"tiny_s1\W+halide_unfused", table)) == 3
