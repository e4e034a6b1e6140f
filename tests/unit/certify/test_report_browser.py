"""The HTML report in a real headless browser (Debian's chromium, driven by Playwright): the grid
renders, a click on a cell shows its details, the outcome filter hides cells, and a screenshot
is written to artifacts/ as evidence."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.certify.report import report_html
from harness.core.outcomes import Outcome
from harness.core.results import read_results

from .test_diff import BASE, result, write

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs the playwright package (pip install playwright)"
    )
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 800})
        finally:
            browser.close()


@pytest.mark.slow
def test_the_grid_renders_and_a_click_shows_the_details(
    browser_page: Any,
    tmp_path: Path,
    pytestconfig: pytest.Config,
) -> None:
    cells = [*BASE, result("as_saved", Outcome.FAIL, message="boom")]
    page_path = tmp_path / "report.html"
    page_path.write_text(report_html(read_results(write(tmp_path / "r.jsonl", cells))))
    page = browser_page
    page.goto(page_path.as_uri())
    chips = page.locator("table.grid .chip")
    assert chips.count() == len(cells)
    assert page.locator("#details").is_hidden()
    failing = page.locator("table.grid .chip.FAIL")
    failing.click()
    assert page.locator("#details").is_visible()
    assert cells[-1].id in page.locator("#details h2").inner_text()
    assert '"outcome": "FAIL"' in page.locator("#details pre").inner_text()
    page.locator('#filters input[value="PASS"]').uncheck()
    assert page.locator("table.grid .chip.PASS").first.is_hidden()
    assert page.locator("#filters .chip.PASS").is_visible()  # the legend stays
    assert failing.is_visible()
    artifacts = pytestconfig.rootpath / "artifacts"
    artifacts.mkdir(exist_ok=True)
    screenshot = artifacts / "report-browser-test.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 1000
