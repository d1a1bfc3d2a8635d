"""NRRD (.nrrd/.nhdr) and MetaImage (.mha/.mhd) ingest readers against SimpleITK on the same files.

The volumes are real: nibabel's ``anatomical.nii`` and the oblique 7-slice MR series of pydicom's
``dicomdirtests`` (read with SimpleITK's ImageSeriesReader), written to NRRD/MetaImage with
SimpleITK and pynrrd. Every frame's voxels, LPS position, orientation and spacing must equal what
SimpleITK reads from the very file (``TransformIndexToPhysicalPoint``, ``GetDirection``) within 1e-4.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel
import nrrd
import numpy as np
import pydicom.data
import pytest
import SimpleITK as sitk

from medimg_spark.io import detect
from medimg_spark.io.files import FileContext, process_file
from medimg_spark.io.pixels import to_array

TOL = 1e-4
ANATOMICAL = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
MR700 = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892003" / "MR700"

Rows = list[dict[str, Any]]


def ingest(path: Path, ctx: FileContext | None = None) -> Rows:
    """The rows of one file through the ingest core (``file:`` path, as the listing gives it)."""
    return list(process_file(f"file:{path}", path.read_bytes(), ctx or FileContext(run_id="t")))


def kinds(rows: Rows) -> list[str]:
    return [r["_kind"] for r in rows]


def images(rows: Rows) -> Rows:
    return [r for r in rows if r["_kind"] == "image"]


def only_quarantine(rows: Rows) -> dict[str, Any]:
    """The single outcome of a refused file: one quarantine row and nothing else."""
    assert kinds(rows) == ["quarantine"], rows
    return rows[0]


@pytest.fixture(scope="module")
def volumes() -> dict[str, Any]:
    """The two real reference volumes as SimpleITK images."""
    reader = sitk.ImageSeriesReader()
    (series,) = reader.GetGDCMSeriesIDs(str(MR700))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(MR700), series))
    return {"anatomical": sitk.ReadImage(str(ANATOMICAL)), "mr700": reader.Execute()}


@pytest.fixture(scope="module")
def written(volumes: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each volume written with SimpleITK as .nrrd (raw, gzip), .nhdr, .mha (raw, compressed), .mhd."""
    out: dict[str, Path] = {}
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    for vol_name, image in volumes.items():
        folder = tmp_path_factory.mktemp(vol_name)
        for name, compress in (
            ("raw.nrrd", False),
            ("gz.nrrd", True),
            ("detached.nhdr", False),
            ("gzdetached.nhdr", True),
            ("raw.mha", False),
            ("z.mha", True),
            ("meta.mhd", False),
        ):
            sitk.WriteImage(image, str(folder / name), useCompression=compress)
            out[f"{vol_name}/{name}"] = folder / name
    return out


def assert_matches_sitk(rows: Rows, path: Path, frame_of: Callable[[np.ndarray, int], np.ndarray]) -> None:
    """Every frame equals SimpleITK's read of ``path``: voxels, LPS position/orientation, spacing.

    ``frame_of(array, k)`` is the frame ``k`` of SimpleITK's ``GetArrayFromImage`` in the reader's
    frame layout.
    """
    ref = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(ref)
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    spacing = ref.GetSpacing()
    frames = images(rows)
    assert len(frames) == ref.GetSize()[2] == frames[0]["n_frames"]
    assert [r["frame_index"] for r in frames] == list(range(len(frames)))
    for r in frames:
        k = r["frame_index"]
        np.testing.assert_array_equal(to_array(r), frame_of(arr, k))
        np.testing.assert_allclose(
            r["image_position"], ref.TransformIndexToPhysicalPoint((0, 0, k)), atol=TOL
        )
        assert r["instance_number"] == k
        assert r["slice_thickness"] == pytest.approx(spacing[2], abs=TOL)
        if r["source_format"] == "nrrd":  # frames data[:, :, k]: rows along x, columns along y
            np.testing.assert_allclose(r["image_orientation"], [*direction[:, 1], *direction[:, 0]], atol=TOL)
            np.testing.assert_allclose(r["pixel_spacing"], [spacing[0], spacing[1]], atol=TOL)
        else:  # frames arr[k]: rows along y, columns along x
            np.testing.assert_allclose(r["image_orientation"], [*direction[:, 0], *direction[:, 1]], atol=TOL)
            np.testing.assert_allclose(r["pixel_spacing"], [spacing[1], spacing[0]], atol=TOL)
    uids = {(r["study_instance_uid"], r["series_instance_uid"], r["frame_of_reference_uid"]) for r in frames}
    assert len(uids) == 1
    ids = uids.pop()
    assert len(set(ids)) == 3 and all(u.startswith("2.25.") for u in ids)


def nrrd_frame(arr: np.ndarray, k: int) -> np.ndarray:
    return arr[k].T


def meta_frame(arr: np.ndarray, k: int) -> np.ndarray:
    return arr[k]


@pytest.mark.parametrize("vol_name", ["anatomical", "mr700"])
@pytest.mark.parametrize(
    "name", ["raw.nrrd", "gz.nrrd", "detached.nhdr", "gzdetached.nhdr", "raw.mha", "z.mha", "meta.mhd"]
)
def test_volume_file_equals_simpleitk(
    volumes: dict[str, Any], written: dict[str, Path], vol_name: str, name: str
) -> None:
    path = written[f"{vol_name}/{name}"]
    rows = ingest(path)
    assert kinds(rows)[0] == "instance" and "quarantine" not in kinds(rows)
    fmt = "nrrd" if name.endswith((".nrrd", ".nhdr")) else "metaimage"
    assert {r["source_format"] for r in rows} == {fmt}
    assert_matches_sitk(rows, path, nrrd_frame if fmt == "nrrd" else meta_frame)
    # and the round trip keeps the source volume's geometry (the DICOM series' / NIfTI's, in LPS)
    np.testing.assert_allclose(images(rows)[0]["image_position"], volumes[vol_name].GetOrigin(), atol=TOL)
    last = images(rows)[-1]
    top = volumes[vol_name].TransformIndexToPhysicalPoint((0, 0, volumes[vol_name].GetSize()[2] - 1))
    np.testing.assert_allclose(last["image_position"], top, atol=TOL)
    instance = rows[0]
    assert instance["header_json"] and "descrip" not in instance["header_json"]  # free text left out
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if name.endswith((".nhdr", ".mhd")):  # the pair's identity: header and data file together
        assert instance["file_sha256"] != sha
    else:
        assert instance["file_sha256"] == sha


def test_detached_data_file_listed_as_input_has_one_outcome(written: dict[str, Path]) -> None:
    folder = written["mr700/detached.nhdr"].parent
    data_files = sorted(
        p for p in folder.iterdir() if not p.name.endswith((".nrrd", ".nhdr", ".mha", ".mhd"))
    )
    assert [p.name for p in data_files] == ["detached.raw", "gzdetached.raw.gz", "meta.raw"]
    for data, header in zip(data_files, ("detached.nhdr", "gzdetached.nhdr", "meta.mhd"), strict=True):
        row = only_quarantine(ingest(data))
        assert (row["stage"], row["error_class"]) == ("parse", "DataOfDetachedHeaderError")
        assert repr(header) in row["error_message"]


def test_identical_detached_headers_naming_different_data_are_different_content(
    written: dict[str, Path], tmp_path: Path
) -> None:
    """Same header bytes, other voxels: not deduplicated as one file (file_sha256 covers the data)."""
    header = written["mr700/detached.nhdr"]
    raw = header.with_suffix(".raw").read_bytes()
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, data in ((a, raw), (b, raw[::-1])):
        folder.mkdir()
        shutil.copy(header, folder / header.name)
        (folder / "detached.raw").write_bytes(data)
    rows_a, rows_b = ingest(a / header.name), ingest(b / header.name)
    assert rows_a[0]["file_sha256"] != rows_b[0]["file_sha256"]
    assert not {r["image_id"] for r in images(rows_a)} & {r["image_id"] for r in images(rows_b)}
    assert rows_a[1]["series_instance_uid"] != rows_b[1]["series_instance_uid"]


@pytest.mark.parametrize(
    ("space", "flip"),
    [
        ("right-anterior-superior", (-1, -1, 1)),
        ("left-anterior-superior", (1, -1, 1)),
        ("left-posterior-superior", (1, 1, 1)),
        ("scanner-xyz", (1, 1, 1)),
    ],
)
def test_nrrd_spaces_are_converted_to_lps_as_itk_reads_them(
    volumes: dict[str, Any], tmp_path: Path, space: str, flip: tuple[int, int, int]
) -> None:
    """pynrrd-written NRRD of the oblique MR series in each space: SimpleITK's LPS reading is the reference."""
    image = volumes["mr700"]
    data = sitk.GetArrayFromImage(image).T  # (x, y, z), pynrrd's Fortran order
    steps = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    flips = np.asarray(flip, dtype=float)
    header = {
        "space": space,
        "space directions": (steps * flips[:, None]).T,  # one row per axis, in the file's space
        "space origin": np.asarray(image.GetOrigin()) * flips,
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    path = tmp_path / "mr.nrrd"
    nrrd.write(str(path), data, header)
    rows = ingest(path)
    assert_matches_sitk(rows, path, nrrd_frame)
    # the same LPS geometry whatever the file's space
    np.testing.assert_allclose(images(rows)[0]["image_position"], image.GetOrigin(), atol=TOL)


@pytest.mark.parametrize("encoding", ["bzip2", "ascii"])
def test_nrrd_bzip2_and_ascii_equal_pynrrd(volumes: dict[str, Any], tmp_path: Path, encoding: str) -> None:
    """Encodings NrrdIO (SimpleITK) lacks or reads slowly: pynrrd's own read is the voxel reference."""
    data = sitk.GetArrayFromImage(volumes["mr700"]).T
    path = tmp_path / f"mr_{encoding}.nrrd"
    nrrd.write(str(path), data, {"encoding": encoding, "spacings": [0.5, 0.5, 3.0]})
    ref, _ = nrrd.read(str(path))
    frames = images(ingest(path))
    assert len(frames) == ref.shape[2]
    for r in frames:
        np.testing.assert_array_equal(to_array(r), ref[:, :, r["frame_index"]])
        assert r["image_position"] == [0.0, 0.0, 3.0 * r["frame_index"]]
        assert r["pixel_spacing"] == [0.5, 0.5] and r["slice_thickness"] == 3.0


def test_nrrd_colour_axis_is_channels_and_list_axis_is_one_series_per_index(
    volumes: dict[str, Any], tmp_path: Path
) -> None:
    grey = sitk.GetArrayFromImage(volumes["mr700"]).T.astype(np.int32)  # (x, y, z)
    lps = {"space": "left-posterior-superior", "space origin": np.zeros(3)}
    directions = np.vstack([[np.nan] * 3, np.diag([0.7, 0.7, 4.0])])
    rgb = np.stack([(grey >> s) & 0xFF for s in (0, 2, 4)], axis=0).astype(np.uint8)  # (3, x, y, z)
    path = tmp_path / "rgb.nrrd"
    nrrd.write(
        str(path),
        rgb,
        {**lps, "kinds": ["RGB-color", "domain", "domain", "domain"], "space directions": directions},
    )
    frames = images(ingest(path))
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (z, y, x, 3)
    assert len(frames) == arr.shape[0] and {(r["channels"], r["photometric"]) for r in frames} == {(3, "RGB")}
    for r in frames:
        np.testing.assert_array_equal(to_array(r), arr[r["frame_index"]].transpose(1, 0, 2))

    lst = np.stack([grey + t for t in range(3)], axis=-1).astype(np.int16)  # (x, y, z, 3 gradients)
    path = tmp_path / "list.nrrd"
    directions = np.vstack([np.diag([0.7, 0.7, 4.0]), [np.nan] * 3])
    nrrd.write(
        str(path),
        lst,
        {**lps, "kinds": ["domain", "domain", "domain", "list"], "space directions": directions},
    )
    rows = ingest(path)
    frames = images(rows)
    z = grey.shape[2]
    assert len(frames) == 3 * z == rows[0]["n_frames"]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # ITK: the list as components (z, y, x, 3)
    for r in frames:
        k, t = r["frame_index"] % z, r["frame_index"] // z
        np.testing.assert_array_equal(to_array(r), arr[k, :, :, t].T)
        assert r["instance_number"] == k and r["image_position"][2] == pytest.approx(4.0 * k)
    assert len({r["series_instance_uid"] for r in frames}) == 3


def test_2d_nrrd_and_mha_are_one_frame(tmp_path: Path) -> None:
    from tests.conftest import SAMPLE_NPZ

    with np.load(SAMPLE_NPZ) as z:
        xray = z["train_images"][0]  # a real 28x28 PneumoniaMNIST frame
    image = sitk.GetImageFromArray(xray)
    image.SetSpacing((0.3, 0.4))
    image.SetOrigin((5.0, -2.0))
    for name in ("x.nrrd", "x.mha"):
        sitk.WriteImage(image, str(tmp_path / name))
        (frame,) = images(ingest(tmp_path / name))
        expected = xray.T if name.endswith(".nrrd") else xray
        np.testing.assert_array_equal(to_array(frame), expected)
        assert frame["image_position"] == pytest.approx([5.0, -2.0, 0.0])
        assert frame["slice_thickness"] is None


def test_detection_is_from_content(written: dict[str, Path]) -> None:
    assert detect.detect_format(written["mr700/raw.nrrd"].read_bytes()) == detect.NRRD
    assert detect.detect_format(written["mr700/detached.nhdr"].read_bytes()) == detect.NRRD
    assert detect.detect_format(written["mr700/z.mha"].read_bytes()) == detect.METAIMAGE
    assert detect.detect_format(written["mr700/meta.mhd"].read_bytes()) == detect.METAIMAGE
    assert detect.detect_format(b"Name = not an image\nComment = x\n") is None
    assert detect.detect_format(b"ObjectType = Mesh\nNDims = 3\nElementDataFile = LOCAL\n") is None


# --- hostile input: a typed quarantine row, never a crash nor an allocation of the declared size ------


def _nrrd_header(fields: str) -> bytes:
    return f"NRRD0004\n{fields}\n".encode()


META_222 = b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
HUGE = "type: double\ndimension: 3\nsizes: 100000 100000 100000\nendian: little\nencoding: raw\n"


@pytest.mark.parametrize(
    ("content", "error_class"),
    [
        (_nrrd_header(HUGE) + b"\0" * 64, "ImageTooLargeError"),
        (_nrrd_header(HUGE.replace("raw", "gzip")) + gzip.compress(b"\0" * 64), "ImageTooLargeError"),
        (
            _nrrd_header("type: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: raw\n")
            + b"\0" * 100,
            "TruncatedFileError",
        ),
        (
            _nrrd_header("type: short\ndimension: 3\nsizes: a b c\nendian: little\nencoding: raw\n"),
            "InvalidHeaderError",
        ),
        (
            _nrrd_header("type: short\ndimension: 3\nsizes: 4 4\nendian: little\nencoding: raw\n"),
            "InvalidHeaderError",
        ),
        (_nrrd_header("dimension: 3\nsizes: 4 4 4\nencoding: raw\n"), "InvalidHeaderError"),
        (
            _nrrd_header("type: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n") + b"\0" * 128,
            "InvalidHeaderError",
        ),
        (
            _nrrd_header("type: uchar\ndimension: 3\nsizes: 4 4 4\nencoding: hex\n") + b"00" * 64,
            "UnsupportedFormatError",
        ),
        (
            _nrrd_header(
                "type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nspace: weird\n"
                "space directions: (1,0,0) (0,1,0) (0,0,1)\n"
            )
            + b"\0" * 8,
            "UnsupportedFormatError",
        ),
        (
            _nrrd_header(
                "type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nspace: RAS\n"
                "space directions: (1,0,0) (1,0,0) (0,0,1)\n"
            )
            + b"\0" * 8,
            "InvalidHeaderError",
        ),
        (
            _nrrd_header("type: uchar\ndimension: 5\nsizes: 2 2 2 2 2\nencoding: raw\n") + b"\0" * 32,
            "UnsupportedFormatError",
        ),
        (_nrrd_header("type: uchar\ndimension: 3\nsizes: 2 0 2\nencoding: raw\n"), "NoPixelDataError"),
        (
            _nrrd_header("type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nbyte skip: -7\n")
            + b"\0" * 8,
            "InvalidHeaderError",
        ),
        (
            b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_DOUBLE\nElementDataFile = LOCAL\n"
            + b"\0" * 64,
            "ImageTooLargeError",
        ),
        (
            b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
            + b"\0" * 100,
            "TruncatedFileError",
        ),
        (
            b"ObjectType = Image\nNDims = 3\nDimSize = x y z\nElementType = MET_SHORT\nElementDataFile = LOCAL\n",
            "InvalidHeaderError",
        ),
        (
            b"ObjectType = Image\nNDims = 4\nDimSize = 2 2 2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
            + b"\0" * 16,
            "UnsupportedFormatError",
        ),
        (
            b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_FOO\nElementDataFile = LOCAL\n"
            + b"\0" * 8,
            "UnsupportedFormatError",
        ),
        (
            b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = LIST\na.raw\n",
            "UnsupportedFormatError",
        ),
        (
            b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementSpacing = a b c\nElementDataFile = LOCAL\n"
            + b"\0" * 8,
            "InvalidHeaderError",
        ),
        (META_222 + b"TransformMatrix = 1 0 0\nElementDataFile = LOCAL\n" + b"\0" * 8, "InvalidHeaderError"),
        (META_222 + b"ElementSpacing = 0 0 0\nElementDataFile = LOCAL\n" + b"\0" * 8, "InvalidHeaderError"),
        (META_222 + b"Offset = 1 nan 2\nElementDataFile = LOCAL\n" + b"\0" * 8, "InvalidHeaderError"),
    ],
)
def test_hostile_header_is_quarantined_at_parse(tmp_path: Path, content: bytes, error_class: str) -> None:
    path = tmp_path / "hostile"
    path.write_bytes(content)
    row = only_quarantine(ingest(path))
    assert (row["stage"], row["error_class"]) == ("parse", error_class), row["error_message"]


def test_truncated_compressed_data_is_quarantined(written: dict[str, Path], tmp_path: Path) -> None:
    """Cut compressed data: found by the header check when it declares its size, else when inflating
    (SimpleITK alone would zero-fill a cut MetaImage stream, so the reader inflates it itself)."""
    data = written["anatomical/gz.nrrd"].read_bytes()
    path = tmp_path / "gz.nrrd"
    path.write_bytes(data[:-2000])
    rows = ingest(path)
    assert kinds(rows) == ["instance", "quarantine"]
    assert (rows[1]["stage"], rows[1]["error_class"]) == ("decode", "TruncatedFileError")

    data = written["anatomical/z.mha"].read_bytes()
    assert b"CompressedDataSize = " in data
    path = tmp_path / "z.mha"
    path.write_bytes(data[:-2000])
    row = only_quarantine(ingest(path))
    assert (row["stage"], row["error_class"]) == ("parse", "TruncatedFileError")
    path.write_bytes(re.sub(rb"CompressedDataSize = \d+\n", b"", data)[:-2000])
    rows = ingest(path)
    assert kinds(rows) == ["instance", "quarantine"]
    assert (rows[1]["stage"], rows[1]["error_class"]) == ("decode", "TruncatedFileError")  # not zero-filled


def test_gzip_bomb_inflates_only_the_declared_size(tmp_path: Path) -> None:
    """A 2x2x2 header over a stream of 64 MiB of zeros: only the 8 declared bytes are inflated."""
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=1)
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(_nrrd_header("type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: gzip\n") + bomb)
    frames = images(ingest(path, FileContext(run_id="t", max_decoded_bytes=1 << 20)))
    assert len(frames) == 2 and all(to_array(r).tolist() == [[0, 0], [0, 0]] for r in frames)


def _detached(folder: Path, data_file: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "vol.nhdr"
    path.write_bytes(
        _nrrd_header(f"type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: {data_file}\n")
    )
    return path


def test_detached_data_must_be_present_and_inside_the_headers_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(8)))
    for name in ("missing.raw", "../secret.raw", str(secret), "/dev/zero"):
        row = only_quarantine(ingest(_detached(tmp_path / "h", name)))
        assert row["error_class"] == "DetachedDataError", row["error_message"]
    os.symlink(secret, tmp_path / "h" / "link.raw")  # a link out of the folder is refused too
    row = only_quarantine(ingest(_detached(tmp_path / "h", "link.raw")))
    assert row["error_class"] == "DetachedDataError" and "outside" in row["error_message"]
    (tmp_path / "h" / "sub").mkdir()
    (tmp_path / "h" / "sub" / "ok.raw").write_bytes(bytes(range(8)))
    frames = images(ingest(_detached(tmp_path / "h", "sub/ok.raw")))  # below the folder is fine
    assert [to_array(r).T.tolist() for r in frames] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]


@pytest.mark.parametrize(
    ("skips", "prefix"),
    [("line skip: 2\nbyte skip: 3\n", b"one\ntwo\nabc"), ("byte skip: -1\n", b"junk before")],
)
def test_nrrd_line_and_byte_skips_equal_pynrrd(
    volumes: dict[str, Any], tmp_path: Path, skips: str, prefix: bytes
) -> None:
    data = sitk.GetArrayFromImage(volumes["mr700"]).T  # (x, y, z) int16
    raw = data.astype("<i2").tobytes(order="F")
    sizes = " ".join(str(n) for n in data.shape)
    fields = f"type: short\ndimension: 3\nsizes: {sizes}\nendian: little\nencoding: raw\ndata file: mr.bin\n"
    (tmp_path / "mr.bin").write_bytes(prefix + raw)
    (tmp_path / "named.nhdr").write_bytes(_nrrd_header(fields + skips))
    ref, _ = nrrd.read(str(tmp_path / "named.nhdr"))
    frames = images(ingest(tmp_path / "named.nhdr"))
    assert len(frames) == ref.shape[2]
    for r in frames:
        np.testing.assert_array_equal(to_array(r), ref[:, :, r["frame_index"]])
    # the data file has another stem than its header: found by the folder scan, one outcome
    row = only_quarantine(ingest(tmp_path / "mr.bin"))
    assert row["error_class"] == "DataOfDetachedHeaderError" and "'named.nhdr'" in row["error_message"]


def test_detached_data_that_fails_in_another_way_still_gets_the_typed_reason(
    written: dict[str, Path], tmp_path: Path
) -> None:
    """A gzip data file inflating past ingest.max_decompressed_bytes is still the header's data."""
    folder = written["anatomical/gzdetached.nhdr"].parent
    small = FileContext(run_id="t", max_decompressed_bytes=1024)
    row = only_quarantine(ingest(folder / "gzdetached.raw.gz", small))
    assert row["error_class"] == "DataOfDetachedHeaderError"
    (tmp_path / "alone.raw.gz").write_bytes((folder / "gzdetached.raw.gz").read_bytes())  # no header names it
    assert only_quarantine(ingest(tmp_path / "alone.raw.gz", small))["error_class"] == "ImageTooLargeError"


def test_detached_header_behind_a_hadoop_uri_is_quarantined(written: dict[str, Path]) -> None:
    for name in ("detached.nhdr", "meta.mhd"):
        content = written[f"mr700/{name}"].read_bytes()
        row = only_quarantine(
            list(process_file(f"hdfs://nn:8020/x/{name}", content, FileContext(run_id="t")))
        )
        assert row["error_class"] == "DetachedDataError" and "hdfs:" in row["error_message"]


def test_metaimage_without_simpleitk_names_the_extra(
    written: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # `import SimpleITK` raises ImportError
    row = only_quarantine(ingest(written["mr700/raw.mha"]))
    assert row["error_class"] == "SimpleITKMissingError"
    assert "pip install 'medimg-spark[itk]'" in row["error_message"]


# --- Spark: the medimg data source over a folder of volume files ------------------------------------


def test_spark_read_gives_each_file_one_outcome_and_the_core_rows(spark, written: dict[str, Path]) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    from medimg_spark.io.datasource import register

    register(spark)
    folder = written["mr700/raw.nrrd"].parent
    df = spark.read.format("medimg").option("table", "all").option("keep_phi", "true").load(str(folder))
    cols = [
        "source_path",
        "file_sha256",
        "frame_index",
        "source_format",
        "image_position",
        "image_orientation",
        "pixel_spacing",
        "series_instance_uid",
        "frame_of_reference_uid",
        "error_class",
    ]
    got = df.where("_kind != 'instance'").select(*cols).collect()  # the one Spark job
    expected: list[dict[str, Any]] = []
    for path in sorted(folder.iterdir()):
        for row in ingest(path):
            if row["_kind"] != "instance":
                expected.append({c: row.get(c) for c in cols})
    assert {r["source_path"] for r in expected} == {f"file:{p}" for p in folder.iterdir()}
    assertDataFrameEqual(got, [Row(**r) for r in expected])
    by_file: dict[str, list[dict[str, Any]]] = {}
    for r in expected:
        by_file.setdefault(r["source_path"], []).append(r)
    for path, rows in by_file.items():  # one outcome per file: frames, or a single quarantine row
        assert all(r["error_class"] is None for r in rows) or len(rows) == 1, path
    quarantined = sorted(p.rsplit("/", 1)[1] for p, rows in by_file.items() if rows[0]["error_class"])
    assert quarantined == ["detached.raw", "gzdetached.raw.gz", "meta.raw"]
