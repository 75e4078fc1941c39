"""The MLflow UI in a real browser, as a newcomer meets it: headless Chromium (Debian's `chromium`, driven
by Playwright) opens the UI of a real tracking server on 127.0.0.1 that holds one experiment logged by
`orchestrator.record.Recorder` (a parent run and a child run per job).

- From the experiments list, with the UI's "Model training" view picked, the experiment opens on its runs
  and shows its description.
- The link every run of an experiment prints (`Recorder.runs_url`) lists the child runs unfolded, with
  readable names (variant · shape · device), fastest first; two of them compared side by side show their
  time_ms, the job's own start, end and duration.

Skipped, with the reason, where Chromium or Playwright is missing (`.ci/run` installs Chromium; Playwright
is in the dev extra).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

from orchestrator.record import Recorder
from workers.job import iso_time
from workers.schema import Record

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
RUNS = {"tf_separable": 0.5, "halide_app": 0.125, "halide_fused_tile": 0.25}  # variant → time_ms
JOB_S = 5.0  # each job's own duration
DESCRIPTION = "What a newcomer sees: the Halide schedules against TensorFlow on the app shape."
TIMEOUT_MS = 180_000  # the first page load compiles nothing, but two shared cores under load are slow


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _name(variant: str) -> str:
    return f"{variant} · app · cpu"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, str]]:
    """A tracking server holding one experiment: a parent run and a child per variant, each child a job of
    JOB_S seconds that started ten seconds after the last; yields (server, the runs link)."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-ui")).start()
    start = time.time() - 600
    try:
        with Recorder(srv.uri, "ui_check", description=DESCRIPTION) as recorder:
            recorder.start_parent({"experiment": "ui_check"}, run_name="ui_check sweep")
            for i, (variant, time_ms) in enumerate(RUNS.items()):
                params = {
                    "variant": variant,
                    "shape": "app",
                    "device": "cpu",
                    "framework": variant.split("_")[0],
                }
                began = start + 10 * i
                ended = began + JOB_S
                tags = {"status": "ok", "started_at": f"{began:.6f}", "ended_at": f"{ended:.6f}"}
                tags.update(started=iso_time(began), ended=iso_time(ended))  # as a worker writes them
                recorder.log_child(Record(f"{variant}.app.cpu.0", params, {"time_ms": time_ms}, tags))
            link = recorder.runs_url()
        yield srv, link
    finally:
        srv.stop()


def test_a_newcomer_opens_the_experiment_on_its_runs_and_compares_time_ms(
    logged: tuple[MlflowServer, str], tmp_path: Path
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    server, link = logged
    shot = Path(os.environ.get("DSCONV_UI_SCREENSHOT", tmp_path / "mlflow_ui.png"))
    fastest = sorted(RUNS, key=RUNS.__getitem__)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            try:
                # 1. The experiments list: the one choice is MLflow's "Model training" view; then the
                #    experiment opens on its runs, with its description.
                page.goto(f"{server.uri}/#/experiments", wait_until="load")
                page.get_by_text("Model training").first.click()
                page.get_by_role("link", name="ui_check").first.click()
                page.wait_for_url(re.compile(r"#/experiments/\d+/runs"))
                page.get_by_text(DESCRIPTION).first.wait_for()
                with contextlib.suppress(PlaywrightTimeout):  # the assistant panel, which hides columns
                    page.get_by_role("button", name="Close").first.click(timeout=5_000)

                # 2. The link a run prints: the child runs, unfolded, readable names, fastest first. Opened
                #    as a new document, as from a terminal: a hash change inside the open page can keep
                #    the page's own filter and sort instead of the link's.
                page.goto("about:blank")
                page.goto(link, wait_until="load")
                grid = page.get_by_role("grid").first
                for variant in RUNS:
                    grid.get_by_text(_name(variant)).first.wait_for()
                # the grid may show the runs in the order of the page before (start time) until its
                # re-sorted rows arrive: wait for the order the link asks for (time_ms, fastest first)
                deadline = time.monotonic() + TIMEOUT_MS / 1000
                while True:
                    rows = grid.inner_text()
                    order = [rows.index(_name(v)) for v in fastest]
                    if order == sorted(order) or time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(500)
                assert "ui_check sweep" not in rows, rows  # no child is folded under its parent
                assert order == sorted(order), rows
                assert rows.count(f"{JOB_S:.1f}s") == len(RUNS), rows  # Duration: the job's own

                # 3. The two fastest compared side by side.
                boxes = grid.get_by_role("checkbox")
                boxes.nth(1).check()
                boxes.nth(2).check()
                page.get_by_role("button", name="Compare").first.click()
                page.wait_for_url(re.compile(r"#/compare-runs"))
                page.get_by_text("Comparing 2 Runs").first.wait_for()
                page.get_by_text(_name(fastest[1])).first.wait_for()
                compared = page.inner_text("body")
            except Exception:
                page.screenshot(path=str(shot.with_name(shot.stem + "-failed.png")))  # what the browser saw
                raise
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    metrics = compared[compared.index("\nMetrics") :]
    assert "time_ms" in metrics and "0.125" in metrics and "0.25" in metrics, metrics
    assert (
        _name(fastest[0]) in compared and _name(fastest[1]) in compared and _name(fastest[2]) not in compared
    )
    assert compared.count(f"{JOB_S:.1f}s") >= 2, compared  # the Duration row: each job's own
    assert re.search(r"started\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", compared), compared  # ISO times
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
