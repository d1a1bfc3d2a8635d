"""One self-contained HTML report of a run directory: ``medimg report --out DIR`` → ``DIR/report/index.html``.

:func:`build_report` reads what the stages wrote under ``DIR`` (``images``, ``instances``,
``quarantine``, ``processed``, ``regions``, ``clusters``, ``metrics/*.json``, ``runs/*.json``) and
writes a page that renders offline: inline CSS, every picture a base64 PNG data URI, no scripts, no
network fonts. A section whose input is missing says "Not run yet" and names the command to run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg_spark._lazy import lazy_exports

# public name -> 'module:attribute', imported on first use (PEP 562): importing the package stays cheap
_EXPORTS = {
    "REPORT_DIR": "medimg_spark.report.build:REPORT_DIR",
    "REPORT_FILE": "medimg_spark.report.build:REPORT_FILE",
    "SECTIONS": "medimg_spark.report.build:SECTIONS",
    "ReportError": "medimg_spark.report.build:ReportError",
    "build_report": "medimg_spark.report.build:build_report",
    "format_summary": "medimg_spark.report.build:format_summary",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medimg_spark.report.build import (
        REPORT_DIR,
        REPORT_FILE,
        SECTIONS,
        ReportError,
        build_report,
        format_summary,
    )

__all__ = ["REPORT_DIR", "REPORT_FILE", "SECTIONS", "ReportError", "build_report", "format_summary"]
