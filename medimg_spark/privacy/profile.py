"""DICOM PS3.15 Table E.1-1 (Basic Application Level Confidentiality Profile) and its options.

The table ships as package data (``medimg_spark/resources/privacy/confidentiality_profile_attributes.json``,
MIT, see the
``README.md`` next to it). :func:`load_profile` parses it once per process; :func:`resolve_action`
turns an entry, the selected options and the attribute's type into one of the simple action
codes ``D Z X K C U``.

Compound codes are resolved with the attribute's type in the IOD, as PS3.15 E.1.1 prescribes:

- ``X/Z``: X unless the attribute is Type 2 (then Z); Type 1 is treated like Type 2.
- ``X/D``: X unless Type 1 (then D).
- ``Z/D``: Z unless Type 1 (then D).
- ``X/Z/D``: X unless Type 1 (D) or Type 2 (Z).
- ``X/Z/U*``: X unless Type 1 (U: keep the sequence, replace the UIDs it contains) or Type 2 (Z).

Types come from :data:`ATTRIBUTE_TYPES` (the few table attributes that are Type 1 or 2 in the
common image IODs; every other attribute counts as Type 3) overridden by
``DeidConfig.attribute_types``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from medimg_spark import resources as shipped_resources

OptionName = Literal[
    "rtnSafePrivOpt",
    "rtnUIDsOpt",
    "rtnDevIdOpt",
    "rtnInstIdOpt",
    "rtnPatCharsOpt",
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "cleanDescOpt",
    "cleanStructContOpt",
    "cleanGraphOpt",
]

OPTION_COLUMNS: tuple[OptionName, ...] = (
    "rtnSafePrivOpt",
    "rtnUIDsOpt",
    "rtnDevIdOpt",
    "rtnInstIdOpt",
    "rtnPatCharsOpt",
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "cleanDescOpt",
    "cleanStructContOpt",
    "cleanGraphOpt",
)

BASIC_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})

#: Attributes of Table E.1-1 with a compound code that are Type 1 or Type 2 in the image IODs
#: this project handles (CT, MR, US, SC, CR/DX, NM, RT, presentation states). Everything else is
#: Type 3 for the purpose of resolving compound codes.
ATTRIBUTE_TYPES: dict[str, int] = {
    "AcquisitionContextSequence": 2,  # Acquisition Context Module
    "ContentCreatorName": 2,  # Presentation State Identification
    "ContentDate": 2,  # General Image (2C), Type 1 only in enhanced IODs
    "ContentTime": 2,
    "ContrastBolusAgent": 2,  # Contrast/Bolus Module
    "InstructionPerformedDateTime": 2,
    "PatientID": 2,  # Patient Module
    "TreatmentMachineName": 2,  # RT Beams / RT Ion Beams
}

TABLE_FILE = "confidentiality_profile_attributes.json"


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """One row of Table E.1-1.

    Attributes:
        name: Attribute name as printed in the standard.
        tag: Tag as printed, e.g. ``(0010,0010)`` or ``(60XX,3000)``.
        basic: Action code of the basic profile (possibly compound).
        options: Action code per option column, only for columns that list one.
        in_std_iod: Whether the standard says the attribute is in a standard composite IOD.
    """

    name: str
    tag: str
    basic: str
    options: tuple[tuple[str, str], ...]
    in_std_iod: bool

    def option(self, column: str) -> str | None:
        """Action code of an option column, or ``None`` when the column is blank."""
        for key, value in self.options:
            if key == column:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Profile:
    """The parsed table: exact tags plus the repeating-group and private patterns."""

    entries: tuple[ProfileEntry, ...]
    by_tag: dict[int, ProfileEntry]
    curve: ProfileEntry
    overlay_data: ProfileEntry
    overlay_comments: ProfileEntry
    private: ProfileEntry

    def lookup(self, tag: int) -> ProfileEntry | None:
        """Entry governing ``tag`` (exact match first, then the patterns); ``None`` if not in the table."""
        entry = self.by_tag.get(tag)
        if entry is not None:
            return entry
        group, elem = tag >> 16, tag & 0xFFFF
        if group % 2 == 1:
            return self.private
        if 0x5000 <= group <= 0x501E and group % 2 == 0:
            return self.curve
        if 0x6000 <= group <= 0x601E and group % 2 == 0:
            if elem == 0x3000:
                return self.overlay_data
            if elem == 0x4000:
                return self.overlay_comments
        return None


def parse_tag(text: str) -> int:
    """Parse ``(gggg,eeee)``, ``gggg,eeee`` or ``ggggeeee`` into an integer tag.

    Raises:
        ValueError: When the text is not a hexadecimal tag.
    """
    cleaned = text.strip().strip("()").replace(",", "").replace(" ", "")
    if len(cleaned) != 8:
        raise ValueError(f"not a DICOM tag: {text!r}; write it as (gggg,eeee) in hexadecimal")
    return int(cleaned, 16)


@lru_cache(maxsize=1)
def load_profile() -> Profile:
    """Load and index Table E.1-1 from the package data (cached per process)."""
    raw = json.loads(shipped_resources.read_shipped(f"privacy/{TABLE_FILE}"))
    entries: list[ProfileEntry] = []
    by_tag: dict[int, ProfileEntry] = {}
    patterns: dict[str, ProfileEntry] = {}
    for row in raw:
        basic = row["basicProfile"]
        if basic not in BASIC_CODES:
            raise ValueError(f"unknown action code {basic!r} for {row['tag']} in {TABLE_FILE}")
        entry = ProfileEntry(
            name=row["name"],
            tag=row["tag"],
            basic=basic,
            options=tuple((c, row[c]) for c in OPTION_COLUMNS if row.get(c)),
            in_std_iod=row.get("stdCompIOD") == "Y",
        )
        entries.append(entry)
        try:
            by_tag[parse_tag(row["tag"])] = entry
        except ValueError:
            patterns[row["id"]] = entry
    return Profile(
        entries=tuple(entries),
        by_tag=by_tag,
        curve=patterns["50xxxxxx"],
        overlay_data=patterns["60xx3000"],
        overlay_comments=patterns["60xx4000"],
        private=patterns["ggggeeee-where-gggg-is-odd"],
    )


def resolve_compound(code: str, attr_type: int) -> str:
    """Resolve a (possibly compound) basic-profile code with the attribute's IOD type (1, 2 or 3)."""
    if code == "X/Z":
        return "Z" if attr_type in (1, 2) else "X"
    if code == "X/D":
        return "D" if attr_type == 1 else "X"
    if code == "Z/D":
        return "D" if attr_type == 1 else "Z"
    if code == "X/Z/D":
        return {1: "D", 2: "Z"}.get(attr_type, "X")
    if code == "X/Z/U*":
        return {1: "U", 2: "Z"}.get(attr_type, "X")
    return code


def resolve_action(
    entry: ProfileEntry,
    options: frozenset[str],
    attr_type: int = 3,
    *,
    retain_uid_references: bool = False,
) -> str:
    """The simple action code (D, Z, X, K, C or U) for an attribute.

    Enabled option columns override the basic profile; when several enabled options name the
    same attribute, K wins over C (retaining is what the user asked for explicitly).

    Args:
        entry: The table row.
        options: Names of the enabled option columns (see :data:`OPTION_COLUMNS`).
        attr_type: Type of the attribute in the IOD (1, 2 or 3).
        retain_uid_references: Resolve ``X/Z/U*`` to U whatever the type, so that references to
            other instances keep resolving (their UIDs are still replaced).
    """
    codes = {entry.option(c) for c in options} - {None}
    if "K" in codes:
        return "K"
    if "C" in codes:
        return "C"
    if entry.basic == "X/Z/U*" and retain_uid_references:
        return "U"
    return resolve_compound(entry.basic, attr_type)
