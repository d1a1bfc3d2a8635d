"""Ingest through Spark on real files: every file accounted for, frames pixel-exact, reruns idempotent."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pyspark.sql import functions as F

from medimg_spark.config import IngestConfig
from medimg_spark.io.files import image_id, local_path
from medimg_spark.io.ingest import ingest, prepare_lake
from medimg_spark.io.pixels import encode


def spark_visible_files(roots: list[Path]) -> list[Path]:
    """Files Spark's listing sees: Hadoop skips names starting with '.' or '_' (files and folders)."""
    out = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
            out += [Path(dirpath) / f for f in filenames if not f.startswith((".", "_"))]
    return sorted(out)


def reference_pixels(path: Path) -> np.ndarray | None:
    """pydicom's own decode of a file (with the installed plugins), or None when pydicom cannot."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(io.BytesIO(data), force=True).pixel_array
        except Exception:
            return None


@pytest.fixture(scope="module")
def corpus(spark, dicom_corpus_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    summary = ingest(spark, [str(d) for d in dicom_corpus_dirs], str(out))
    return out, summary


def test_corpus_every_file_accounted_for(spark, corpus, dicom_corpus_dirs) -> None:
    out, summary = corpus
    files = spark_visible_files(dicom_corpus_dirs)
    assert summary["files_seen"] == len(files) > 280
    sha_of = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    unique = set(sha_of.values())
    inst = spark.read.parquet(str(out / "instances")).select("file_sha256", "source_path").collect()
    quar = spark.read.parquet(str(out / "quarantine")).select("file_sha256", "stage", "error_class").collect()
    file_level_q = [r.file_sha256 for r in quar if r.stage in ("read", "parse")]
    accounted = Counter([r.file_sha256 for r in inst] + file_level_q)
    # Every distinct content lands exactly once, in instances or as an unreadable file in quarantine.
    assert set(accounted) == unique
    assert max(accounted.values()) == 1
    assert summary["duplicates_skipped"] == len(files) - len(unique)
    assert summary["files_ingested"] + len(file_level_q) == len(unique)
    # A decode failure is always of a file that was parsed.
    assert {r.file_sha256 for r in quar if r.stage == "decode"} <= {r.file_sha256 for r in inst}
    for r in inst:
        assert sha_of[local_path(r.source_path)] == r.file_sha256


def test_corpus_frames_equal_pydicom(spark, corpus, dicom_corpus_dirs) -> None:
    out, summary = corpus
    images = spark.read.parquet(str(out / "images"))
    got = {
        r.image_id: (r.pixels_sha, r.rows, r.cols, r.channels, r.dtype)
        for r in images.select(
            "image_id", F.sha2("pixels", 256).alias("pixels_sha"), "rows", "cols", "channels", "dtype"
        ).collect()
    }
    assert len(got) == summary["frames_written"]
    checked = 0
    kept_sha = {
        r.file_sha256 for r in spark.read.parquet(str(out / "instances")).select("file_sha256").collect()
    }
    for path in spark_visible_files(dicom_corpus_dirs):
        ref = reference_pixels(path)
        if ref is None:
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert sha in kept_sha, f"{path.name} decodes with pydicom but was not ingested"
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True) if path.suffix != ".gz" else None
        n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1) if ds is not None else 1
        frames = ref if n_frames > 1 else ref[np.newaxis, ...]
        for i, frame in enumerate(frames):
            pixels, rows, cols, channels, dtype = encode(frame)
            key = image_id(sha, i)
            assert key in got, f"{path.name} frame {i} missing"
            assert got[key] == (hashlib.sha256(pixels).hexdigest(), rows, cols, channels, dtype), path.name
            checked += 1
    assert checked >= 450
    by_class = summary["quarantined_by_error_class"]
    # rtplan_truncated, a cut CT, and pydicom-data's JPEG 2000 cut inside its pixel fragments (which older
    # versions ingested as a metadata-only object: pixels lost silently)
    assert by_class["UnsupportedFormatError"] >= 10 and by_class["TruncatedFileError"] == 3
    # image objects whose pixel data was stripped (pydicom's DICOMDIR and charset test files)
    assert by_class["NoPixelDataError"] >= 50


def test_rerun_adds_no_rows(spark, corpus, dicom_corpus_dirs) -> None:
    out, first = corpus
    counts = {t: spark.read.parquet(str(out / t)).count() for t in ("images", "instances", "quarantine")}
    again = ingest(spark, [str(dicom_corpus_dirs[0])], str(out))
    assert again["frames_written"] == 0 and again["files_ingested"] == 0 and again["quarantined"] == 0
    assert again["already_ingested"] > 0
    assert counts == {t: spark.read.parquet(str(out / t)).count() for t in counts}
    assert (out / "runs" / f"{first['run_id']}.json").is_file()


def test_images_partitioned_by_modality_with_schema(spark, corpus) -> None:
    out, _ = corpus
    assert {p.name for p in (out / "images").iterdir() if p.is_dir()} >= {"modality=CT", "modality=MR"}
    ct = spark.read.parquet(str(out / "images")).where("modality = 'CT' AND dtype = 'int16'")
    row = ct.select("rescale_slope", "rescale_intercept", "pixel_spacing", "study_instance_uid").first()
    assert row is not None and row.rescale_slope is not None and row.study_instance_uid


def test_labels_csv_parent_dir_and_too_large(spark, tmp_path: Path, sample_npz: Path) -> None:
    src = tmp_path / "in"
    for cls in ("normal", "pneumonia"):
        (src / cls).mkdir(parents=True)
    ct = Path(get_testdata_file("CT_small.dcm"))
    mr = Path(get_testdata_file("MR_small.dcm"))
    shutil.copy(ct, src / "normal" / "a.dcm")
    shutil.copy(mr, src / "pneumonia" / "b.dcm")
    shutil.copy(mr, src / "pneumonia" / "b_copy.dcm")  # same content: ingested once
    big = src / "big.bin"
    big.write_bytes(b"\0" * 100_000)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,split\nin/normal/a.dcm,nodule,test\n")
    out = tmp_path / "out"
    cfg = IngestConfig(max_file_bytes=65536, label_from_parent_dir=True)
    summary = ingest(spark, [str(src)], str(out), cfg, labels_csv=str(labels))
    assert summary["files_seen"] == 4 and summary["duplicates_skipped"] == 1
    assert summary["quarantined_by_error_class"] == {"FileTooLargeError": 1}
    rows = {
        Path(local_path(r.source_path)).name: (r.label, r.split)
        for r in spark.read.parquet(str(out / "images")).collect()
    }
    assert rows == {"a.dcm": ("nodule", "test"), "b.dcm": ("pneumonia", None)}
    q = spark.read.parquet(str(out / "quarantine")).collect()
    assert [(r.stage, r.error_class, r.size_bytes) for r in q] == [("read", "FileTooLargeError", 100_000)]
    assert q[0].error_message == TOO_LARGE_100K
    # A rerun does not quarantine the large file again.
    assert ingest(spark, [str(src)], str(out), cfg)["quarantined"] == 0


TOO_LARGE_100K = "file is 100000 bytes, over the 65536-byte limit of the binaryFile reader; split or convert it before ingest"


def test_too_large_file_given_as_uri_is_quarantined_like_a_listed_one(spark, tmp_path: Path) -> None:
    """A URI input's file over the limit is filtered by the binaryFile scan (a Spark-side row), a listed
    local one on the driver: the same quarantine row either way, next to a file that is ingested."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    (src / "big.bin").write_bytes(b"\0" * 100_000)
    cfg = IngestConfig(max_file_bytes=65536)
    rows = {}
    for name, given in (("local", str(src)), ("uri", src.as_uri())):
        out = tmp_path / name
        summary = ingest(spark, [given], str(out), cfg, deidentify=None)
        assert summary["files_seen"] == 2 and summary["frames_written"] == 1
        assert summary["quarantined_by_stage"] == {"read": 1}
        q = spark.read.parquet(str(out / "quarantine")).collect()
        rows[name] = [
            (Path(local_path(r.source_path)).name, r.error_class, r.size_bytes, r.error_message) for r in q
        ]
    assert rows["local"] == rows["uri"] == [("big.bin", "FileTooLargeError", 100_000, TOO_LARGE_100K)]


def test_stale_decoded_staging_is_removed(spark, tmp_path: Path) -> None:
    """Decoded rows staged by a killed run are removed by the next run; a finished run leaves none."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    out = tmp_path / "out"
    assert prepare_lake(str(out)) == "created"  # what a run does before its first job
    stale = out / "_staging" / "decoded-ingest-killed"
    stale.mkdir(parents=True)
    (stale / "part-0.parquet").write_bytes(b"left by a killed run")
    keep = out / "_staging" / "batch-7"  # an incremental batch's staging belongs to its own protocol
    keep.mkdir()
    summary = ingest(spark, [str(src)], str(out), deidentify=None)
    assert summary["frames_written"] == 1
    assert not stale.exists()
    assert keep.exists()
    assert [p.name for p in (out / "_staging").iterdir()] == ["batch-7"]


def test_npz_ingest_counts_per_split(spark, tmp_path: Path, sample_npz: Path) -> None:
    ref = np.load(sample_npz)
    summary = ingest(spark, [str(sample_npz)], str(tmp_path / "out"))
    images = spark.read.parquet(str(tmp_path / "out" / "images"))
    counts = {(r.split, r.label): r["count"] for r in images.groupBy("split", "label").count().collect()}
    for split in ("train", "val"):
        labels = ref[f"{split}_labels"].ravel()
        for value in (0, 1):
            assert counts[(split, str(value))] == int((labels == value).sum())
    assert summary["frames_written"] == len(ref["train_images"]) + len(ref["val_images"])


def test_ingested_frames_carry_lps_geometry(spark, corpus, dicom_corpus_dirs) -> None:
    """image_orientation, frame_of_reference_uid and per-frame positions of enhanced multi-frame files."""
    out, _ = corpus
    images = spark.read.parquet(str(out / "images"))
    for name in ("CT_small.dcm", "eCT_Supplemental.dcm"):
        path = next(p for d in dicom_corpus_dirs for p in d.rglob(name))
        ds = pydicom.dcmread(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rows = sorted(images.where(F.col("file_sha256") == sha).collect(), key=lambda r: r.frame_index)
        if "PerFrameFunctionalGroupsSequence" in ds:
            groups = ds.PerFrameFunctionalGroupsSequence
            shared = ds.SharedFunctionalGroupsSequence[0]
            want_pos = [[float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient] for g in groups]
            want_ori = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        else:
            want_pos = [[float(v) for v in ds.ImagePositionPatient]]
            want_ori = [float(v) for v in ds.ImageOrientationPatient]
        assert [r.image_position for r in rows] == want_pos
        assert all(r.image_orientation == want_ori for r in rows)
        # ingest de-identifies no UIDs here (no hook): the frame of reference is the file's
        assert {r.frame_of_reference_uid for r in rows} == {str(ds.FrameOfReferenceUID)}
