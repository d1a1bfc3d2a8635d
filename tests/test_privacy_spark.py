"""End-to-end de-identification with Spark on real PHI-laden DICOM files (deid-data, pydicom).

The PHI set (what must not appear in any output byte) and its rules are in ``tests/phi.py``.
DICOM outputs are scanned byte for byte except the Pixel Data value, which is compared with the
input instead (unchanged) or checked as cleaned.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medimg_spark.privacy import (
    DeidConfig,
    Deidentifier,
    VaultKeyError,
    generate_key_file,
    read_vault,
    reidentify,
    run_deid,
)
from tests.phi import collect_phi, find_phi

KEY = bytes.fromhex("5f" * 32)
OTHER_KEY = bytes.fromhex("a0" * 32)
REPO = Path(__file__).resolve().parents[1]


def _deid_data() -> Path:
    import deid_data

    return Path(deid_data.__file__).resolve().parent / "data"


def _derived_series(dst: Path) -> list[Path]:
    """Three instances of one CT series built from CT_small: #2 and #3 reference #1; #3 is 5 days later."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    paths = []
    for i in (1, 2, 3):
        ds = base.copy()
        ds.SOPInstanceUID = f"1.3.6.1.4.1.5962.99.1.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i
        ds.StudyDate = "20040119"
        ds.AcquisitionDate = "20040124" if i == 3 else "20040119"
        ds.ContentDate = ds.AcquisitionDate
        if i > 1:
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = "1.3.6.1.4.1.5962.99.1.1"
            seq = "ReferencedImageSequence" if i == 2 else "SourceImageSequence"
            setattr(ds, seq, Sequence([ref]))
        p = dst / f"series/ct_{i}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def deid_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("deid")
    inp = tmp / "in"
    data = _deid_data()
    for rel in (
        "humans/ctbrain1.dcm",
        "humans/ctbrain2.dcm",
        "ultrasounds/GREYSCALE_IMAGE.dcm",
        "ultrasounds/RGB_IMAGE.dcm",
        "dicom-cookies/image1.dcm",
    ):
        (inp / Path(rel).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / rel, inp / rel)
    (inp / "pydicom").mkdir()
    for name in (
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "rtdose.dcm",
        "rtstruct.dcm",
        "emri_small.dcm",
        "nested_priv_SQ.dcm",
        "US1_UNCR.dcm",
    ):
        shutil.copy(get_testdata_file(name), inp / "pydicom" / name)
    _derived_series(inp)
    (inp / "notes.txt").write_text("not a dicom file\n")

    rules = tmp / "pixel_rules.yaml"
    rules.write_text(
        (REPO / "medimg_spark/resources/privacy/pixel_rules.yaml").read_text()
        + """  - name: deid-data CT brain secondary capture (reviewed, no text)
    match: {Modality: CT, Manufacturer: siemens, ManufacturerModelName: SOMATOM Definition AS+, Rows: 456, Columns: 510}
    regions: []
"""
    )
    vault_key = generate_key_file(tmp / "secrets" / "vault.key")
    # OCR off: Tesseract on the 768 x 1024 US frames is most of this module's time (minutes under load);
    # OCR redaction, its verification and OCR in a Spark ingest are tested in test_privacy_pixels
    config = DeidConfig(pixel_rules=str(rules), ocr="off")
    out = tmp / "out"
    summary = run_deid(
        spark,
        [str(inp)],
        str(out),
        config,
        KEY,
        vault_dir=str(tmp / "secrets" / "vault"),
        vault_key_file=str(vault_key),
    )
    out2 = tmp / "out2"
    summary2 = run_deid(
        spark,
        [str(inp / "series"), str(inp / "humans" / "ctbrain1.dcm")],
        str(out2),
        DeidConfig(pixel_rules=str(rules), retain_longitudinal_modified_dates=True, ocr="off"),
        KEY,
    )
    return {
        "tmp": tmp,
        "inp": inp,
        "out": out,
        "out2": out2,
        "summary": summary,
        "summary2": summary2,
        "vault_dir": tmp / "secrets" / "vault",
        "vault_key": vault_key,
        "config": config,
    }


def _outputs_by_source(out: Path) -> dict[str, Path]:
    audit = pq.read_table(out / "deid_audit").to_pylist()
    return {r["file_sha256"]: out / r["output_path"] for r in audit}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _input_dicoms(inp: Path) -> list[tuple[Path, Dataset]]:
    found = []
    for p in sorted(inp.rglob("*")):
        if p.is_file():
            try:
                found.append((p, pydicom.dcmread(p, force=p.name == "rtstruct.dcm")))
            except pydicom.errors.InvalidDicomError:
                continue
    return found


def test_summary_counts(deid_run) -> None:  # type: ignore[no-untyped-def]
    s = deid_run["summary"]
    assert s["files_in"] == 17
    # OCR off: the cookie SC and US1_UNCR (US, no pixel rule) are quarantined as possibly carrying
    # burned-in text; the two US files a rule matches are cleaned by the rule and written
    assert s["quarantined"].get("BurnedInAnnotationError", 0) == 2
    assert s["quarantined"].get("ResidualTextError", 0) == 0
    assert s["quarantined"].get("UnsupportedFormatError") == 1
    assert s["quarantined"].get("MissingIdentifierError") == 1  # nested_priv_SQ: no UIDs
    # ctbrain1/2 share one SOP Instance UID: written once, the second is identical or a duplicate
    assert s["written"] + s["quarantined"].get("DuplicateInstanceError", 0) == 13
    assert s["written"] >= 12 and s["pixels_cleaned"] == 2
    assert json.loads((deid_run["out"] / "deid_summary.json").read_text()) == s
    q = pq.read_table(deid_run["out"] / "quarantine").to_pylist()
    assert {r["stage"] for r in q} == {"deid"} and len(q) == s["quarantined_total"]
    # source_path is the keyed pseudonym of the input path (folder names may carry PHI)
    from medimg_spark.privacy import Pseudonymizer

    names = {Pseudonymizer(KEY).path_pseudonym(str(p.resolve())): p.name for p in deid_run["inp"].rglob("*")}
    by_name = {names[r["source_path"]]: r for r in q}
    for name in ("US1_UNCR.dcm", "image1.dcm"):
        assert by_name[name]["error_class"] == "BurnedInAnnotationError"
        assert "pixel rule" in by_name[name]["error_message"]


def test_no_phi_in_any_output(deid_run) -> None:  # type: ignore[no-untyped-def]
    checked = collect_phi((ds for _, ds in _input_dicoms(deid_run["inp"])), deid_run["config"], KEY)
    assert len(checked) > 150  # names, IDs, dates, times, UIDs, institutions, private values
    for must in (
        "SIMPSON^HOMER^J^",
        "00007041776",
        "SGH SPRINGFIELD GENERAL HOSPITAL",
        "20200704",
        "999887722",
    ):
        assert must in checked

    blobs: dict[str, bytes] = {}
    out = deid_run["out"]
    for p in out.rglob("*"):
        if not p.is_file():
            continue
        raw = p.read_bytes()
        if p.suffix == ".dcm":
            pixels = pydicom.dcmread(p).get("PixelData")
            if pixels is not None and len(pixels) > 0:
                raw = raw.replace(pixels, b"")
        blobs[str(p.relative_to(out))] = raw
    for table_dir in ("deid_audit", "quarantine"):
        rows = pq.read_table(out / table_dir).to_pylist()
        blobs[f"{table_dir} (decoded)"] = json.dumps(rows, default=str).encode()
    blobs["summary"] = json.dumps(deid_run["summary"]).encode()
    for p in deid_run["vault_dir"].iterdir():  # encrypted: no plaintext identifiers either
        blobs[f"vault/{p.name}"] = p.read_bytes()
    assert len([k for k in blobs if k.endswith(".dcm")]) >= 12

    found = find_phi(checked, blobs)
    print(f"PHI values checked: {len(checked)}; outputs scanned: {len(blobs)}; found: {len(found)}")
    assert found == []


def test_written_dicoms_are_valid_and_pixels_identical(deid_run) -> None:  # type: ignore[no-untyped-def]
    outputs = _outputs_by_source(deid_run["out"])
    compared = 0
    for path, src in _input_dicoms(deid_run["inp"]):
        target = outputs.get(_sha(path))
        if target is None:
            continue
        out = pydicom.dcmread(target)
        assert out.PatientIdentityRemoved == "YES"
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        rel = target.relative_to(deid_run["out"] / "dicom").parts
        assert rel == (
            out.PatientID,
            out.StudyInstanceUID,
            out.SeriesInstanceUID,
            out.SOPInstanceUID + ".dcm",
        )
        assert not any((int(e.tag) >> 16) % 2 for e in out.iterall())  # no private attribute left
        if "PixelData" not in src:
            continue
        assert (out.Rows, out.Columns) == (src.Rows, src.Columns)
        if "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}:
            continue  # cleaned: checked in test_ultrasound_banners_blanked
        assert out.PixelData == src.PixelData, path.name
        assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        np.testing.assert_array_equal(out.pixel_array, src.pixel_array)
        compared += 1
    assert compared >= 8


def test_ultrasound_banners_blanked(deid_run) -> None:  # type: ignore[no-untyped-def]
    outputs = _outputs_by_source(deid_run["out"])
    for name, band in (("GREYSCALE_IMAGE.dcm", 26), ("RGB_IMAGE.dcm", 58)):
        src_path = deid_run["inp"] / "ultrasounds" / name
        src = pydicom.dcmread(src_path)
        out = pydicom.dcmread(outputs[_sha(src_path)])
        a, b = src.pixel_array, out.pixel_array
        assert src.pixel_array[:band].any() and not b[:band].any()  # the reviewed rule's band
        np.testing.assert_array_equal(b[band:700], a[band:700])  # OCR off: only the rule's band is blanked
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert out.BurnedInAnnotation == "NO"
        assert "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}


def test_uids_consistent_references_resolve_and_runs_agree(deid_run) -> None:  # type: ignore[no-untyped-def]
    outputs = _outputs_by_source(deid_run["out"])
    series_in = sorted((deid_run["inp"] / "series").glob("ct_*.dcm"))
    outs = [pydicom.dcmread(outputs[_sha(p)]) for p in series_in]
    assert len({o.StudyInstanceUID for o in outs}) == 1 and len({o.SeriesInstanceUID for o in outs}) == 1
    assert len({o.SOPInstanceUID for o in outs}) == 3
    assert len({o.PatientID for o in outs}) == 1 and outs[0].PatientID.startswith("P")
    assert outs[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
    assert outs[2].SourceImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
    assert (
        outs[0].FrameOfReferenceUID
        == outs[1].FrameOfReferenceUID
        != pydicom.dcmread(series_in[0]).FrameOfReferenceUID
    )

    # second run, same key: identical UIDs and paths
    outputs2 = _outputs_by_source(deid_run["out2"])
    for p, o in zip(series_in, outs, strict=True):
        again = pydicom.dcmread(outputs2[_sha(p)])
        assert (again.StudyInstanceUID, again.SeriesInstanceUID, again.SOPInstanceUID) == (
            o.StudyInstanceUID,
            o.SeriesInstanceUID,
            o.SOPInstanceUID,
        )
        assert outputs2[_sha(p)].relative_to(deid_run["out2"]) == outputs[_sha(p)].relative_to(
            deid_run["out"]
        )
    # different key: different UIDs and pseudonym
    other = Deidentifier(deid_run["config"], OTHER_KEY).deidentify(pydicom.dcmread(series_in[0]))
    assert other.sop_uid != outs[0].SOPInstanceUID and other.study_uid != outs[0].StudyInstanceUID
    assert other.patient_pseudonym != outs[0].PatientID


def test_modified_dates_preserve_intervals(deid_run) -> None:  # type: ignore[no-untyped-def]
    s2 = deid_run["summary2"]
    assert s2["written"] == 4 and s2["quarantined_total"] == 0
    outputs2 = _outputs_by_source(deid_run["out2"])
    series_in = sorted((deid_run["inp"] / "series").glob("ct_*.dcm"))
    outs = [pydicom.dcmread(outputs2[_sha(p)]) for p in series_in]

    def d(v: str) -> dt.date:
        return dt.datetime.strptime(v, "%Y%m%d").date()

    assert outs[0].LongitudinalTemporalInformationModified == "MODIFIED"
    assert all(o.StudyDate == outs[0].StudyDate != "20040119" for o in outs)
    assert (d(outs[2].AcquisitionDate) - d(outs[2].StudyDate)).days == 5
    assert "113107" in {i.CodeValue for i in outs[0].DeidentificationMethodCodeSequence}
    brain = pydicom.dcmread(outputs2[_sha(deid_run["inp"] / "humans" / "ctbrain1.dcm")])
    assert brain.StudyDate != "20230101" and brain.StudyDate != ""
    assert (d(brain.StudyDate) - d(brain.SeriesDate)).days == 0  # both 20230101 in the input
    assert d("20230101") - d(brain.StudyDate) != d("20040119") - d(outs[0].StudyDate)  # per-patient shifts


def test_vault_readable_with_key_only_and_private(deid_run) -> None:  # type: ignore[no-untyped-def]
    vault_dir, key_file = deid_run["vault_dir"], deid_run["vault_key"]
    assert stat.S_IMODE(os.stat(vault_dir).st_mode) == 0o700
    files = list(vault_dir.iterdir())
    assert files and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    outputs = _outputs_by_source(deid_run["out"])
    brain = pydicom.dcmread(outputs[_sha(deid_run["inp"] / "humans" / "ctbrain1.dcm")])
    found = reidentify(str(vault_dir), brain.PatientID, str(key_file))
    assert found["kind"] == "patient"
    assert found["identifiers"]["PatientID"] == "00007041776"
    assert found["identifiers"]["PatientName"] == "SIMPSON^HOMER^J^"
    study = reidentify(str(vault_dir), brain.StudyInstanceUID, str(key_file))
    assert study["identifiers"]["StudyInstanceUID"] == "1.2.840.113696.376376.500.43158802.99999999999999"
    assert study["identifiers"]["AccessionNumber"] == "999887722"
    for f in files:
        with pytest.raises(OSError, match=r"encrypt|decrypt"):
            pq.read_table(f)
    wrong = generate_key_file(deid_run["tmp"] / "wrong.key")
    with pytest.raises(VaultKeyError, match="cannot decrypt"):
        read_vault(str(vault_dir), str(wrong))
    assert not any(str(deid_run["out"]) in str(p) for p in files)
