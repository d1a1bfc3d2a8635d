"""Format detection by content, on real files and on crafted headers."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.errors import ImageTooLargeError
from medimg_spark.io import detect

NIB_DATA = Path(__import__("nibabel").__file__).parent / "tests" / "data"


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CT_small.dcm", detect.DICOM),  # with preamble
        ("ExplVR_LitEndNoMeta.dcm", detect.DICOM),  # no preamble, explicit little endian
        ("ExplVR_BigEndNoMeta.dcm", detect.DICOM),  # no preamble, big endian
        ("no_meta.dcm", detect.DICOM),  # one stray byte before the first element
        ("OT-PAL-8-face.dcm", detect.DICOM),  # implicit VR, no meta
        ("zipMR.gz", detect.GZIP),
        ("rtplan.dump", None),  # a text dump of a DICOM file is not DICOM
        ("crayons.icc", None),
    ],
)
def test_detects_real_files(name: str, expected: str | None) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    assert detect.detect_format(data) == expected


def test_detects_images_by_content_not_name() -> None:
    gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    assert detect.detect_format(_png(gray16)) == detect.PNG
    ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))
    assert ok and detect.detect_format(jpg.tobytes()) == detect.JPEG
    ok, tif = cv2.imencode(".tiff", gray16)
    assert ok and detect.detect_format(tif.tobytes()) == detect.TIFF


def test_detects_nifti_and_npz() -> None:
    assert detect.detect_format((NIB_DATA / "anatomical.nii").read_bytes()) == detect.NIFTI1
    raw = gzip.decompress((NIB_DATA / "example_nifti2.nii.gz").read_bytes())
    assert detect.detect_format(raw) == detect.NIFTI2
    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
    assert detect.detect_format(buf.getvalue()) == detect.NPZ


def test_rejects_noise_and_text() -> None:
    rng = np.random.default_rng(0)
    assert detect.detect_format(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()) is None
    assert detect.detect_format(b"patient,label\nA,1\n") is None
    assert detect.detect_format(b"") is None


def test_gunzip_limit() -> None:
    data = gzip.compress(b"\0" * 1000)
    assert detect.gunzip(data, 1000) == b"\0" * 1000
    with pytest.raises(ImageTooLargeError, match="max_decompressed_bytes"):
        detect.gunzip(data, 999)
