"""Burned-in pixel PHI: rule files, blanking, quarantine of unmatched text-prone images, OCR."""

from __future__ import annotations

import os
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
    pixels,
    tesseract_available,
)
from medimg_spark.privacy.errors import DeidFileError, OcrFailedError, ResidualTextError
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
    result = Deidentifier(DeidConfig(ocr="off"), KEY).deidentify(src)
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
    out = Deidentifier(DeidConfig(pixel_rules=str(rules), ocr="off"), KEY).deidentify(src).dataset
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    a, b = src.pixel_array, out.pixel_array
    assert not b[:100].any() and a[:100].any()
    np.testing.assert_array_equal(a[100:], b[100:])


def test_big_endian_source_is_cleaned_and_written_little_endian(tmp_path: Path) -> None:
    src = pydicom.dcmread(get_testdata_file("OBXXXX1A_expb.dcm"))  # Explicit VR Big Endian
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - match: {Modality: US, Rows: 600}\n    regions: [[0, 0, 800, 60]]\n")
    result = Deidentifier(DeidConfig(pixel_rules=str(rules), ocr="off"), KEY).deidentify(src)
    out = result.dataset
    assert result.pixels_cleaned and out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    a, b = src.pixel_array, out.pixel_array
    assert a[:60].any() and not b[:60].any()
    np.testing.assert_array_equal(a[60:], b[60:])


def test_unmatched_text_prone_images_are_rejected_without_ocr_unless_allowed() -> None:
    us = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    off = DeidConfig(ocr="off")
    with pytest.raises(BurnedInAnnotationError, match="no pixel rule"):
        Deidentifier(off, KEY).deidentify(us)
    for config in (off, DeidConfig()):  # allowed: through unchanged, OCR or not
        allowed = Deidentifier(config, KEY, allow_burned_in=True).deidentify(us)
        assert allowed.dataset.PixelData == us.PixelData and not allowed.pixels_cleaned
    multi = _us("GREYSCALE_IMAGE.dcm")
    multi.ManufacturerModelName = "Other model"  # BurnedInAnnotation = YES, no rule
    with pytest.raises(BurnedInAnnotationError):
        Deidentifier(off, KEY).deidentify(multi)
    with pytest.raises(BurnedInAnnotationError):  # no cleaning at all: still refused, OCR or not
        Deidentifier(DeidConfig(clean_pixel_data=False), KEY).deidentify(_us("GREYSCALE_IMAGE.dcm"))
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # not text-prone: never read
    assert Deidentifier(DeidConfig(), KEY).deidentify(ct).dataset.PixelData == ct.PixelData


def test_without_tesseract_auto_falls_back_to_quarantine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tesseract binary
    assert not tesseract_available()
    us = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    with pytest.raises(BurnedInAnnotationError, match="tesseract-ocr"):
        Deidentifier(DeidConfig(), KEY).deidentify(us)  # ocr="auto": never a pass-through
    with pytest.raises(OcrUnavailableError, match="tesseract-ocr"):
        Deidentifier(DeidConfig(ocr="on"), KEY)  # a config error, before any file
    rule_matched = Deidentifier(DeidConfig(), KEY).deidentify(_us("RGB_IMAGE.dcm"))  # the rule alone
    assert rule_matched.pixels_cleaned and rule_matched.dataset.BurnedInAnnotation == "NO"


@pytest.mark.parametrize(("script", "message"), [("exit 3", "exit code 3"), ("sleep 5", "longer than")])
def test_a_failing_tesseract_quarantines_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str, message: str
) -> None:
    fake = tmp_path / "tesseract"  # a real executable that fails as a broken install would
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")  # found before any real one
    monkeypatch.setattr(pixels, "OCR_TIMEOUT_S", 0.5)
    with pytest.raises(OcrFailedError, match=message) as info:
        Deidentifier(DeidConfig(), KEY).deidentify(pydicom.dcmread(get_testdata_file("US1_UNCR.dcm")))
    assert isinstance(info.value, DeidFileError)  # a per-file outcome: quarantined, never an abort


needs_tesseract = pytest.mark.skipif(
    not tesseract_available(), reason="tesseract not installed (Debian package tesseract-ocr)"
)

NAME, PATIENT_ID = "DOE JANE", "ID 48213377"


def _read_text(image: np.ndarray) -> str:
    """Everything Tesseract reads in ``image`` at 1x-3x, any confidence (the attacker's view)."""
    import cv2

    words = []
    gray = pixels.ocr_probe(image)
    for scale in (1, 2, 3):
        big = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        for invert in (False, True):
            tsv = pixels._run_tesseract("tesseract", 255 - big if invert else big, 11, 1)
            words += [text for text, _, _ in pixels._parse_tsv(tsv)]
    return " ".join(words).upper()


@pytest.fixture(scope="module")
def synthetic_us() -> dict[str, object]:
    """A real colour-Doppler ultrasound frame (GE LOGIQ 700, with its own burned-in text) with a
    patient name and ID drawn on it (8 px high, as the device's own text), de-identified once."""
    import cv2

    if not tesseract_available():
        pytest.skip("tesseract not installed (Debian package tesseract-ocr)")
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    frame = np.array(ds.pixel_array, copy=True)
    for text, y in ((NAME, 200), (PATIENT_ID, 214)):  # in the dark margin under the image
        cv2.putText(frame, text, (175, y), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    ds.PixelData = frame.tobytes()
    before = _read_text(frame[185:222, 165:320])
    result = Deidentifier(DeidConfig(), KEY).deidentify(ds)
    after = _read_text(result.dataset.pixel_array[185:222, 165:320])
    return {"ds": ds, "frame": frame, "before": before, "result": result, "after": after}


def test_ocr_redacts_a_drawn_name_and_id_from_a_real_us_frame(synthetic_us) -> None:  # type: ignore[no-untyped-def]
    assert "48213377" in synthetic_us["before"] and "JANE" in synthetic_us["before"]  # readable before
    result = synthetic_us["result"]
    out = result.dataset
    assert result.pixels_cleaned and result.ocr_boxes > 10 and out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert [a.basis for a in result.actions if a.keyword == "PixelData"] == ["pixel:ocr"]
    after = synthetic_us["after"]
    assert "4821" not in after and "3377" not in after and "JANE" not in after and "DOE" not in after
    frame, px = synthetic_us["frame"], out.pixel_array
    assert frame[190:218, 175:265].any() and not px[190:218, 175:265].any()  # the text boxes are black
    for y0, y1, x0, x1 in ((178, 190, 100, 200), (225, 238, 195, 320)):  # the device's "LYMPH NODE", "TIS.."
        assert frame[y0:y1, x0:x1].any() and not px[y0:y1, x0:x1].any()
    assert (frame[60:160, 50:270] == px[60:160, 50:270]).mean() > 0.75  # the image mostly untouched


def test_residual_text_after_redaction_quarantines(  # type: ignore[no-untyped-def]
    synthetic_us, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a redaction pass that misses the drawn text (a threshold above any confidence) and a rule
    # that blanks elsewhere: the verification pass must read the text and refuse the file
    monkeypatch.setattr(pixels, "REDACT_CONFIDENCE", 101.0)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - match: {Modality: US, Rows: 240}\n    regions: [[0, 0, 16, 16]]\n")
    config = DeidConfig(pixel_rules=str(rules))
    with pytest.raises(ResidualTextError, match="text box") as info:
        Deidentifier(config, KEY).deidentify(synthetic_us["ds"])
    assert isinstance(info.value, DeidFileError)
    assert "JANE" not in str(info.value) and "4821" not in str(info.value)  # names no value
    out = Deidentifier(config, KEY, allow_burned_in=True).deidentify(synthetic_us["ds"]).dataset
    assert out.BurnedInAnnotation == "YES"  # let through on request, labelled as carrying text


@needs_tesseract
def test_rule_matched_image_keeps_its_rule_and_ocr_blanks_the_rest() -> None:
    src = _us("GREYSCALE_IMAGE.dcm")
    result = Deidentifier(DeidConfig(), KEY).deidentify(src)
    out = result.dataset.pixel_array
    a = src.pixel_array
    assert a[:26].any() and not out[:26].any()  # the reviewed rule's banner
    # the left-hand text panel ("Adv Breast", "L12-5", ...) lies below the rule's 26-row band
    assert a[30:260, 10:140].any() and out[30:260, 10:140].sum() < a[30:260, 10:140].sum() * 0.2
    np.testing.assert_array_equal(a[400:600, 200:800], out[400:600, 200:800])  # image content intact
    assert [x.basis for x in result.actions if x.keyword == "PixelData"] == [
        "pixel:Philips EPIQ ultrasound, 1024x768 screen, patient banner+ocr"
    ]
    assert result.dataset.BurnedInAnnotation == "NO"


@pytest.fixture(scope="module")
def us_ingest(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One default ingest (OCR "auto") of two real ultrasound files: a palette-colour frame and a 30-frame YBR cine."""
    import shutil

    import pyarrow.parquet as pq

    from medimg_spark.io.ingest import ingest
    from medimg_spark.privacy.hook import IngestDeidentifier

    if not tesseract_available():
        pytest.skip("tesseract not installed (Debian package tesseract-ocr)")
    tmp = tmp_path_factory.mktemp("us_ingest")
    (tmp / "in").mkdir()
    for name in ("OBXXXX1A.dcm", "examples_ybr_color.dcm"):
        shutil.copy(get_testdata_file(name), tmp / "in" / name)
    hook = IngestDeidentifier(Deidentifier(DeidConfig(), KEY))
    summary = ingest(spark, [str(tmp / "in")], str(tmp / "out"), deidentify=hook)
    images = pq.read_table(tmp / "out" / "images").to_pylist()
    return {"summary": summary, "images": images, "out": tmp / "out"}


def test_ingest_recovers_real_us_frames_with_no_residual_text(us_ingest) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    from medimg_spark.io.pixels import to_array

    images = us_ingest["images"]
    assert len(images) == 1 + 30  # every frame of both files reaches the lake
    quarantine = pq.read_table(us_ingest["out"] / "quarantine").to_pylist()
    assert quarantine == []
    by_file: dict[int, list[np.ndarray]] = {}
    for row in images:
        by_file.setdefault(int(row["n_frames"]), []).append(to_array(row))
    for frames in by_file.values():  # the verification read, again, on the lake's pixels
        stack = np.stack(frames)
        probes = [pixels._probe_and_chroma(stack.max(axis=0)), pixels._probe_and_chroma(stack[0])]
        residual = [
            pixels.ocr_words(
                p, variants=pixels.READ_VARIANTS, min_confidence=pixels.VERIFY_CONFIDENCE, chroma=c
            )
            for p, c in probes
        ]
        assert residual == [[], []]


def test_pixels_over_the_decode_limit_are_never_decoded_by_deid() -> None:
    """OCR and pixel rules decode in de-identification: pixels over the ingest limit are hidden from it."""
    from medimg_spark.errors import ImageTooLargeError
    from medimg_spark.io.dicom import parse_dicom

    seen: list[bool] = []

    def deidentify(ds: pydicom.Dataset) -> pydicom.Dataset:
        seen.append("PixelData" in ds)
        return ds

    data = Path(get_testdata_file("US1_UNCR.dcm")).read_bytes()  # 480x640 RGB: 921,600 bytes decoded
    parsed = parse_dicom(data, deidentify=deidentify, max_decoded_bytes=100_000)
    assert seen == [False]  # the header was de-identified, the pixels not handed over
    with pytest.raises(ImageTooLargeError, match="max_decoded_bytes = 100000"):
        assert parsed.decode is not None
        list(parsed.decode())
    parse_dicom(data, deidentify=deidentify, max_decoded_bytes=10_000_000)
    assert seen == [False, True]
