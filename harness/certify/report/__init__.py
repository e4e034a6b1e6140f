"""Reports of a results file: Markdown (for a CI job summary) and one self-contained HTML page."""

from harness.certify.report.grid import Chip, Grid, Square, grid
from harness.certify.report.headline import environment_rows, figures, verdict
from harness.certify.report.html import report_html
from harness.certify.report.markdown import report_markdown

__all__ = [
    "Chip",
    "Grid",
    "Square",
    "environment_rows",
    "figures",
    "grid",
    "report_html",
    "report_markdown",
    "verdict",
]
