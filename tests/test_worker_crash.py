"""A Python worker killed mid-file (as the OS's out-of-memory killer does): the task is retried and only
the file it died on is quarantined, as ``WorkerCrashError``; the run exits 0 with every file accounted for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from medimg_spark.io.files import CrashGuard, FileContext, process_files

REAL = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm", "rtplan.dcm"]


def test_guard_quarantines_the_file_an_earlier_attempt_died_on(tmp_path: Path) -> None:
    files = [(f"file:/in/{n}", Path(get_testdata_file(n)).read_bytes()) for n in REAL]
    guard = CrashGuard(str(tmp_path / "marks"), "run-s0-p0")
    assert guard.previous() is None
    guard.mark("file:/in/MR_small.dcm")  # what a worker killed while reading MR_small leaves behind
    out = list(process_files(iter(files), FileContext(run_id="t"), guard))
    crashed = [r for r in out if r["_kind"] == "quarantine"]
    assert [(r["source_path"], r["error_class"], r["stage"]) for r in crashed] == [
        ("file:/in/MR_small.dcm", "WorkerCrashError", "decode")
    ]
    assert {r["source_path"] for r in out if r["_kind"] == "instance"} == {p for p, _ in files} - {
        "file:/in/MR_small.dcm"
    }
    assert guard.previous() is None and not (tmp_path / "marks" / "run-s0-p0").exists()


def _slow_dicom(path: Path) -> None:
    """A real CT tiled to 3072x3072 and JPEG 2000 encoded: about 2 s to decode."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = np.tile(ds.pixel_array, (24, 24))
    ds.Rows, ds.Columns = arr.shape
    ds.compress(JPEG2000Lossless, arr)
    ds.save_as(path)


# ~50 s (a worker killed mid-file, the task retried): `make integration`
@pytest.mark.slow
@pytest.mark.integration
def test_worker_killed_mid_file_is_retried_and_the_file_quarantined(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in REAL:
        shutil.copy(get_testdata_file(name), inputs / name)
    _slow_dicom(inputs / "slow.dcm")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medimg_spark.cli", "ingest", str(inputs), "--out", str(out)]
    # de-identified: rows and crash marks name files by their path pseudonym under this key
    from medimg_spark.privacy import Pseudonymizer, generate_key_file, read_key_file

    key_file = generate_key_file(tmp_path / "deid.key")
    pseudo = Pseudonymizer(read_key_file(key_file)).path_pseudonym
    names = {pseudo(str(p.resolve())): p.name for p in inputs.iterdir()}
    cmd += ["--key-file", str(key_file), "--master", "local[1]"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        for mark in (out / "_staging").glob("crash-*/*"):
            if mark.name.endswith(".tmp"):
                continue
            try:
                info = json.loads(mark.read_text())
            except (OSError, ValueError):
                continue
            if names.get(info["path"]) == "slow.dcm":
                os.kill(info["pid"], signal.SIGKILL)  # what the OOM killer does
                killed = info["pid"]
                break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=300)
    assert killed is not None, "the worker never started reading slow.dcm"
    assert proc.returncode == 0, stderr[-3000:]
    quarantine = pq.read_table(out / "quarantine").to_pylist()
    instances = pq.read_table(out / "instances", columns=["source_path"]).to_pylist()
    assert [(names[r["source_path"]], r["error_class"]) for r in quarantine] == [
        ("slow.dcm", "WorkerCrashError")
    ]
    assert sorted(names[r["source_path"]] for r in instances) == sorted(REAL)
    assert not list((out / "_staging").glob("crash-*"))
