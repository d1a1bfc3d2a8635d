"""The PHI set of real input files, and a byte-level scan of outputs for it (shared by privacy tests).

PHI set (what must not appear in any output byte): every value, recursively, of attributes
listed in Table E.1-1 (under the basic profile none of them is K) and of every private
attribute (except, under Retain Safe Private, the listed safe attributes and their creators),
taken from all input files; paths of input files can be added by the caller. Values are rendered as text; a value is skipped when
(a) it is shorter than 4 characters, (b) it is a number shorter than 6 characters (such numbers
legitimately occur among kept numeric attributes: geometry, exposure), (c) it is one of
a few generic words (NONE, UNKNOWN, DEFAULT, YES, NO, PATIENT: the last occurs in the
tool's own rule names and messages), or (d) it occurs within the value of an
attribute that is kept by design (allow-listed, outside any removed sequence) in some input file.
Numbers with one decimal point are measurements, not identifiers, all-zero numbers are
trivial, and UIDs of the DICOM standard itself (``1.2.840.10008.…``) identify no one. The tool's own dummy values (action D, e.g. 19000101, ANONYMIZED) are what it writes, so an
input value that is one of them, or part of one (ANON), is not a leak. Matching is exact (case-sensitive), as a leaked value is copied verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pydicom
from pydicom.dataset import Dataset

from medimg_spark.privacy import DeidConfig, Deidentifier, load_profile
from medimg_spark.privacy.allowlist import ALLOWED_TAGS
from medimg_spark.privacy.engine import DUMMY
from medimg_spark.privacy.safe_private import load_safe_private

GENERIC = {"NONE", "UNKNOWN", "DEFAULT", "YES", "NO", "PATIENT"}
TEXT_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
}


def _text_values(elem) -> list[str]:  # type: ignore[no-untyped-def]
    if elem.VR not in TEXT_VRS or elem.value is None:
        return []
    values = elem.value if isinstance(elem.value, list | pydicom.multival.MultiValue) else [elem.value]
    return [str(v).strip() for v in values]


def collect_phi(datasets: Iterable[Dataset], config: DeidConfig, key: bytes) -> list[str]:
    """The PHI values of ``datasets`` that must not appear in any output (rules in the module doc)."""
    profile = load_profile()
    resolved = Deidentifier(config, key)
    phi: set[str] = set()
    kept: set[str] = set()

    safe = load_safe_private(config.safe_private) if config.retain_safe_private else {}

    def safe_private(ds: Dataset, elem) -> bool:  # type: ignore[no-untyped-def]
        """Kept by design under Retain Safe Private: a listed numeric attribute, or its block's creator."""
        group, element = elem.tag.group, elem.tag.element
        if group % 2 == 0 or not safe:
            return False
        if 0x10 <= element <= 0xFF:
            return any(g == group and c == str(elem.value).strip() for g, c, _ in safe)
        creator = ds.get((group << 16) | (element >> 8))
        vrs = safe.get((group, str(creator.value).strip() if creator is not None else "", element & 0xFF))
        return vrs is not None and elem.VR in vrs

    def walk(ds: Dataset, sensitive: bool) -> None:
        for elem in ds:
            tag = int(elem.tag)
            is_phi = sensitive or (tag >> 16) % 2 == 1 or profile.lookup(tag) is not None
            if not sensitive and safe_private(ds, elem):
                is_phi = False
            if elem.VR == "SQ":
                # items of a removed/emptied sequence are PHI as a whole; items of a kept one
                # (U, D) follow the per-attribute rules
                whole = sensitive or (tag >> 16) % 2 == 1 or resolved.action_for(tag) in ("X", "Z")
                for item in elem.value or []:
                    walk(item, whole)
                continue
            if is_phi:
                phi.update(_text_values(elem))
            elif tag in ALLOWED_TAGS:  # kept by design (others are removed: neither PHI nor kept)
                kept.update(_text_values(elem))

    for ds in datasets:
        walk(ds, False)
        if getattr(ds, "file_meta", None) is not None:
            walk(ds.file_meta, False)
    kept_blob = "\x00".join(v for v in kept if v)

    def trivial(v: str) -> bool:
        digits = v.replace(".", "").replace("-", "").replace("+", "")
        measurement = digits.isdigit() and (v.count(".") == 1 or len(digits) < 6 or set(digits) == {"0"})
        dummy = any(v in str(d) for d in DUMMY.values())  # "ANON" is in the tool's own "ANONYMIZED"
        standard_uid = v.startswith("1.2.840.10008.")  # UIDs defined by the DICOM standard itself
        return len(v) < 4 or measurement or dummy or standard_uid or v.upper() in GENERIC or v in kept_blob

    return sorted(v for v in phi if not trivial(v))


_HEX_CHAR = re.compile(r"[0-9A-Fa-f]")


def find_phi(values: Iterable[str], blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    """Every ``(value, output name)`` where a PHI value occurs verbatim in an output blob.

    A value that begins (ends) with a hexadecimal digit counts only where it is not glued to a hex digit
    before (after) it: the outputs are full of hashes and pseudonyms (``file_sha256``, ``deid-<hex>``,
    ``P<hex>``, also in the vault's plaintext pseudonym column) in which short values such as ``abcd``
    or ``045Y`` (the end of ``…0B045`` and the next byte) occur by chance, while a copied value stands
    between other characters (quotes, separators, length prefixes).
    """
    found = []
    for value in values:
        raw = value.encode("utf-8", "ignore")
        if not raw:
            continue
        before = rb"(?<![0-9A-Fa-f])" if _HEX_CHAR.match(value[0]) else b""
        after = rb"(?![0-9A-Fa-f])" if _HEX_CHAR.match(value[-1]) else b""
        pattern = re.compile(before + re.escape(raw) + after) if before or after else None
        for name, blob in blobs.items():
            if raw in blob and (pattern is None or pattern.search(blob)):
                found.append((value, name))
    return found
