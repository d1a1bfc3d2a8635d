"""Burned-in pixel PHI: rule files, blanking, quarantine of unmatched text-prone images, OCR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.privacy import (
    BurnedInAnnotationError,
    DeidConfig,
    DeidConfigError,
    Deidentifier,
    OcrUnavailableError,
    load_pixel_rules,
    tesseract_available,
)
from medimg_spark.privacy.pixels import find_rule

KEY = bytes(range(1, 33))
REPO = Path(__file__).resolve().parents[1]


def _us(name: str) -> pydicom.Dataset:
    import deid_data

    return pydicom.dcmread(Path(deid_data.__file__).resolve().parent / "data" / "ultrasounds" / name)


def test_packaged_rules_are_the_default_and_the_only_copy() -> None:
    packaged = REPO / "medimg_spark/resources/privacy/pixel_rules.yaml"
    assert not (REPO / "conf/privacy/pixel_rules.yaml").exists()
    rules = load_pixel_rules(None)
    assert rules == load_pixel_rules(str(packaged)) and len(rules) >= 2
    assert all(r.regions for r in rules)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: 3", "'rules' list"),
        ("rules:\n  - match: {Modality: US}\n", "'regions' must be a list"),
        ("rules:\n  - match: {PatientName: X}\n    regions: []\n", "cannot match on 'PatientName'"),
        ("rules:\n  - match: {Rows: big}\n    regions: []\n", "Rows must be an integer"),
        ("rules:\n  - match: {Modality: US}\n    regions: [[0, 0, -1, 5]]\n", "non-negative integers"),
        ("rules: [\n", "not valid YAML"),
    ],
)
def test_bad_rule_files_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text(text)
    with pytest.raises(DeidConfigError, match=message):
        load_pixel_rules(str(p))
    with pytest.raises(DeidConfigError, match="cannot read"):
        load_pixel_rules(str(tmp_path / "missing.yaml"))


def test_rule_matching_is_case_insensitive_substring_and_exact_size() -> None:
    rules = load_pixel_rules(None)
    ds = _us("GREYSCALE_IMAGE.dcm")
    rule = find_rule(rules, ds)
    assert rule is not None and "EPIQ" in rule.name
    ds.Rows = 600
    assert find_rule(rules, ds) is None


def test_rule_blanks_regions_and_reencodes() -> None:
    src = _us("RGB_IMAGE.dcm")
    result = Deidentifier(DeidConfig(), KEY).deidentify(src)
    out = result.dataset
    assert result.pixels_cleaned
    a, b = src.pixel_array, out.pixel_array
    assert a[:58].any() and not b[:58].any() and not b[734:].any()
    np.testing.assert_array_equal(a[58:734], b[58:734])
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.BurnedInAnnotation == "NO" and out.PhotometricInterpretation == "RGB"
    assert [a.basis for a in result.actions if a.keyword == "PixelData"] == [
        "pixel:Siemens ACUSON S2000 ultrasound, 1024x768 screen, banner and label line"
    ]
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert src.SOPInstanceUID != out.SOPInstanceUID and out.SOPInstanceUID.startswith("2.25.")


def test_compressed_source_is_written_uncompressed_when_cleaned(tmp_path: Path) -> None:
    src = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # NM secondary capture, JPEG 2000
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - match: {Modality: NM, Rows: 1024}\n    regions: [[0, 0, 256, 100]]\n")
    out = Deidentifier(DeidConfig(pixel_rules=str(rules)), KEY).deidentify(src).dataset
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    a, b = src.pixel_array, out.pixel_array
    assert not b[:100].any() and a[:100].any()
    np.testing.assert_array_equal(a[100:], b[100:])


def test_unmatched_text_prone_images_are_rejected_unless_allowed() -> None:
    us = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    with pytest.raises(BurnedInAnnotationError, match="no pixel rule matches"):
        Deidentifier(DeidConfig(), KEY).deidentify(us)
    allowed = Deidentifier(DeidConfig(), KEY, allow_burned_in=True).deidentify(us)
    assert allowed.dataset.PixelData == us.PixelData and not allowed.pixels_cleaned
    multi = _us("GREYSCALE_IMAGE.dcm")
    multi.ManufacturerModelName = "Other model"  # BurnedInAnnotation = YES, no rule
    with pytest.raises(BurnedInAnnotationError):
        Deidentifier(DeidConfig(), KEY).deidentify(multi)
    with pytest.raises(BurnedInAnnotationError):  # no cleaning at all: still refused
        Deidentifier(DeidConfig(clean_pixel_data=False), KEY).deidentify(_us("GREYSCALE_IMAGE.dcm"))
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert Deidentifier(DeidConfig(), KEY).deidentify(ct).dataset.PixelData == ct.PixelData


def test_ocr_blanks_text_outside_rule_regions_or_reports_missing_binary() -> None:
    if not tesseract_available():
        with pytest.raises(OcrUnavailableError, match="tesseract-ocr"):
            Deidentifier(DeidConfig(ocr="on"), KEY)
        return
    src = _us("GREYSCALE_IMAGE.dcm")
    out = Deidentifier(DeidConfig(ocr="on"), KEY).deidentify(src).dataset.pixel_array
    a = src.pixel_array
    # the left-hand text panel ("Adv Breast", "L12-5", ...) lies below the rule's 26-row band
    assert a[30:260, 10:140].any() and out[30:260, 10:140].sum() < a[30:260, 10:140].sum() * 0.2
    np.testing.assert_array_equal(a[400:600, 200:800], out[400:600, 200:800])  # image content intact
