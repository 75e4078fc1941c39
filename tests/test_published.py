"""The published reports (conf/reports.yaml): `make reports` rebuilds exactly what reports/ holds from the
committed bundles, results/ holds exactly the bundles those reports use, and every figure README.md and
docs/*.md quote from a report (docs/figures.md) is the report's.

The rebuild runs the real report code on the committed bundles without drawing the figures (their
pixels depend on the matplotlib and FreeType versions; their names are compared): about 2 s here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kernels.halide.names import kernel_func
from orchestrator.report import quotable
from orchestrator.report.load import ReportInputError
from orchestrator.report.published import CONF, REPORTS, build_published, load_published
from workers.bundle import find_bundles

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_reports_rebuilds_the_committed_reports_byte_for_byte(tmp_path: Path) -> None:
    published = load_published()
    started = time.perf_counter()
    written = build_published(tmp_path, draw=False, say=lambda line: None)
    took = time.perf_counter() - started
    made, committed = _files(tmp_path), _files(REPORTS)
    named = sorted(p.relative_to(tmp_path).as_posix() for p in written)  # the figures too, undrawn
    assert named == sorted(committed), "reports/ holds other files than make reports writes"
    assert sorted(made) == [n for n in named if not n.endswith(".png")]
    stale = [name for name, path in made.items() if path.read_bytes() != committed[name].read_bytes()]
    assert not stale, f"run `make reports` and commit: these differ from what the bundles give: {stale}"
    folders = sorted(p.parent.relative_to(REPORTS).as_posix() for p in REPORTS.rglob("findings.md"))
    assert folders == sorted(r.name for r in published)  # reports/ holds the published reports only
    assert took < 30, f"rebuilding the reports took {took:.1f} s"


def test_results_holds_exactly_the_bundles_the_published_reports_use() -> None:
    used = {b for r in load_published() for b in r.bundles}
    present = {p.relative_to(ROOT).as_posix() for p in find_bundles(ROOT / "results")}
    assert present - used == set(), "bundles no published report uses: remove them (docs/results-history.md)"
    assert used - present == set()


def test_the_figures_quoted_in_the_readme_and_docs_are_the_reports() -> None:
    checked, problems = quotable.check_docs()
    assert not problems, "\n".join(problems)
    assert checked >= 100  # the README's tables and headline figures are quoted this way


def test_a_quoted_figure_is_checked_as_a_link_or_a_table_cell(tmp_path: Path) -> None:
    report = tmp_path / "reports" / "r"
    report.mkdir(parents=True)
    figures = {"time_us/d/s1/v": 96.738, "time_us/d/s1/w": 1343.2, "floor_us/d/s1": 65.0, "best/d": "v"}
    (report / "figures.json").write_text(json.dumps(figures))
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    F = "../reports/r/figures.json"
    doc.write_text(
        f"ok [96.7 µs]({F}#time_us/d/s1/v), [1,343]({F}#time_us/d/s1/w), [`v`]({F}#best/d)\n"
        f"wrong [96.8 µs]({F}#time_us/d/s1/v) and [96]({F}#time_us/d/s1/v)\n"
        f"unknown [1.0]({F}#time_us/d/s9/v)\n"
        f"<!-- figures: {F}#time_us/d/{{row}}/{{col}} floor=floor_us/d/{{row}} -->\n"
        "| shape | floor | v | w | note |\n|---|---|---|---|---|\n"
        "| s1 | 65.0 | **96.7** | 1,344 | — |\n"
        f"\n<!-- figures: {F}#x/{{row}} -->\nno table here\n"
    )
    checked, problems = quotable.check_doc(doc)
    assert checked == 9  # three right, two wrong, one unknown inline; three numeric table cells
    assert [p.split(": ", 1)[1] for p in problems] == [
        "'96.8 µs' quotes ../reports/r/figures.json#time_us/d/s1/v, which is 96.738",
        "'96' quotes ../reports/r/figures.json#time_us/d/s1/v, which is 96.738",
        "../reports/r/figures.json#time_us/d/s9/v: no such figure (is the report built?)",
        "'1,344' quotes ../reports/r/figures.json#time_us/d/s1/w, which is 1343.2",
        "a figures comment must stand right above a table",
    ]
    assert [p.split(":")[1] for p in problems] == ["2", "2", "3", "7", "9"]


def test_the_list_of_published_reports_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.report import __main__ as report_cli

    assert {r.name for r in load_published()} >= {"h100/mobilenet_v1", "h200x2/mobilenet_v1"}
    cases = {
        "reports: [a]": "expected `reports:` mapping each report folder to title, bundles",
        "reports:\n  x: {title: t}": "report 'x': give exactly the keys title, bundles",
        "reports:\n  x: {title: t, bundles: [results/none]}": (
            "report 'x': results/none is not a results bundle"
        ),
    }
    for text, expected in cases.items():
        bad = tmp_path / "reports.yaml"
        bad.write_text(text)
        with pytest.raises(ReportInputError) as caught:
            load_published(bad)
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert report_cli.main(["--published", "h100/nope", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown published report 'h100/nope'; valid: h100/mobilenet_v1" in err
    assert report_cli.main(["--published", "--bundle", "results", "--out", str(tmp_path / "out")]) == 2
    assert CONF.is_file()


def test_the_pairs_of_both_paths_are_counted_across_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    """The H200 reference runs spread their Ray / worker-CLI pairs over two experiments: one report holds
    36 (sweep), the other 10 (mobilenet_v1); pooled, a measurement counts once."""
    from orchestrator.report import paths

    root = Path(__file__).resolve().parents[1] / "results" / "h200"
    assert paths.main([str(root / "sweep"), str(root / "worker_cli" / "sweep")]) == 0
    one = capsys.readouterr().out
    assert "36 pair(s)" in one and "-> not met." in one
    bundles = [root / b for b in ("sweep", "mobilenet_v1", "worker_cli/sweep", "worker_cli/mobilenet_v1")]
    assert paths.main([str(b) for b in bundles]) == 0
    pooled = capsys.readouterr().out
    assert "46 pair(s) (12 cuDNN, 34 Halide)" in pooled and "-> met." in pooled
    assert paths.main([str(root)]) == 2  # a folder of bundles is not a bundle


def test_a_halide_kernel_is_named_by_its_func_whatever_number_the_process_gave_it() -> None:
    names = {
        "_kernel_output_s0_y_y_n_block_id_z": "output",
        "_kernel_depthwise__52_s0_y_dyo_dyo_block_id_z": "depthwise",  # a Ray worker's 52nd build
        "_kernel_output_52_s0_y_y_n_block_id_z__1": "output",
        "_kernel_pointwise__89_intm_global_wrapper__0_s0_y_y_n_n_block_id_z": "pointwise_intm",  # split-K
        "_kernel_output__99_s0_c_cb_t_t_t_to_block_id_x__2__1": "output",  # a Var numbered too
    }
    for kernel, func in names.items():
        assert kernel_func(kernel) == func, kernel
    assert (
        kernel_func("_kernel_pointwise__61_s1_c_v1759_v1759_block_id_x") == "pointwise"
    )  # an autoscheduler's
    assert kernel_func("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n") is None and kernel_func("_kernel_") is None
