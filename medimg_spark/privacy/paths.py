"""File paths in de-identified output: header PHI found in path components, and messages scrubbed of paths.

Real exports name folders after patients (``…/<NAME>_DOB<birth date>/…``, ``…/<PatientID>/…``). In
de-identified output every ``source_path`` is a keyed pseudonym (see
:meth:`medimg_spark.privacy.keys.Pseudonymizer.path_pseudonym`; the original goes to the vault).
This module counts the path components that equal a header PHI value of the file they lead to (for
the run summary: a count, never the value) and removes paths from error messages.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.multival import MultiValue

from medimg_spark.privacy.keys import normalized_path

#: Header attributes whose values are looked for in the file's path components.
PATH_PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "OtherPatientIDs",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "StudyID",
    "PatientMotherBirthName",
)
#: A value this long or longer also counts when it occurs inside a component (``DOB19700101``).
MIN_CONTAINED = 6
_SPLIT = re.compile(r"[^0-9A-Za-z]+")


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]  # a str, a PersonName (iterable by character: never iterated), a number


def header_phi_values(ds: Any) -> tuple[set[str], set[str], set[str]]:
    """Upper-case PHI values of a dataset to look for in its path.

    Returns:
        ``(ids, names, name_parts)``: identifiers and dates; person names as written and with ``^``
        replaced by `` ``, ``_``, ``-``, ``.`` or nothing; the components of person names.
    """
    ids: set[str] = set()
    names: set[str] = set()
    parts: set[str] = set()

    def add(text: str, person_name: bool) -> None:
        text = text.strip().upper()
        if not text:
            return
        if not person_name:
            ids.add(text)
            return
        words = [p for p in _SPLIT.split(text) if p]
        names.add(text)
        parts.update(words)
        for sep in (" ", "_", "-", ".", ""):
            names.add(sep.join(words))

    for keyword in PATH_PHI_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:  # a damaged element: nothing to compare
            continue
        for v in _values(value):
            add(v, person_name="Name" in keyword)
    try:
        for item in ds.get("OtherPatientIDsSequence") or []:
            for v in _values(item.get("PatientID")):
                add(v, person_name=False)
    except Exception:
        pass

    def keep(found: set[str]) -> set[str]:
        return {v for v in found if len(v) >= 2}

    return keep(ids), keep(names), keep(parts)


def path_components(path: str) -> list[str]:
    """The folder names and the file name of ``path``."""
    return [p for p in normalized_path(path).split("/") if p and p not in (".", "..")]


def phi_components(path: str, ds: Any) -> list[str]:
    """The components of ``path`` that carry a header PHI value of ``ds`` (kept in memory only).

    A component matches when it (or its name without extension) equals a value or a component of
    a person's name, when one of its alphanumeric tokens equals an ID or date (``series_ACC42``),
    or when a value of at least :data:`MIN_CONTAINED` characters occurs inside it
    (``SMITH^JOHN_DOB19700101``). Case is ignored. Names are not looked for as tokens, so a
    patient called ``TEST`` does not make ``test_files`` a match.
    """
    ids, names, parts = header_phi_values(ds)
    if not (ids or names):
        return []
    long_values = [v for v in ids | names if len(v) >= MIN_CONTAINED]
    found: list[str] = []
    for component in path_components(path):
        upper = component.upper()
        whole = {upper, upper.split(".", 1)[0]}
        tokens = {t for t in _SPLIT.split(upper) if t}
        if whole & (ids | names | parts) or tokens & ids or any(v in upper for v in long_values):
            found.append(component)
    return found


def count_path_phi(path: str, ds: Any) -> int:
    """How many components of ``path`` carry a header PHI value of ``ds`` (see :func:`phi_components`)."""
    return len(phi_components(path, ds))


def scrub_path(message: str, path: str, replacement: str) -> str:
    """``message`` with ``path`` (as given, as a local path), its file name and its identifying folder
    names replaced by ``replacement``.

    Folder names are replaced when they have at least 3 characters and are not plain lower-case words
    (patients' names, IDs and dates are upper case or hold digits); lower-case folder names such as
    ``data`` would otherwise garble the message's own words.
    """
    local = normalized_path(path)
    for form in sorted({path, local, f"file://{local}", f"file:{local}"}, key=len, reverse=True):
        message = message.replace(form, replacement)
    parts = path_components(path)
    names = set(parts[-1:])
    names |= {p for p in parts[:-1] if len(p) >= 3 and not re.fullmatch(r"[a-z]+", p)}
    for name in sorted(names, key=len, reverse=True):
        if len(name) < 3:
            continue
        message = re.sub(rf"(?<![0-9A-Za-z]){re.escape(name)}(?![0-9A-Za-z])", replacement, message)
    return message
