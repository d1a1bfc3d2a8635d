"""Incremental ingest: every file exactly once across runs, after a SIGKILL too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.io.ingest import COMMITS_DIR, ingest_incremental

REPO = Path(__file__).resolve().parents[1]
NAMES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
    "SC_rgb.dcm",
    "US1_UNCR.dcm",
    "MR_small_RLE.dcm",
    "emri_small.dcm",
    "liver_1frame.dcm",
    "SC_rgb_rle.dcm",
]


def _counts(spark, out: Path) -> dict[str, int]:
    return {t: spark.read.parquet(str(out / t)).count() for t in ("images", "instances", "quarantine")}


def _expected_frames(names: list[str]) -> int:
    total = 0
    for n in names:
        ds = pydicom.dcmread(get_testdata_file(n), stop_before_pixels=True)
        if "PixelData" in ds or n != "rtplan.dcm":
            total += int(getattr(ds, "NumberOfFrames", 1) or 1) if n != "rtplan.dcm" else 0
    return total


def test_three_runs_each_file_once_and_noop_rerun(spark, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    batches = [NAMES[:3], NAMES[3:6], NAMES[6:]]
    (src / "empty.dcm").write_bytes(b"")
    seen_files = 1
    for i, names in enumerate(batches):
        for n in names:
            shutil.copy(get_testdata_file(n), src / f"{i}_{n}")
        summary = ingest_incremental(spark, [str(src)], str(out))
        seen_files += len(names)
        # Only this round's files (and, first time, the empty one) are processed.
        assert summary["files_seen"] == len(names) + (1 if i == 0 else 0)
        counts = _counts(spark, out)
        assert counts["instances"] == seen_files - 1  # all but the empty file
        assert counts["quarantine"] == 1  # the empty file, once
    assert counts["images"] == _expected_frames(NAMES)
    instances = spark.read.parquet(str(out / "instances"))
    assert instances.select("source_path").distinct().count() == len(NAMES)
    again = ingest_incremental(spark, [str(src)], str(out))
    assert again["files_seen"] == 0 and again["frames_written"] == 0
    assert _counts(spark, out) == counts


def test_replayed_batch_is_not_written_twice(spark, tmp_path: Path) -> None:
    """A crash after the batch's files were moved but before its commit record: the replay adds nothing."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in NAMES[:4]:
        shutil.copy(get_testdata_file(n), src / n)
    ingest_incremental(spark, [str(src)], str(out))
    before = _counts(spark, out)
    commits = out / COMMITS_DIR
    # The commit records were never written (with their checksum files): Spark replays batch 0.
    for log in (commits, out / "_checkpoints" / "ingest" / "commits"):
        for name in ("0", ".0.crc"):
            (log / name).unlink(missing_ok=True)
    ingest_incremental(spark, [str(src)], str(out))
    assert _counts(spark, out) == before
    assert (commits / "0").is_file()


# A fresh driver JVM plus a SIGKILL and a rerun: ~80 s on 2 cores, so `make integration`.
@pytest.mark.integration
def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        for n in NAMES:
            shutil.copy(get_testdata_file(n), src / f"{i}_{n}")  # 20 files, 10 distinct contents
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ingest:\n  max_files_per_trigger: 5\nspark:\n  conf:\n    spark.ui.enabled: false\n")
    cmd = [
        sys.executable,
        "-m",
        "medimg_spark.cli",
        "ingest",
        str(src),
        "--out",
        str(out),
        "--incremental",
        "--keep-phi",
        "--config",
        str(cfg),
        "--master",
        "local[2]",
        "--json",
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 240
    while not (out / COMMITS_DIR / "1").exists():
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # driver, JVM and Python workers: mid-way through batch 2
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    assert spark is not None
    instances = spark.read.parquet(str(out / "instances"))
    # Ten distinct contents: each ingested exactly once, whichever copy was seen first.
    assert instances.count() == instances.select("file_sha256").distinct().count() == len(NAMES)
    images = spark.read.parquet(str(out / "images"))
    assert images.count() == images.select("image_id").distinct().count() == _expected_frames(NAMES)
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["incremental"] is True and summary["micro_batches"]
