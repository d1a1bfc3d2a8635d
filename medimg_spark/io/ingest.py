"""Ingest: files → ``images`` · ``instances`` · ``quarantine`` Parquet tables under ``--out``.

Files are read with Spark's ``binaryFile`` source and decoded per partition with ``mapInArrow``
inside executors; nothing but small metadata ever reaches the driver. A file that cannot be read
becomes a quarantine row with a typed reason, and a file whose content was already ingested (in
this run or an earlier one into the same ``--out``) is skipped.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_spark.config import IngestConfig
from medimg_spark.errors import ConfigError, EmptyFileError, FileTooLargeError
from medimg_spark.io.files import (
    IMAGE,
    INSTANCE,
    QUARANTINE,
    CrashGuard,
    FileContext,
    local_path,
    process_files,
)
from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType


def _union_schema() -> StructType:
    from pyspark.sql.types import StringType, StructField, StructType

    fields: dict[str, StructField] = {"_kind": StructField("_kind", StringType(), False)}
    for schema in (IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA):
        for f in schema.fields:
            if f.name == "quarantined_at":  # stamped by Spark when the table is written
                continue
            if f.name in fields:
                if fields[f.name].dataType != f.dataType:
                    raise TypeError(f"column {f.name} has different types in two table schemas")
                continue
            fields[f.name] = StructField(f.name, f.dataType, True)
    return StructType(list(fields.values()))


UNION_SCHEMA = _union_schema()

#: Quarantine stages at which ingest gave up on a whole file (a rerun does not try it again).
FILE_STAGES = ("read", "parse", "deid", "decode")
#: Marker file written into an output directory that holds identified (not de-identified) data.
IDENTIFIED_MARKER = "IDENTIFIED"


def new_run_id(prefix: str = "ingest") -> str:
    """A sortable, unique run id such as ``ingest-20261121T101500Z-3fa2c1``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


def _rows_to_batch(rows: list[dict[str, Any]], arrow_schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    columns = [
        pa.array([r.get(name) for r in rows], type=arrow_schema.field(name).type)
        for name in arrow_schema.names
    ]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


def decode_partition(
    batches: Iterator[pa.RecordBatch], ctx: FileContext, flush_bytes: int
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: binaryFile rows (path, content) → union rows of the three tables."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        import cv2

        cv2.setNumThreads(1)  # one task per core: OpenCV's own threads would oversubscribe
    except ImportError:
        pass
    from pyspark import TaskContext

    arrow_schema = to_arrow_schema(UNION_SCHEMA)
    tc = TaskContext.get()
    guard = None
    if ctx.crash_dir and tc is not None:
        guard = CrashGuard(ctx.crash_dir, f"{ctx.run_id}-s{tc.stageId()}-p{tc.partitionId()}")

    def files() -> Iterator[tuple[str, bytes]]:
        for batch in batches:
            paths = batch.column("path").to_pylist()
            contents = batch.column("content")
            for i, path in enumerate(paths):
                yield path, contents[i].as_py() or b""

    pending: list[dict[str, Any]] = []
    size = 0
    for row in process_files(files(), ctx, guard):
        pending.append(row)
        size += len(row.get("pixels") or b"") + 512
        if size >= flush_bytes:
            yield _rows_to_batch(pending, arrow_schema)
            pending, size = [], 0
    if pending:
        yield _rows_to_batch(pending, arrow_schema)
    flush = getattr(ctx.deidentify, "flush", None)
    if flush is not None:
        flush(f"p{tc.partitionId()}-a{tc.attemptNumber()}" if tc else "driver")
    del pa


def read_labels_csv(path: str) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, Any]]:
    """Read ``--labels``: columns ``path`` or ``file_sha256``, ``label``, optional ``split``.

    Relative paths are resolved against the CSV's folder.

    Returns:
        ``(by_path, by_sha)`` mappings to ``(label, split)``.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"labels file {p} does not exist; pass a CSV with columns path,label[,split]")
    by_path: dict[str, tuple[str | None, str | None]] = {}
    by_sha: dict[str, tuple[str | None, str | None]] = {}
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if "label" not in cols or not ({"path", "file_sha256"} & cols):
            raise ConfigError(
                f"labels file {p} has columns {sorted(cols)}; it needs 'label' and 'path' or 'file_sha256'"
            )
        for n, rec in enumerate(reader, start=2):
            label = (rec.get("label") or "").strip() or None
            split = (rec.get("split") or "").strip() or None
            if rec.get("file_sha256"):
                by_sha[rec["file_sha256"].strip().lower()] = (label, split)
            elif rec.get("path"):
                target = Path(rec["path"].strip())
                if not target.is_absolute():
                    target = p.parent / target
                by_path[os.path.normpath(str(target.resolve()))] = (label, split)
            else:
                raise ConfigError(f"labels file {p}, line {n}: neither 'path' nor 'file_sha256' is set")
    return by_path, by_sha


def check_inputs(inputs: list[str]) -> list[str]:
    if not inputs:
        raise ConfigError("no INPUT given: pass one or more files or folders to ingest")
    out = []
    for item in inputs:
        if "://" in item or item.startswith("file:"):
            out.append(item)
            continue
        p = Path(item)
        if not p.exists():
            raise ConfigError(f"input {item} does not exist; pass existing files or folders")
        out.append(str(p.resolve()))
    return out


def _table_exists(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    jpath = jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[union-attr]
    return bool(fs.exists(jpath))


def _seen_keys(spark: SparkSession, out: str) -> DataFrame | None:
    """file_sha256 of every file already ingested into ``out`` (instances and quarantine)."""
    parts = []
    for table in ("instances", "quarantine"):
        path = f"{out}/{table}"
        if _table_exists(spark, path):
            df = spark.read.parquet(path)
            if table == "quarantine":
                df = df.where(df.stage.isin(*FILE_STAGES))
            parts.append(df.where(df.file_sha256.isNotNull()).select("file_sha256"))
    if not parts:
        return None
    seen = parts[0]
    for extra in parts[1:]:
        seen = seen.unionByName(extra)
    return seen.distinct()


def _seen_unread_paths(spark: SparkSession, out: str) -> DataFrame | None:
    """Paths of files quarantined unread (empty or too large) by earlier runs into ``out``."""
    path = f"{out}/quarantine"
    if not _table_exists(spark, path):
        return None
    q = spark.read.parquet(path)
    unread = (FileTooLargeError.__name__, EmptyFileError.__name__)
    return q.where((q.stage == "read") & q.error_class.isin(*unread)).select("source_path").distinct()


def _normalise_uri(path: str) -> str:
    """Spark's scan writes ``file:/x`` where its file index says ``file:///x``."""
    return "file:/" + path[len("file:///") :] if path.startswith("file:///") else path


def _empty_files(files: DataFrame) -> list[str]:
    """Zero-length files: Spark's file scan skips them, but its file index lists them."""
    indexed = [_normalise_uri(p) for p in files.inputFiles()]
    if not indexed:
        return []
    listed = {r.path for r in files.select("path").collect()}  # paths only, no content
    return sorted(p for p in indexed if p not in listed)


def crash_dir(out_uri: str, run_id: str) -> str:
    """Folder of the crash guards' marks: under the output's staging when it is a local path."""
    import tempfile

    local = local_path(out_uri)
    if "://" not in local:
        return f"{local}/{STAGING_DIR}/crash-{run_id}"
    return os.path.join(tempfile.gettempdir(), "medimg-crash", run_id)


def _context(
    run_id: str, cfg: IngestConfig, labels_csv: str | None, deidentify: Any, out_uri: str | None = None
) -> FileContext:
    by_path, by_sha = read_labels_csv(labels_csv) if labels_csv else ({}, {})
    return FileContext(
        run_id=run_id,
        crash_dir=crash_dir(out_uri, run_id) if out_uri else None,
        default_modality=cfg.default_modality,
        max_decompressed_bytes=cfg.max_decompressed_bytes,
        max_decoded_bytes=cfg.max_decoded_bytes,
        max_seconds_per_file=cfg.max_seconds_per_file,
        labels_by_path=by_path,
        labels_by_sha=by_sha,
        label_from_parent_dir=cfg.label_from_parent_dir,
        deidentify=deidentify,
    )


def _ingest_files(
    spark: SparkSession,
    files: DataFrame,
    empty: list[str],
    seen_in: str,
    dest: str,
    ctx: FileContext,
    cfg: IngestConfig,
) -> dict[str, Any]:
    """Decode ``files`` (binaryFile rows) and append the three tables under ``dest``.

    Args:
        files: DataFrame with ``path``, ``length``, ``content``.
        empty: paths of zero-length files (which a binaryFile scan skips).
        seen_in: output directory whose tables say what was ingested already.
        dest: directory the tables are appended to (``seen_in``, or a staging directory).

    Returns:
        Counts for the run summary.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    run_id = ctx.run_id
    listing = files.select("path", "length").persist(StorageLevel.MEMORY_AND_DISK)
    files_seen = listing.count() + len(empty)

    # Files over the limit are quarantined unread (the length filter is pushed into the scan, so
    # their content is never loaded); so are empty files, which the scan would silently skip.
    unread = listing.where(F.col("length") > cfg.max_file_bytes).select(
        "path",
        F.lit(None).cast("string").alias("file_sha256"),
        "length",
        F.lit(FileTooLargeError.__name__).alias("error_class"),
        F.concat(
            F.lit("file is "),
            F.col("length").cast("string"),
            F.lit(
                f" bytes, over the {cfg.max_file_bytes}-byte limit of the binaryFile reader; "
                "split or convert it before ingest"
            ),
        ).alias("error_message"),
    )
    if empty:
        empty_sha = hashlib.sha256(b"").hexdigest()
        message = "file has zero bytes; re-export or remove it"
        unread = unread.unionByName(
            spark.createDataFrame(
                [(p, empty_sha, 0, EmptyFileError.__name__, message) for p in empty],
                "path string, file_sha256 string, length long, error_class string, error_message string",
            )
        )
    seen_unread = _seen_unread_paths(spark, seen_in)
    if seen_unread is not None:
        unread = unread.join(seen_unread.withColumnRenamed("source_path", "path"), "path", "left_anti")
    unread_rows = unread.select(
        F.col("path").alias("source_path"),
        "file_sha256",
        F.col("length").alias("size_bytes"),
        F.lit(None).cast("int").alias("frame_index"),
        F.lit("read").alias("stage"),
        F.lit(None).cast("string").alias("step"),
        "error_class",
        "error_message",
        F.lit(run_id).alias("ingest_run_id"),
        F.current_timestamp().alias("quarantined_at"),
    ).persist(StorageLevel.MEMORY_AND_DISK)

    readable = files.where(F.col("length") <= cfg.max_file_bytes).select("path", "content")
    if cfg.files_per_partition:
        n_parts = max(1, -(-files_seen // cfg.files_per_partition))
        readable = readable.repartition(n_parts)
    flush = cfg.output_batch_bytes
    # Decode once into an uncompressed Parquet staging table next to the output, then split it into the
    # three tables. Measured against persist(DISK_ONLY) (benchmarks/run.py, N=500, 750 files): the cached
    # blocks are Java-serialised and LZ4-compressed, and every pass over them (dedupe keys, three table
    # writes, counts) deserialises the pixels again; from Parquet those passes read only their columns.
    decoded_dir = f"{dest}/{STAGING_DIR}/decoded-{run_id}"
    try:
        readable.mapInArrow(lambda batches: decode_partition(batches, ctx, flush), UNION_SCHEMA).write.mode(
            "overwrite"
        ).option("compression", "none").parquet(decoded_dir)
        decoded = spark.read.schema(UNION_SCHEMA).parquet(decoded_dir)
        # Deduplicate by content: one canonical path per sha256, minus what earlier runs ingested.
        keys = decoded.select("file_sha256", "source_path").distinct()
        canonical = keys.groupBy("file_sha256").agg(F.min("source_path").alias("source_path"))
        seen = _seen_keys(spark, seen_in)
        fresh = canonical if seen is None else canonical.join(seen, "file_sha256", "left_anti")
        fresh = fresh.persist(StorageLevel.MEMORY_AND_DISK)
        n_paths = keys.count()
        n_unique = canonical.count()
        n_fresh = fresh.count()
        kept = decoded
        if n_fresh != n_paths:
            kept = decoded.join(F.broadcast(fresh), ["file_sha256", "source_path"], "left_semi")

        def table(kind: str, schema: StructType) -> DataFrame:
            return kept.where(F.col("_kind") == kind).select(
                *[
                    (F.current_timestamp() if f.name == "quarantined_at" else F.col(f.name))
                    .cast(f.dataType)
                    .alias(f.name)
                    for f in schema.fields
                ]
            )

        images = table(IMAGE, IMAGES_SCHEMA)
        instances = table(INSTANCE, INSTANCES_SCHEMA)
        quarantine = table(QUARANTINE, QUARANTINE_SCHEMA).unionByName(unread_rows)
        images.write.mode("append").partitionBy("modality").parquet(f"{dest}/images")
        instances.write.mode("append").parquet(f"{dest}/instances")
        quarantine.write.mode("append").parquet(f"{dest}/quarantine")

        stats = (
            kept.groupBy("_kind", "has_pixels", "stage", "error_class")
            .agg(F.count(F.lit(1)).alias("n"))
            .collect()
        )
        unread_by_class = {
            r.error_class: r["count"] for r in unread_rows.groupBy("error_class").count().collect()
        }
        for df in (fresh, listing, unread_rows):
            df.unpersist()
    finally:
        _HadoopFS(spark).delete(decoded_dir)
        if ctx.crash_dir and "://" not in ctx.crash_dir:
            import shutil

            shutil.rmtree(ctx.crash_dir, ignore_errors=True)  # marks left by workers that died

    by_class: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    for r in stats:
        if r["_kind"] == QUARANTINE:
            by_class[r["error_class"]] = by_class.get(r["error_class"], 0) + r["n"]
            by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + r["n"]
    for cls, n in unread_by_class.items():
        by_class[cls] = by_class.get(cls, 0) + n
        by_stage["read"] = by_stage.get("read", 0) + n
    return {
        "files_seen": files_seen,
        "files_ingested": sum(r["n"] for r in stats if r["_kind"] == INSTANCE),
        "frames_written": sum(r["n"] for r in stats if r["_kind"] == IMAGE),
        "metadata_only_objects": sum(
            r["n"] for r in stats if r["_kind"] == INSTANCE and r["has_pixels"] is False
        ),
        "quarantined_by_error_class": by_class,
        "quarantined_by_stage": by_stage,
        "duplicates_skipped": n_paths - n_unique,
        "already_ingested": n_unique - n_fresh,
    }


COUNT_KEYS = (
    "files_seen",
    "files_ingested",
    "frames_written",
    "metadata_only_objects",
    "duplicates_skipped",
    "already_ingested",
)


def add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Sum two count dicts of :func:`_ingest_files` (used across micro-batches)."""
    out = dict(total)
    for k in COUNT_KEYS:
        out[k] = out.get(k, 0) + part.get(k, 0)
    for k in ("quarantined_by_error_class", "quarantined_by_stage"):
        merged = dict(out.get(k, {}))
        for name, n in part.get(k, {}).items():
            merged[name] = merged.get(name, 0) + n
        out[k] = merged
    return out


def _summary(
    run_id: str, inputs: list[str], out_uri: str, counts: dict[str, Any], started: float, identified: bool
) -> dict[str, Any]:
    wall = time.perf_counter() - started
    by_class = counts.get("quarantined_by_error_class", {})
    by_stage = counts.get("quarantined_by_stage", {})
    frames = counts.get("frames_written", 0)
    return {
        "run_id": run_id,
        "stage": "ingest",
        "inputs": inputs,
        "out": out_uri,
        **{k: counts.get(k, 0) for k in COUNT_KEYS[:4]},
        "files_quarantined_unparsed": sum(n for s, n in by_stage.items() if s in ("read", "parse")),
        "quarantined": sum(by_class.values()),
        "quarantined_by_error_class": dict(sorted(by_class.items())),
        "quarantined_by_stage": dict(sorted(by_stage.items())),
        **{k: counts.get(k, 0) for k in COUNT_KEYS[4:]},
        "wall_time_s": round(wall, 3),
        "frames_per_s": round(frames / wall, 2) if wall > 0 else None,
        "identified": identified,
    }


def _out_uri(out: str) -> str:
    return out if "://" in out or out.startswith("file:") else str(Path(out).resolve())


def ingest(
    spark: SparkSession,
    inputs: list[str],
    out: str,
    config: IngestConfig | None = None,
    labels_csv: str | None = None,
    deidentify: Any = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Ingest files or folders (recursively) into Parquet tables under ``out``.

    Args:
        spark: the session.
        inputs: files or folders (local paths or Hadoop URIs).
        out: output directory (local path or URI).
        config: ingest options.
        labels_csv: optional ``--labels`` CSV.
        deidentify: picklable callable applied to each DICOM dataset before metadata extraction
            (None keeps identifiers: the output is marked IDENTIFIED).
        run_id: the run id (generated when omitted).

    Returns:
        The run summary, also written to ``out/runs/<run_id>.json``.
    """
    cfg = config or IngestConfig()
    started = time.perf_counter()
    run_id = run_id or new_run_id()
    paths = check_inputs(inputs)
    out_uri = _out_uri(out)
    ctx = _context(run_id, cfg, labels_csv, deidentify, out_uri)
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(paths)
    empty = _empty_files(files)
    # decoded rows staged by a run that was killed before it could remove them
    _HadoopFS(spark).delete_glob(f"{out_uri}/{STAGING_DIR}/decoded-*")
    counts = _ingest_files(spark, files, empty, out_uri, out_uri, ctx, cfg)
    summary = _summary(run_id, inputs, out_uri, counts, started, identified=deidentify is None)
    if summary["identified"]:
        _mark_identified(out_uri, run_id)
    write_run_summary(spark, out_uri, summary)
    return summary


def _mark_identified(out: str, run_id: str) -> None:
    """Write the IDENTIFIED marker: this output holds original identifiers (``--keep-phi``)."""
    local = local_path(f"{out}/{IDENTIFIED_MARKER}")
    if "://" in local:
        return
    path = Path(local)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(f"{run_id}: ingested with --keep-phi; tables hold original identifiers (PHI)\n")


def write_run_summary(spark: SparkSession, out: str, summary: dict[str, Any]) -> str:
    """Write ``summary`` as ``out/runs/<run_id>.json`` (through Hadoop FS, so URIs work) and return the path."""
    path = f"{out}/runs/{summary['run_id']}.json"
    text = json.dumps(summary, indent=2, sort_keys=False, default=str)
    local = local_path(path)
    if local == path and "://" in path:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        jpath = jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]
        fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[union-attr]
        stream = fs.create(jpath, True)
        stream.write(bytearray(text.encode()))
        stream.close()
        return path
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    Path(local).write_text(text)
    return local


def format_summary(summary: dict[str, Any]) -> str:
    """A human-readable run summary."""
    lines = [f"ingest run {summary['run_id']} → {summary['out']}"]
    keys = [
        "files_seen",
        "files_ingested",
        "frames_written",
        "metadata_only_objects",
        "quarantined",
        "duplicates_skipped",
        "already_ingested",
        "wall_time_s",
        "frames_per_s",
    ]
    width = max(len(k) for k in keys)
    for k in keys:
        lines.append(f"  {k:<{width}}  {summary.get(k)}")
    for cls, n in summary.get("quarantined_by_error_class", {}).items():
        lines.append(f"    quarantine {cls}: {n}")
    if summary.get("identified"):
        lines.append(
            f"  WARNING: output is IDENTIFIED (--keep-phi): original identifiers kept; see {IDENTIFIED_MARKER}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Incremental ingest: Structured Streaming, each new file processed exactly once across runs.
# ---------------------------------------------------------------------------------------------

CHECKPOINT_DIR = "_checkpoints/ingest"
STAGING_DIR = "_staging"
COMMITS_DIR = "_checkpoints/ingest_commits"
TABLES = ("images", "instances", "quarantine")


class _HadoopFS:
    """The few Hadoop FileSystem calls the commit protocol needs (local paths and URIs alike)."""

    def __init__(self, spark: SparkSession) -> None:
        self._jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]

    def _p(self, path: str) -> Any:
        jpath = self._jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]
        return jpath, jpath.getFileSystem(self._conf)

    def exists(self, path: str) -> bool:
        jpath, fs = self._p(path)
        return bool(fs.exists(jpath))

    def delete(self, path: str) -> None:
        jpath, fs = self._p(path)
        fs.delete(jpath, True)

    def touch(self, path: str, text: str = "") -> None:
        """Write ``text`` to ``path`` atomically: a temporary sibling, then a rename.

        A process killed mid-write leaves only the hidden temporary file, never a truncated marker.
        """
        jpath, fs = self._p(path)
        tmp, _ = self._p(f"{path.rsplit('/', 1)[0]}/.{jpath.getName()}.{secrets.token_hex(4)}.tmp")
        stream = fs.create(tmp, True)
        stream.write(bytearray(text.encode()))
        stream.close()
        if fs.exists(jpath):
            fs.delete(jpath, False)
        if not fs.rename(tmp, jpath):
            raise OSError(f"could not rename {tmp} to {path}")

    def read_text(self, path: str) -> str:
        jpath, fs = self._p(path)
        stream = fs.open(jpath)
        try:
            data = self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream)  # type: ignore[union-attr]
        finally:
            stream.close()
        return bytes(data).decode()

    def delete_glob(self, pattern: str) -> None:
        """Delete (recursively) every path matching the Hadoop glob ``pattern``."""
        jpath, fs = self._p(pattern)
        for status in fs.globStatus(jpath) or []:
            fs.delete(status.getPath(), True)

    def data_files(self, root: str) -> list[str]:
        """Paths relative to ``root`` of its files (recursive), without ``_SUCCESS``/hidden files."""
        jpath, fs = self._p(root)
        if not fs.exists(jpath):
            return []
        prefix = fs.makeQualified(jpath).toString().rstrip("/") + "/"
        it = fs.listFiles(jpath, True)
        out = []
        while it.hasNext():
            name = it.next().getPath().toString()
            if not name.startswith(prefix):
                raise OSError(f"listing of {prefix} returned {name}, outside it")
            if not name.rsplit("/", 1)[-1].startswith(("_", ".")):
                out.append(name[len(prefix) :])
        return out

    def move(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` unless ``dst`` exists already (a replayed move)."""
        jsrc, fs = self._p(src)
        jdst, _ = self._p(dst)
        if fs.exists(jdst):
            return
        fs.mkdirs(jdst.getParent())
        if not fs.rename(jsrc, jdst):
            raise OSError(f"could not move {src} to {dst}")


def _batch_files(fs: _HadoopFS, checkpoint: str, n_sources: int, batch_id: int) -> list[str]:
    """Every file the streaming source assigned to ``batch_id`` (empty files included)."""
    paths: list[str] = []
    for source in range(n_sources):
        base = f"{checkpoint}/sources/{source}/{batch_id}"
        log = base if fs.exists(base) else f"{base}.compact"
        if not fs.exists(log):
            continue
        for line in fs.read_text(log).splitlines()[1:]:  # first line: log format version
            if line.strip():
                entry = json.loads(line)
                if int(entry.get("batchId", batch_id)) == batch_id:
                    paths.append(_normalise_uri(entry["path"]))
    return paths


def _commit_batch(
    spark: SparkSession,
    fs: _HadoopFS,
    batch: DataFrame,
    batch_id: int,
    out_uri: str,
    n_sources: int,
    ctx: FileContext,
    cfg: IngestConfig,
) -> dict[str, Any]:
    """Process one micro-batch exactly once, even when a crashed attempt of it is replayed.

    Protocol: the batch is written to ``_staging/batch-<id>``; once complete (marker ``_COMPLETE``)
    its files are moved into the tables (a move whose target exists is a replay and skipped), then
    ``_checkpoints/ingest_commits/<id>`` records the commit. A replay finds the commit and stops,
    or finds complete staging and only finishes the moves, or redoes an incomplete staging.
    """
    commit = f"{out_uri}/{COMMITS_DIR}/{batch_id}"
    if fs.exists(commit):
        return json.loads(fs.read_text(commit))
    staging = f"{out_uri}/{STAGING_DIR}/batch-{batch_id}"
    complete = f"{staging}/_COMPLETE"
    if fs.exists(complete):
        counts = json.loads(fs.read_text(complete))
    else:
        fs.delete(staging)
        listed = {r.path for r in batch.select("path").collect()}
        empty = sorted(set(_batch_files(fs, f"{out_uri}/{CHECKPOINT_DIR}", n_sources, batch_id)) - listed)
        counts = _ingest_files(spark, batch, empty, out_uri, staging, ctx, cfg)
        fs.touch(complete, json.dumps(counts))
    prefix = f"b{batch_id:09d}-"
    for table in TABLES:
        for rel in fs.data_files(f"{staging}/{table}"):
            folder, _, name = rel.rpartition("/")
            dst = f"{out_uri}/{table}/{folder + '/' if folder else ''}{prefix}{name}"
            fs.move(f"{staging}/{table}/{rel}", dst)
    fs.touch(commit, json.dumps(counts))
    fs.delete(staging)
    return counts


def ingest_incremental(
    spark: SparkSession,
    inputs: list[str],
    out: str,
    config: IngestConfig | None = None,
    labels_csv: str | None = None,
    deidentify: Any = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Ingest only files not seen by earlier incremental runs into ``out`` (exactly once).

    Uses Structured Streaming's ``binaryFile`` source with ``trigger(availableNow=True)`` and a
    checkpoint under ``out/_checkpoints/ingest``: every file present when the run starts and not
    yet processed is ingested, then the run stops. Meant for cron/Airflow schedules. Keep the
    same ``inputs`` (folders) across runs: the checkpoint tracks each input by position.

    Returns:
        The run summary (counts summed over the micro-batches), also written to ``out/runs/``.
    """
    cfg = config or IngestConfig()
    started = time.perf_counter()
    run_id = run_id or new_run_id("ingest-incr")
    paths = check_inputs(inputs)
    for p in paths:
        if "://" not in p and not p.startswith("file:") and not Path(p).is_dir():
            raise ConfigError(f"incremental ingest watches folders; {p} is not a folder")
    out_uri = _out_uri(out)
    ctx = _context(run_id, cfg, labels_csv, deidentify, out_uri)
    schema = spark.read.format("binaryFile").load(paths[0]).schema
    stream = None
    for p in paths:
        reader = spark.readStream.format("binaryFile").schema(schema).option("recursiveFileLookup", "true")
        if cfg.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", cfg.max_files_per_trigger)
        s = reader.load(p)
        stream = s if stream is None else stream.unionByName(s)
    assert stream is not None
    fs = _HadoopFS(spark)
    totals: dict[str, Any] = {}
    batches: list[int] = []

    def per_batch(batch: DataFrame, batch_id: int) -> None:
        nonlocal totals
        totals = add_counts(totals, _commit_batch(spark, fs, batch, batch_id, out_uri, len(paths), ctx, cfg))
        batches.append(batch_id)

    query = (
        stream.writeStream.foreachBatch(per_batch)
        .option("checkpointLocation", f"{out_uri}/{CHECKPOINT_DIR}")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    summary = _summary(run_id, inputs, out_uri, totals, started, identified=deidentify is None)
    summary["incremental"] = True
    summary["micro_batches"] = batches
    if summary["identified"] and summary["files_seen"]:
        _mark_identified(out_uri, run_id)
    write_run_summary(spark, out_uri, summary)
    return summary
