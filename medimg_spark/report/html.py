"""Small HTML builders: every piece of text goes through :func:`html.escape` here."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0; color: #1d2433; background: #f4f6f9; font-size: 14px; line-height: 1.45; }
header { background: #1f3b5c; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; opacity: .85; }
nav { background: #fff; border-bottom: 1px solid #d8dee8; padding: 8px 28px; }
nav a { margin-right: 16px; color: #1f3b5c; text-decoration: none; font-weight: 600; }
main { padding: 8px 28px 40px 28px; max-width: 1400px; }
section { background: #fff; border: 1px solid #d8dee8; border-radius: 6px; margin: 18px 0;
          padding: 6px 20px 16px 20px; }
h2 { font-size: 18px; border-bottom: 2px solid #e3e8ef; padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 6px 0; }
table { border-collapse: collapse; margin: 6px 0 12px 0; font-size: 13px; }
th, td { border: 1px solid #d8dee8; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #eef2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.notrun { color: #8a5a00; background: #fff6e0; border: 1px solid #f0d9a0; padding: 8px 12px;
          border-radius: 4px; display: inline-block; }
.warn { color: #8b1a1a; background: #fdeaea; border: 1px solid #f3b7b7; padding: 8px 12px;
        border-radius: 4px; margin: 12px 0; }
.muted { color: #667085; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; padding: 6px; border: 1px solid #e3e8ef; border-radius: 4px; background: #fafbfc; }
figcaption { font-size: 12px; color: #475467; max-width: 340px; word-break: break-all; }
.pair { display: flex; gap: 6px; align-items: flex-end; }
.pair div { text-align: center; font-size: 11px; color: #667085; }
img.thumb { image-rendering: pixelated; display: block; }
figure.degenerate { border: 2px solid #d92d20; background: #fdeaea; }
.flag { color: #b42318; font-weight: 600; }
.trace { font-size: 11px; color: #475467; max-width: 340px; margin-top: 4px; }
.kv td:first-child { color: #475467; }
table.runs td:first-child { white-space: nowrap; }
"""


def esc(value: Any) -> str:
    """Escaped text of any value (None → empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A value as display text: floats rounded, NaN/None as an em dash, dicts as ``k=v`` lists."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if abs(value) >= 1e5 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], css_class: str = "") -> str:
    """An HTML table; numbers are right-aligned, every cell escaped."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    out = [f"<table{cls}><thead><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    n = 0
    for row in rows:
        n += 1
        out.append("<tr>")
        for cell in row:
            num = ' class="num"' if _is_num(cell) else ""
            out.append(f"<td{num}>{esc(fmt(cell))}</td>")
        out.append("</tr>")
    if n == 0:
        out.append(f'<tr><td colspan="{len(headers)}" class="muted">no rows</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def kv_table(items: Mapping[str, Any]) -> str:
    """A two-column key/value table."""
    return table(["key", "value"], [(k, v) for k, v in items.items()], css_class="kv")


def img(data_uri: str, alt: str, css_class: str = "") -> str:
    """An ``<img>`` of an embedded ``data:`` URI (never a network address)."""
    if not data_uri.startswith("data:image/png;base64,"):
        raise ValueError("only embedded PNG data URIs are allowed in the report")
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f'<img{cls} src="{data_uri}" alt="{esc(alt)}">'


def figure(body: str, caption: str, css_class: str = "") -> str:
    """A ``<figure>`` with an escaped caption (``body`` is trusted HTML built here)."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<figure{cls}>{body}<figcaption>{esc(caption)}</figcaption></figure>"


def not_run(what: str, how: str) -> str:
    """The plain "not run yet" notice of a section whose input is missing."""
    return f'<p class="notrun">Not run yet: {esc(what)} is missing. {esc(how)}</p>'


def section(anchor: str, title: str, body: str) -> str:
    """A titled ``<section>`` with an ``id`` for the navigation bar."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    """The whole document: inline CSS, no scripts, no external resources."""
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{links}</nav><main>{body}</main></body></html>\n"
    )
