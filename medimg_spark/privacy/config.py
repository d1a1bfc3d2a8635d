"""Settings of the de-identification (a pydantic model, ``extra="forbid"``).

:class:`DeidConfig` (the config file's ``privacy`` section) is defined in
:mod:`medimg_spark.config_models`, so the whole config validates without importing this package;
it is re-exported here. The pseudonymisation key is deliberately *not* a field: it comes from the
environment or a key file (see :mod:`medimg_spark.privacy.keys`).
"""

from __future__ import annotations

from pydicom.datadict import dictionary_keyword, keyword_for_tag, tag_for_keyword

from medimg_spark.config_models import (
    DEFAULT_TEXT_PRONE_MODALITIES,
    DEFAULT_TEXT_PRONE_SOP_CLASSES,
    OPTION_COLUMN_OF,
    DeidConfig,
)
from medimg_spark.privacy.profile import parse_tag

__all__ = [
    "DEFAULT_TEXT_PRONE_MODALITIES",
    "DEFAULT_TEXT_PRONE_SOP_CLASSES",
    "OPTION_CODES",
    "OPTION_COLUMN_OF",
    "DeidConfig",
    "describe_tag",
    "resolve_attribute",
]

#: CID 7050 code of each option (the basic profile is 113100, Clean Pixel Data 113101).
OPTION_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_longitudinal_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}


def resolve_attribute(text: str) -> int:
    """Turn a keyword (``StudyDescription``) or tag (``(0008,1030)``, ``00081030``) into a tag.

    Raises:
        ValueError: When neither a known keyword nor a tag.
    """
    tag = tag_for_keyword(text)
    if tag is not None:
        return tag
    try:
        return parse_tag(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a DICOM keyword nor a tag; use e.g. 'BodyPartExamined' or '(0018,0015)'"
        ) from None


def describe_tag(tag: int) -> str:
    """Keyword of a public tag, ``""`` for private or unknown tags (never a value)."""
    if (tag >> 16) % 2 == 1:
        return ""
    try:
        return keyword_for_tag(tag) or dictionary_keyword(tag)
    except KeyError:
        return ""
