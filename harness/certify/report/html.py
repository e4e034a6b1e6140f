"""One self-contained HTML page: inline CSS and JS, no network.

The grid is rendered here (static HTML, every value escaped); the script only filters by outcome
and shows a clicked cell's details, read from a JSON block in the page.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any

from harness.certify.report.grid import OUTCOME_ORDER, chip_label, grids
from harness.certify.report.markdown import ENVIRONMENT_SHOWN
from harness.core.results import CellResult, ResultsFile

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; font-weight: 600; }
.chip { display: inline-block; margin: 2px; padding: 1px 6px; border-radius: 4px; border: 0;
        font: 12px monospace; cursor: pointer; color: #111; }
.PASS { background: #b7e4b0; } .XFAIL { background: #cfd8f7; } .FAIL { background: #f4a6a6; }
.XPASS { background: #f7c98b; } .ERROR { background: #d9a6f4; } .SKIP { background: #e6e6e6; }
.chip.fragile { outline: 2px dashed #a66; }
.chip.flaky { outline: 2px dotted #c80; }
.chip.selected { box-shadow: 0 0 0 2px #222; }
#filters label { margin-right: 1em; }
#details { position: sticky; bottom: 0; background: #fffbe8; border: 1px solid #e0d080;
           padding: .6em; margin-top: 1em; max-height: 45vh; overflow: auto; }
#details pre { white-space: pre-wrap; margin: 0; }
.hidden { display: none; }
"""

SCRIPT = """
const cells = JSON.parse(document.getElementById('cell-data').textContent);
const details = document.getElementById('details');
document.querySelectorAll('table.grid .chip').forEach(chip => chip.addEventListener('click', () => {
  document.querySelectorAll('.chip.selected').forEach(c => c.classList.remove('selected'));
  chip.classList.add('selected');
  const cell = cells[chip.dataset.id];
  details.classList.remove('hidden');
  details.querySelector('h2').textContent = cell.id;
  details.querySelector('pre').textContent = JSON.stringify(cell, null, 2);
}));
document.querySelectorAll('#filters input').forEach(box => box.addEventListener('change', () => {
  document.querySelectorAll('table.grid .chip.' + box.value).forEach(
    chip => chip.classList.toggle('hidden', !box.checked));
}));
"""


def _details(result: CellResult) -> dict[str, Any]:
    data = result.to_json()
    if data.get("error") and isinstance(data["error"].get("stderr_tail"), str):
        data["error"]["stderr_tail"] = data["error"]["stderr_tail"][-3000:]
    return data


def report_html(results: ResultsFile) -> str:
    e = html.escape
    counts = Counter(str(r.outcome) for r in results.results)
    environment = results.environment
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ckpt-matrix: {len(results.results)} cells</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>ckpt-matrix: {len(results.results)} cells</h1>",
        '<table id="environment">',
    ]
    for key in ENVIRONMENT_SHOWN:
        if key in environment:
            parts.append(f"<tr><th>{e(key)}</th><td>{e(str(environment[key]))}</td></tr>")
    parts.append('</table><div id="filters">')
    for outcome in OUTCOME_ORDER:
        if counts[outcome]:
            parts.append(
                f'<label><input type="checkbox" value="{outcome}" checked> '
                f'<span class="chip {outcome}">{outcome}</span> {counts[outcome]}</label>'
            )
    parts.append("</div>")
    for grid in grids(results.results):
        parts.append(f"<h2>{e(grid.model)}, {e(grid.format)}</h2>")
        parts.append('<table class="grid"><tr><th>save \\ load</th>')
        parts += [f"<th>{e(column)}</th>" for column in grid.columns]
        parts.append("</tr>")
        for row in grid.rows:
            parts.append(f"<tr><th>{e(row)}</th>")
            for column in grid.columns:
                chips = []
                for result in grid.cells.get((row, column), []):
                    fragile = " fragile" if result.fragile else ""
                    fragile += " flaky" if result.flaky else ""
                    title = f"{result.outcome}: {result.reason}"
                    chips.append(
                        f'<button class="chip {result.outcome}{fragile}" data-id="{e(result.id)}" '
                        f'title="{e(title)}">{e(chip_label(result.cell))}</button>'
                    )
                parts.append(f"<td>{''.join(chips)}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    data = json.dumps({r.id: _details(r) for r in results.results}, sort_keys=True)
    data = data.replace("</", "<\\/")  # a "</script>" inside the data cannot end the block
    parts += [
        '<div id="details" class="hidden"><h2></h2><pre></pre></div>',
        f'<script type="application/json" id="cell-data">{data}</script>',
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)
