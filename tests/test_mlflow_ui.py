"""The MLflow UI in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) opens
the UI of a real tracking server on 127.0.0.1, finds the experiment in the list, opens its runs, shows
the child runs with their `time_ms`, and saves a screenshot. Skipped, with the reason, where Chromium
or Playwright is missing (`.ci/run` installs Chromium; Playwright is in the dev extra).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer

from orchestrator.record import Recorder
from workers.schema import Record

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
RUNS = {"halide_app": 0.125, "halide_fused_tile": 0.25, "tf_separable": 0.5}  # variant → time_ms
TIMEOUT_MS = 90_000  # the first page load compiles nothing, but two shared cores are slow


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A tracking server holding one experiment: a parent run and a child per variant, logged over HTTP."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-ui")).start()
    try:
        with Recorder(srv.uri, "ui_check") as recorder:
            recorder.start_parent({"experiment": "ui_check"}, run_name="ui_check sweep")
            for variant, time_ms in RUNS.items():
                params = {
                    "variant": variant,
                    "shape": "app",
                    "device": "cpu",
                    "framework": variant.split("_")[0],
                }
                key = f"{variant}.app.cpu.0"
                recorder.log_child(
                    Record(key=key, params=params, metrics={"time_ms": time_ms}, tags={"status": "ok"})
                )
        yield srv
    finally:
        srv.stop()


def test_the_ui_shows_the_experiment_and_its_runs_with_time_ms(server: MlflowServer, tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    shot = Path(os.environ.get("DSCONV_UI_SCREENSHOT", tmp_path / "mlflow_ui.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            try:
                page.goto(f"{server.uri}/#/experiments", wait_until="load")
                page.get_by_text("Model training").first.click()  # MLflow 3 opens in its GenAI view
                page.get_by_role("link", name="ui_check").first.click()  # find the experiment in the list
                search = page.get_by_placeholder('metrics.rmse < 1 and params.model = "tree"')
                search.fill("metrics.time_ms > 0")
                search.press("Enter")
                page.get_by_role("button", name="Columns").first.click()  # show the metric as a column
                page.get_by_placeholder("Search columns").fill("time_ms")
                tree = page.get_by_test_id("column-selector-tree")
                tree.get_by_text("Metrics (1)", exact=True).wait_for()  # the search left time_ms alone
                group = tree.locator(".du-bois-light-tree-treenode").filter(has_text="Metrics (1)")
                group.first.locator(".du-bois-light-tree-checkbox").click()  # (collapsed or not)
                page.keyboard.press("Escape")
                with contextlib.suppress(PlaywrightTimeout):  # the assistant panel, which hides columns
                    page.get_by_role("button", name="Close").first.click(timeout=5_000)
                page.locator(
                    'button[data-component-id*="runnamecellrenderer"]'
                ).first.click()  # expand the parent
                grid = page.get_by_role("grid").first
                for variant in RUNS:
                    grid.get_by_text(f"{variant}.app.cpu").first.wait_for()
                text = grid.inner_text()
            except Exception:
                page.screenshot(path=str(shot.with_name(shot.stem + "-failed.png")))  # what the browser saw
                raise
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert "time_ms" in text and "ui_check sweep" in text, text
    for variant, time_ms in RUNS.items():
        assert f"{variant}.app.cpu" in text and str(time_ms) in text, text
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
