"""spark.read.format("dicom"/"medimg") and readStream: the same rows as ``medimg ingest``, every file once."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from medimg_spark.cli import main
from medimg_spark.io.datasource import (
    DataSourceOptionError,
    NonLocalInputError,
    ReadOptions,
    make_plan,
    register,
)
from medimg_spark.privacy import generate_key_file
from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA

REPO = Path(__file__).resolve().parents[1]
HOSTILE = REPO / "tests" / "data" / "hostile"
#: Real DICOM files of pydicom's test set: single and multi-frame, compressed (RLE, JPEG, JPEG-LS,
#: JPEG 2000, deflate), big endian, implicit VR, no pixel data (RT plan, SR), gzip-wrapped, truncated.
DICOM_NAMES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_truncated.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "test-SR.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "no_meta.dcm",
    "zipMR.gz",
]


def _pydicom_dir() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]


def _copy_dicoms(dest: Path, names: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        out.append(Path(shutil.copy(_pydicom_dir() / name, dest / name)))
    return out


@pytest.fixture(scope="module")
def sources(spark: SparkSession) -> SparkSession:
    register(spark)
    register(spark)  # idempotent
    return spark


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dicoms") / "in"
    files = _copy_dicoms(folder, DICOM_NAMES)
    shas = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert len(shas) == len(files)  # ingest deduplicates content; the read does not (see README)
    return folder


def _table(spark: SparkSession, out: Path, table: str) -> DataFrame:
    schema = {"images": IMAGES_SCHEMA, "instances": INSTANCES_SCHEMA, "quarantine": QUARANTINE_SCHEMA}[table]
    df = spark.read.parquet(str(out / table))
    return df.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])


@pytest.mark.parametrize("deid", [False, True], ids=["keep-phi", "deidentified"])
def test_dicom_read_equals_ingest_tables(
    sources: SparkSession, dicom_dir: Path, tmp_path: Path, deid: bool
) -> None:
    """format("dicom").load(dir) gives the rows ``medimg ingest`` writes for the same files and options.

    Every column is compared; the run id is passed to both so ``ingest_run_id`` matches. Only the
    quarantine table's ``quarantined_at`` is left out: ingest stamps the time it writes the table,
    the read the time it reads the file.
    """
    spark = sources
    run_id = f"ingest-test-{'deid' if deid else 'phi'}"
    out = tmp_path / "lake"
    args = ["ingest", str(dicom_dir), "--out", str(out), "--run-id", run_id]
    options = {"run_id": run_id}
    if deid:
        key = generate_key_file(tmp_path / "deid.key")
        # frames that may carry burned-in text (SC, JPEG 2000, ...) go through unread: Tesseract on them
        # was most of this test's time, and OCR is tested in test_privacy_pixels
        args += ["--key-file", str(key), "--allow-burned-in"]
        options.update(key_file=str(key), allow_burned_in="true")
    else:
        args += ["--keep-phi"]
        options["keep_phi"] = "true"
    assert main(args) == 0
    expected = _table(spark, out, "images")
    assert expected.count() > len(DICOM_NAMES)  # multi-frame files give one row per frame
    if not deid:
        # one read, three tables: what ingest writes them from (each case decodes the files once)
        everything = spark.read.format("dicom").options(table="all", **options).load(str(dicom_dir)).persist()
        for table, kind in (("images", "image"), ("instances", "instance"), ("quarantine", "quarantine")):
            expected = _table(spark, out, table).drop("quarantined_at")
            read = everything.where(F.col("_kind") == kind).select(*expected.schema.names)
            assertDataFrameEqual(read, expected)
        everything.unpersist()
        return
    images = spark.read.format("dicom").options(**options).load(str(dicom_dir))  # table=images: the default
    assert images.schema.names == expected.schema.names
    images = images.persist()
    assertDataFrameEqual(images, expected)
    if deid:
        import pydicom

        originals = {
            str(pydicom.dcmread(p, force=True, stop_before_pixels=True).get("PatientID") or "")
            for p in dicom_dir.glob("*.dcm")
        } - {""}
        patients = {r.patient_id for r in images.select("patient_id").distinct().collect()}
        assert originals and not originals & patients  # no original patient id survives de-identification
    images.unpersist()


def _outcomes(df: DataFrame) -> dict[str, str]:
    """``{source_path: outcome}`` from table=all rows, asserting each file has exactly one outcome."""
    rows = df.select("_kind", "source_path", "has_pixels", "frame_index", "error_class").collect()
    out: dict[str, str] = {}
    instances: dict[str, int] = {}
    file_quarantine: dict[str, list[str]] = {}
    for r in rows:
        if r["_kind"] == "instance":
            instances[r.source_path] = instances.get(r.source_path, 0) + 1
        elif r["_kind"] == "quarantine":
            file_quarantine.setdefault(r.source_path, []).append(r.error_class)
    for path, n in instances.items():
        assert n == 1, f"{path}: {n} instance rows"
        out[path] = "instance"
    for path, classes in file_quarantine.items():
        if path not in instances:  # a frame's quarantine row comes with its file's instance row
            assert len(classes) == 1, f"{path}: {classes}"
            out[path] = classes[0]
    image_paths = {r.source_path for r in rows if r["_kind"] == "image"}
    assert image_paths <= set(instances)
    return out


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory, sample_npz: Path) -> Path:
    import cv2

    folder = tmp_path_factory.mktemp("mixed") / "in"
    _copy_dicoms(folder / "dicom", ["CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm"])
    with np.load(sample_npz) as z:
        small = {"train_images": z["train_images"][:6], "train_labels": z["train_labels"][:6]}
        png = z["val_images"][0]
    np.savez(folder / "pneumonia_subset.npz", **small)
    cv2.imwrite(str(folder / "xray.png"), png)
    (folder / "hostile").mkdir()
    for name in ["phi_leak_file_meta_length.dcm", "crashers/MR_small_RLE_65535x65535.dcm"]:
        shutil.copy(HOSTILE / name, folder / "hostile" / Path(name).name)
    shutil.copy(HOSTILE / "crashers" / "flip_pixel__MR_small_RLE_01.dcm", folder / "hostile")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def _files(folder: Path) -> set[str]:
    return {f"file:{p}" for p in folder.rglob("*") if p.is_file()}


def test_medimg_mixed_folder_every_file_once(sources: SparkSession, mixed_dir: Path) -> None:
    df = sources.read.format("medimg").options(table="all", keep_phi="true").load(str(mixed_dir))
    outcomes = _outcomes(df)
    assert set(outcomes) == _files(mixed_dir)
    assert outcomes[f"file:{mixed_dir}/empty.dcm"] == "EmptyFileError"
    assert outcomes[f"file:{mixed_dir}/notes.txt"] == "UnsupportedFormatError"
    assert outcomes[f"file:{mixed_dir}/xray.png"] == "instance"
    assert outcomes[f"file:{mixed_dir}/pneumonia_subset.npz"] == "instance"
    images = sources.read.format("medimg").options(keep_phi="true", frames="first").load(str(mixed_dir))
    formats = {r.source_format for r in images.select("source_format").distinct().collect()}
    assert {"dicom", "png", "npz"} <= formats
    assert images.where(F.col("frame_index") != 0).count() == 0
    quarantine = (
        sources.read.format("medimg").options(table="quarantine", keep_phi="true").load(str(mixed_dir))
    )
    assert quarantine.where(F.col("quarantined_at").isNull()).count() == 0


def test_dicom_source_quarantines_other_formats(sources: SparkSession, mixed_dir: Path) -> None:
    df = sources.read.format("dicom").options(table="all", keep_phi="true").load(str(mixed_dir))
    outcomes = _outcomes(df)
    assert set(outcomes) == _files(mixed_dir)
    assert outcomes[f"file:{mixed_dir}/xray.png"] == "NotDicomError"
    assert outcomes[f"file:{mixed_dir}/pneumonia_subset.npz"] == "NotDicomError"
    assert outcomes[f"file:{mixed_dir}/dicom/CT_small.dcm"] == "instance"
    formats = {r.source_format for r in df.where(F.col("_kind") == "image").select("source_format").collect()}
    assert formats == {"dicom"}


def test_bad_options_are_typed_errors_naming_the_option(sources: SparkSession, dicom_dir: Path) -> None:
    with pytest.raises(DataSourceOptionError, match=r"unknown option 'framez'.*frames"):
        ReadOptions.parse({"path": str(dicom_dir), "framez": "all"}, "dicom")
    with pytest.raises(DataSourceOptionError, match=r"option 'table'.*'images'"):
        ReadOptions.parse({"path": str(dicom_dir), "table": "pixels"})
    with pytest.raises(DataSourceOptionError, match="option 'max_decoded_bytes'"):
        ReadOptions.parse({"path": str(dicom_dir), "maxDecodedBytes": "10"})
    assert ReadOptions.parse({"path": "x", "maxfilespertrigger": "3"}).max_files_per_trigger == 3
    with pytest.raises(NonLocalInputError, match="medimg ingest"):
        make_plan({"path": "s3a://bucket/dicoms", "keep_phi": "true"}, "dicom")
    with pytest.raises(DataSourceOptionError, match="keep_phi"):
        make_plan({"path": str(dicom_dir), "keep_phi": "true", "ephemeral_key": "true"}, "dicom")
    # through Spark: the data source's error class, the option and the fix reach the caller
    with pytest.raises(AnalysisException, match="DataSourceOptionError: unknown option 'framez'"):
        sources.read.format("dicom").option("framez", "all").load(str(dicom_dir))
    with pytest.raises(AnalysisException, match=r"NonLocalInputError.*medimg ingest"):
        sources.read.format("medimg").option("keep_phi", "true").load("hdfs://nn/dicoms")


def test_key_never_in_the_plan(sources: SparkSession, tmp_path: Path, capsys) -> None:
    dicom_dir = tmp_path / "in"  # two files: the property needs a key that works, not many files
    _copy_dicoms(dicom_dir, ["CT_small.dcm", "MR_small.dcm"])
    key_file = generate_key_file(tmp_path / "k.key")
    secret = key_file.read_text().strip()
    for options in ({"key_file": str(key_file)}, {"deid_secret": secret}):
        df = sources.read.format("dicom").options(**options).load(str(dicom_dir))
        df.explain(mode="extended")
        df.explain(mode="formatted")
        printed = capsys.readouterr().out
        qe = df._jdf.queryExecution()
        assert secret not in qe.toString() and secret not in printed
        assert df.where(F.col("frame_index") == 0).count() > 0  # the key worked
    bad = "zz" + secret[2:]
    with pytest.raises(AnalysisException) as err:
        sources.read.format("dicom").options(deid_secret=bad[:10]).load(str(dicom_dir))
    assert bad[:10] not in str(err.value)


#: Spark starts a Python data source's driver-side workers (the source's creation, batch planning,
#: the stream reader's runner) as fresh ``python -m`` processes, without its worker daemon, and waits
#: a fixed 10 s (``PythonWorkerFactory.createSimpleWorker``, not configurable in Spark 4.x) for each
#: to connect back; on an overloaded host an interpreter start can take longer.
CONNECT_BACK = "failed to connect back"


def _stream_once(spark: SparkSession, watch: Path, out: Path, ckpt: Path, **options: str) -> None:
    """Run the query once with ``availableNow``; a start that timed out (CONNECT_BACK) is restarted.

    A restart resumes from the checkpoint, which the test checks anyway: every file once in all.
    """
    for attempt in range(3):
        try:
            stream = (
                spark.readStream.format("medimg")
                .options(table="all", keep_phi="true", settle_seconds="0.2", **options)
                .load(str(watch))
                .select("_kind", "source_path", "error_class", "frame_index")
            )
            query = (
                stream.writeStream.format("parquet")
                .option("path", str(out))
                .option("checkpointLocation", str(ckpt))
                .trigger(availableNow=True)
                .start()
            )
            query.awaitTermination()
            return
        except Exception as err:  # StreamingQueryException, AnalysisException, Py4JJavaError
            if CONNECT_BACK not in str(err) or attempt == 2:
                raise


def test_read_stream_reads_each_new_file_once_across_restarts(sources: SparkSession, tmp_path: Path) -> None:
    watch, out, ckpt = tmp_path / "watch", tmp_path / "out", tmp_path / "ckpt"
    watch.mkdir()
    _copy_dicoms(watch, ["CT_small.dcm", "MR_small.dcm"])
    (watch / "empty.dcm").write_bytes(b"")
    time.sleep(0.3)
    _stream_once(sources, watch, out, ckpt)
    first = _outcomes(sources.read.parquet(str(out)).withColumn("has_pixels", F.lit(None)))
    assert set(first) == _files(watch)
    # more files, then a restart of the query from its checkpoint, a few files per micro-batch
    _copy_dicoms(watch / "later", ["rtplan.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
    (watch / "later" / "notes.txt").write_text("x")
    time.sleep(0.3)
    _stream_once(sources, watch, out, ckpt, maxFilesPerTrigger="2")
    # a third run with nothing new reads nothing
    _stream_once(sources, watch, out, ckpt)
    rows = sources.read.parquet(str(out)).withColumn("has_pixels", F.lit(None))
    every = _outcomes(rows)  # asserts one outcome per file: nothing was read twice
    assert set(every) == _files(watch)
    assert every[f"file:{watch}/later/notes.txt"] == "UnsupportedFormatError"
    commits = sorted(p.name for p in (ckpt / "commits").iterdir() if not p.name.startswith("."))
    assert len(commits) >= 3  # one batch, then at least two of at most two files each


def test_build_session_registers_sources_on_a_reused_session(spark: SparkSession) -> None:
    """build_session() returning the active session registers the data sources with it too."""
    from medimg_spark.session import build_session

    fresh = spark.newSession()  # a new session state: no data source registered in it
    manager = fresh._jsparkSession.sessionState().dataSourceManager()
    assert not manager.dataSourceExists("medimg")
    fresh.createDataFrame([(1,)], "x int")  # makes ``fresh`` the active session
    try:
        reused = build_session()
        assert reused._jsparkSession.equals(fresh._jsparkSession)
        assert manager.dataSourceExists("medimg") and manager.dataSourceExists("dicom")
    finally:
        spark.createDataFrame([(1,)], "x int")  # the fixture's session is the active one again
