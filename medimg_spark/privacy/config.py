"""Settings of the de-identification (a pydantic model, ``extra="forbid"``).

The pseudonymisation key is deliberately *not* a field: it comes from the environment or a key
file (see :mod:`medimg_spark.privacy.keys`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.datadict import dictionary_keyword, keyword_for_tag, tag_for_keyword

from medimg_spark.privacy.profile import OptionName, load_profile, parse_tag

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

#: Option field -> column of Table E.1-1.
OPTION_COLUMN_OF: dict[str, OptionName] = {
    "retain_safe_private": "rtnSafePrivOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_longitudinal_full_dates": "rtnLongFullDatesOpt",
    "retain_longitudinal_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "clean_structured_content": "cleanStructContOpt",
    "clean_graphics": "cleanGraphOpt",
}

DEFAULT_TEXT_PRONE_MODALITIES: tuple[str, ...] = ("US", "SC", "OT", "XC", "ES")
#: SOP Class UID prefixes of Secondary Capture and Ultrasound storage (screens and scanners
#: that routinely burn text into the pixels).
DEFAULT_TEXT_PRONE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (and its multi-frame variants .7.x)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound Image / Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
)


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


class DeidConfig(BaseModel):
    """What the de-identification does (PS3.15 Annex E basic profile plus selected options).

    Attributes:
        retain_longitudinal_modified_dates: Shift dates by one whole-day offset per patient
            (derived from the key, so consistent across studies and runs); times are kept.
        retain_longitudinal_full_dates: Keep dates and times unchanged (exclusive with the above).
        retain_patient_characteristics: Keep sex, age, size, weight, etc.
        retain_device_identity: Keep device serial numbers, station names, etc.
        retain_institution_identity: Keep institution name, address, department.
        retain_uids: Keep the original UIDs instead of replacing them.
        clean_descriptors: Keep descriptions and comments after scrubbing identifiers from them.
        clean_structured_content: Keep SR content / acquisition context with scrubbed text.
        clean_graphics: Keep overlays, curves and graphic annotations (text scrubbed).
        retain_safe_private: Keep the private attributes of :data:`SAFE_PRIVATE` (numeric
            acquisition parameters only); all other private attributes are removed.
        clean_pixel_data: Apply the burned-in text rules (and OCR, see ``ocr``).
        pixel_rules: YAML file of pixel rules; ``None`` uses the packaged default rules.
        ocr: ``"off"``; ``"auto"`` to also blank text that Tesseract finds when the binary is
            installed; ``"on"`` to require it. OCR runs only on images a rule cleans or that
            ``allow_burned_in`` lets through: it never clears an image on its own.
        text_prone_modalities: Modalities whose pixels are presumed to carry text.
        text_prone_sop_classes: SOP Class UID prefixes presumed to carry text.
        keep: Keywords or tags of attributes outside Table E.1-1 to keep in addition to the
            allow-list (attributes of the table are governed by the options instead).
        attribute_types: IOD type (1, 2 or 3) per keyword, overriding the built-in types used
            to resolve compound action codes.
        retain_uid_references: Resolve ``X/Z/U*`` sequences (Referenced Image, Source Image) to
            U so references keep resolving; ``False`` resolves them strictly by type.
        max_date_shift_days: Upper bound of the per-patient date shift (days into the past).
        vault_key_file: Master-key file of the re-identification vault (a path, not a key);
            ``$MEDIMG_VAULT_KEY_FILE`` is used when unset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    retain_longitudinal_modified_dates: bool = False
    retain_longitudinal_full_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    retain_safe_private: bool = False
    clean_pixel_data: bool = True
    pixel_rules: str | None = None
    ocr: Literal["off", "auto", "on"] = "off"
    text_prone_modalities: tuple[str, ...] = DEFAULT_TEXT_PRONE_MODALITIES
    text_prone_sop_classes: tuple[str, ...] = DEFAULT_TEXT_PRONE_SOP_CLASSES
    keep: tuple[str, ...] = ()
    attribute_types: dict[str, Literal[1, 2, 3]] = Field(default_factory=dict)
    retain_uid_references: bool = True
    max_date_shift_days: int = Field(default=3650, ge=1, le=36500)
    vault_key_file: str | None = None

    @field_validator("keep")
    @classmethod
    def _check_keep(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        profile = load_profile()
        for item in value:
            tag = resolve_attribute(item)
            entry = profile.lookup(tag)
            if entry is not None:
                raise ValueError(
                    f"keep: {item!r} is in the confidentiality profile table ({entry.name}, basic action "
                    f"{entry.basic}); use the matching retain_*/clean_* option instead of keep"
                )
        return value

    @field_validator("attribute_types")
    @classmethod
    def _check_types(cls, value: dict[str, int]) -> dict[str, int]:
        for keyword in value:
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"attribute_types: {keyword!r} is not a DICOM keyword (e.g. 'StationName')")
        return value

    @model_validator(mode="after")
    def _exclusive_dates(self) -> DeidConfig:
        if self.retain_longitudinal_full_dates and self.retain_longitudinal_modified_dates:
            raise ValueError(
                "retain_longitudinal_full_dates and retain_longitudinal_modified_dates are exclusive; "
                "choose one"
            )
        return self

    def enabled_option_fields(self) -> tuple[str, ...]:
        """Names of the enabled option fields that map to a column of Table E.1-1."""
        return tuple(name for name in OPTION_COLUMN_OF if getattr(self, name))

    def option_columns(self) -> frozenset[str]:
        """Table E.1-1 columns of the enabled options."""
        return frozenset(OPTION_COLUMN_OF[name] for name in self.enabled_option_fields())

    def keep_tags(self) -> frozenset[int]:
        """Tags of :attr:`keep`."""
        return frozenset(resolve_attribute(k) for k in self.keep)


def describe_tag(tag: int) -> str:
    """Keyword of a public tag, ``""`` for private or unknown tags (never a value)."""
    if (tag >> 16) % 2 == 1:
        return ""
    try:
        return keyword_for_tag(tag) or dictionary_keyword(tag)
    except KeyError:
        return ""
