"""Reports of a results file: Markdown (for a CI job summary) and one self-contained HTML page."""

from harness.report.grid import Grid, grids
from harness.report.html import report_html
from harness.report.markdown import report_markdown

__all__ = ["Grid", "grids", "report_html", "report_markdown"]
