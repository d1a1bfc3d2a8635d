"""The profile engine: PS3.15 Annex E de-identification of one pydicom dataset.

:class:`Deidentifier` builds a *new* dataset and copies into it only what the profile, the
allow-list (:mod:`medimg_spark.privacy.allowlist`) and the user's ``keep`` list admit, recursing
into sequences, so nothing unvetted can survive. It is cheap to construct (the table is parsed
once per process), holds no open resources and pickles to its config and key, so it can be
shipped to Spark executors.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medimg_spark.io.dicom import UID_SYNTAX
from medimg_spark.privacy.allowlist import ALLOWED_TAGS, OVERLAY_STRUCTURE_ELEMENTS
from medimg_spark.privacy.config import OPTION_CODES, DeidConfig, describe_tag
from medimg_spark.privacy.errors import (
    BurnedInAnnotationError,
    OcrFailedError,
    OcrUnavailableError,
    ResidualTextError,
)
from medimg_spark.privacy.keys import Pseudonymizer
from medimg_spark.privacy.pixels import (
    blank_overlay_regions,
    clean_pixel_data,
    find_rule,
    load_pixel_rules,
    tesseract_available,
)
from medimg_spark.privacy.profile import ATTRIBUTE_TYPES, ProfileEntry, load_profile, resolve_action
from medimg_spark.privacy.safe_private import load_safe_private
from medimg_spark.privacy.text import clean_text, identifier_variants

IMPLEMENTATION_VERSION_NAME = "MEDIMG_DEID_1"
#: Implementation Class UID of files written by medimg-spark's de-identifier (a fixed UUID-derived UID).
IMPLEMENTATION_CLASS_UID = "2.25.141265451308782125562194445006263361925"
DEID_METHOD = "DICOM PS3.15 E.1-1 Basic Profile; medimg-spark"

TAG_PATIENT_NAME = 0x00100010
TAG_PATIENT_ID = 0x00100020
TAG_PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, TAG_PIXEL_DATA})

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"})
STRING_VRS = TEXT_VRS | frozenset({"AE", "AS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "AT"})

#: Dummy values of the D action, valid for each VR.
DUMMY: dict[str, Any] = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UR": "urn:anonymized",
    "UT": "ANONYMIZED",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "AT": 0,
}


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records, which may quote identifying values."""
    logger = logging.getLogger("pydicom")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = was_disabled


class AuditEntry(NamedTuple):
    """One action taken: never the value.

    Attributes:
        tag_path: ``ggggeeee`` tags from the top level, items as ``[i]``, joined by ``.``.
        keyword: Keyword of a public tag, ``""`` for private or unknown tags.
        action: ``D``, ``Z``, ``X``, ``K``, ``C`` or ``U``.
        basis: Why: ``profile``, ``allowlist``, ``keep``, ``private``, ``safe_private``,
            ``not_allowlisted``, ``pseudonym``, ``overlay``, ``structured_content``,
            ``file_meta``, ``group_length``, ``record`` or ``pixel:<rule>``.
    """

    tag_path: str
    keyword: str
    action: str
    basis: str


class VaultEntry(NamedTuple):
    """A pseudonym and one original identifier it stands for (goes to the encrypted vault only)."""

    pseudonym: str
    kind: str
    attribute: str
    original: str
    patient_pseudonym: str


@dataclass
class DeidResult:
    """Outcome of :meth:`Deidentifier.deidentify`.

    Attributes:
        dataset: The de-identified dataset (with a fresh ``file_meta``).
        actions: The actions taken, one per attribute (no values).
        vault: Pseudonym -> original identifier entries (for the re-identification vault only).
        patient_pseudonym: The patient's pseudonym (also Patient ID and Patient's Name).
        study_uid: New Study Instance UID (``""`` when absent).
        series_uid: New Series Instance UID (``""`` when absent).
        sop_uid: New SOP Instance UID (``""`` when absent).
        pixels_cleaned: Whether burned-in text was blanked (Clean Pixel Data applied).
        ocr_boxes: Text boxes OCR found and blanked (0 when OCR did not run).
    """

    dataset: Dataset
    actions: list[AuditEntry]
    vault: list[VaultEntry]
    patient_pseudonym: str
    study_uid: str
    series_uid: str
    sop_uid: str
    pixels_cleaned: bool
    ocr_boxes: int = 0


@dataclass
class _Run:
    """State of one :meth:`Deidentifier.deidentify` call."""

    source: Dataset
    identity: str
    patient_pseudonym: str
    shift: _dt.timedelta
    actions: list[AuditEntry] = field(default_factory=list)
    uids: dict[tuple[str, str], str] = field(default_factory=dict)
    identifiers: set[str] | None = None
    ocr_boxes: int = 0


def _values(value: Any) -> list[Any]:
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _shift_da(value: str, shift: _dt.timedelta) -> str | None:
    text = value.strip().replace(".", "")
    if not text:
        return ""
    if "-" in text:  # date range
        parts = [_shift_da(p, shift) if p else "" for p in text.split("-", 1)]
        return None if None in parts else "-".join(p or "" for p in parts)
    try:
        day = _dt.datetime.strptime(text, "%Y%m%d").date()
        return (day + shift).strftime("%Y%m%d")
    except ValueError:
        return None


_DT_RE = re.compile(r"(\d{4})(\d{2})?(\d{2})?(.*)")


def _shift_dt(value: str, shift: _dt.timedelta) -> str | None:
    text = value.strip()
    if not text:
        return ""
    m = _DT_RE.fullmatch(text)
    if m is None:
        return None
    year, month, day, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    try:
        base = _dt.date(int(year), int(month or 1), int(day or 1)) + shift
    except ValueError:
        return None
    if month is None:
        return f"{base.year:04d}{rest}"
    if day is None:
        return f"{base.year:04d}{base.month:02d}{rest}"
    return base.strftime("%Y%m%d") + rest


class Deidentifier:
    """Applies the confidentiality profile with the options of a :class:`DeidConfig`.

    Args:
        config: Profile options and pixel handling.
        key: Pseudonymisation key (at least 32 bytes; see :func:`medimg_spark.privacy.load_key`).
        allow_burned_in: Let images that may carry burned-in text and match no pixel rule
            through unchanged instead of raising :class:`BurnedInAnnotationError` (OCR or not),
            and write a rule-matched image whose OCR verification still reads text with
            Burned In Annotation = YES instead of raising :class:`ResidualTextError`.
    """

    def __init__(self, config: DeidConfig, key: bytes, *, allow_burned_in: bool = False) -> None:
        self.config = config
        self.allow_burned_in = allow_burned_in
        self._key = bytes(key)
        self._pseudo = Pseudonymizer(self._key, max_date_shift_days=config.max_date_shift_days)
        self._profile = load_profile()
        options = config.option_columns()
        types = {**ATTRIBUTE_TYPES, **config.attribute_types}
        self._actions: dict[int, str] = {
            tag: resolve_action(
                entry,
                options,
                types.get(describe_tag(tag), 3),
                retain_uid_references=config.retain_uid_references,
            )
            for tag, entry in self._profile.by_tag.items()
        }
        self._pattern_actions: dict[str, str] = {
            e.name: resolve_action(e, options)
            for e in (
                self._profile.curve,
                self._profile.overlay_data,
                self._profile.overlay_comments,
                self._profile.private,
            )
        }
        self._keep = config.keep_tags()
        #: (group, creator, element byte) -> VRs of the Retain Safe Private Option (empty when off):
        #: the reviewed list of PS3.15 Table E.3.10-1 in resources/privacy/safe_private.yaml, or the user's.
        self._safe_private = load_safe_private(config.safe_private) if config.retain_safe_private else {}
        self._rules = load_pixel_rules(config.pixel_rules) if config.clean_pixel_data else ()
        if config.ocr == "on" and not tesseract_available():
            raise OcrUnavailableError(
                "DeidConfig.ocr='on' but the tesseract binary is not installed; install the Debian "
                "package tesseract-ocr or set ocr='auto' / 'off'"
            )
        self._use_ocr = config.ocr == "on" or (config.ocr == "auto" and tesseract_available())

    # -- pickling: ship the config and key, rebuild the caches on the executor ---------------
    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "key": self._key, "allow_burned_in": self.allow_burned_in}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], state["key"], allow_burned_in=state["allow_burned_in"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Deidentifier(config={self.config!r}, allow_burned_in={self.allow_burned_in})"

    # -- public API ----------------------------------------------------------------------------
    @property
    def pseudonymizer(self) -> Pseudonymizer:
        """The keyed pseudonym maker (UIDs, patients, paths) under this de-identifier's key."""
        return self._pseudo

    def action_for(self, tag: int) -> str | None:
        """Resolved action of Table E.1-1 for a tag (``None`` when not in the table)."""
        action = self._actions.get(tag)
        if action is not None:
            return action
        entry = self._profile.lookup(tag)
        return None if entry is None else self._pattern_actions[entry.name]

    def patient_identity(self, ds: Dataset) -> str:
        """The string a patient's pseudonym and date shift derive from.

        Issuer + Patient ID when the ID is present; else name + birth date; else the study UID.
        """
        pid = str(ds.get("PatientID", "") or "").strip()
        if pid:
            return f"id\x1f{str(ds.get('IssuerOfPatientID', '') or '').strip()}\x1f{pid}"
        name = str(ds.get("PatientName", "") or "").strip()
        if name:
            return f"name\x1f{name}\x1f{str(ds.get('PatientBirthDate', '') or '').strip()}"
        return f"study\x1f{str(ds.get('StudyInstanceUID', '') or '').strip()}"

    def deidentify(self, ds: Dataset) -> DeidResult:
        """De-identify ``ds`` (left unchanged) and return the new dataset and its records.

        Raises:
            BurnedInAnnotationError: The pixels may carry text, no pixel rule matches, OCR is
                off or unavailable and ``allow_burned_in`` is off.
            ResidualTextError: OCR still reads text after the redaction.
            OcrFailedError: Tesseract failed or timed out on the image.
        """
        with quiet_pydicom():
            return self._deidentify(ds)

    def _deidentify(self, ds: Dataset) -> DeidResult:
        identity = self.patient_identity(ds)
        run = _Run(
            source=ds,
            identity=identity,
            patient_pseudonym=self._pseudo.patient_pseudonym(identity),
            shift=self._pseudo.date_shift(identity),
        )
        out = self._copy(ds, run, "", clean_ctx=False)
        for tag in (TAG_PATIENT_ID, TAG_PATIENT_NAME):
            if tag not in out:
                out.add(DataElement(tag, dictionary_VR(tag), run.patient_pseudonym))
                run.actions.append(AuditEntry(f"{tag:08X}", describe_tag(tag), "D", "pseudonym"))
        out.file_meta = self._file_meta(ds, out, run)
        pixels_cleaned = self._pixels(ds, out, run)
        self._record(out, pixels_cleaned)
        return DeidResult(
            dataset=out,
            actions=run.actions,
            vault=self._vault(ds, out, run),
            patient_pseudonym=run.patient_pseudonym,
            study_uid=str(out.get("StudyInstanceUID", "") or ""),
            series_uid=str(out.get("SeriesInstanceUID", "") or ""),
            sop_uid=str(out.get("SOPInstanceUID", "") or ""),
            pixels_cleaned=pixels_cleaned,
            ocr_boxes=run.ocr_boxes,
        )

    # -- recursion -----------------------------------------------------------------------------
    def _copy(self, src: Dataset, run: _Run, prefix: str, *, clean_ctx: bool) -> Dataset:
        out = Dataset()
        creators: list[int] = []
        kept_blocks: set[tuple[int, int]] = set()
        for tag_obj in sorted(src.keys()):
            tag = int(tag_obj)
            group, elem_no = tag >> 16, tag & 0xFFFF
            path = f"{prefix}{tag:08X}"
            if elem_no == 0:
                run.actions.append(AuditEntry(path, "", "X", "group_length"))
                continue
            if group == 0x0002:
                run.actions.append(AuditEntry(path, describe_tag(tag), "X", "file_meta"))
                continue
            if group == 0xFFFE:  # a stray item/sequence delimiter outside any sequence: no value
                run.actions.append(AuditEntry(path, "", "X", "delimiter"))
                continue
            if group % 2 == 1:
                if 0x0010 <= elem_no <= 0x00FF:
                    creators.append(tag)
                elif self._private(src, tag, out, run, path):
                    kept_blocks.add((group, elem_no >> 8))
                continue
            action, basis = self._decide(tag, clean_ctx)
            self._apply(src[tag], action, basis, out, run, path, clean_ctx)
        for tag in creators:
            keep = ((tag >> 16), tag & 0xFF) in kept_blocks
            if keep:
                out.add(copy.copy(src[tag]))
            run.actions.append(AuditEntry(f"{prefix}{tag:08X}", "", "K" if keep else "X", "private"))
        return out

    def _private(self, src: Dataset, tag: int, out: Dataset, run: _Run, path: str) -> bool:
        """Handle one private data element; return whether it was kept."""
        if self.config.retain_safe_private:
            group, elem_no = tag >> 16, tag & 0xFFFF
            creator_elem = src.get((group << 16) | (elem_no >> 8))
            creator = str(creator_elem.value).strip() if creator_elem is not None else ""
            allowed = self._safe_private.get((group, creator, elem_no & 0xFF))
            elem = src[tag]
            if allowed is not None and elem.VR in allowed and self._numeric(elem.value):
                out.add(copy.copy(elem))
                run.actions.append(AuditEntry(path, "", "C", "safe_private"))
                return True
        run.actions.append(AuditEntry(path, "", "X", "private"))
        return False

    @staticmethod
    def _numeric(value: Any) -> bool:
        try:
            for v in _values(value):
                float(v)
        except (TypeError, ValueError):
            return False
        return True

    def _decide(self, tag: int, clean_ctx: bool) -> tuple[str, str]:
        if tag in (TAG_PATIENT_ID, TAG_PATIENT_NAME):
            return "D", "pseudonym"
        action = self.action_for(tag)
        if action is not None:
            return action, "profile"
        if tag in ALLOWED_TAGS:
            return "K", "allowlist"
        if tag in self._keep:
            return "K", "keep"
        group, elem_no = tag >> 16, tag & 0xFFFF
        if 0x6000 <= group <= 0x601E and elem_no in OVERLAY_STRUCTURE_ELEMENTS:
            return ("K" if self._pattern_actions[self._profile.overlay_data.name] != "X" else "X"), "overlay"
        if clean_ctx:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = ""
            if vr in TEXT_VRS:
                return "C", "structured_content"
        return "X", "not_allowlisted"

    def _apply(
        self,
        elem: DataElement,
        action: str,
        basis: str,
        out: Dataset,
        run: _Run,
        path: str,
        clean_ctx: bool,
    ) -> None:
        tag, vr = int(elem.tag), elem.VR
        keyword = describe_tag(tag)
        if action == "X":
            run.actions.append(AuditEntry(path, keyword, "X", basis))
            return
        if vr == "SQ":
            run.actions.append(AuditEntry(path, keyword, action, basis))
            if action == "Z":
                out.add(DataElement(tag, "SQ", Sequence()))
                return
            items = [
                self._copy(item, run, f"{path}[{i}].", clean_ctx=clean_ctx or action == "C")
                for i, item in enumerate(elem.value or [])
            ]
            if action == "D" and not items:
                items = [Dataset()]
            out.add(DataElement(tag, "SQ", Sequence(items)))
            return
        value: Any
        if basis == "pseudonym":
            value = run.patient_pseudonym
        elif action == "K":
            if not valid_value(elem):
                # A damaged length or tag can put other elements' bytes (names, UIDs, dates) into a kept
                # attribute: a value that is not valid text of its VR is never copied.
                run.actions.append(AuditEntry(path, keyword, "X", "invalid_value"))
                return
            out.add(copy.copy(elem))
            run.actions.append(AuditEntry(path, keyword, "K", basis))
            return
        elif action == "Z":
            value = "" if vr in STRING_VRS else (b"" if vr in BYTES_VRS else None)
        elif action == "U" or (action == "D" and vr == "UI") or (action == "C" and vr == "UI"):
            action = "U" if action != "D" else "D"
            value = self._replace_uids(elem, run, keyword)
        elif action == "D":
            value = self._dummy(vr)
        else:  # C
            if not valid_value(elem):
                run.actions.append(AuditEntry(path, keyword, "X", "invalid_value"))
                return
            value = self._clean(elem, run)
            if value is None:
                run.actions.append(AuditEntry(path, keyword, "X", "unparseable"))
                return
        out.add(DataElement(tag, vr, value))
        run.actions.append(AuditEntry(path, keyword, action, basis))

    # -- value replacements ------------------------------------------------------------------
    @staticmethod
    def _dummy(vr: str) -> Any:
        if vr in BYTES_VRS:
            return b"\x00\x00\x00\x00\x00\x00\x00\x00"
        return DUMMY.get(vr, "ANONYMIZED")

    def _replace_uids(self, elem: DataElement, run: _Run, keyword: str) -> Any:
        new: list[str] = []
        for v in _values(elem.value):
            text = str(v or "").strip()
            if not text:
                new.append("")
                continue
            replaced = self._pseudo.uid(text)
            run.uids[(keyword, replaced)] = text
            new.append(replaced)
        if not isinstance(elem.value, MultiValue | list | tuple):
            return new[0] if new else ""
        return new

    def _identifiers(self, run: _Run) -> set[str]:
        """Identifying values of the source dataset (attributes of the table that are not kept)."""
        if run.identifiers is None:
            found: set[str] = set()
            for elem in run.source.iterall():
                tag = int(elem.tag)
                if elem.VR not in STRING_VRS or elem.value is None or (tag >> 16) % 2 == 1:
                    continue
                action = self.action_for(tag)
                if action in (None, "K", "C") and tag not in (TAG_PATIENT_ID, TAG_PATIENT_NAME):
                    continue
                for v in _values(elem.value):
                    found |= identifier_variants(str(v), person_name=elem.VR == "PN")
            run.identifiers = found
        return run.identifiers

    def _clean(self, elem: DataElement, run: _Run) -> Any:
        vr, value = elem.VR, elem.value
        if value is None or value == "":
            return value
        if vr == "DA":
            shifted = [_shift_da(str(v), run.shift) for v in _values(value)]
            return None if None in shifted else (shifted if len(shifted) > 1 else shifted[0])
        if vr == "DT":
            shifted = [_shift_dt(str(v), run.shift) for v in _values(value)]
            return None if None in shifted else (shifted if len(shifted) > 1 else shifted[0])
        if vr == "TM":
            return value  # whole-day shifts leave times of day unchanged
        if vr == "AE":
            return ["AE" + self._pseudo.short_token("ae", str(v)) for v in _values(value)]
        if vr in TEXT_VRS:
            ids = self._identifiers(run)
            cleaned = [clean_text(str(v), ids) for v in _values(value)]
            if vr == "CS":
                cleaned = [re.sub(r"[^A-Z0-9 _]", "", c.upper())[:16] for c in cleaned]
            return cleaned if len(cleaned) > 1 else cleaned[0]
        return value  # numbers, overlay and curve data: kept (graphics are cleaned with the pixels)

    # -- file meta, pixels, record -------------------------------------------------------------
    def _file_meta(self, src: Dataset, out: Dataset, run: _Run) -> FileMetaDataset:
        src_meta = getattr(src, "file_meta", None)
        meta = FileMetaDataset()
        ts: str | None = src_meta.get("TransferSyntaxUID") if src_meta is not None else None
        if ts is not None and not _valid_uid(ts):
            ts = None
        if ts is None:
            implicit = getattr(src, "original_encoding", (False, True))[0]
            ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        sop_class = out.get("SOPClassUID") or (src_meta.get("MediaStorageSOPClassUID") if src_meta else None)
        if sop_class and not _valid_uid(sop_class):
            # never copied unchecked: a damaged length can make this element swallow the dataset
            sop_class = None
        if sop_class:
            meta.MediaStorageSOPClassUID = sop_class
        sop_uid = str(out.get("SOPInstanceUID", "") or "")
        if not sop_uid and src_meta is not None and src_meta.get("MediaStorageSOPInstanceUID"):
            original = str(src_meta.MediaStorageSOPInstanceUID)
            sop_uid = original if self.action_for(0x00020003) == "K" else self._pseudo.uid(original)
        if sop_uid:
            meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(ts)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        if src_meta is not None:
            for tag_obj in sorted(src_meta.keys()):
                tag = int(tag_obj)
                action = {0x00020002: "K", 0x00020003: self.action_for(tag) or "U", 0x00020010: "K"}.get(
                    tag, "X"
                )
                run.actions.append(AuditEntry(f"{tag:08X}", describe_tag(tag), action, "file_meta"))
        return meta

    def _text_prone(self, ds: Dataset) -> bool:
        if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
            return True
        if str(ds.get("Modality", "") or "").strip().upper() in self.config.text_prone_modalities:
            return True
        sop_class = str(ds.get("SOPClassUID", "") or "")
        return any(sop_class.startswith(p) for p in self.config.text_prone_sop_classes)

    def _describe(self, src: Dataset) -> str:
        return (
            f"{src.get('Modality', 'unknown-modality')} image "
            f"({src.get('Rows', '?')}x{src.get('Columns', '?')}, manufacturer "
            f"{src.get('Manufacturer', 'unknown')!s}, model {src.get('ManufacturerModelName', 'unknown')!s})"
        )

    def _pixels(self, src: Dataset, out: Dataset, run: _Run) -> bool:
        """Burned-in text: reviewed rule regions, OCR redaction and its verification.

        Returns:
            Whether pixels were blanked (the Clean Pixel Data option applies).

        Raises:
            BurnedInAnnotationError: Text-prone, no rule matches, OCR unavailable or off and
                ``allow_burned_in`` is off.
            ResidualTextError: The verification OCR pass still reads text after blanking.
            OcrFailedError: Tesseract failed or timed out on this image.
        """
        if TAG_PIXEL_DATA not in out:
            return False
        rule = find_rule(self._rules, src) if self.config.clean_pixel_data else None
        text_prone = self._text_prone(src)
        ocr = self._use_ocr and self.config.clean_pixel_data and (rule is not None or text_prone)
        if rule is None and text_prone and (self.allow_burned_in or not ocr):
            if self.allow_burned_in:
                return False  # the caller checked the images: through unchanged
            raise BurnedInAnnotationError(
                f"the pixels of this {self._describe(src)} may carry burned-in text, no pixel rule "
                "matches and OCR redaction is not available (install the Debian package "
                "tesseract-ocr and keep DeidConfig.ocr 'auto' or 'on', with clean_pixel_data on); "
                "or add a rule to a copy of medimg_spark/resources/privacy/pixel_rules.yaml and set "
                "deid.pixel_rules (DeidConfig.pixel_rules) to it, or pass allow_burned_in=True "
                "after checking the images"
            )
        regions = rule.regions if rule is not None else ()
        if not regions and not ocr:
            return False
        try:
            cleaning = clean_pixel_data(out, regions, ocr=ocr)
        except OcrUnavailableError:
            raise OcrFailedError(
                "the tesseract binary disappeared while this image was being read; reinstall the "
                "Debian package tesseract-ocr or set DeidConfig.ocr='off'"
            ) from None
        run.ocr_boxes = cleaning.ocr_boxes
        if cleaning.residual_boxes:
            if not self.allow_burned_in:
                raise ResidualTextError(
                    f"OCR still reads {cleaning.residual_boxes} text box(es) in the pixels of this "
                    f"{self._describe(src)} after {len(cleaning.regions)} region(s) were blanked; "
                    "add a reviewed pixel rule covering its text to a copy of "
                    "medimg_spark/resources/privacy/pixel_rules.yaml (DeidConfig.pixel_rules), or pass "
                    "allow_burned_in=True after checking the images"
                )
            out.BurnedInAnnotation = "YES"  # let through on request, labelled honestly
        elif cleaning.verified or not ocr:
            # a clean OCR verification, or (OCR off) a reviewed rule's regions blanked
            out.BurnedInAnnotation = "NO"
        if not cleaning.regions:
            return False
        blank_overlay_regions(out, list(cleaning.regions))
        basis = f"pixel:{rule.name}" if rule is not None else "pixel:ocr"
        if rule is not None and cleaning.ocr_boxes:
            basis += "+ocr"
        run.actions[:] = [a for a in run.actions if a.tag_path != f"{TAG_PIXEL_DATA:08X}"]
        run.actions.append(AuditEntry(f"{TAG_PIXEL_DATA:08X}", "PixelData", "C", basis))
        return True

    def applied_options(self, pixels_cleaned: bool) -> tuple[str, ...]:
        """The profile and options a de-identified dataset was made with (:data:`OPTION_CODES` keys).

        ``basic`` always; Clean Pixel Data only when the pixels were cleaned; every other option as
        configured (Retain Safe Private only when enabled; at most one of the two dates options, as
        :class:`DeidConfig` makes them exclusive), in the order of their CID 7050 codes.
        """
        names = [*(["clean_pixel_data"] if pixels_cleaned else []), *self.config.enabled_option_fields()]
        return ("basic", *sorted(names, key=lambda n: OPTION_CODES[n][0]))

    def _record(self, out: Dataset, pixels_cleaned: bool) -> None:
        """The conformance markers (PS3.15 E.1.1, PS3.3 C.7.1.1): exactly the profile and options applied.

        Patient Identity Removed YES; De-identification Method: :data:`DEID_METHOD` then the name of
        each option (one LO value each, as a value may hold 64 characters); the De-identification
        Method Code Sequence: one CID 7050 code per profile/option. Markers a source file carried from
        an earlier de-identification are replaced, not merged.
        """
        names = self.applied_options(pixels_cleaned)
        out.PatientIdentityRemoved = "YES"
        methods = [DEID_METHOD, *(OPTION_CODES[name][1] for name in names[1:])]
        out.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
        items = []
        for name in names:
            code, meaning = OPTION_CODES[name]
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(items)
        if self.config.retain_longitudinal_full_dates:
            out.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif self.config.retain_longitudinal_modified_dates:
            out.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            out.LongitudinalTemporalInformationModified = "REMOVED"

    def _vault(self, src: Dataset, out: Dataset, run: _Run) -> list[VaultEntry]:
        p = run.patient_pseudonym
        entries: dict[tuple[str, str, str], VaultEntry] = {}

        def add(pseudonym: str, kind: str, attribute: str, original: Any) -> None:
            text = "\\".join(str(v) for v in _values(original)) if original is not None else ""
            if text.strip():
                entries[(pseudonym, kind, attribute)] = VaultEntry(pseudonym, kind, attribute, text, p)

        for kw in ("PatientID", "PatientName", "IssuerOfPatientID", "PatientBirthDate", "OtherPatientIDs"):
            add(p, "patient", kw, src.get(kw))
        study = str(out.get("StudyInstanceUID", "") or "")
        if study:
            for kw in ("AccessionNumber", "StudyID"):
                add(study, "study", kw, src.get(kw))
        for (keyword, new), original in run.uids.items():
            add(new, "uid", keyword or "UID", original)
        return list(entries.values())


#: Format of the VRs whose values are codes, numbers, dates or times (PS3.5 Table 6.2-1, slightly
#: lenient: lower case in CS, UIDs with leading zeros, as real files have them).
_VR_FORMAT = {
    "AS": re.compile(r"^\d\d\d[DWMY]$"),
    "CS": re.compile(r"^[A-Za-z0-9 _]*$"),
    "DS": re.compile(r"^ *[+\-]?(\d+|\d+\.\d*|\.\d+)([eE][+\-]?\d+)? *$"),
    "IS": re.compile(r"^ *[+\-]?\d+ *$"),
    "DA": re.compile(r"^[0-9\-. ]*$"),
    "TM": re.compile(r"^[0-9:.\- ]*$"),
    "DT": re.compile(r"^[0-9.+\- ]*$"),
    "UI": re.compile(r"^[0-9.]*$"),
}
#: Control characters allowed in free text (ST, LT, UT: TAB, LF, FF, CR; every text VR: ESC).
_FREE_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_LINE_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_FREE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
#: Maximum lengths pydicom's table leaves out (ranges of dates and times count twice, plus the dash).
_MORE_MAX_LEN = {"AS": 4, "DA": 18, "TM": 28, "DT": 54}


def valid_value(elem: DataElement) -> bool:
    """Whether a text element's value is valid for its VR: length, format, no stray control bytes.

    Binary and numeric VRs are not text and always pass; PN is checked per component group.
    """
    from pydicom.valuerep import MAX_VALUE_LEN

    vr = elem.VR
    if vr not in STRING_VRS or elem.value is None:
        return True
    values = elem.value if isinstance(elem.value, list | MultiValue) else [elem.value]
    limit = MAX_VALUE_LEN.get(vr, _MORE_MAX_LEN.get(vr))
    pattern = _VR_FORMAT.get(vr)
    control = _FREE_TEXT_CONTROL if vr in _FREE_TEXT_VRS else _LINE_CONTROL
    for value in values:
        text = str(value).rstrip("\x00 ") if vr == "UI" else str(value)
        if vr == "PN":
            if any(len(part) > 64 for part in text.split("=")) or control.search(text):
                return False
            continue
        if limit is not None and len(text) > limit:
            return False
        if pattern is not None and not pattern.match(text):
            return False
        if control.search(text):
            return False
    return True


def _valid_uid(value: Any) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters."""
    text = str(value).rstrip("\x00 ")
    return len(text) <= 64 and bool(UID_SYNTAX.match(text))


def entry_for(tag: int) -> ProfileEntry | None:
    """Table E.1-1 entry governing ``tag`` (exact tags, repeating groups, private)."""
    return load_profile().lookup(tag)
