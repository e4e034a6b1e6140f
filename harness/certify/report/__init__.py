"""Reports of a results file: Markdown (for a CI job summary) and one self-contained HTML page."""

from harness.certify.report.grid import Grid, grids
from harness.certify.report.html import report_html
from harness.certify.report.markdown import report_markdown

__all__ = ["Grid", "grids", "report_html", "report_markdown"]
