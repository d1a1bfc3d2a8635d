"""``medimg export``: NIfTI/NRRD/DICOM/DICOM-SEG/PNG/JPEG files of lake tables, read back with SimpleITK,
pydicom and highdicom, and scanned for PHI.

One lake per module: real DICOMs (pydicom's CT5N series, deid-data's PHI-laden CT slices) read by
ingest's per-file code with their identifiers kept (the export must remove them), ``processed`` by
the segmenting ``denoise`` recipe, and hand-made ``volumes`` / ``volume_labels`` tables of the CT5N
series as SimpleITK's ``ImageSeriesReader`` reads it (the reference). Each Spark export runs once
per module; the other formats are checked on the core writers.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medimg_spark.cli import main
from medimg_spark.export import FORMATS
from medimg_spark.export.items import item_from_row
from medimg_spark.export.model import ExportContext, ExportItem, NoMaskError, SliceSource, frame_volume
from medimg_spark.export.nifti import nifti_bytes
from medimg_spark.export.nrrd import nrrd_bytes
from medimg_spark.export.stage import export
from medimg_spark.io.files import image_id
from medimg_spark.privacy import DeidConfig, Deidentifier
from medimg_spark.schema import VOLUMES_SCHEMA
from medimg_spark.volumes.model import Volume, from_sitk, volume_columns
from tests.phi import collect_phi, find_phi

KEY = bytes.fromhex("5a" * 32)
TOL = 1e-4


def _ct5n() -> Path:
    return Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"


def _reference() -> tuple[Any, list[str]]:
    reader = sitk.ImageSeriesReader()
    files = list(reader.GetGDCMSeriesFileNames(str(_ct5n())))
    reader.SetFileNames(files)
    return reader.Execute(), files


def _volume_row(volume: Volume, volume_id: str, table: str, image_ids: list[str], **extra: Any) -> dict:
    row: dict[str, Any] = {f.name: None for f in VOLUMES_SCHEMA}
    row.update(volume_columns(volume))
    row.update(
        volume_id=volume_id,
        source_table=table,
        modality="CT",
        source_format="dicom",
        image_ids=image_ids,
        slice_positions=[float(k) for k in range(len(image_ids))],
        missing_slices=0,
        duplicate_slices=0,
        irregular_spacing=False,
        mixed_geometry=False,
        status="ok",
        flags=[],
        volumes_run_id="test",
    )
    row.update(extra)
    return row


def _write_table(folder: Path, rows: list[dict], schema: Any) -> None:
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow = to_arrow_schema(schema, timezone="UTC")
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in arrow.names} for r in rows], schema=arrow)
    pq.write_table(table, folder / "part-00000.parquet")


def _ingest_without_spark(inp: Path, out: Path) -> None:
    """``images``/``instances`` of ``inp`` by ingest's per-file code, identifiers kept (as ``--keep-phi``),
    and ``processed`` by preprocess's per-frame code with the segmenting ``denoise`` recipe: the lake the
    Spark stages would write, without their jobs (the export runs are this module's Spark work)."""
    from medimg_spark.io.files import FileContext, process_file
    from medimg_spark.io.ingest import IDENTIFIED_MARKER
    from medimg_spark.ops import load_recipe
    from medimg_spark.preprocess import PROCESSED_SCHEMA, process_row
    from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA

    ctx = FileContext(run_id="ingest-test")
    rows = [
        r for p in sorted(inp.rglob("*")) if p.is_file() for r in process_file(str(p), p.read_bytes(), ctx)
    ]
    images = [r for r in rows if r["_kind"] == "image"]
    assert len(images) == 7 and not [r for r in rows if r["_kind"] == "quarantine"]
    _write_table(out / "images", [{**r, "ingest_run_id": "ingest-test"} for r in images], IMAGES_SCHEMA)
    instances = [{**r, "ingest_run_id": "ingest-test"} for r in rows if r["_kind"] == "instance"]
    _write_table(out / "instances", instances, INSTANCES_SCHEMA)
    (out / IDENTIFIED_MARKER).write_text("ingest-test: ingested with --keep-phi\n")
    recipe = load_recipe("denoise")
    processed = [process_row(r, recipe, "preprocess-test") for r in images]
    assert all(p["ok"] and p["mask"] is not None for p in processed)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    _write_table(out / "processed", [{**p, "processed_at": now} for p in processed], PROCESSED_SCHEMA)


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    import deid_data

    assert spark is not None  # the export runs below are the Spark work
    tmp = tmp_path_factory.mktemp("export")
    inp = tmp / "in"
    shutil.copytree(_ct5n(), inp / "ct5n")
    shutil.copytree(Path(deid_data.__file__).parent / "data" / "humans", inp / "humans")
    out = tmp / "lake"
    _ingest_without_spark(inp, out)

    ref, files = _reference()
    ids = [image_id(hashlib.sha256(Path(f).read_bytes()).hexdigest(), 0) for f in files]
    volume = from_sitk(ref)
    labels = np.zeros(volume.voxels.shape, dtype=np.uint16)
    labels[volume.voxels > 0] = 1
    labels[:, :3, :3] = 4
    label_volume = Volume(labels, volume.spacing, volume.origin, volume.direction)
    vid = hashlib.sha256(b"ct5n").hexdigest()
    tables = {
        "volumes": [_volume_row(volume, vid, "volumes", ids)],
        "volume_labels": [
            _volume_row(label_volume, vid, "volume_labels", ids, recipe_name="threshold"),
            # a label map whose frames were never ingested: no source header → quarantined, not a job failure
            _volume_row(
                label_volume,
                hashlib.sha256(b"orphan").hexdigest(),
                "volume_labels",
                ["0" * 64] * len(ids),
                recipe_name="threshold",
            ),
        ],
    }
    for name, rows in tables.items():
        _write_table(out / name, rows, VOLUMES_SCHEMA)

    # deid-data's CT brain slices say BurnedInAnnotation YES: the privacy engine quarantines them unless allowed
    context = ExportContext(key=KEY, deid_config=DeidConfig(), allow_burned_in=True)
    runs = {
        (table, fmt): export(spark, str(out), table, fmt, context=context)
        for table, fmt in (("volumes", "nifti"), ("volume_labels", "seg"), ("processed", "dicom"))
    }
    runs[("images", "png")] = export(spark, str(out), "images", "png", where="modality = 'CT'", limit=5)
    return {
        "out": out,
        "inp": inp,
        "runs": runs,
        "ref": ref,
        "files": files,
        "ids": ids,
        "labels": labels,
        "vid": vid,
        "context": context,
    }


def _files(lake: dict, table: str, fmt: str) -> list[Path]:
    summary = lake["runs"][(table, fmt)]
    return sorted(p for p in Path(summary["folder"]).rglob("*") if p.is_file())


def _assert_same_image(path: Path, ref: Any) -> None:
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == ref.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), atol=TOL)
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=TOL)
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=TOL)


def test_volume_export_reads_back_in_simpleitk_as_the_series(lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (path,) = _files(lake, "volumes", "nifti")
    assert path.name == f"{lake['vid']}.nii.gz"
    _assert_same_image(path, lake["ref"])
    # NRRD: the same writer interface on the stored row (the stage is format-agnostic)
    row = pq.read_table(lake["out"] / "volumes").to_pylist()[0]
    item = item_from_row(row, "volumes")
    (nrrd_file,) = FORMATS.get("nrrd").write(item, lake["context"])
    assert nrrd_file.rel == f"{lake['vid']}.nrrd"
    (tmp_path / nrrd_file.rel).write_bytes(nrrd_file.data)
    _assert_same_image(tmp_path / nrrd_file.rel, lake["ref"])


@pytest.mark.parametrize("writer,suffix", [(nifti_bytes, ".nii.gz"), (nrrd_bytes, ".nrrd")])
def test_oblique_geometry_round_trips(tmp_path, writer, suffix) -> None:  # type: ignore[no-untyped-def]
    ref, _ = _reference()
    a, b = 0.4, -0.25
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ref.SetDirection(tuple((rz @ rx).reshape(-1)))
    path = tmp_path / f"oblique{suffix}"
    path.write_bytes(writer(from_sitk(ref)))
    _assert_same_image(path, ref)


def test_frame_volume_places_a_frame_in_lps() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    v = frame_volume(
        ds.pixel_array, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, 5.0
    )
    row, col = np.asarray(ds.ImageOrientationPatient[:3]), np.asarray(ds.ImageOrientationPatient[3:])
    # pixel (r, c) is at IPP + c * col_spacing * row_cosines + r * row_spacing * column_cosines (PS3.3 C.7.6.2.1.1)
    r, c = 7, 11
    expected = (
        np.asarray(ds.ImagePositionPatient) + c * ds.PixelSpacing[1] * row + r * ds.PixelSpacing[0] * col
    )
    np.testing.assert_allclose((v.affine_lps() @ [c, r, 0, 1])[:3], expected, atol=1e-9)


def _pseudonymised(path: str) -> pydicom.Dataset:
    return Deidentifier(DeidConfig(), KEY).deidentify(pydicom.dcmread(path)).dataset


def _series_item(table: str, volume: Volume, files: list[str], **extra: Any) -> ExportItem:
    """An item of the CT5N series with its real headers (what the stage joins from ``instances``)."""
    from medimg_spark.io.dicom import header_json

    slices = [SliceSource(f"id{k}", header_json(pydicom.dcmread(f)), True) for k, f in enumerate(files)]
    return ExportItem(table, hashlib.sha256(b"ct5n").hexdigest(), volume, slices=slices, **extra)


def test_derived_series_references_its_sources_with_new_uids_and_equal_pixels() -> None:
    ref, files = _reference()
    volume = from_sitk(ref)
    halved = Volume(volume.voxels // 2, volume.spacing, volume.origin, volume.direction)
    item = _series_item("processed_volumes", halved, files, recipe="halve")
    written = FORMATS.get("dicom").write(item, ExportContext(key=KEY))
    assert [f.rel for f in written] == [f"{item.file_stem}/{k:04d}.dcm" for k in range(len(files))]
    assert written == FORMATS.get("dicom").write(item, ExportContext(key=KEY))  # deterministic: same UIDs
    sources = [pydicom.dcmread(f) for f in files]
    expected = [_pseudonymised(f) for f in files]
    series = set()
    for k, f in enumerate(written):
        ds = pydicom.dcmread(io.BytesIO(f.data))
        assert int(ds.InstanceNumber) == k + 1
        series.add(ds.SeriesInstanceUID)
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and "halve" in ds.DerivationDescription
        assert ds.SOPInstanceUID not in {s.SOPInstanceUID for s in sources} | {
            e.SOPInstanceUID for e in expected
        }
        assert ds.SeriesInstanceUID not in {sources[0].SeriesInstanceUID, expected[0].SeriesInstanceUID}
        assert ds.StudyInstanceUID == expected[k].StudyInstanceUID != sources[k].StudyInstanceUID
        assert ds.PatientID == expected[k].PatientID != sources[k].PatientID
        source_ref = ds.SourceImageSequence[0]
        assert source_ref.ReferencedSOPInstanceUID == expected[k].SOPInstanceUID
        assert source_ref.ReferencedSOPClassUID == sources[k].SOPClassUID
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(values, halved.voxels[k])
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient],
            ref.TransformIndexToPhysicalPoint((0, 0, k)),
            atol=TOL,
        )
    assert len(series) == 1


def test_processed_frames_export_as_derived_dicom(lake) -> None:  # type: ignore[no-untyped-def]
    from medimg_spark.io.pixels import to_array

    processed = {r["image_id"]: r for r in pq.read_table(lake["out"] / "processed").to_pylist()}
    run = lake["runs"][("processed", "dicom")]
    assert run["items_exported"] == len(processed) == 7 and run["items_failed"] == 0
    manifest = pq.read_table(lake["out"] / "exports" / "manifest").to_pylist()
    by_path = {m["path"]: m for m in manifest if m["ok"]}
    paths = _files(lake, "processed", "dicom")
    assert len(paths) == 7
    for path in paths:
        entry = by_path[path.relative_to(lake["out"] / "exports").as_posix()]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        ds = pydicom.dcmread(path)
        values = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_array_equal(values, to_array(processed[entry["source_id"]]))
        assert "denoise" in ds.DerivationDescription and ds.SourceImageSequence[0].ReferencedSOPInstanceUID


def test_processed_mask_exports_as_seg_of_its_source_frame() -> None:
    from medimg_spark.io.dicom import header_json

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    mask = (pixels > np.median(pixels)).astype(np.uint8)
    item = ExportItem(
        "processed",
        "f" * 64,
        frame_volume(pixels, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing, 5.0),
        mask=mask,
        recipe="denoise",
        recipe_hash="ab" * 32,
        slices=[SliceSource("f" * 64, header_json(ds), True)],
    )
    (written,) = FORMATS.get("seg").write(item, ExportContext(key=KEY))
    seg = hd.seg.segread(io.BytesIO(written.data))
    expected = _pseudonymised(path)
    assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label == "mask"
    assert [uids[2] for uids in seg.get_source_image_uids()] == [expected.SOPInstanceUID]
    assert seg.PatientID == expected.PatientID != ds.PatientID
    got = seg.get_pixels_by_source_instance([expected.SOPInstanceUID], combine_segments=True)[0]
    np.testing.assert_array_equal(got, mask)
    with pytest.raises(NoMaskError):
        FORMATS.get("seg").write(
            ExportItem("processed", "e" * 64, item.volume, slices=item.slices), ExportContext(key=KEY)
        )


def test_label_map_exports_as_seg_referencing_the_series(lake) -> None:  # type: ignore[no-untyped-def]
    run = lake["runs"][("volume_labels", "seg")]
    assert run["items_exported"] == 1 and run["failed_by_error_class"] == {"NoSourceHeaderError": 1}
    (path,) = _files(lake, "volume_labels", "seg")
    seg = hd.seg.segread(path)
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == [
        "label 1",
        "label 4",
    ]
    expected = [_pseudonymised(f) for f in lake["files"]]
    refs = {uids[2] for uids in seg.get_source_image_uids()}
    assert refs == {e.SOPInstanceUID for e in expected}
    assert seg.StudyInstanceUID == expected[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == expected[0].FrameOfReferenceUID
    for k, e in enumerate(expected):
        got = seg.get_pixels_by_source_instance([e.SOPInstanceUID], combine_segments=True, relabel=True)[0]
        want = np.searchsorted([0, 1, 4], lake["labels"][k])
        np.testing.assert_array_equal(got, want)
    quarantine = pq.read_table(lake["out"] / "quarantine").to_pylist()
    failed = [q for q in quarantine if q["stage"] == "export"]
    assert (
        len(failed) == 1 and failed[0]["step"] == "seg" and failed[0]["error_class"] == "NoSourceHeaderError"
    )


def test_thumbnails_are_bounded_8_bit_images(lake) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    pngs = _files(lake, "images", "png")
    assert len(pngs) == lake["runs"][("images", "png")]["items_selected"] == 5  # --limit 5 of the 7 CT frames
    first = sorted(r["image_id"] for r in pq.read_table(lake["out"] / "images").to_pylist())[:5]
    assert [p.stem for p in pngs] == first
    for p in pngs:
        with Image.open(p) as img:
            assert (
                img.format == "PNG"
                and img.mode in ("L", "RGB")
                and max(img.size) <= 256
                and not img.info.get("text")
            )
            assert np.asarray(img).std() > 0
    row = pq.read_table(lake["out"] / "volumes").to_pylist()[0]
    (jpeg,) = FORMATS.get("jpeg").write(item_from_row(row, "volumes"), lake["context"])
    with Image.open(io.BytesIO(jpeg.data)) as img:
        assert img.format == "JPEG" and img.size == (16, 16)


def test_no_phi_in_the_export_folder_names_or_manifest(lake) -> None:  # type: ignore[no-untyped-def]
    inputs = [pydicom.dcmread(p) for p in sorted(lake["inp"].rglob("*")) if p.is_file()]
    checked = collect_phi(inputs, DeidConfig(), KEY)
    assert "Doe^Peter" in checked and len(checked) > 50
    assert lake["runs"][("processed", "dicom")]["items_failed"] == 0  # deid-data's PHI-laden slices exported
    exports = lake["out"] / "exports"
    blobs: dict[str, bytes] = {}
    for p in exports.rglob("*"):
        if p.is_file() and p.suffix != ".parquet":
            blobs[str(p.relative_to(exports))] = p.read_bytes()
    blobs["file names"] = "\n".join(str(p.relative_to(lake["out"])) for p in exports.rglob("*")).encode()
    blobs["manifest"] = json.dumps(pq.read_table(exports / "manifest").to_pylist(), default=str).encode()
    assert len(blobs) > 20
    assert find_phi(checked, blobs) == []
    assert (lake["out"] / "IDENTIFIED").exists()  # the source lake kept them: the export removed them


def test_rerun_through_the_cli_is_idempotent(lake, capsys) -> None:  # type: ignore[no-untyped-def]
    first = lake["runs"][("volumes", "nifti")]
    manifest = lake["out"] / "exports" / "manifest"
    before = pq.read_table(manifest).num_rows
    assert (
        main(["export", "--out", str(lake["out"]), "--table", "volumes", "--format", "nifti", "--json"]) == 0
    )
    again = json.loads(capsys.readouterr().out)
    assert again["export_run_id"] == first["export_run_id"]
    assert again["items_skipped"] == again["items_selected"] == 1 and again["files_written"] == 0
    assert pq.read_table(manifest).num_rows == before


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--table", "images", "--format", "seg"], "for images choose --format"),
        (["--table", "volume_labels", "--format", "seg"], "--key-file"),
        (["--table", "volumes", "--format", "nifti", "--limit", "0"], "--limit"),
        (["--table", "volumes", "--format", "nifti", "--out", "s3a://bucket/lake"], "POSIX"),
    ],
)
def test_bad_requests_exit_2_before_spark(tmp_path, capsys, monkeypatch, argv, needle) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MEDIMG_DEID_KEY", raising=False)
    monkeypatch.delenv("MEDIMG_DEID_KEY_FILE", raising=False)
    assert main(["export", "--out", str(tmp_path), *argv]) == 2
    assert needle in capsys.readouterr().err


def test_export_item_file_names_carry_no_source_text() -> None:
    v = frame_volume(np.zeros((4, 4), dtype=np.uint8))
    item = ExportItem("volumes", "1.2.840.99^DOE^JOHN", v)
    assert item.file_stem.isalnum() and "DOE" not in item.file_stem


def test_burned_in_text_check_quarantines_unless_allowed() -> None:
    import deid_data

    from medimg_spark.io.dicom import header_json
    from medimg_spark.privacy import BurnedInAnnotationError

    ds = pydicom.dcmread(Path(deid_data.__file__).parent / "data" / "humans" / "ctbrain1.dcm")
    item = ExportItem(
        "processed",
        "x" * 64,
        frame_volume(np.zeros((8, 8), dtype=np.uint8)),
        recipe="r",
        slices=[SliceSource("x", header_json(ds), True)],
    )
    with pytest.raises(BurnedInAnnotationError):  # without OCR: refused
        FORMATS.get("dicom").write(item, ExportContext(key=KEY, deid_config=DeidConfig(ocr="off")))
    assert FORMATS.get("dicom").write(item, ExportContext(key=KEY, allow_burned_in=True))


def test_core_writers_import_without_pyspark() -> None:
    from tests.test_layers import _run

    out = _run(
        """
        import json, sys
        import numpy as np
        from medimg_spark.export import FORMATS
        from medimg_spark.export.model import ExportContext, ExportItem, frame_volume
        from medimg_spark.export.items import item_from_row

        item = ExportItem("images", "a" * 64, frame_volume(np.arange(12, dtype=np.uint16).reshape(3, 4)))
        sizes = {name: len(FORMATS.get(name).write(item, ExportContext())[0].data) for name in ("nifti", "nrrd", "png")}
        for name in ("dicom", "seg"):
            FORMATS.get(name)
        print(json.dumps({"spark": any(m.startswith("pyspark") for m in sys.modules), "sizes": sizes}))
        """
    )
    assert out["spark"] is False and all(n > 0 for n in out["sizes"].values())


def test_a_header_deidentified_at_ingest_keeps_its_pseudonyms() -> None:
    from medimg_spark.export.items import slice_source
    from medimg_spark.io.dicom import header_json

    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ingested = (
        Deidentifier(DeidConfig(retain_longitudinal_modified_dates=True), KEY).deidentify(original).dataset
    )
    source = slice_source("i" * 64, header_json(ingested), "ingest-1", 0, identified_runs=["other-run"])
    assert source.identified is False
    assert slice_source("i" * 64, header_json(ingested), "ingest-1", 0, ["ingest-1"]).identified is True
    assert slice_source("i" * 64, header_json(original), "ingest-1", 0, []).identified is True
    pixels = ingested.pixel_array
    item = ExportItem(
        "processed",
        "i" * 64,
        frame_volume(
            pixels, ingested.ImagePositionPatient, ingested.ImageOrientationPatient, ingested.PixelSpacing
        ),
        recipe="r",
        slices=[source],
    )
    (written,) = FORMATS.get("dicom").write(item, ExportContext(key=KEY))
    ds = pydicom.dcmread(io.BytesIO(written.data))
    assert ds.StudyInstanceUID == ingested.StudyInstanceUID
    assert ds.FrameOfReferenceUID == ingested.FrameOfReferenceUID
    assert ds.PatientID == ingested.PatientID and ds.StudyDate == ingested.StudyDate != original.StudyDate
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ingested.SOPInstanceUID
    assert ds.SOPInstanceUID != ingested.SOPInstanceUID and ds.SeriesInstanceUID != ingested.SeriesInstanceUID


def test_rgb_secondary_capture_without_frame_of_reference_exports_as_dicom_and_seg() -> None:
    from medimg_spark.io.dicom import header_json

    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    rgb = ds.pixel_array
    mask = (rgb[..., 0] > 100).astype(np.uint8)
    item = ExportItem(
        "processed",
        "c" * 64,
        frame_volume(rgb),
        mask=mask,
        recipe="r",
        slices=[SliceSource("c", header_json(ds))],
    )
    seg = hd.seg.segread(io.BytesIO(FORMATS.get("seg").write(item, ExportContext(key=KEY))[0].data))
    np.testing.assert_array_equal(seg.pixel_array, mask)
    with pytest.raises(Exception, match="burned-in"):  # Secondary Capture is text-prone: refused without OCR
        FORMATS.get("dicom").write(item, ExportContext(key=KEY, deid_config=DeidConfig(ocr="off")))
    (written,) = FORMATS.get("dicom").write(item, ExportContext(key=KEY, allow_burned_in=True))
    derived = pydicom.dcmread(io.BytesIO(written.data))
    assert derived.PhotometricInterpretation == "RGB" and "RescaleSlope" not in derived
    np.testing.assert_array_equal(derived.pixel_array, rgb)
