"""The HTML report in a real headless browser (Debian's chromium, driven by Playwright): the
verdict is the first thing on the page and its link leads to the first unexpected cell, a chip
opens on its cells, a click on one shows its details, the outcome filter hides chips, and
screenshots are written to artifacts/ as evidence."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.certify.report import report_html
from harness.core.outcomes import Outcome
from harness.core.results import read_results

from .test_diff import BASE, write
from .test_report import ddp, reshard

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
def test_the_verdict_leads_and_a_chip_opens_on_its_cells(
    browser_page: Any,
    tmp_path: Path,
    pytestconfig: pytest.Config,
) -> None:
    failed = reshard(2, 3, Outcome.FAIL)
    cells = [*BASE, ddp(1), ddp(2), reshard(2, 2), failed, reshard(3, 2), reshard(3, 3)]
    page_path = tmp_path / "report.html"
    page_path.write_text(report_html(read_results(write(tmp_path / "r.jsonl", cells))))
    page = browser_page
    page.goto(page_path.as_uri())

    # the verdict: the page's first element, at its top, saying what went wrong
    verdict = page.locator("#verdict")
    assert page.locator("body > *").first.get_attribute("id") == "verdict"
    assert verdict.inner_text() == f"ckpt-matrix: 1 unexpected (1 FAIL), first {failed.id}"
    box = verdict.bounding_box()
    assert box is not None
    assert box["y"] < 40
    assert box["y"] < page.locator("#figures").bounding_box()["y"]
    assert box["y"] < page.locator("#environment").bounding_box()["y"]
    verdict.locator("a").click()
    assert page.evaluate("location.hash") == "#unexpected-1"
    target = page.locator("#unexpected-1")
    assert failed.id in target.inner_text()
    assert target.evaluate("el => el.matches(':target')")

    # one chip per recipe and position; the FAIL's chip opens on its cells and its square
    chips = page.locator("table.grid details.chip")
    assert chips.count() == 5  # three recipes of BASE, ddp_module_state_dict, dcp_reshard
    chip = page.locator("table.grid details.chip.FAIL")
    assert chip.locator("summary").inner_text().split() == ["dcp_reshard", "3", "1"]
    rows = chip.locator("tr.cell")
    assert rows.first.is_hidden()
    chip.locator("summary").click()
    assert chip.evaluate("el => el.open")
    assert rows.count() == 4
    assert rows.first.is_visible()
    assert chip.locator("table.axes th").all_inner_texts() == ["world", "outcome"]
    assert chip.locator("td.sq.FAIL").get_attribute("title") == "saved by 2, loaded by 3: FAIL"
    assert page.locator("#details").is_hidden()
    chip.locator("button.badge.FAIL").click()
    assert page.locator("#details").is_visible()
    assert failed.id in page.locator("#details h2").inner_text()
    assert '"outcome": "FAIL"' in page.locator("#details pre").inner_text()
    artifacts = pytestconfig.rootpath / "artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / "report-browser-expanded.png"))

    # the filter: without PASS, a chip of PASS only goes, the FAIL's chip and the legend stay
    page.locator('#filters input[value="PASS"]').uncheck()
    ddp_chip = page.locator("table.grid details.chip", has_text="ddp_module_state_dict")
    assert ddp_chip.is_hidden()
    assert chip.is_visible()
    assert chip.locator('tr.cell[data-outcome="PASS"]').first.is_hidden()
    assert page.locator("#filters .legend.PASS").is_visible()
    screenshot = artifacts / "report-browser-test.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 1000


@pytest.mark.slow
def test_the_verdict_of_a_run_without_surprises(browser_page: Any, tmp_path: Path) -> None:
    page_path = tmp_path / "report.html"
    page_path.write_text(report_html(read_results(write(tmp_path / "r.jsonl", BASE))))
    page = browser_page
    page.goto(page_path.as_uri())
    assert page.locator("body > *").first.get_attribute("id") == "verdict"
    assert page.locator("#verdict").inner_text() == "ckpt-matrix: every cell as predicted"
    assert page.locator("#verdict a").count() == 0
    figures = page.locator("#figures span").all_inner_texts()
    assert figures[:5] == ["3 cells", "2 PASS", "1 XFAIL", "1 fragile", "0 skipped"]
