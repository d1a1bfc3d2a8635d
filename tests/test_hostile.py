"""Hostile input (issue #11): every file that broke ingest ends as one typed outcome, within bounds.

The files under ``tests/data/hostile/`` are the ones that aborted runs, exhausted a worker's memory,
lost pixels silently or leaked PHI (see its README for their sources). Each test runs the per-file
core on the real file or mutation that showed the defect; the last ones run them through Spark.
"""

from __future__ import annotations

import gzip
import io
import resource
import struct
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.errors import FileTimeoutError
from medimg_spark.io.files import FileContext, TimeBudget, process_file
from medimg_spark.io.pixels import encode
from medimg_spark.privacy import DeidConfig, Deidentifier
from medimg_spark.privacy.hook import IngestDeidentifier
from tests.phi import collect_phi, find_phi

HOSTILE = Path(__file__).parent / "data" / "hostile"
CRASHERS = HOSTILE / "crashers"
STRAY = HOSTILE / "stray-delimiters"
KEY = b"k" * 32


def _deid(allow_burned_in: bool = False) -> IngestDeidentifier:
    return IngestDeidentifier(Deidentifier(DeidConfig(), KEY, allow_burned_in=allow_burned_in))


def rows(data: bytes, ctx: FileContext | None = None, path: str = "file:/in/f.dcm") -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"image": [], "instance": [], "quarantine": []}
    for r in process_file(path, data, ctx or FileContext(run_id="t")):
        out[r["_kind"]].append(r)
    return out


def only_quarantine(out: dict[str, list[dict]]) -> dict:
    (q,) = out["quarantine"]
    assert not out["image"]
    return q


# -- item 1: PHI leak through a file-meta length that swallows the dataset ------------------------------


def test_file_meta_swallowing_the_dataset_is_quarantined_without_phi() -> None:
    data = (HOSTILE / "phi_leak_file_meta_length.dcm").read_bytes()
    original = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    assert data[165] == 0x96 and len(data) == len(Path(get_testdata_file("JPEG2000.dcm")).read_bytes())
    phi = collect_phi([original], DeidConfig(), KEY)
    assert str(original.PatientName) in phi and len(phi) > 5
    for ctx in (FileContext(run_id="t", deidentify=_deid()), FileContext(run_id="t")):
        out = rows(data, ctx)
        q = only_quarantine(out)
        assert not out["instance"]
        assert (q["stage"], q["error_class"]) == ("parse", "InvalidHeaderError")
        assert "(0002,0002)" in q["error_message"]
        blob = repr(out).encode()
        assert find_phi(phi, {"rows": blob}) == []


def test_deidentifier_never_copies_an_invalid_file_meta_uid() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.SOPClassUID
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2" + "\x00" + str(ds.PatientName) * 20
    out = Deidentifier(DeidConfig(), KEY).deidentify(ds).dataset
    assert "MediaStorageSOPClassUID" not in out.file_meta
    assert str(ds.PatientName) not in repr(out.file_meta)


# -- item 2: one file aborted the whole run ---------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CRASHERS.glob("flip_pixel__*RLE*.dcm")), ids=lambda p: p.name)
def test_rle_decoder_panic_is_quarantined_at_decode(path: Path) -> None:
    out = rows(path.read_bytes())
    assert len(out["instance"]) == 1
    q = only_quarantine(out)
    assert (q["stage"], q["error_class"]) == ("decode", "DecodeError")
    assert "(PanicException)" in q["error_message"]


@pytest.mark.parametrize("name", ["meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"])
def test_pixel_data_without_bits_allocated_is_a_typed_header_error(name: str) -> None:
    # two of pydicom's test files hold PixelData without an Image Pixel module; pydicom raised a bare
    # AttributeError, which reached the quarantine table untyped
    ds = pydicom.dcmread(get_testdata_file(name), force=True)
    assert "PixelData" in ds and "BitsAllocated" not in ds
    out = rows(Path(get_testdata_file(name)).read_bytes())
    assert len(out["instance"]) == 1
    q = only_quarantine(out)
    assert (q["stage"], q["error_class"]) == ("decode", "InvalidHeaderError")
    assert "BitsAllocated (0028,0100)" in q["error_message"]


def test_empty_image_pixel_element_is_named() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelRepresentation = None
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    q = only_quarantine(rows(buf.getvalue()))
    assert q["error_class"] == "InvalidHeaderError"
    assert (
        "PixelRepresentation (0028,0103)" in q["error_message"] and "BitsAllocated" not in q["error_message"]
    )


def test_codec_refusal_is_a_decode_error_with_the_codec_words() -> None:
    # BitsAllocated 12 passes the size checks (1.5 bytes a pixel, less than the data holds) and pydicom
    # refuses it with a ValueError, which used to be the quarantine's error class
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BitsAllocated = 12
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    q = only_quarantine(rows(buf.getvalue()))
    assert (q["stage"], q["error_class"]) == ("decode", "DecodeError")
    assert "(ValueError)" in q["error_message"] and "Bits Allocated" in q["error_message"]


def test_absurd_number_of_frames_is_a_typed_header_error() -> None:
    q = only_quarantine(rows((CRASHERS / "frames__emri_nf_999999999999.dcm").read_bytes()))
    assert (q["stage"], q["error_class"]) == ("parse", "InvalidHeaderError")
    assert "NumberOfFrames" in q["error_message"]


def test_nifti_with_absurd_dimensions_is_a_typed_header_error() -> None:
    q = only_quarantine(rows((CRASHERS / "nifti__n1_7x32767.nii").read_bytes(), path="file:/in/n.nii"))
    assert (q["stage"], q["error_class"]) == ("parse", "InvalidHeaderError")


@pytest.mark.parametrize("value", [b"-5", b"1A", b"4294967296"])
def test_number_of_frames_out_of_range_or_not_a_number(value: bytes) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    value = value + b" " * (len(value) % 2)
    ds._dict[Tag(0x00280008)] = RawDataElement(Tag(0x00280008), "IS", len(value), value, 0, False, True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    q = only_quarantine(rows(buf.getvalue()))
    assert (q["stage"], q["error_class"]) == ("parse", "InvalidHeaderError")


def test_instance_number_beyond_int32_is_dropped_not_overflowed() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.InstanceNumber = "999999999999"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = rows(buf.getvalue())
    assert len(out["image"]) == 1 and out["image"][0]["instance_number"] is None


# -- item 3: memory bombs are refused before decoding ---------------------------------------------------------


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_65535_square_rle_is_refused_before_decoding() -> None:
    before = _max_rss_mb()
    started = time.perf_counter()
    out = rows((CRASHERS / "MR_small_RLE_65535x65535.dcm").read_bytes())
    assert len(out["instance"]) == 1  # the header is kept; the pixels are refused
    q = only_quarantine(out)
    assert (q["stage"], q["error_class"]) == ("decode", "ImageTooLargeError")
    assert "max_decoded_bytes" in q["error_message"]
    assert time.perf_counter() - started < 5
    assert _max_rss_mb() - before < 200  # the old code grew a worker to 7.8 GB


def test_decode_limit_is_configurable() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # 128x128 int16 = 32 KiB
    q = only_quarantine(rows(data, FileContext(run_id="t", max_decoded_bytes=16 << 10)))
    assert q["error_class"] == "ImageTooLargeError"
    assert len(rows(data, FileContext(run_id="t", max_decoded_bytes=32 << 10))["image"]) == 1


def _npz_bomb(n: int, shape: tuple[int, int]) -> bytes:
    """An npz whose one member declares ``n`` zero images: a few hundred KB that inflate to n*H*W bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)}
    )
    # The deflate stream is built from one compressed MiB of zeros repeated (each copy a byte-aligned
    # run of non-final blocks after a full flush, so copies do not depend on each other): deflating
    # the whole GiB took most of this module's time. zipfile checks the CRC and sizes when it reads.
    zeros, mib = bytes(1 << 20), n * shape[0] * shape[1] >> 20
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(header.getvalue()) + head.flush(zlib.Z_FULL_FLUSH)
    block = chunk.compress(zeros) + chunk.flush(zlib.Z_FULL_FLUSH)
    stream = first + block * mib + tail.flush(zlib.Z_FINISH)
    crc = zlib.crc32(header.getvalue())
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    size = len(header.getvalue()) + (mib << 20)
    name = b"train_images.npy"
    fields = (20, 0, zipfile.ZIP_DEFLATED, 0, 0, crc, len(stream), size, len(name), 0)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name
    central = struct.pack("<IH", 0x02014B50, 20) + struct.pack("<HHHHHIIIHH", *fields)
    central += struct.pack("<HHHII", 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(stream), 0)
    return local + stream + central + end


def test_npz_zip_bomb_is_refused_before_inflating() -> None:
    data = _npz_bomb(16384, (256, 256))  # 1 GiB of frames
    assert len(data) < 2 << 20
    before = _max_rss_mb()
    q = only_quarantine(rows(data, path="file:/in/bomb.npz"))
    assert (q["stage"], q["error_class"]) == ("parse", "ImageTooLargeError")
    assert _max_rss_mb() - before < 200
    # the same check caps the inflated size of the members (max_decompressed_bytes)
    small = _npz_bomb(64, (256, 256))
    ctx = FileContext(run_id="t", max_decompressed_bytes=1 << 20)
    assert only_quarantine(rows(small, ctx, "file:/in/b.npz"))["error_class"] == "ImageTooLargeError"
    assert len(rows(small, path="file:/in/b.npz")["image"]) == 64


def _png_with_size(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".png", (np.arange(4096) % 251).astype(np.uint8).reshape(64, 64))
    assert ok
    data = bytearray(buf.tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_png_and_jpeg_with_huge_header_dimensions_are_refused() -> None:
    q = only_quarantine(rows(_png_with_size(60000, 60000), path="file:/in/x.png"))
    assert (q["stage"], q["error_class"]) == ("parse", "ImageTooLargeError")
    ok, buf = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    assert ok
    jpeg = bytearray(buf.tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    q = only_quarantine(rows(bytes(jpeg), path="file:/in/x.jpg"))
    assert q["error_class"] == "ImageTooLargeError"


def test_gzip_bomb_is_refused() -> None:
    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes() + bytes(64 << 20)
    data = gzip.compress(raw, compresslevel=9)
    ctx = FileContext(run_id="t", max_decompressed_bytes=16 << 20)
    q = only_quarantine(rows(data, ctx, "file:/in/x.dcm.gz"))
    assert q["stage"] == "parse" and "limit" in q["error_message"]


# -- item 4: a file that declares pixels and yields none is quarantined ------------------------------------


def test_preamble_only_file_is_truncated() -> None:
    q = only_quarantine(rows(bytes(128) + b"DICM"))
    assert (q["stage"], q["error_class"]) == ("parse", "TruncatedFileError")


def test_jpeg2000_cut_inside_the_pixel_sequence_is_truncated() -> None:
    import data_store  # pydicom-data

    path = Path(data_store.__file__).parent / "data" / "emri_small_jpeg_2k_lossless_too_short.dcm"
    q = only_quarantine(rows(path.read_bytes()))
    assert (q["stage"], q["error_class"]) == ("parse", "TruncatedFileError")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "emri_small.dcm"])
def test_no_truncation_becomes_a_silent_metadata_only_image(name: str) -> None:
    """48 seeded truncations of each file: frames, or a quarantine row; never pixels lost silently."""
    data = Path(get_testdata_file(name)).read_bytes()
    rng = np.random.default_rng(48)
    for cut in sorted(rng.integers(1, len(data), 48)):
        out = rows(data[:cut])
        silent = [i for i in out["instance"] if not i["has_pixels"]]
        assert not silent, f"{name} cut at {cut} became a metadata-only object"
        assert out["image"] or out["quarantine"], f"{name} cut at {cut}"


def test_image_without_pixel_data_is_quarantined_but_sr_is_not() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    q = only_quarantine(rows(buf.getvalue()))
    assert (q["stage"], q["error_class"]) == ("parse", "NoPixelDataError")
    for name in ("rtplan.dcm", "test-SR.dcm"):
        out = rows(Path(get_testdata_file(name)).read_bytes())
        assert out["instance"][0]["has_pixels"] is False and not out["quarantine"]


# -- item 5: real US/SC files with stray delimiters --------------------------------------------------------


@pytest.mark.parametrize("name", ["DIRW0007", "FreezePattern.dcm", "GH364.dcm"])
def test_stray_delimiters_decode_pixel_identical(name: str) -> None:
    data = (STRAY / name).read_bytes()
    reference = pydicom.dcmread(io.BytesIO(data)).pixel_array
    n_frames = int(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    expected = reference if n_frames > 1 else reference[np.newaxis, ...]
    for ctx in (FileContext(run_id="t"), FileContext(run_id="t", deidentify=_deid(allow_burned_in=True))):
        out = rows(data, ctx)
        assert not out["quarantine"], out["quarantine"]
        (inst,) = out["instance"]
        assert "stray_delimiters_removed" in (inst["recovered"] or "")
        assert "FFFE" not in inst["header_json"]
        assert len(out["image"]) == len(expected)
        for row, frame in zip(out["image"], expected, strict=True):
            assert row["pixels"] == encode(frame)[0]
    # de-identification without OCR: US/SC pixels may carry burned-in text, a typed policy outcome
    no_ocr = IngestDeidentifier(Deidentifier(DeidConfig(ocr="off"), KEY))
    q = only_quarantine(rows(data, FileContext(run_id="t", deidentify=no_ocr)))
    assert (q["stage"], q["error_class"]) == ("deid", "BurnedInAnnotationError")


# -- isolation: a per-file time budget -----------------------------------------------------------------------


def test_time_budget_interrupts_python_work_and_is_shared_by_blocks() -> None:
    budget = TimeBudget(0.3)
    assert budget.enabled
    with budget.running():
        time.sleep(0.1)
    assert budget.left is not None and 0.1 < budget.left < 0.25
    started = time.perf_counter()
    with pytest.raises(FileTimeoutError), budget.running():
        while True:
            sum(range(1000))
    assert time.perf_counter() - started < 1.0
    with pytest.raises(FileTimeoutError), budget.running():
        pass  # spent: the next block fails at once


def test_file_over_its_time_budget_is_quarantined() -> None:
    data = Path(get_testdata_file("emri_small.dcm")).read_bytes()
    q = only_quarantine(rows(data, FileContext(run_id="t", max_seconds_per_file=1e-6)))
    assert q["error_class"] == "FileTimeoutError"


def test_time_budget_swallowed_by_a_library_still_ends_the_block() -> None:
    budget = TimeBudget(0.05)
    with pytest.raises(FileTimeoutError), budget.running():
        try:  # what pydicom's loop over its decoder plugins does with any plugin's exception
            while True:
                sum(range(1000))
        except Exception as exc:
            swallowed = exc
    assert isinstance(swallowed, FileTimeoutError) and budget.expired
    wrapped = budget.outcome(RuntimeError("Unable to decode: exceptions were raised by all plugins"))
    assert isinstance(wrapped, FileTimeoutError) and isinstance(wrapped.__cause__, RuntimeError)
    assert TimeBudget(5.0).outcome(err := ValueError("x")) is err


@pytest.mark.parametrize("name", ["emri_small_jpeg_2k_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG2000.dcm"])
def test_a_budget_expiring_anywhere_in_a_file_is_reported_as_a_timeout(name: str) -> None:
    """Before, an alarm inside pydicom's tolerant reader or its plugin loop came out as InvalidHeaderError,
    MalformedFileError "OSError: No tag…", DecodeError "(KeyError)" or "(ValueError)", or as an instance
    row parsed from a cut-short header."""
    data = Path(get_testdata_file(name)).read_bytes()
    full = rows(data)
    assert not full["quarantine"] and full["image"]
    started = time.perf_counter()
    rows(data, FileContext(run_id="t", max_seconds_per_file=60.0))
    took = time.perf_counter() - started
    outcomes = []
    for i in range(1, 51):
        out = rows(data, FileContext(run_id="t", max_seconds_per_file=took * i / 50))
        for q in out["quarantine"]:
            assert q["error_class"] == "FileTimeoutError", q
            if q["stage"] == "parse":
                assert not out["instance"]
        outcomes.append(bool(out["quarantine"]))
    assert any(outcomes)


# -- through Spark: one run over every hostile file --------------------------------------------------------


def test_hostile_files_through_spark_one_outcome_each_no_phi(spark, tmp_path: Path) -> None:
    import hashlib
    import shutil

    from medimg_spark.io.files import local_path
    from medimg_spark.io.ingest import ingest

    inputs = tmp_path / "in"
    shutil.copytree(HOSTILE, inputs)
    files = sorted(p for p in inputs.rglob("*") if p.is_file())
    out = tmp_path / "out"
    # OCR off: Tesseract on the US files (65 frames of DIRW0007, GH364's 768 x 1024) took most of this
    # test's time; they end as typed deid quarantine rows here, and their frames are checked per file
    # (test_stray_delimiters_decode_pixel_identical, the function these Spark tasks run)
    no_ocr = IngestDeidentifier(Deidentifier(DeidConfig(ocr="off"), KEY))
    summary = ingest(spark, [str(inputs)], str(out), deidentify=no_ocr)
    assert summary["files_seen"] == len(files)
    inst = spark.read.parquet(str(out / "instances")).select("source_path", "file_sha256").collect()
    quar = spark.read.parquet(str(out / "quarantine")).select("source_path", "stage").collect()
    outcome: dict[str, set[str]] = {}
    for r in inst:
        outcome.setdefault(local_path(r.source_path), set()).add("instance")
    for r in quar:
        outcome.setdefault(local_path(r.source_path), set()).add(r.stage)
    shas = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert len(outcome) == len(shas)  # every distinct file has an outcome
    assert all(o in ({"instance"}, {"instance", "decode"}, {"parse"}, {"deid"}) for o in outcome.values())
    gh364 = local_path(no_ocr.path_pseudonym(str(inputs / "stray-delimiters" / "GH364.dcm")))
    assert outcome[gh364] == {"deid"}  # US, no pixel rule, no OCR: a typed policy outcome
    original = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    phi = collect_phi([original], DeidConfig(), KEY)
    blobs = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for table in ("instances", "quarantine"):
        df = spark.read.parquet(str(out / table))
        text = "\n".join(str(r) for r in df.drop("pixels").collect() if r is not None)
        blobs[table] = text.encode()
    assert find_phi(phi, blobs) == []


# -- found by benchmarks/fuzz.py ---------------------------------------------------------------------------


def test_gunzip_allocates_as_it_inflates_not_the_whole_limit() -> None:
    """Under the workers' address-space limit, reading ``limit + 1`` bytes at once was a MemoryError."""
    code = (
        "import gzip, resource; from medimg_spark.io.detect import gunzip; "
        "resource.setrlimit(resource.RLIMIT_AS, (1200 << 20, 1200 << 20)); "
        "print(len(gunzip(gzip.compress(b'x' * 1000), 1 << 30)))"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "1000", done.stderr[-500:]


def _phi_of(name: str) -> list[str]:
    return collect_phi([pydicom.dcmread(get_testdata_file(name), force=True)], DeidConfig(), KEY)


def test_kept_attribute_whose_length_swallows_the_next_elements_is_not_copied() -> None:
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.index(b"\x08\x00\x60\x00CS\x02\x00CT")
    data[at + 6 : at + 8] = (600).to_bytes(2, "little")  # Modality now swallows 600 bytes of elements
    phi = _phi_of("CT_small.dcm")
    out = rows(bytes(data), FileContext(run_id="t", deidentify=_deid()))
    assert find_phi(phi, {"rows": repr(out).encode()}) == []
    for r in out["instance"] + out["image"]:
        assert r["modality"] == "OT"  # the damaged value was dropped, not copied


def test_removed_uid_moved_onto_a_kept_tag_by_a_bit_flip_is_not_copied() -> None:
    data = Path(get_testdata_file("MR_small_implicit.dcm")).read_bytes()
    original = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    flipped = data.replace(b"\x08\x00\x18\x00", b"\x08\x00\x08\x00", 1)  # (0008,0018) -> (0008,0008)
    assert flipped != data
    out = rows(flipped, FileContext(run_id="t", deidentify=_deid()))
    assert str(original.SOPInstanceUID) not in repr(out)


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"\x1e" + gzip.compress(Path(get_testdata_file("CT_small.dcm")).read_bytes())[1:],
        lambda: gzip.decompress(
            (Path(nib.__file__).parent / "tests" / "data" / "example_nifti2.nii.gz").read_bytes()
        )[:31],
    ],
    ids=["gzip-magic-flipped", "nifti2-cut-in-header"],
)
def test_random_bytes_are_not_taken_for_a_dicom_object(make) -> None:  # type: ignore[no-untyped-def]
    q = only_quarantine(rows(make()))
    assert q["stage"] == "parse"


@pytest.mark.parametrize("cut", [334, 338, 339])
def test_cut_inside_the_element_after_an_undefined_length_sequence_is_truncated(cut: int) -> None:
    data = Path(get_testdata_file("nested_priv_SQ.dcm")).read_bytes()[:cut]
    q = only_quarantine(rows(data))
    assert (q["stage"], q["error_class"]) == ("parse", "TruncatedFileError")


def _save(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(("rows_", "cols_"), [(1, 64), (64, 1), (1, 1)])
def test_rows_columns_that_do_not_describe_the_pixel_data_are_a_decode_error(rows_: int, cols_: int) -> None:
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # 10 frames of 64x64
    ds.Rows, ds.Columns = rows_, cols_
    out = rows(_save(ds))
    q = only_quarantine(out)
    assert (q["stage"], q["error_class"]) == ("decode", "DecodeError")


def test_tiff_page_opencv_cannot_decode_is_reported() -> None:
    """Every page is either a frame or named by a decode quarantine row (OpenCV may drop pages silently)."""
    import tifffile

    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for k in range(4):
            tw.write((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * (k + 1)), compression="zlib")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offset, count = int(tif.pages[2].dataoffsets[0]), int(tif.pages[2].databytecounts[0])
    data[offset + 2 : offset + count] = bytes(count - 2)  # page 3's deflate stream is broken
    out = rows(bytes(data), path="file:/in/p.tif")
    assert out["instance"][0]["n_frames"] == 4
    (q,) = out["quarantine"]
    assert q["stage"] == "decode" and (q["frame_index"] or 0) == len(out["image"]) < 4


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", {"Rows": 32768}),
        ("MR_small_jpeg_ls_lossless.dcm", {"Columns": 65535}),
        ("MR_small_jp2klossless.dcm", {"PhotometricInterpretation": "YBR_FULL_422"}),
    ],
    ids=["jpegls-rows", "jpegls-cols", "j2k-ybr422"],
)
def test_header_contradicting_the_codestream_is_refused_before_gdcm_aborts(name: str, change: dict) -> None:
    """gdcm aborts the whole process (SIGABRT) on these; run in a child so a regression cannot kill pytest."""
    import subprocess
    import sys

    ds = pydicom.dcmread(get_testdata_file(name))
    for key, value in change.items():
        setattr(ds, key, value)
    code = (
        "import sys; from medimg_spark.io.files import FileContext, process_file; "
        "rows = list(process_file('file:/x', sys.stdin.buffer.read(), FileContext(run_id='t'))); "
        "print([(r['_kind'], r.get('stage'), r.get('error_class')) for r in rows])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=_save(ds), capture_output=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "('quarantine', 'decode', 'DecodeError')" in done.stdout.decode()


def test_gzipped_dicom_with_long_zero_padding_reads_fast() -> None:
    data = gzip.compress(Path(get_testdata_file("CT_small.dcm")).read_bytes() + bytes(64 << 20))
    started = time.perf_counter()
    out = rows(data, path="file:/in/x.dcm.gz")
    assert time.perf_counter() - started < 10  # 41 s before: every 8 zero bytes parsed as an element
    assert len(out["image"]) == 1 and "trailing_zero_padding_ignored" in out["instance"][0]["recovered"]
    # zeros that belong to the pixel data (a dark last row) are not padding
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array.copy()
    ds.Rows = 128 + 8192
    ds.PixelData = np.concatenate([arr, np.zeros((8192, 128), arr.dtype)]).tobytes()
    out = rows(_save(ds))
    assert len(out["image"]) == 1 and out["image"][0]["rows"] == 128 + 8192
