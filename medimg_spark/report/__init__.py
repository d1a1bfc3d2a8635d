"""One self-contained HTML report of a run directory: ``medimg report --out DIR`` → ``DIR/report/index.html``.

:func:`build_report` reads what the stages wrote under ``DIR`` (``images``, ``instances``,
``quarantine``, ``processed``, ``regions``, ``clusters``, ``metrics/*.json``, ``runs/*.json``) and
writes a page that renders offline: inline CSS, every picture a base64 PNG data URI, no scripts, no
network fonts. A section whose input is missing says "Not run yet" and names the command to run.
"""

from __future__ import annotations

from medimg_spark.report.build import (
    REPORT_DIR,
    REPORT_FILE,
    SECTIONS,
    ReportError,
    build_report,
    format_summary,
)

__all__ = ["REPORT_DIR", "REPORT_FILE", "SECTIONS", "ReportError", "build_report", "format_summary"]
