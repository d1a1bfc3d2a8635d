"""The reviewed list of safe private attributes (Retain Safe Private Option, PS3.15 E.3.10).

The list is package data, ``medimg_spark/resources/privacy/safe_private.yaml``, with its source
(Table E.3.10-1) and the review criteria in the file; a user's list in the same format can replace
it (``DeidConfig.safe_private``).
"""

from __future__ import annotations

import functools
import re

from medimg_spark.privacy.errors import DeidConfigError
from medimg_spark.privacy.pixels import load_yaml

SAFE_PRIVATE_FILE = "privacy/safe_private.yaml"
#: VRs a safe private attribute may have: numbers and numeric strings only (the review's criterion 2).
NUMERIC_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
_ELEMENT = re.compile(r"^xx([0-9A-Fa-f]{2})$")
_GROUP = re.compile(r"^[0-9A-Fa-f]{4}$")


SafePrivateList = dict[tuple[int, str, int], frozenset[str]]
"""``(group, private creator, element byte) -> VRs`` of the safe private attributes."""


def _parse(data: object, source: str) -> SafePrivateList:
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("attributes"), list):
        raise DeidConfigError(
            f"safe private list {source}: expected a YAML mapping with version: 1 and a list 'attributes' "
            "(see the shipped medimg_spark/resources/privacy/safe_private.yaml)"
        )
    found: SafePrivateList = {}
    for i, item in enumerate(data["attributes"]):
        where = f"safe private list {source}, attributes[{i}]"
        if not isinstance(item, dict) or set(item) - {"creator", "group", "element", "vr", "name"}:
            raise DeidConfigError(f"{where}: expected keys creator, group, element, vr, name")
        creator, group, element, vrs = (
            item.get("creator"),
            item.get("group"),
            item.get("element"),
            item.get("vr"),
        )
        if not isinstance(creator, str) or not creator.strip():
            raise DeidConfigError(f"{where}: 'creator' must be the private creator text")
        if not isinstance(group, str) or not _GROUP.match(group) or int(group, 16) % 2 == 0:
            raise DeidConfigError(f"{where}: 'group' must be an odd group as 4 hex digits, e.g. \"0019\"")
        m = _ELEMENT.match(element) if isinstance(element, str) else None
        if m is None:
            raise DeidConfigError(f"{where}: 'element' must be 'xx' and two hex digits, e.g. \"xx0C\"")
        if not isinstance(vrs, list) or not vrs or not set(vrs) <= NUMERIC_VRS:
            raise DeidConfigError(
                f"{where}: 'vr' must list numeric VRs only ({', '.join(sorted(NUMERIC_VRS))}); text, dates "
                "and UIDs are never kept as safe private attributes"
            )
        found[(int(group, 16), creator.strip(), int(m.group(1), 16))] = frozenset(vrs)
    return found


@functools.cache
def load_safe_private(path: str | None = None) -> SafePrivateList:
    """The safe private list of ``path``, or the shipped one (cached per process).

    Raises:
        DeidConfigError: The file is missing or malformed (the message names the entry and the fix).
    """
    data, source = load_yaml(path, SAFE_PRIVATE_FILE, "safe private list", "fix privacy.safe_private")
    return _parse(data, source)
