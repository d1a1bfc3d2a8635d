"""The per-file ingest core (no Spark): real files in, table rows out; every failure typed."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.io.files import FileContext, image_id, local_path, process_file, process_files
from medimg_spark.io.pixels import decode, encode, to_array

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
CTX = FileContext(run_id="test-run")


def rows(data: bytes, path: str = "file:/x/f.bin", ctx: FileContext = CTX) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"image": [], "instance": [], "quarantine": []}
    for r in process_file(path, data, ctx):
        out[r["_kind"]].append(r)
    return out


def test_pixel_encoding_roundtrip_keeps_dtype_and_endianness() -> None:
    for dtype in ("uint8", "uint16", "int16", "float32", ">i2", ">f4"):
        arr = (np.arange(24).reshape(2, 4, 3) * 7 - 20).astype(dtype)
        pixels, r, c, ch, name = encode(arr)
        assert (r, c, ch) == (2, 4, 3) and name == np.dtype(dtype).name
        back = decode(pixels, r, c, ch, name)
        assert back.dtype == np.dtype(name) and back.dtype.byteorder in ("=", "|", "<")
        np.testing.assert_array_equal(back, arr)
    with pytest.raises(ValueError, match="expected rows"):
        decode(b"\0" * 7, 2, 2, 1, "uint16")


def test_ct_small_frame_equals_pydicom() -> None:
    path = get_testdata_file("CT_small.dcm")
    out = rows(Path(path).read_bytes(), "file:" + path)
    ref = pydicom.dcmread(path)
    (inst,) = out["instance"]
    assert inst["modality"] == "CT" and inst["has_pixels"] and inst["n_frames"] == 1
    assert '"00100020"' in inst["header_json"]  # PatientID present: this call did not de-identify
    (img,) = out["image"]
    np.testing.assert_array_equal(to_array(img), ref.pixel_array)
    assert img["dtype"] == "int16"
    assert img["rescale_slope"] == float(ref.RescaleSlope)
    assert img["rescale_intercept"] == float(ref.RescaleIntercept)
    assert img["pixel_spacing"] == [float(v) for v in ref.PixelSpacing]
    assert img["image_id"] == image_id(inst["file_sha256"], 0)
    assert img["sop_instance_uid"] == ref.SOPInstanceUID


def test_multiframe_dicom_becomes_one_row_per_frame() -> None:
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    out = rows(Path(path).read_bytes())
    ref = pydicom.dcmread(path).pixel_array
    assert [r["frame_index"] for r in out["image"]] == [0, 1]
    for r in out["image"]:
        assert r["channels"] == 3 and r["photometric"] == "RGB"
        np.testing.assert_array_equal(to_array(r), ref[r["frame_index"]])


def test_ybr_is_stored_as_rgb_like_pixel_array() -> None:
    path = get_testdata_file("SC_ybr_full_422_uncompressed.dcm")
    (img,) = rows(Path(path).read_bytes())["image"]
    assert img["photometric"] == "RGB"
    np.testing.assert_array_equal(to_array(img), pydicom.dcmread(path).pixel_array)


def test_recovers_file_with_stray_byte_and_no_meta() -> None:
    """no_meta.dcm is CT_small.dcm without file meta and one leading junk byte."""
    out = rows(Path(get_testdata_file("no_meta.dcm")).read_bytes())
    (inst,) = out["instance"]
    assert "skipped_1_leading_bytes" in inst["recovered"] and "inferred_transfer_syntax" in inst["recovered"]
    (img,) = out["image"]
    np.testing.assert_array_equal(
        to_array(img), pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    )


def test_recovers_gzip_wrapped_dicom() -> None:
    path = get_testdata_file("zipMR.gz")
    out = rows(Path(path).read_bytes())
    (inst,) = out["instance"]
    assert inst["recovered"].startswith("gunzip")
    ref = pydicom.dcmread(io.BytesIO(gzip.decompress(Path(path).read_bytes())), force=True).pixel_array
    np.testing.assert_array_equal(to_array(out["image"][0]), ref)


def test_metadata_only_objects_have_no_frames() -> None:
    for name in ("rtplan.dcm", "test-SR.dcm"):
        out = rows(Path(get_testdata_file(name)).read_bytes())
        (inst,) = out["instance"]
        assert inst["has_pixels"] is False and inst["n_frames"] == 0
        assert not out["image"] and not out["quarantine"]


@pytest.mark.parametrize(
    ("make", "stage", "error_class"),
    [
        (lambda: b"", "read", "EmptyFileError"),
        (
            lambda: np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
            "parse",
            "UnsupportedFormatError",
        ),
        (lambda: b"just some text\n" * 20, "parse", "UnsupportedFormatError"),
        (lambda: Path(get_testdata_file("CT_small.dcm")).read_bytes()[:3000], "parse", "TruncatedFileError"),
        (lambda: Path(get_testdata_file("CT_small.dcm")).read_bytes()[:-500], "parse", "TruncatedFileError"),
        (lambda: Path(get_testdata_file("rtplan_truncated.dcm")).read_bytes(), "parse", "TruncatedFileError"),
    ],
    ids=["empty", "random-bytes", "text", "truncated-header", "truncated-pixels", "truncated-sequence"],
)
def test_bad_input_is_quarantined_with_a_typed_reason(make, stage: str, error_class: str) -> None:
    out = rows(make(), "file:/data/bad.dcm")
    (q,) = out["quarantine"]
    assert (q["stage"], q["error_class"]) == (stage, error_class), q["error_message"]
    assert q["error_message"] and q["ingest_run_id"] == "test-run"
    assert not out["image"]


def _nifti_with_datatype(code: int) -> bytes:
    img = nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4))
    data = bytearray(img.to_bytes())
    data[70:72] = np.int16(code).tobytes()  # datatype (NIfTI-1 header offset 70)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "path", "stage", "message"),
    [
        # zlib's own ``error`` while the gzip wrapper is inflated
        (b"\x1f\x8b\x08\x00" + bytes(5) + b"\xff" + b"\xff" * 64, "file:/x/f.dcm.gz", "parse", "error: "),
        (
            gzip.compress(b"x" * 5000)[:-8] + bytes(8),
            "file:/x/f.gz",
            "parse",
            "BadGzipFile: CRC check failed",
        ),
        (_nifti_with_datatype(9999), "file:/x/f.nii", "parse", "HeaderDataError: data code 9999"),
    ],
    ids=["zlib-error", "gzip-crc", "nifti-datatype"],
)
def test_a_library_exception_is_quarantined_as_its_stage_class(
    data: bytes, path: str, stage: str, message: str
) -> None:
    (q,) = rows(data, path)["quarantine"]
    assert (q["stage"], q["error_class"]) == (stage, "MalformedFileError")
    assert q["error_message"].startswith(message), q["error_message"]


def test_a_listed_file_that_cannot_be_read_is_an_unreadable_path(tmp_path: Path) -> None:
    folder = tmp_path / "named_like_a_file.dcm"
    folder.mkdir()
    (q,) = process_files(iter([(f"file:{folder}", None)]), CTX)
    assert (q["_kind"], q["stage"], q["error_class"]) == ("quarantine", "read", "UnreadablePathError")
    assert q["error_message"].startswith("IsADirectoryError: ")


def test_a_listed_file_that_grew_past_the_limit_is_too_large(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    listed = tmp_path / "ct.dcm"
    listed.write_bytes(data)
    ctx = FileContext(run_id="t", max_file_bytes=len(data))
    assert [r["_kind"] for r in process_files(iter([(f"file:{listed}", None)]), ctx)] == ["instance", "image"]
    listed.write_bytes(data + b"\0")  # appended to after the listing checked its size
    (q,) = process_files(iter([(f"file:{listed}", None)]), ctx)
    assert (q["_kind"], q["stage"], q["error_class"]) == ("quarantine", "read", "FileTooLargeError")
    assert f"{len(data) + 1} bytes, over ingest.max_file_bytes ({len(data)})" in q["error_message"]


def test_png_with_broken_chunk_is_quarantined_at_decode() -> None:
    ok, buf = cv2.imencode(".png", (np.arange(4096) % 251).astype(np.uint8).reshape(64, 64))
    assert ok
    data = bytearray(buf.tobytes())
    idat = data.find(b"IDAT")
    data[idat + 8 : idat + 40] = b"\xff" * 32  # corrupt the compressed stream inside IDAT
    out = rows(bytes(data))
    (q,) = out["quarantine"]
    assert (q["stage"], q["error_class"]) == ("decode", "DecodeError")


def test_png_16bit_and_rgb_and_tiff_pages() -> None:
    gray16 = (np.arange(30 * 20, dtype=np.uint32).reshape(30, 20) * 97 % 65536).astype(np.uint16)
    ok, buf = cv2.imencode(".png", gray16)
    (img,) = rows(buf.tobytes())["image"]
    assert img["dtype"] == "uint16" and img["channels"] == 1
    np.testing.assert_array_equal(to_array(img), gray16)
    bgr = np.dstack([gray16 % 256, gray16 // 256, np.zeros_like(gray16)]).astype(np.uint8)
    ok, buf = cv2.imencode(".png", bgr)
    (img,) = rows(buf.tobytes())["image"]
    assert img["photometric"] == "RGB"
    np.testing.assert_array_equal(to_array(img), bgr[..., ::-1])
    ok, buf = cv2.imencodemulti(".tiff", [gray16, gray16[::-1].copy()])
    assert ok
    out = rows(buf.tobytes())
    assert out["instance"][0]["n_frames"] == 2
    np.testing.assert_array_equal(to_array(out["image"][1]), gray16[::-1])


@pytest.mark.parametrize(
    "name", ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz"]
)
def test_nifti_slices_equal_nibabel(name: str) -> None:
    path = NIB_DATA / name
    img = nib.load(path)
    raw = np.asanyarray(img.dataobj.get_unscaled())
    scaled = img.get_fdata()
    out = rows(path.read_bytes())
    shape = img.shape
    z = shape[2] if len(shape) > 2 else 1
    assert len(out["image"]) == int(np.prod(shape[2:])) == out["instance"][0]["n_frames"]
    for r in out["image"]:
        k, t = r["frame_index"] % z, r["frame_index"] // z
        idx = (slice(None), slice(None), k) + ((t,) if len(shape) == 4 else ())
        np.testing.assert_array_equal(to_array(r), raw[idx])
        slope = r["rescale_slope"] or 1.0
        inter = r["rescale_intercept"] or 0.0
        np.testing.assert_allclose(to_array(r) * slope + inter, scaled[idx], rtol=1e-6)


def test_medmnist_npz_labels_and_splits(sample_npz: Path) -> None:
    ref = np.load(sample_npz)
    out = rows(sample_npz.read_bytes())
    imgs = out["image"]
    assert len(imgs) == len(ref["train_images"]) + len(ref["val_images"])
    for split in ("train", "val"):
        got = [r for r in imgs if r["split"] == split]
        assert len(got) == len(ref[f"{split}_images"])
        labels = np.array([int(r["label"]) for r in got])
        np.testing.assert_array_equal(labels, ref[f"{split}_labels"].ravel())
        np.testing.assert_array_equal(to_array(got[7]), ref[f"{split}_images"][7])


def test_npz_with_only_a_test_split() -> None:
    buf = io.BytesIO()
    arr = np.arange(3 * 5 * 5, dtype=np.uint8).reshape(3, 5, 5)
    np.savez(buf, test_images=arr, test_labels=np.array([[1], [0], [1]], np.uint8))
    imgs = rows(buf.getvalue())["image"]
    assert [(r["split"], r["label"]) for r in imgs] == [("test", "1"), ("test", "0"), ("test", "1")]


def test_labels_from_csv_mapping_and_parent_dir() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    # binaryFile's path column is a Hadoop path string: not URI-encoded, so never percent-decoded.
    ctx = FileContext(
        run_id="r",
        labels_by_path={"/data/a b/ct.dcm": ("nodule", "train"), "/data/x%20y/ct.dcm": ("cyst", "val")},
    )
    (img,) = rows(data, "file:/data/a b/ct.dcm", ctx)["image"]
    assert (img["label"], img["split"]) == ("nodule", "train")
    (img,) = rows(data, "file:/data/x%20y/ct.dcm", ctx)["image"]
    assert (img["label"], img["split"]) == ("cyst", "val")
    ctx = FileContext(run_id="r", label_from_parent_dir=True)
    (img,) = rows(data, "file:/data/pneumonia/ct.dcm", ctx)["image"]
    assert (img["label"], img["split"]) == ("pneumonia", None)
    (img,) = rows(data, "file:/data/percent%20enc/ct.dcm", ctx)["image"]
    assert img["label"] == "percent%20enc"


@pytest.mark.parametrize(
    "path, local",
    [
        ("file:/data/a b/x.dcm", "/data/a b/x.dcm"),
        ("file:/data/x%20y/p%25.dcm", "/data/x%20y/p%25.dcm"),  # decoded exactly once: not at all here
        ("file:/data/a#b/q?.dcm", "/data/a#b/q?.dcm"),
        ("file:///data/a:b.dcm", "/data/a:b.dcm"),
        ("file://localhost/data/x.dcm", "/data/x.dcm"),
        ("/data/x%20y", "/data/x%20y"),
        ("hdfs://nn:8020/data/x%20y", "hdfs://nn:8020/data/x%20y"),
    ],
)
def test_local_path_never_percent_decodes(path: str, local: str) -> None:
    assert local_path(path) == local
