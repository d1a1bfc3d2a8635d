"""Scrubbing of free text for the C (clean) action on descriptors and structured content.

A cleaned text keeps its meaning ("CT HEAD WO CONTRAST") but loses (1) every identifying value
found elsewhere in the same dataset (names and their components, IDs, accession numbers,
institutions, dates in several spellings) and (2) anything that looks like a date, time, long
number, e-mail address, phone number or URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PATTERNS = [
    re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"),  # e-mail
    re.compile(r"\b(?:https?|ftp)://\S+", re.IGNORECASE),  # URL
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),  # 2023-01-31
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),  # 01/31/2023, 31.01.23
    re.compile(r"\b\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?\s*([AaPp][Mm])?\b"),  # 08:48:26 AM
    re.compile(r"\+?\(?\d[\d ()-]{6,}\d"),  # phone-like runs
    re.compile(r"\d{5,}"),  # IDs, compact dates and other long numbers
]
_SPACES = re.compile(r"\s{2,}")
_NAME_SPLIT = re.compile(r"[\^=\s,]+")


def identifier_variants(value: str, *, person_name: bool = False) -> set[str]:
    """Spellings under which an identifying value may reappear inside free text.

    Person names contribute each component of 2+ characters; 8-digit dates contribute the ISO,
    US and European spellings.
    """
    v = value.strip()
    out: set[str] = set()
    if len(v) >= 3:
        out.add(v)
    if person_name:
        out.update(part for part in _NAME_SPLIT.split(v) if len(part) >= 2)
        out.add(" ".join(p for p in _NAME_SPLIT.split(v) if p))
    if len(v) == 8 and v.isdigit():
        y, m, d = v[:4], v[4:6], v[6:]
        out.update({f"{y}-{m}-{d}", f"{m}/{d}/{y}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"})
    return {o for o in out if o}


def clean_text(text: str, identifiers: Iterable[str]) -> str:
    """Remove known identifiers and identifier-like patterns from ``text``.

    Args:
        text: The free text.
        identifiers: Identifying values of the same dataset (see :func:`identifier_variants`).

    Returns:
        The scrubbed text, whitespace collapsed (possibly empty).
    """
    out = text
    for ident in sorted(set(identifiers), key=len, reverse=True):
        if ident:
            out = re.sub(rf"(?<!\w){re.escape(ident)}(?!\w)", " ", out, flags=re.IGNORECASE)
    for pattern in _PATTERNS:
        out = pattern.sub(" ", out)
    return _SPACES.sub(" ", out).strip()
