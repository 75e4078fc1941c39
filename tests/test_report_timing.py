"""The report on what issue 27 and issue 23 added to the records: torch.compile as a peer in question 4,
warm against cold cache, GPU clocks, and the same jobs through Ray and through the worker CLI.

The records are the committed H200 run (results/h200/mobilenet_v1_goals) and records derived from it with
the new fields (tests/derived_records.py): each torch.compile variant from a cuDNN record of the same job,
cold-cache timings of the five blocks, clock readings (one throttled record, one without clocks), and a
copy of every record through each dispatch path. The checks recompute the numbers from those records and
look for them in findings.md, the CSVs and the end-of-run summary.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from derived_records import (
    cold,
    committed,
    dispatched,
    fields,
    torch_compile,
    with_clocks,
    without_clocks,
)
from rich.console import Console

from orchestrator import analytics
from orchestrator.report.build import build_report
from orchestrator.report.findings.common import Inputs
from orchestrator.report.findings.conditions import paths_section
from orchestrator.report.load import dataset_from_rows, rows_from_records
from orchestrator.summary import print_summary, summary_metrics
from workers.schema import Record

FIVE = ("mbv1_112_32_s1", "mbv1_56_128_s1", "mbv1_28_256_s1", "mbv1_14_512_s1", "mbv1_7_1024_s1")
HOT = ("halide_tuned", "mbv1_28_256_s1")  # the throttled record
BLIND = ("cudnn_nchw", "app")  # the record without clock readings
NO_NVML = "NVML unavailable (NVMLError_DriverNotLoaded: Driver Not Loaded)"
# torch.compile's time as a multiple of the cuDNN record it is derived from: max-autotune wins on the
# shapes in MAX_WINS, default elsewhere; compile times as measured on an H200 in issue 27 (about 40 s).
MAX_WINS = ("mbv1_112_32_s1", "mbv1_28_256_s1", "app")
CLI_DIFF = (0.004, -0.012, 0.009, -0.003, 0.017, -0.006, 0.001)  # worker-CLI / Ray - 1, cycled


def _by(records: list[Record], variant: str, shape: str) -> Record:
    return next(r for r in records if r.params["variant"] == variant and r.params["shape"] == shape)


def _fastest(records: list[Record], shape: str, framework: str, tf32: bool | None = None) -> Record:
    """The fastest ok record of a framework at a shape (of one precision when `tf32` is given)."""
    mine = [
        r for r in records
        if r.status == "ok" and r.params["shape"] == shape and r.params["framework"] == framework
        and tf32 in (None, analytics.is_tf32(r.params["variant"]))
    ]  # fmt: skip
    return min(mine, key=lambda r: r.metrics["time_ms"])


class Lab:
    """The records of the test and what they were derived with."""

    def __init__(self) -> None:
        base = []
        for r in committed():
            where = (r.params["variant"], r.params["shape"])
            base.append(
                with_clocks(r, 1200.0) if where == HOT else without_clocks(r, NO_NVML) if where == BLIND
                else with_clocks(r)
            )  # fmt: skip
        self.base = base
        self.compiled = []
        for r in base:
            v, shape = r.params["variant"], r.params["shape"]
            if v not in ("cudnn_cl", "cudnn_cl_tf32"):
                continue
            tf32 = "_tf32" if v.endswith("_tf32") else ""
            fast, slow = (0.8, 0.95) if shape in MAX_WINS else (0.95, 0.8)
            self.compiled += [
                torch_compile(r, f"torch_compile{tf32}", slow, 9.5),
                torch_compile(r, f"torch_compile_max{tf32}", fast, 41.0),
            ]
        self.cold = [with_clocks(cold(_by(base, v, s), scale)) for s in FIVE for v, scale in
                     (("halide_tuned", 1.3), ("cudnn_cl", 1.1))]  # fmt: skip
        older = cold(_by(base, "halide_app", "app"), 1.05, method="input_rotation")  # before the method param
        self.cold.append(with_clocks(older, 1400.0))  # throttled too, and named with its cache condition
        self.ray = [dispatched(r, "ray") for r in base]
        self.cli = [dispatched(r, "worker-cli", 1 + CLI_DIFF[i % len(CLI_DIFF)]) for i, r in enumerate(base)]
        self.records = [*base, *self.compiled, *self.cold]


@pytest.fixture(scope="module")
def lab() -> Lab:
    return Lab()


@pytest.fixture(scope="module")
def report(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("timing")
    build_report(dataset_from_rows("timing", rows_from_records(lab.records)), out, "test command")
    return out


@pytest.fixture(scope="module")
def paths_report(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paths")
    build_report(dataset_from_rows("paths", rows_from_records([*lab.ray, *lab.cli])), out, "test command")
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


# --- torch.compile ------------------------------------------------------------------------------------
def test_question_4_sets_the_best_halide_against_torch_compile_strict_and_tf32_apart(
    lab: Lab, report: Path
) -> None:
    text = (report / "findings.md").read_text()
    q4 = _section(text, "## 4. Can we do better?")
    header = next(line for line in q4.splitlines() if line.startswith("| shape | best Halide |"))
    assert header == (
        "| shape | best Halide | vs best cuDNN (fp32) | vs best cuDNN (TF32) | vs best torch.compile (fp32) "
        "| vs best torch.compile (TF32) |"
    )
    peers = {e["shape"]: e for e in _csv(report / "peers.csv")}
    assert set(peers) == {r.params["shape"] for r in lab.base}
    for shape, e in peers.items():
        halide = _fastest(lab.base, shape, "halide").metrics["time_ms"]
        for tf32 in (False, True):
            best = _fastest(lab.compiled, shape, "torch_compile", tf32)
            group = "torch_compile_tf32" if tf32 else "torch_compile"
            assert e[f"{group}_variant"] == best.params["variant"]  # strict and TF32 never mixed
            assert float(e[f"{group}_speedup"]) == pytest.approx(best.metrics["time_ms"] / halide, rel=1e-12)
            mode = "max-autotune-no-cudagraphs" if shape in MAX_WINS else "default"
            assert e[f"{group}_compile_mode"] == mode
            assert float(e[f"{group}_compile_s"]) == (41.0 if shape in MAX_WINS else 9.5)
        cell = (
            f"{float(e['torch_compile_speedup']):.2f}x (`{e['torch_compile_variant']}`, mode "
            f"{e['torch_compile_compile_mode']}, "
        )
        assert cell in q4, cell
    line = next(x for x in q4.splitlines() if x.startswith("- Against the best torch.compile (fp32):"))
    modes = "`default` on 7 of 10 shapes, `max-autotune-no-cudagraphs` on 3 of 10 shapes"
    assert f"the faster compile mode: {modes}" in line
    assert "compiled in 9.5 s to 41 s" in line
    gm = summary_metrics(lab.records)[analytics.metric_name("torch_compile_tf32")]
    tf32_line = next(x for x in q4.splitlines() if x.startswith("- Against the best torch.compile (TF32):"))
    assert f"(geometric-mean speedup {gm:.2f}x)" in tf32_line  # the report and the parent metrics agree
    devices = _section(text, "## Devices")
    assert "| cuDNN ok | torch.compile ok |" in devices and "| 110 / 110 | 30 | 0 | 40 | 40 |" in devices
    assert (report / "speedups_h200.png").read_bytes()[:4] == b"\x89PNG"


def test_the_end_of_run_summary_shows_torch_compile_and_names_the_throttled_record(lab: Lab) -> None:
    console = Console(file=io.StringIO(), width=600, color_system=None)
    print_summary([*lab.base, *lab.compiled], "timing", console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    header = next(line for line in out.splitlines() if "best Halide" in line and "┃" in line)
    assert re.findall(r"vs ([\w.]+ \((?:fp32|TF32)\))", header) == [
        "cuDNN (fp32)", "cuDNN (TF32)", "torch.compile (fp32)", "torch.compile (TF32)",
    ]  # fmt: skip
    lines = out.splitlines()
    throttled = [i for i, line in enumerate(lines) if line.startswith("throttled:")]
    assert len(throttled) == 1  # one line, after the tables, before the counts
    line = lines[throttled[0]]
    assert line.startswith("throttled: halide_tuned on mbv1_28_256_s1 (h200): SM clock down to 1200 MHz of")
    assert "reasons: sw_power_cap,hw_slowdown" in line
    assert throttled[0] > max(i for i, x in enumerate(lines) if "geometric mean" in x)
    assert lines[-1].startswith("ok: 110")


# --- warm and cold cache ------------------------------------------------------------------------------
def test_warm_and_cold_times_are_set_side_by_side_and_the_questions_compare_warm_ones(
    lab: Lab, report: Path
) -> None:
    table = {(e["shape"], e["variant"]): e for e in _csv(report / "cache.csv")}
    assert len(table) == 2 * len(FIVE) + 1
    for r in lab.cold:
        key = (r.params["shape"], r.params["variant"])
        warm = _by(lab.base, *key[::-1]).metrics["time_ms"]
        e = table[key]
        cold_ms = r.metrics["time_ms"]
        assert float(e["warm_ms"]) == pytest.approx(warm) and float(e["cold_ms"]) == pytest.approx(cold_ms)
        assert float(e["cold_over_warm"]) == pytest.approx(cold_ms / warm)
    assert table[("app", "halide_app")]["method"] == "input_rotation"  # no timing.cold_cache_method param
    assert {table[(s, "cudnn_cl")]["method"] for s in FIVE} == {"l2_flush"}
    text = (report / "findings.md").read_text()
    cache = _section(text, "## Warm and cold cache")
    row = table[("mbv1_56_128_s1", "halide_tuned")]
    assert "| `h200` | `mbv1_56_128_s1` | `halide_tuned` |" in cache and "| 1.30x | l2_flush |" in cache
    assert "Halide 1.05x to 1.30x over 6 job(s)" in cache and "cuDNN 1.10x over 5 job(s)" in cache
    assert f"{len(lab.cold)} cold-cache record(s)" in cache
    assert float(row["cold_ms"]) > float(row["warm_ms"])
    # the questions compare warm with warm: the best Halide of each block is its warm time
    speed = {e["shape"]: e for e in _csv(report / "speedups.csv")}
    for shape in FIVE:
        warm = _fastest(lab.base, shape, "halide").metrics["time_ms"]
        assert float(speed[shape]["halide_ms"]) == pytest.approx(warm)
    assert f"- Cold cache: {len(lab.cold)} cold-cache record(s)" in text
    records = _csv(report / "records.csv")
    assert sum(r["timing.cold_cache"] == "True" for r in records) == len(lab.cold)  # none superseded


# --- clocks -------------------------------------------------------------------------------------------
def test_the_throttled_record_is_named_and_the_records_without_clocks_are_listed(report: Path) -> None:
    text = (report / "findings.md").read_text()
    section = _section(text, "## GPU clocks")
    assert "2 GPU record(s) throttled" in section
    hot = "| `halide_tuned` | `mbv1_28_256_s1` | `h200` | 1200 MHz | 1980 MHz | sw_power_cap,hw_slowdown |"
    assert hot in section
    assert "| `halide_app` (cold: input_rotation) | `app` | `h200` | 1400 MHz | 1980 MHz |" in section
    assert "5 of 25 busy samples below 75% of 1980 MHz" in section
    assert "1 GPU record(s) have no clock reading (`clock_source` none):" in section
    assert f"- `cudnn_nchw` on `app` (`h200`): {NO_NVML}" in section


# --- both dispatch paths ------------------------------------------------------------------------------
def test_the_same_jobs_through_both_paths_are_paired_and_held_against_the_goal(
    lab: Lab, paths_report: Path
) -> None:
    text = (paths_report / "findings.md").read_text()
    section = _section(text, "## Same jobs, both paths")
    pairs = _csv(paths_report / "paths.csv")
    assert len(pairs) == len(lab.base) == 70
    diffs = sorted(abs(float(p["diff_pct"])) for p in pairs)
    by_hand = (diffs[34] + diffs[35]) / 2
    expected = sorted(abs(d) * 100 for d in (CLI_DIFF * 10)[:70])
    assert by_hand == pytest.approx((expected[34] + expected[35]) / 2, rel=1e-9)
    assert f"70 pair(s) (30 Halide, 40 cuDNN): median absolute difference {by_hand:.1f}%" in section
    verdict = f"Here: 70 Halide and cuDNN pair(s), median absolute difference {by_hand:.1f}% -> met."
    assert "Goal of issue #23: at least 40 Halide and cuDNN jobs" in section and verdict in section
    first = lab.base[0]
    row = f"| `{first.params['variant']}` | `{first.params['shape']}` | `h200` |"
    assert row in section and f"| {100 * CLI_DIFF[0]:+.2f}% |" in section
    assert "- Dispatch (tag `dispatch`): 70 via worker-cli" in text  # the newest of each measurement kept


def test_too_few_pairs_do_not_meet_the_goal_and_no_path_tag_means_no_section(lab: Lab) -> None:
    few = [*lab.ray[:10], *lab.cli[:10]]
    ds = dataset_from_rows("few", rows_from_records(few))
    from orchestrator.report import conditions

    inp = Inputs(ds, "test", [], [], [], {}, paths=conditions.path_pairs(ds.all_rows))
    text = paths_section(inp)
    assert "10 pair(s)" in text and "-> not met (10 of the 40 Halide and cuDNN pairs it needs)." in text
    apart = dataset_from_rows("apart", rows_from_records([*lab.ray[:10], *lab.cli[10:20]]))
    text = paths_section(Inputs(apart, "t", [], [], [], {}, paths=conditions.path_pairs(apart.all_rows)))
    assert "Missing: 10 record(s) came through Ray and 10 through the worker CLI, but no measurement" in text
    # records of one path only, or without the tag (older records): no section at all
    for records in (lab.ray, lab.base):
        assert (
            paths_section(Inputs(dataset_from_rows("x", rows_from_records(records)), "t", [], [], [], {}))
            == ""
        )


def test_records_without_the_new_fields_get_none_of_the_new_sections(tmp_path: Path) -> None:
    files = build_report(dataset_from_rows("old", rows_from_records(committed())), tmp_path, "test command")
    text = (tmp_path / "findings.md").read_text()
    for heading in ("## Warm and cold cache", "## GPU clocks", "## Same jobs, both paths", "every peer on"):
        assert heading not in text
    assert not {"peers.csv", "cache.csv", "paths.csv"} & {p.name for p in files}
    assert "| Halide ok | TensorFlow ok | cuDNN ok |" in text  # the devices table as before
    assert all(not analytics.is_throttled(fields(r)) for r in committed())


def test_a_bad_dispatch_goal_is_one_line_naming_the_valid_choices(tmp_path: Path) -> None:
    from orchestrator.report.findings import goals

    good = goals.GOALS_FILE.read_text()
    cases = {
        "frameworks: [halide, cudnn]": (
            "frameworks: [halide, cudnnn]",
            "unknown framework 'cudnnn'; valid: halide",
        ),
        "min_pairs: 40": ("min_pairs: forty", "min_pairs must be a positive integer, got 'forty'"),
        "max_median_diff_pct: 2.0": (
            "max_median_pct: 2.0",
            "unknown key 'max_median_pct'; keys: source, text",
        ),
    }
    for i, (was, (now, expected)) in enumerate(cases.items()):
        assert was in good
        bad = tmp_path / f"{i}.yaml"
        bad.write_text(good.replace(was, now))
        with pytest.raises(goals.GoalsError) as caught:
            goals.load_goals(bad)
        assert f"{bad}: dispatch: {expected}" in str(caught.value) and "\n" not in str(caught.value)
