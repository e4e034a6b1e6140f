"""One self-contained HTML page: inline CSS and JS, no network.

The page opens with the verdict and the figures, then the environment and the grid: a chip per
recipe in each position of save and load layouts, a <details> element that a click opens on its
cells. All of it is static HTML with every value escaped; the script only filters by outcome and
shows a clicked cell's details, read from a JSON block in the page.
"""

from __future__ import annotations

import html
import json
from typing import Any

from harness.certify.report.grid import OUTCOME_ORDER, WORST_FIRST, Chip, Grid, Square, grid
from harness.certify.report.headline import (
    anchor,
    environment_rows,
    figures,
    unexpected,
    verdict,
)
from harness.core.results import CellResult, ResultsFile

STYLE = """
:root { --PASS: #b7e4b0; --XFAIL: #cfd8f7; --FAIL: #f08a8a; --XPASS: #f5b562; --ERROR: #d39af2;
        --SKIP: #e3e3e3; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.35em; margin: 0 0 .4em; padding: .35em .6em; border-radius: 6px; }
h1.ok { background: #e2f5de; color: #17561a; } h1.bad { background: #fbe1e1; color: #8c1111; }
h1 code { font-size: .72em; }
h2 { font-size: 1.1em; margin-top: 1.4em; }
#figures { margin: 0 0 1em; } #figures span { margin-right: 1.4em; }
#figures b { font-size: 1.2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; font-weight: 600; }
#environment { font-size: 12px; } #environment td, #environment th { padding: 1px 6px; }
.PASS { background: var(--PASS); } .XFAIL { background: var(--XFAIL); }
.FAIL { background: var(--FAIL); } .XPASS { background: var(--XPASS); }
.ERROR { background: var(--ERROR); } .SKIP { background: var(--SKIP); }
.chip { display: inline-block; margin: 2px; border-radius: 4px; font: 12px monospace;
        color: #111; vertical-align: top; }
.chip > summary { list-style: none; cursor: pointer; padding: 1px 6px; }
.chip > summary::-webkit-details-marker { display: none; }
.chip .n { display: inline-block; min-width: 1.2em; margin-left: .1em; padding: 0 3px;
           border-radius: 3px; background: rgba(255, 255, 255, .55); text-align: center; }
.chip .seg { display: inline-block; min-width: 1.2em; margin-left: 0; padding: 0 3px;
             border-radius: 3px; border: 1px solid rgba(0, 0, 0, .3); text-align: center; }
.chip.FAIL, .chip.XPASS, .chip.ERROR { outline: 2px solid #8c1111; }
.chip.fragile .name { text-decoration: underline dashed #a66; }
.chip.flaky .name { text-decoration: underline dotted #c80; }
.chip { position: relative; }
.chip[open] { outline: 2px solid #444; z-index: 2; }
.cells { position: absolute; top: 100%; left: -2px; z-index: 3; background: #fff;
         padding: 4px 6px 6px; border: 2px solid #444; border-radius: 0 4px 4px 4px;
         box-shadow: 0 4px 12px rgba(0, 0, 0, .25); width: max-content; max-width: 40em; }
table.grid td:nth-last-child(-n+2) .cells { left: auto; right: -2px; border-radius: 4px 0 4px 4px; }
.cells table { font: 12px system-ui, sans-serif; margin: 2px 0; }
.cells th, .cells td { padding: 1px 4px; }
table.grid { table-layout: fixed; width: 100%; }
table.grid > tbody > tr > th:first-child { width: 10em; }
.mini { display: inline-grid; gap: 1px; margin-left: .1em; padding: 1px; background: #666;
        vertical-align: middle; }
.mini i { display: block; width: 6px; height: 6px; }
.none { background: #fff; }
.square td.sq { width: 1.6em; height: 1.3em; text-align: center; }
.square th { text-align: center; }
button.badge { border: 1px solid rgba(0, 0, 0, .25); border-radius: 3px; cursor: pointer;
               font: 11px monospace; padding: 0 4px; }
.badge.selected { box-shadow: 0 0 0 2px #222; }
#filters label { margin-right: 1em; }
#filters .legend { display: inline-block; padding: 0 5px; border-radius: 3px;
                   font: 12px monospace; }
.note { color: #555; font-size: 12px; }
#unexpected li:target { background: #fff3b0; }
#details { position: sticky; bottom: 0; z-index: 10; background: #fffbe8; border: 1px solid #e0d080;
           padding: .6em; margin-top: 1em; max-height: 45vh; overflow: auto; }
#details pre { white-space: pre-wrap; margin: 0; }
.hidden { display: none !important; }
"""

SCRIPT = """
const cells = JSON.parse(document.getElementById('cell-data').textContent);
const details = document.getElementById('details');
function show(button) {
  document.querySelectorAll('.badge.selected').forEach(b => b.classList.remove('selected'));
  button.classList.add('selected');
  const cell = cells[button.dataset.id];
  details.classList.remove('hidden');
  details.querySelector('h2').textContent = cell.id;
  details.querySelector('pre').textContent = JSON.stringify(cell, null, 2);
}
document.querySelectorAll('button[data-id]').forEach(
  button => button.addEventListener('click', () => show(button)));
document.querySelectorAll('a.locate').forEach(link => link.addEventListener('click', () => {
  const chip = document.getElementById(link.getAttribute('href').slice(1));
  if (chip) chip.open = true;
}));
function filter() {
  const shown = new Set(Array.from(document.querySelectorAll('#filters input'))
    .filter(box => box.checked).map(box => box.value));
  document.querySelectorAll('table.grid tr.cell').forEach(
    row => row.classList.toggle('hidden', !shown.has(row.dataset.outcome)));
  document.querySelectorAll('table.grid .chip').forEach(chip => chip.classList.toggle(
    'hidden', !chip.dataset.outcomes.split(' ').some(outcome => shown.has(outcome))));
}
document.querySelectorAll('#filters input').forEach(box => box.addEventListener('change', filter));
"""


def _details(result: CellResult) -> dict[str, Any]:
    data = result.to_json()
    if data.get("error") and isinstance(data["error"].get("stderr_tail"), str):
        data["error"]["stderr_tail"] = data["error"]["stderr_tail"][-3000:]
    return data


def verdict_html(results: ResultsFile) -> str:
    """The page's first element: the verdict, and a link to the first unexpected cell if any."""
    bad = unexpected(results)
    text = f"ckpt-matrix: {html.escape(verdict(results))}"
    if not bad:
        return f'<h1 id="verdict" class="ok">{text}</h1>'
    link = f'<a href="#{anchor(1)}"><code>{html.escape(bad[0].id)}</code></a>'
    return f'<h1 id="verdict" class="bad">{text}, first {link}</h1>'


def report_html(results: ResultsFile) -> str:
    e = html.escape
    matrix = grid(results.results)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ckpt-matrix: {e(verdict(results))}</title>",
        f"<style>{STYLE}</style></head><body>",
        verdict_html(results),
        '<p id="figures">'
        + "".join(f"<span><b>{e(f.value)}</b> {e(f.label)}</span>" for f in figures(results))
        + "</p>",
        '<table id="environment">',
        *(
            f"<tr><th>{e(key)}</th><td>{e(value)}</td></tr>"
            for key, value in environment_rows(results)
        ),
        "</table>",
        '<h2 id="grid">Save layouts (rows) &times; load layouts (columns)</h2>',
        '<div id="filters">',
    ]
    counts = {o: sum(r.outcome is o for r in results.results) for o in OUTCOME_ORDER}
    for outcome in OUTCOME_ORDER:
        if counts[outcome]:
            parts.append(
                f'<label><input type="checkbox" value="{outcome}" checked> '
                f'<span class="legend {outcome}">{outcome}</span> {counts[outcome]}</label>'
            )
    parts += [
        "</div>",
        '<p class="note">One chip per recipe in each position, coloured by the worst outcome among '
        "its cells (a mixed chip counts each outcome); a click opens it on its cells and what "
        "tells them apart, a click on an outcome shows that cell. Underlined: fragile (a "
        "known-bad recipe that passed here by accident). The small square of a distributed save "
        "and load: its reshards, saved by N ranks (rows) and loaded by M (columns).</p>",
        *_grid(matrix),
        *_unexpected(results, matrix),
        *_flaky(results),
    ]
    data = json.dumps({r.id: _details(r) for r in results.results}, sort_keys=True)
    data = data.replace("</", "<\\/")  # a "</script>" inside the data cannot end the block
    parts += [
        '<div id="details" class="hidden"><h2></h2><pre></pre></div>',
        f'<script type="application/json" id="cell-data">{data}</script>',
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _chip_ids(matrix: Grid) -> dict[str, str]:
    """Each cell's chip's element id."""
    return {
        result.id: f"chip-{number}"
        for number, (_, _, chip) in enumerate(matrix, 1)
        for result in chip.results
    }


def _grid(matrix: Grid) -> list[str]:
    e = html.escape
    ids = _chip_ids(matrix)
    parts = ['<table class="grid"><tr><th>save \\ load</th>']
    parts += [f"<th>{e(column)}</th>" for column in matrix.columns]
    parts.append("</tr>")
    for row in matrix.rows:
        parts.append(f"<tr><th>{e(row)}</th>")
        for column in matrix.columns:
            chips = [_chip(chip, ids[chip.results[0].id]) for chip in matrix.at(row, column)]
            parts.append(f"<td>{''.join(chips)}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    return parts


def _chip(chip: Chip, element: str) -> str:
    e = html.escape
    counts = chip.counts
    classes = ["chip", str(chip.outcome)]
    classes += ["mixed"] if chip.mixed else []
    classes += ["fragile"] if chip.fragile else []
    classes += ["flaky"] if chip.flaky else []
    outcomes = [o for o in OUTCOME_ORDER if counts[o]]
    if chip.mixed:
        number = "".join(f' <span class="seg {o}">{counts[o]}</span>' for o in outcomes)
    else:
        number = f' <span class="n">{len(chip.results)}</span>'
    title = f"{chip.recipe}: " + ", ".join(f"{counts[o]} {o}" for o in outcomes)
    title += f", {chip.fragile} fragile" if chip.fragile else ""
    title += f", {chip.flaky} flaky" if chip.flaky else ""
    square = chip.square
    summary = (
        f'<summary title="{e(title)}"><span class="name">{e(chip.recipe)}</span>{number}'
        + (_mini(square) if square else "")
        + "</summary>"
    )
    body = (_square(square) if square else "") + _axes(chip)
    return (
        f'<details id="{element}" class="{" ".join(classes)}" '
        f'data-outcomes="{" ".join(outcomes)}">{summary}<div class="cells">{body}</div></details>'
    )


def _axes(chip: Chip) -> str:
    """The chip's cells, one row each: the axes that tell them apart and the outcome (the id and
    the reason as its tooltip)."""
    e = html.escape
    head = "".join(f"<th>{e(name)}</th>" for name in chip.axes)
    rows = [f'<table class="axes"><tr>{head}<th>outcome</th></tr>']
    for result in chip.results:
        values = "".join(f"<td>{e(value)}</td>" for _, value in chip.describe(result))
        title = f"{result.id}\n{result.outcome}: {result.reason}"
        rows.append(
            f'<tr class="cell" data-outcome="{result.outcome}" title="{e(title)}">{values}'
            f'<td><button class="badge {result.outcome}" data-id="{e(result.id)}">'
            f"{result.outcome}</button></td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _square_class(results: list[CellResult]) -> tuple[str, str]:
    """A square's outcome class, and a style that splits it where its cells' outcomes differ."""
    present = [o for o in WORST_FIRST if any(r.outcome is o for r in results)]
    if not present:
        return "none", ""
    if len(present) == 1:
        return str(present[0]), ""
    step = 100 / len(present)
    stops = ", ".join(
        f"var(--{o}) {i * step:.0f}% {(i + 1) * step:.0f}%" for i, o in enumerate(present)
    )
    return f"{present[0]} mixed", f' style="background: linear-gradient(to right, {stops})"'


def _mini(square: Square) -> str:
    """The square, small, in the chip's summary: one dot per save and load world size."""
    dots = []
    for save in square.saves:
        for load in square.loads:
            outcome, style = _square_class(square.cells.get((save, load), []))
            dots.append(f'<i class="{outcome}"{style}></i>')
    columns = f"grid-template-columns: repeat({len(square.loads)}, 6px)"
    return f' <span class="mini" style="{columns}">{"".join(dots)}</span>'


def _square(square: Square) -> str:
    """The reshards: save world sizes as rows, load world sizes as columns, each square coloured
    by the outcome of its cells."""
    e = html.escape
    parts = [
        '<table class="square"><tr><th title="saved by N ranks (rows), loaded by M (columns)">'
        "N \\ M</th>",
        *(f"<th>{load}</th>" for load in square.loads),
        "</tr>",
    ]
    for save in square.saves:
        parts.append(f"<tr><th>{save}</th>")
        for load in square.loads:
            here = square.cells.get((save, load), [])
            outcome, style = _square_class(here)
            title = f"saved by {save}, loaded by {load}: " + (
                ", ".join(str(r.outcome) for r in here) if here else "no cell"
            )
            count = str(len(here)) if len(here) > 1 else ""
            parts.append(f'<td class="sq {outcome}"{style} title="{e(title)}">{count}</td>')
        parts.append("</tr>")
    parts.append("</table>")
    return "".join(parts)


def _unexpected(results: ResultsFile, matrix: Grid) -> list[str]:
    bad = unexpected(results)
    if not bad:
        return []
    e = html.escape
    ids = _chip_ids(matrix)
    parts = [f'<h2 id="unexpected">Unexpected cells ({len(bad)})</h2>', "<ol>"]
    for number, result in enumerate(bad, 1):
        parts.append(
            f'<li id="{anchor(number)}"><button class="badge {result.outcome}" '
            f'data-id="{e(result.id)}">{result.outcome}</button> <code>{e(result.id)}</code>: '
            f"{e(' '.join(result.reason.split()))} "
            f'<a class="locate" href="#{ids[result.id]}">in the grid</a></li>'
        )
    parts.append("</ol>")
    return parts


def _flaky(results: ResultsFile) -> list[str]:
    flaky = [r for r in results.results if r.flaky]
    if not flaky:
        return []
    e = html.escape
    parts = [f"<h2>Flaky cells ({len(flaky)}): passed only on a rerun</h2>", "<ul>"]
    parts += [
        f'<li><button class="badge {r.outcome}" data-id="{e(r.id)}">{r.outcome}</button> after '
        f"{len(r.attempts)} ERROR attempt(s) <code>{e(r.id)}</code>: first "
        f"{e(' '.join(str(r.attempts[0]['reason']).split()))}</li>"
        for r in flaky
    ]
    parts.append("</ul>")
    return parts
