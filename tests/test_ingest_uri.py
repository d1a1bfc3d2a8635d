"""Ingest into a Hadoop URI ``--out``: batch and incremental runs and the lake checks, on ``viewfs://``.

``viewfs://<table>/lake`` is a client-side mount table linked to a local folder (see
tests/test_storage.py): every file call of ingest goes through the storage layer's Hadoop
``FileSystem``, and what it wrote is checked in the linked folder.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pyspark.testing import assertDataFrameEqual

from medimg_spark.cli import EXIT_CONFIG, main
from medimg_spark.io.commit import CHECKPOINT_DIR, COMMITS_DIR
from medimg_spark.io.ingest import (
    IDENTIFIED_MARKER,
    LAKE_MARKER,
    NotALakeError,
    ingest,
    ingest_incremental,
    prepare_lake,
)
from medimg_spark.storage import Storage, StoragePathError

NAMES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"]
#: Columns of a table that differ between two runs of the same files (the run and the time).
RUN_COLUMNS = {"ingest_run_id", "quarantined_at", "ingested_at"}


@pytest.fixture
def lake(spark: Any, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(viewfs://<new table>/lake, the local folder it is linked to)``."""
    real = tmp_path / "real"
    real.mkdir()
    table = f"t{secrets.token_hex(4)}"  # a new mount table: no FileSystem cached for it
    key = f"fs.viewfs.mounttable.{table}.link./lake"
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    conf.set(key, real.as_uri())
    yield f"viewfs://{table}/lake", real
    conf.unset(key)


def _inputs(folder: Path, names: list[str], prefix: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    for n in names:
        shutil.copy(get_testdata_file(n), folder / f"{prefix}{n}")
    return folder


def _visible(folder: Path) -> list[str]:
    """Files under ``folder`` (relative), without Hadoop's ``.crc`` sidecar files (ViewFs → file:)."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".crc")
    )


def _table(spark: Any, folder: Path, name: str) -> Any:
    df = spark.read.parquet(str(folder / name))
    return df.drop(*[c for c in df.columns if c in RUN_COLUMNS])


def _counts(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("run_id", "out", "wall_time_s", "frames_per_s")}


def test_ingest_into_viewfs_equals_a_local_run_and_reruns_nothing(
    spark: Any, tmp_path: Path, lake: tuple[str, Path]
) -> None:
    root, real = lake
    src = _inputs(tmp_path / "in", NAMES)
    (src / "empty.dcm").write_bytes(b"")
    (src / "junk.dcm").write_bytes(b"not a DICOM file at all" * 10)
    out = f"{root}/run1"
    remote = ingest(spark, [str(src)], out)  # --keep-phi: the IDENTIFIED marker is written too
    local_out = tmp_path / "local"
    local = ingest(spark, [str(src)], str(local_out))

    assert remote["out"] == out
    assert _counts(dict(remote)) == _counts(dict(local))
    assert remote["files_seen"] == len(NAMES) + 2 and remote["quarantined"] >= 2
    run1 = real / "run1"
    files = _visible(run1)
    assert LAKE_MARKER in files and IDENTIFIED_MARKER in files
    assert json.loads((run1 / LAKE_MARKER).read_text())["format"] == "medimg-lake"
    assert remote["run_id"] in (run1 / IDENTIFIED_MARKER).read_text()
    assert json.loads((run1 / "runs" / f"{remote['run_id']}.json").read_text()) == remote
    assert not any(f.startswith("_staging") for f in files)  # the staging folder is removed
    for name in ("images", "instances", "quarantine"):
        assertDataFrameEqual(_table(spark, run1, name), _table(spark, local_out, name))

    again = ingest(spark, [str(src)], out)  # what the lake holds is read back through viewfs://
    # every file with content was seen: the DICOMs and junk.dcm (quarantined at parse by the first run)
    assert again["files_ingested"] == 0 and again["already_ingested"] == len(NAMES) + 1
    assert again["quarantined"] == 0  # the unread files were quarantined once
    assert (run1 / IDENTIFIED_MARKER).read_text().count("--keep-phi") == 2
    assert spark.read.parquet(str(run1 / "instances")).count() == local["files_ingested"]


def test_incremental_ingest_into_viewfs_commits_each_file_once(
    spark: Any, tmp_path: Path, lake: tuple[str, Path]
) -> None:
    root, real = lake
    src = _inputs(tmp_path / "in", NAMES[:2], "a_")
    (src / "empty.dcm").write_bytes(b"")
    out = f"{root}/incr"
    first = ingest_incremental(spark, [str(src)], out)
    assert first["incremental"] is True and first["micro_batches"] == [0]
    assert first["files_seen"] == 3 and first["files_ingested"] == 2
    assert first["quarantined_by_error_class"] == {"EmptyFileError": 1}

    _inputs(src, NAMES[2:], "b_")
    second = ingest_incremental(spark, [str(src)], out)
    assert second["files_seen"] == len(NAMES) - 2 and second["micro_batches"] == [1]
    third = ingest_incremental(spark, [str(src)], out)
    assert third["files_seen"] == 0 and third["micro_batches"] == []

    incr = real / "incr"
    files = _visible(incr)
    assert [f for f in files if f.startswith(COMMITS_DIR + "/")] == [f"{COMMITS_DIR}/0", f"{COMMITS_DIR}/1"]
    assert json.loads((incr / COMMITS_DIR / "1").read_text())["files_seen"] == len(NAMES) - 2
    assert any(f.startswith(CHECKPOINT_DIR + "/") for f in files)
    assert not any(f.startswith("_staging") for f in files)
    instances = spark.read.parquet(str(incr / "instances"))
    assert sorted(Path(r.source_path).name for r in instances.select("source_path").collect()) == sorted(
        [f"a_{n}" for n in NAMES[:2]] + [f"b_{n}" for n in NAMES[2:]]
    )
    assert spark.read.parquet(str(incr / "quarantine")).count() == 1  # the empty file, once
    # part files moved out of the staging folder carry their micro-batch in the name
    assert {f.split("/")[-1][:11] for f in files if f.startswith("instances/")} == {
        "b000000000-",
        "b000000001-",
    }
    summaries = sorted((incr / "runs").glob("*.json"))
    assert len(summaries) == 3 and json.loads(summaries[0].read_text())["stage"] == "ingest"


def test_lake_checks_on_viewfs(spark: Any, tmp_path: Path, lake: tuple[str, Path], capsys: Any) -> None:
    root, real = lake
    store = Storage(spark)
    assert prepare_lake(f"{root}/new", store) == "created"
    assert json.loads((real / "new" / LAKE_MARKER).read_text())["version"] == 1
    assert prepare_lake(f"{root}/new", store) == "lake"
    assert prepare_lake(f"{root}/new") == "lake"  # the active session's storage
    (real / "empty").mkdir()
    assert prepare_lake(f"{root}/empty", store) == "created"

    (real / "old" / "runs").mkdir(parents=True)
    (real / "old" / "runs" / "ingest-1.json").write_text(
        json.dumps({"run_id": "ingest-1", "stage": "ingest"})
    )
    assert prepare_lake(f"{root}/old", store) == "upgraded" and (real / "old" / LAKE_MARKER).is_file()

    (real / "docs").mkdir()
    (real / "docs" / "report.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(NotALakeError, match=r"viewfs://.*/docs is not empty and is not a medimg lake"):
        prepare_lake(f"{root}/docs", store)
    (real / "file").write_text("x")
    with pytest.raises(NotALakeError, match="is a file, not a directory"):
        prepare_lake(f"{root}/file", store)
    (real / "newer").mkdir()
    (real / "newer" / LAKE_MARKER).write_text(json.dumps({"format": "medimg-lake", "version": 99}))
    with pytest.raises(NotALakeError, match="version 99 is not one this medimg-spark writes"):
        prepare_lake(f"{root}/newer", store)
    with pytest.raises(StoragePathError, match="no SparkSession"):
        prepare_lake(f"{root}/other", Storage(None))
    assert _visible(real / "docs") == ["report.pdf"]

    # the CLI: a foreign URI --out fails with exit 2 once the session can reach it, before any job
    src = _inputs(tmp_path / "in", NAMES[:1])
    code = main(["ingest", str(src), "--out", f"{root}/docs", "--keep-phi", "--master", "local[2]"])
    assert code == EXIT_CONFIG
    assert "is not a medimg lake" in capsys.readouterr().err
    assert _visible(real / "docs") == ["report.pdf"]
