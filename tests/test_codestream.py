"""Codestream headers (io/codestream.py) and transfer-syntax inference on real compressed DICOMs."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from medimg_spark.io import codestream
from medimg_spark.io.dicom import codestream_geometry, read_dataset_bytes
from medimg_spark.io.raster import jpeg_size

#: pydicom's compressed test files: every JPEG process, JPEG-LS lossless and near-lossless, JPEG 2000, RLE.
COMPRESSED = (
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LL.dcm",
    "JPEG-lossy.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "MR_small_RLE.dcm",
)


def without_transfer_syntax(raw: bytes) -> bytes:
    """The file with (0002,0010) cut out of its File Meta Information (group length adjusted)."""
    i = raw.index(b"\x02\x00\x10\x00UI")
    n = struct.unpack("<H", raw[i + 6 : i + 8])[0]
    out = raw[:i] + raw[i + 8 + n :]
    g = out.index(b"\x02\x00\x00\x00UL")
    length = struct.unpack("<I", out[g + 8 : g + 12])[0] - (8 + n)
    return out[: g + 8] + struct.pack("<I", length) + out[g + 12 :]


@pytest.mark.parametrize("name", COMPRESSED)
def test_lost_transfer_syntax_is_inferred_from_the_codestream(name: str) -> None:
    """The codestream starts in the item after the Basic Offset Table (the first item, usually empty):
    the inferred syntax is the original one and the pixels decode exactly as pydicom decodes the original."""
    path = get_testdata_file(name)
    original = pydicom.dcmread(path)
    ds, recovered = read_dataset_bytes(without_transfer_syntax(Path(path).read_bytes()))
    assert "inferred_transfer_syntax" in recovered
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    try:
        expected = original.pixel_array
    except Exception:  # JPEG-lossy.dcm: no installed codec decodes its 12-bit JPEG Extended stream
        with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises for the original
            _ = ds.pixel_array
        return
    np.testing.assert_array_equal(ds.pixel_array, expected)


@pytest.mark.parametrize("name", [n for n in COMPRESSED if "RLE" not in n])
def test_codestream_geometry_matches_the_image_pixel_module(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    frames = int(ds.get("NumberOfFrames") or 1)
    first = next(generate_frames(ds.PixelData, number_of_frames=frames))
    assert codestream_geometry(first) == (ds.Rows, ds.Columns, ds.SamplesPerPixel)
    found = codestream.geometry(first)
    assert found is not None and found.precision == ds.BitsStored


def test_jpeg_ls_near_parameter() -> None:
    def near(name: str) -> int:
        ds = pydicom.dcmread(get_testdata_file(name))
        return codestream.jpeg_ls_near(next(generate_frames(ds.PixelData, number_of_frames=1)))

    assert near("MR_small_jpeg_ls_lossless.dcm") == 0
    assert near("JPEGLSNearLossless_16.dcm") > 0


@pytest.mark.parametrize(("shape", "quality"), [((37, 53), 90), ((64, 48, 3), 75)])
def test_jpeg_size_is_the_decoded_size(shape: tuple[int, ...], quality: int) -> None:
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    data = buf.tobytes()
    assert jpeg_size(data) == cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).nbytes
    # a stream cut inside its headers, or not a JPEG at all: no size rather than a wrong one
    assert jpeg_size(data[:12]) is None
    assert codestream.jpeg_geometry(b"\x89PNG\r\n\x1a\n" + data) is None
