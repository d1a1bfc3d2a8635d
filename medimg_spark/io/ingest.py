"""Ingest: files → ``images`` · ``instances`` · ``quarantine`` Parquet tables under ``--out``.

Ingest is a writer over the ``medimg`` data source (:mod:`medimg_spark.io.datasource`): local inputs
are listed on the driver and read and decoded by the data source's tasks (``table=all`` rows, split by
``_kind`` into the three tables); Hadoop-URI inputs and incremental micro-batches are read with
Spark's ``binaryFile`` source and decoded per partition with ``mapInArrow`` by the same per-file
code. Nothing but small metadata ever reaches the driver. Ingest's own jobs are what a per-file read
cannot do: deduplication by content, skipping files already in the lake, the quarantine bookkeeping
of files never read, the crash guard folder and the run summaries. A file that cannot be read
becomes a quarantine row with a typed reason, and a file whose content was already ingested (in
this run or an earlier one into the same ``--out``) is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from medimg_spark.config import IngestConfig
from medimg_spark.errors import ConfigError, EmptyFileError, FileTooLargeError
from medimg_spark.io.commit import (
    CHECKPOINT_DIR,
    COMMITS_DIR,  # noqa: F401  (re-exported: tests and tools name the commit records folder)
    STAGING_DIR,
    TABLES,
    batch_files,
    commit_batch,
    run_available_now,
)
from medimg_spark.io.files import (
    IMAGE,
    INSTANCE,
    QUARANTINE,
    CrashGuard,
    FileContext,
    path_hook,
    process_files,
)
from medimg_spark.io.listing import Listing, hadoop_path, list_local
from medimg_spark.io.planning import (
    EMPTY_MESSAGE,
    UNION_SCHEMA,  # noqa: F401  (re-exported: benchmarks/run.py imports it from here)
    FileNameEncodingError,
    LabelsCSV,
    UnreadablePathError,
    UnreadFile,
    new_run_id,
    problem_rows,
    read_labels,
    rows_to_batch,
    too_large_message,
)
from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA
from medimg_spark.session import run_concurrently, unsorted_partitioned_writes
from medimg_spark.storage import (
    Storage,
    StorageError,
    StorageNotADirectoryError,
    get_storage,
    is_local,
    join,
    local_path,
    split_uri,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType


log = logging.getLogger("medimg.ingest")


class NotALakeError(ConfigError):
    """``--out`` is a non-empty directory that medimg ingest did not create, or holds foreign files."""


#: Parquet row-group size of the ``images`` table's files. A scan's split cannot cut a row group, so
#: row groups of a few frames (8 CT frames of 512x512 int16, 4 X-rays of 1024x1024) let preprocess and
#: features give every core several evenly sized tasks (:func:`medimg_spark.preprocess.frame_splits`)
#: instead of one task per ingest task's file.
IMAGE_ROW_GROUP_BYTES = 4 << 20
#: Parquet writer options of the ``images`` files: row groups of :data:`IMAGE_ROW_GROUP_BYTES`, their
#: size checked every 2 to 16 rows (Parquet checks first after 100 rows: 100 frames in one row group).
IMAGE_ROW_GROUPS = {
    "parquet.block.size": str(IMAGE_ROW_GROUP_BYTES),
    "parquet.page.size.row.check.min": "2",
    "parquet.page.size.row.check.max": "16",
}
#: Quarantine stages at which ingest gave up on a whole file (a rerun does not try it again).
FILE_STAGES = ("read", "parse", "deid", "decode")
#: Marker file written into an output directory that holds identified (not de-identified) data.
IDENTIFIED_MARKER = "IDENTIFIED"


def decode_partition(
    batches: Iterator[pa.RecordBatch], ctx: FileContext, flush_bytes: int
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: binaryFile rows (path, content) → staged rows of the three tables.

    The rows follow :data:`~medimg_spark.io.datasource.STAGED_SCHEMA` (image rows in the ``images``
    table's columns, instance and quarantine rows as JSON), as the ``medimg`` data source's ingest reads.
    """
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    from medimg_spark.io.datasource import STAGED_SCHEMA, staged_row
    from medimg_spark.worker import configure_worker

    configure_worker()  # one OpenCV thread per task, the allocator keeps frame-sized blocks
    from pyspark import TaskContext

    arrow_schema = to_arrow_schema(STAGED_SCHEMA)
    tc = TaskContext.get()
    guard = None
    if ctx.crash_dir and tc is not None:
        guard = CrashGuard(ctx.crash_dir, f"{ctx.run_id}-s{tc.stageId()}-p{tc.partitionId()}")

    def files() -> Iterator[tuple[str, bytes | None]]:
        for batch in batches:
            paths = batch.column("path").to_pylist()
            contents = batch.column("content")
            for i, path in enumerate(paths):
                yield path, contents[i].as_py()  # None: a listed local file the task reads itself

    pending: list[dict[str, Any]] = []
    size = 0
    for row in process_files(files(), ctx, guard):
        row = staged_row(row)
        pending.append(row)
        size += len(row.get("pixels") or b"") + 512
        if size >= flush_bytes:
            yield rows_to_batch(pending, arrow_schema)
            pending, size = [], 0
    if pending:
        yield rows_to_batch(pending, arrow_schema)
    flush = getattr(ctx.deidentify, "flush", None)
    if flush is not None:
        flush(f"p{tc.partitionId()}-a{tc.attemptNumber()}" if tc else "driver")
    del pa


def read_labels_csv(path: str) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, Any]]:
    """``(by_path, by_sha)`` of :func:`read_labels`."""
    labels = read_labels(path)
    return labels.by_path, labels.by_sha


def check_inputs(inputs: list[str]) -> list[str]:
    """Validate INPUTs: local paths (and ``file:`` URIs) must exist and are made absolute; other URIs pass.

    Raises:
        ConfigError: no input, or a local input that does not exist.
    """
    if not inputs:
        raise ConfigError("no INPUT given: pass one or more files or folders to ingest")
    out = []
    for item in inputs:
        if "://" in item and not item.startswith("file:"):
            out.append(item)
            continue
        p = Path(local_path(item))
        if not p.exists():
            raise ConfigError(f"input {item} does not exist; pass existing files or folders")
        out.append(str(p.resolve()))
    return out


def _seen_keys(spark: SparkSession, out: str) -> DataFrame | None:
    """file_sha256 of every file already ingested into ``out`` (instances and quarantine)."""
    store = get_storage(spark)
    parts = []
    for table in ("instances", "quarantine"):
        path = join(out, table)
        if store.exists(path):
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


#: Error classes of files quarantined without being read (a rerun does not quarantine them again).
UNREAD_CLASSES = (
    FileTooLargeError.__name__,
    EmptyFileError.__name__,
    FileNameEncodingError.__name__,
    UnreadablePathError.__name__,
)


def _seen_unread_paths(spark: SparkSession, out: str) -> DataFrame | None:
    """Paths of files quarantined unread (empty, too large, unreadable) by earlier runs into ``out``."""
    path = join(out, "quarantine")
    if not get_storage(spark).exists(path):
        return None
    q = spark.read.parquet(path)
    unread = UNREAD_CLASSES
    return q.where((q.stage == "read") & q.error_class.isin(*unread)).select("source_path").distinct()


@dataclass
class _Inputs:
    """What ingest reads: the driver's listing of local inputs and the binaryFile scan of URI inputs.

    Attributes:
        listing: the driver's listing of the local inputs.
        local: its non-empty files (Hadoop path string → size, in listing order), decoded through the
            ``medimg`` data source's per-task code (:func:`medimg_spark.io.datasource.read_files`).
        remote: the binaryFile scan of the URI inputs (None without).
    """

    listing: Listing
    local: dict[str, int]
    remote: DataFrame | None = None


def _glob_escape(path: str) -> str:
    """Escape Hadoop glob characters (``FileSystem.globStatus``: ``\\c`` is a literal ``c``)."""
    return re.sub(r"([\\{}\[\]*?])", r"\\\1", path)


#: Hadoop options of the binaryFile scan of local inputs: the raw local file system, without the
#: checksum layer, whose ``.name.crc`` lookup fails on names with a colon ("Relative path in absolute
#: URI"); not cached, so that the session's shared ``file:`` file system is left as it is.
RAW_LOCAL_FS = {
    "fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "fs.file.impl.disable.cache": "true",
}


def _scan_inputs(spark: SparkSession, paths: list[str]) -> _Inputs:
    """List local inputs on the driver (:func:`list_local`) and scan URI inputs with binaryFile.

    Handing Spark the listing's paths one by one (when a folder holds a name its reader cannot take)
    costs the driver minutes per thousand paths; instead the listed local files go to the data source,
    which spreads them over tasks in listing order (as Spark sizes a file scan's splits) and reads each
    one from the local file system (a local path on a cluster must be on a mount every executor sees,
    as for binaryFile).
    """
    local = [p for p in paths if "://" not in p]
    remote_paths = [p for p in paths if "://" in p]
    listing = list_local(local)
    remote = None
    if remote_paths:
        remote = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(remote_paths)
    return _Inputs(listing, {path: size for path, size in listing.files.items() if size}, remote)


def _unread_files(inputs: _Inputs) -> list[UnreadFile]:
    """Files that get a quarantine row without being read.

    Zero-length files (which a binaryFile scan skips), files listed on the driver that the scan did not
    return, and the listing's problems (names that are not UTF-8, broken symlinks, ...). Paths are
    compared as Hadoop path strings on both sides (a URI of Spark's file index is decoded once).
    """
    scanned = set(inputs.local)  # read by the data source's tasks
    if inputs.remote is not None:
        scanned |= {r.path for r in inputs.remote.select("path").collect()}  # paths only, no content
    expected: dict[str, int | None] = dict(inputs.listing.files)
    if inputs.remote is not None:
        expected.update({hadoop_path(u): None for u in inputs.remote.inputFiles()})
    empty_sha = hashlib.sha256(b"").hexdigest()
    out: list[UnreadFile] = []
    for path, size in sorted(expected.items()):
        if path in scanned:
            continue
        if not size:  # zero bytes, or a URI input's file that its scan skipped: an empty file
            out.append((path, empty_sha, 0, EmptyFileError.__name__, EMPTY_MESSAGE))
        else:
            message = (
                "listed when the run started but not returned by Spark's binaryFile scan (deleted or "
                "replaced meanwhile?); ingest it again"
            )
            out.append((path, None, size, UnreadablePathError.__name__, message))
    out += problem_rows(inputs.listing)
    extra = scanned.difference(expected) if inputs.remote is None else set()
    if extra:
        log.warning(
            "the binaryFile scan returned %d file(s) the listing did not; they are ingested", len(extra)
        )
    return out


def crash_dir(out_uri: str, run_id: str) -> str:
    """Folder of the crash guards' marks: under the output's staging when it is a local path."""
    import tempfile

    if is_local(out_uri):
        return join(local_path(out_uri), STAGING_DIR, f"crash-{run_id}")
    return os.path.join(tempfile.gettempdir(), "medimg-crash", run_id)


def _context(
    run_id: str,
    cfg: IngestConfig,
    labels_csv: str | LabelsCSV | None,
    deidentify: Any,
    out_uri: str | None = None,
) -> FileContext:
    labels = read_labels(labels_csv) if isinstance(labels_csv, str) else labels_csv
    by_path, by_sha = (labels.by_path, labels.by_sha) if labels else ({}, {})
    return FileContext(
        run_id=run_id,
        crash_dir=crash_dir(out_uri, run_id) if out_uri else None,
        default_modality=cfg.default_modality,
        max_decompressed_bytes=cfg.max_decompressed_bytes,
        max_decoded_bytes=cfg.max_decoded_bytes,
        max_file_bytes=cfg.max_file_bytes,
        max_seconds_per_file=cfg.max_seconds_per_file,
        labels_by_path=by_path,
        labels_by_sha=by_sha,
        label_from_parent_dir=cfg.label_from_parent_dir,
        deidentify=deidentify,
        split_rule=cfg.split,
    )


def _read_local(spark: SparkSession, files: dict[str, int], ctx: FileContext, cfg: IngestConfig) -> DataFrame:
    """The staged rows (:data:`~medimg_spark.io.datasource.STAGED_SCHEMA`) of local ``files``, read by the
    ``medimg`` data source's per-task code (:func:`~medimg_spark.io.datasource.read_files`).

    Ingest's own per-file context (limits, labels, crash guard folder, the de-identification hook built
    by the caller) travels pickled with the tasks' function, as a UDF's closure does, and never as an
    option of the query plan.
    """
    from medimg_spark.io.datasource import STAGED, ReadPlan, read_files

    plan = ReadPlan(
        paths=[],
        table=STAGED,
        frames="all",
        dicom_only=False,
        ctx=ctx,
        flush_bytes=cfg.output_batch_bytes,
        parallelism=spark.sparkContext.defaultParallelism,
        files_per_task=cfg.files_per_partition,
    )
    return read_files(spark, plan, files)


#: Part of Spark's error when a Python worker it launched without its daemon did not connect back in
#: time: a data source's driver-side workers (its creation, the read's planning) get a fixed 10 s
#: (``PythonWorkerFactory.createSimpleWorker``, not configurable in Spark 4.x), which an interpreter
#: start can exceed on an overloaded host.
CONNECT_BACK = "failed to connect back"
#: Attempts of the decoding write when a driver-side Python worker did not start in time.
WORKER_START_ATTEMPTS = 3


def _retry_worker_start(spark: SparkSession, action: Callable[[], None]) -> None:
    """Run ``action``; again (at most :data:`WORKER_START_ATTEMPTS` times) on a :data:`CONNECT_BACK` error.

    Only while executors use Spark's Python worker daemon (the default): the error then comes from
    the data source's driver-side workers, before any task ran, so running again repeats no task's
    side effects (vault files). Other errors are raised at once.
    """
    daemon = spark.sparkContext.getConf().get("spark.python.use.daemon", "true").lower() != "false"
    for attempt in range(1, WORKER_START_ATTEMPTS + 1):
        try:
            action()
            return
        except Exception as err:  # Py4JJavaError or pyspark's captured exceptions
            if not daemon or CONNECT_BACK not in str(err) or attempt == WORKER_START_ATTEMPTS:
                raise
            log.warning("a Python worker did not start in time (attempt %d); decoding again", attempt)


def _ingest_files(
    spark: SparkSession,
    files: DataFrame | None,
    unread_known: list[UnreadFile],
    seen_in: str,
    dest: str,
    ctx: FileContext,
    cfg: IngestConfig,
    labels: LabelsCSV | None = None,
    local: Mapping[str, int] | None = None,
) -> IngestCounts:
    """Decode ``files`` (binaryFile rows) and ``local`` files and append the three tables under ``dest``.

    Args:
        files: DataFrame with ``path``, ``length``, ``content`` (URI inputs, or a streamed micro-batch),
            decoded by :func:`decode_partition`; None without.
        unread_known: files quarantined without being read (zero-length files, which a binaryFile scan
            skips, and the listing's problems); none of them is a row of ``files`` or ``local``.
        seen_in: output directory whose tables say what was ingested already.
        dest: directory the tables are appended to (``seen_in``, or a staging directory).
        labels: the ``--labels`` CSV, to report which of its rows matched a file.
        local: listed non-empty local files (Hadoop path string → size), read and decoded by the
            ``medimg`` data source's per-task code (:func:`medimg_spark.io.datasource.read_files`).

    Returns:
        Counts for the run summary (``labels_matched``: indices of the label rows that matched).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    run_id = ctx.run_id
    local = dict(local or {})
    # URI inputs are counted by a job; listed local files are known on the driver (no job, no DataFrame).
    listing = None if files is None else files.select("path", "length").persist(StorageLevel.MEMORY_AND_DISK)
    files_seen = len(local) + (listing.count() if listing is not None else 0) + len(unread_known)

    # Files over the limit are quarantined unread (for URI inputs the length filter is pushed into the
    # scan, so their content is never loaded); so are empty files, which the scan would silently skip.
    unread_ddl = "path string, file_sha256 string, length long, error_class string, error_message string"
    # the message around the size, which a Spark column fills in for URI inputs
    too_large = too_large_message("\0", cfg.max_file_bytes).split("\0")
    unread_local: list[UnreadFile] = [
        (p, None, n, FileTooLargeError.__name__, too_large_message(n, cfg.max_file_bytes))
        for p, n in local.items()
        if n > cfg.max_file_bytes
    ] + list(unread_known)
    unread_parts: list[DataFrame] = []
    if listing is not None:
        unread_parts.append(
            listing.where(F.col("length") > cfg.max_file_bytes).select(
                "path",
                F.lit(None).cast("string").alias("file_sha256"),
                "length",
                F.lit(FileTooLargeError.__name__).alias("error_class"),
                F.concat(F.lit(too_large[0]), F.col("length").cast("string"), F.lit(too_large[1])).alias(
                    "error_message"
                ),
            )
        )
    paths = path_hook(ctx)
    if paths is not None:
        # De-identified: the (few) unread files' paths become pseudonyms here on the driver, the originals
        # go to the vault, and the earlier runs' unread rows are compared pseudonym to pseudonym.
        if unread_parts:
            unread_local += [
                (r.path, r.file_sha256, r.length, r.error_class, r.error_message)
                for r in unread_parts.pop().collect()
            ]
        unread_local = [
            (paths.pseudonymize_path(p), sha, n, cls, paths.scrub(msg, p))
            for p, sha, n, cls, msg in unread_local
        ]
        paths.flush(f"driver-{run_id}")
    if unread_local:
        unread_parts.append(spark.createDataFrame(unread_local, unread_ddl))
    # Nothing unread (the common case for local inputs): no DataFrame and no job for it.
    unread_rows: DataFrame | None = None
    if unread_parts:
        unread = unread_parts[0] if len(unread_parts) == 1 else unread_parts[0].unionByName(unread_parts[1])
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

    from medimg_spark.io.datasource import SIDE_SCHEMA, STAGED_SCHEMA

    flush = cfg.output_batch_bytes
    small = {p: n for p, n in (local or {}).items() if n <= cfg.max_file_bytes}
    store = get_storage(spark)
    decoded_dir = join(dest, STAGING_DIR, f"decoded-{run_id}")

    def decode() -> None:
        parts: list[DataFrame] = []
        if small:
            parts.append(_read_local(spark, small, ctx, cfg))
        if files is not None:
            readable = files.where(F.col("length") <= cfg.max_file_bytes).select("path", "content")
            if cfg.files_per_partition:
                n_parts = max(1, -(-files_seen // cfg.files_per_partition))
                readable = readable.repartition(n_parts)
            parts.append(
                readable.mapInArrow(lambda batches: decode_partition(batches, ctx, flush), STAGED_SCHEMA)
            )
        if not parts:
            parts.append(spark.createDataFrame([], STAGED_SCHEMA))
        decoded_rows = parts[0]
        for extra in parts[1:]:
            decoded_rows = decoded_rows.unionByName(extra)
        writer = decoded_rows.write.mode("overwrite").partitionBy("_kind", "modality")
        with unsorted_partitioned_writes(spark):
            writer.options(**IMAGE_ROW_GROUPS).parquet(decoded_dir)

    # The decoded pixels are written once: the decoding pass writes its rows partitioned by ``_kind`` and
    # ``modality`` in the images table's columns and compression (STAGED_SCHEMA), so its image files are
    # already files of the images table and are moved (renamed) into it when deduplication drops nothing
    # (the common case); instance and quarantine rows (small, their fields as JSON) are written to their
    # tables from the staged rows. Measured with benchmarks/run.py (spark mode, N=100, JVM CPU) against
    # the earlier uncompressed staging of every column and a second write of the pixels into images/.
    try:
        _retry_worker_start(spark, decode)
        decoded = spark.read.schema(STAGED_SCHEMA).parquet(decoded_dir)
        # Deduplicate by content: one canonical path per sha256, minus what earlier runs ingested.
        keys = decoded.select("file_sha256", "source_path").distinct()
        canonical = keys.groupBy("file_sha256").agg(F.min("source_path").alias("source_path"))
        seen = _seen_keys(spark, seen_in)
        fresh = canonical if seen is None else canonical.join(seen, "file_sha256", "left_anti")
        fresh = fresh.persist(StorageLevel.MEMORY_AND_DISK)
        # Instance and quarantine rows of every file, before deduplication (small: no pixels).
        meta = decoded.where(F.col("_kind") != IMAGE).select(
            "_kind",
            "file_sha256",
            "source_path",
            F.from_json(F.col("pixels").cast("string"), SIDE_SCHEMA).alias("r"),
        )
        meta = meta.persist(StorageLevel.MEMORY_AND_DISK)
        # The three reads of the staged rows are independent: submitted together (run_concurrently) they
        # share the cores, and all of them happen before the image files move away (the staged table's
        # listing would miss them).
        counted, n_images, _ = run_concurrently(
            spark,
            # one job for both counts (a null sha256 is a group of its own, as in groupBy)
            lambda: keys.agg(
                F.count(F.lit(1)).alias("paths"),
                F.countDistinct("file_sha256").alias("unique"),
                F.max(F.col("file_sha256").isNull().cast("int")).alias("null_sha"),
            ).first(),
            lambda: decoded.where(F.col("_kind") == IMAGE).count(),
            meta.count,
        )
        n_paths = int(counted["paths"]) if counted else 0
        n_unique = int(counted["unique"]) + int(counted["null_sha"] or 0) if counted else 0
        n_fresh = n_unique if seen is None else fresh.count()
        dropping = n_fresh != n_paths

        def kept(df: DataFrame) -> DataFrame:
            return (
                df.join(F.broadcast(fresh), ["file_sha256", "source_path"], "left_semi") if dropping else df
            )

        side = kept(meta).select("_kind", *[F.col(f"r.{f.name}").alias(f.name) for f in SIDE_SCHEMA.fields])
        # ``side`` is read three times below: without duplicates a projection of ``meta``'s cache, with them
        # a semi-join of it, cached once.
        if dropping:
            side = side.persist(StorageLevel.MEMORY_AND_DISK)
        matched = _matched_labels(spark, labels, local, listing, keys, unread_known)

        def table(kind: str, schema: StructType) -> DataFrame:
            return side.where(F.col("_kind") == kind).select(
                *[
                    (F.current_timestamp() if f.name == "quarantined_at" else F.col(f.name))
                    .cast(f.dataType)
                    .alias(f.name)
                    for f in schema.fields
                ]
            )

        frames_written = _write_images(
            spark, store, decoded, decoded_dir, join(dest, "images"), kept, dropping, n_images
        )
        instances = table(INSTANCE, INSTANCES_SCHEMA)
        quarantine = table(QUARANTINE, QUARANTINE_SCHEMA)
        if unread_rows is not None:
            quarantine = quarantine.unionByName(unread_rows)
        by_unread = unread_rows.groupBy("error_class").count() if unread_rows is not None else None
        # Two small appends (to different tables) and two small collects, side by side.
        _, _, stats, unread_counts = run_concurrently(
            spark,
            lambda: instances.write.mode("append").parquet(join(dest, "instances")),
            lambda: quarantine.write.mode("append").parquet(join(dest, "quarantine")),
            lambda: (
                side.groupBy("_kind", "has_pixels", "stage", "error_class")
                .agg(
                    F.count(F.lit(1)).alias("n"),
                    F.sum("_path_phi").alias("path_phi"),
                    F.count(F.when(F.col("_path_phi") > 0, True)).alias("path_phi_files"),
                )
                .collect()
            ),
            lambda: by_unread.collect() if by_unread is not None else [],
        )
        unread_by_class = {r.error_class: r["count"] for r in unread_counts}
        for df in (fresh, listing, unread_rows, meta, side):
            if df is not None:
                df.unpersist()
    finally:
        store.delete(decoded_dir)
        if ctx.crash_dir:
            with contextlib.suppress(StorageError):  # marks left by workers that died (a local folder)
                store.delete(ctx.crash_dir)

    by_class: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    for r in stats:
        if r["_kind"] == QUARANTINE:
            by_class[r["error_class"]] = by_class.get(r["error_class"], 0) + r["n"]
            by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + r["n"]
    for cls, n in unread_by_class.items():
        by_class[cls] = by_class.get(cls, 0) + n
        by_stage["read"] = by_stage.get("read", 0) + n
    return IngestCounts(
        files_seen=files_seen,
        files_ingested=sum(r["n"] for r in stats if r["_kind"] == INSTANCE),
        frames_written=frames_written,
        metadata_only_objects=sum(
            r["n"] for r in stats if r["_kind"] == INSTANCE and r["has_pixels"] is False
        ),
        quarantined_by_error_class=by_class,
        quarantined_by_stage=by_stage,
        duplicates_skipped=n_paths - n_unique,
        already_ingested=n_unique - n_fresh,
        labels_matched=matched,
        path_phi_files=sum(r["path_phi_files"] for r in stats if r["_kind"] == INSTANCE),
        path_phi_components=sum(r["path_phi"] or 0 for r in stats if r["_kind"] == INSTANCE),
    )


def _write_images(
    spark: SparkSession,
    store: Storage,
    decoded: DataFrame,
    decoded_dir: str,
    dest: str,
    kept: Callable[[DataFrame], DataFrame],
    dropping: bool,
    n_staged: int,
) -> int:
    """Append the staged image rows to the ``images`` table at ``dest``; returns how many.

    When deduplication drops nothing, the staged image files (``_kind=image/modality=*/``, the table's
    columns and compression) are moved into the table as they are (``n_staged``: how many rows they
    hold); otherwise the kept rows are written.
    """
    from pyspark.sql import functions as F

    images = decoded.where(F.col("_kind") == IMAGE)
    if dropping:
        rows = kept(images).select(
            *[F.col(f.name).cast(f.dataType).alias(f.name) for f in IMAGES_SCHEMA.fields]
        )
        with unsorted_partitioned_writes(spark):
            rows.write.mode("append").partitionBy("modality").options(**IMAGE_ROW_GROUPS).parquet(dest)
        return int(kept(images.select("file_sha256", "source_path")).count())
    staged = join(decoded_dir, f"_kind={IMAGE}")
    moved = store.move_tree(staged, dest)
    if not moved and not store.exists(dest):
        store.mkdirs(dest)  # an empty table, as Spark's write of no rows leaves it
    return n_staged


def _matched_labels(
    spark: SparkSession,
    labels: LabelsCSV | None,
    local: Mapping[str, int],
    listing: DataFrame | None,
    keys: DataFrame,
    unread_known: list[UnreadFile],
) -> list[int]:
    """Indices of the ``--labels`` rows that match a file of this batch, by path or by content."""
    if labels is None or not labels.rows:
        return []
    paths: set[str] = set()
    if labels.by_path:
        seen = list(local) + [u[0] for u in unread_known]
        if listing is not None:
            seen += [r.path for r in listing.select("path").collect()]
        paths = {local_path(p) for p in seen}
    shas: set[str] = set()
    if labels.by_sha:
        wanted = spark.createDataFrame([(s,) for s in labels.by_sha], "file_sha256 string")
        found = keys.select("file_sha256").distinct().join(wanted, "file_sha256", "left_semi")
        shas = {r.file_sha256 for r in found.collect()}
    return [i for i, row in enumerate(labels.rows) if any(k in paths or k in shas for k in row)]


COUNT_KEYS = (
    "files_seen",
    "files_ingested",
    "frames_written",
    "metadata_only_objects",
    "duplicates_skipped",
    "already_ingested",
    "path_phi_files",
    "path_phi_components",
)


@dataclass
class IngestCounts:
    """What :func:`_ingest_files` did with one set of files (one run, or one micro-batch).

    Attributes:
        files_seen: files given (read or quarantined unread).
        files_ingested: ``instances`` rows written.
        frames_written: ``images`` rows written.
        metadata_only_objects: instances without pixel data.
        duplicates_skipped: files whose content another file of the same set has.
        already_ingested: files whose content an earlier run ingested.
        quarantined_by_error_class: quarantine rows per error class.
        quarantined_by_stage: quarantine rows per stage.
        labels_matched: indices of the ``--labels`` rows that matched a file.
        path_phi_files: de-identified DICOM files (ingested) with a path component equal to a header
            PHI value of the file (patient name or a component of it, patient ID, birth date, ...).
        path_phi_components: the path components of those files that matched (counts, never values).
    """

    files_seen: int = 0
    files_ingested: int = 0
    frames_written: int = 0
    metadata_only_objects: int = 0
    duplicates_skipped: int = 0
    already_ingested: int = 0
    quarantined_by_error_class: dict[str, int] = field(default_factory=dict)
    quarantined_by_stage: dict[str, int] = field(default_factory=dict)
    labels_matched: list[int] = field(default_factory=list)
    path_phi_files: int = 0
    path_phi_components: int = 0

    def __add__(self, other: IngestCounts) -> IngestCounts:
        """The counts of both sets (summed across micro-batches)."""

        def merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}

        return IngestCounts(
            **{k: getattr(self, k) + getattr(other, k) for k in COUNT_KEYS},
            quarantined_by_error_class=merged(
                self.quarantined_by_error_class, other.quarantined_by_error_class
            ),
            quarantined_by_stage=merged(self.quarantined_by_stage, other.quarantined_by_stage),
            labels_matched=sorted(set(self.labels_matched) | set(other.labels_matched)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The counts as JSON-able data (a micro-batch's commit record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestCounts:
        """Counts read back from :meth:`to_dict` (a missing key counts zero)."""
        return cls(
            **{k: int(data.get(k, 0)) for k in COUNT_KEYS},
            quarantined_by_error_class=dict(data.get("quarantined_by_error_class", {})),
            quarantined_by_stage=dict(data.get("quarantined_by_stage", {})),
            labels_matched=[int(i) for i in data.get("labels_matched", [])],
        )


class IngestSummary(TypedDict):
    """The run summary of ``medimg ingest``: returned, printed and written to ``out/runs/<run_id>.json``.

    The report and the run log read these keys; ``incremental`` and ``micro_batches`` are set by
    incremental runs only.
    """

    run_id: str
    stage: str
    inputs: list[str]
    out: str
    files_seen: int
    files_ingested: int
    frames_written: int
    metadata_only_objects: int
    files_quarantined_unparsed: int
    quarantined: int
    quarantined_by_error_class: dict[str, int]
    quarantined_by_stage: dict[str, int]
    duplicates_skipped: int
    already_ingested: int
    labels_unmatched: int
    symlinks_skipped: int
    wall_time_s: float
    frames_per_s: float | None
    identified: bool
    path_phi_files: int
    path_phi_components: int
    incremental: NotRequired[bool]
    micro_batches: NotRequired[list[int]]


def _summary(
    run_id: str,
    inputs: list[str],
    out_uri: str,
    counts: IngestCounts,
    started: float,
    identified: bool,
    labels: LabelsCSV | None = None,
    symlinks_skipped: int = 0,
) -> IngestSummary:
    wall = time.perf_counter() - started
    by_class = counts.quarantined_by_error_class
    by_stage = counts.quarantined_by_stage
    return {
        "run_id": run_id,
        "stage": "ingest",
        "inputs": inputs,
        "out": out_uri,
        "files_seen": counts.files_seen,
        "files_ingested": counts.files_ingested,
        "frames_written": counts.frames_written,
        "metadata_only_objects": counts.metadata_only_objects,
        "files_quarantined_unparsed": sum(n for s, n in by_stage.items() if s in ("read", "parse")),
        "quarantined": sum(by_class.values()),
        "quarantined_by_error_class": dict(sorted(by_class.items())),
        "quarantined_by_stage": dict(sorted(by_stage.items())),
        "duplicates_skipped": counts.duplicates_skipped,
        "already_ingested": counts.already_ingested,
        "labels_unmatched": len(labels.rows) - len(counts.labels_matched) if labels else 0,
        "symlinks_skipped": symlinks_skipped,
        "wall_time_s": round(wall, 3),
        "frames_per_s": round(counts.frames_written / wall, 2) if wall > 0 else None,
        "identified": identified,
        "path_phi_files": counts.path_phi_files,
        "path_phi_components": counts.path_phi_components,
    }


def _out_uri(out: str) -> str:
    """``out`` made absolute (symlinks resolved) when it is a plain local path; URIs unchanged."""
    return os.path.realpath(out) if split_uri(out)[0] == "" else out


def _finish_run(
    store: Storage,
    run_id: str,
    inputs: list[str],
    out_uri: str,
    counts: IngestCounts,
    started: float,
    *,
    identified: bool,
    labels: LabelsCSV | None,
    symlinks_skipped: int,
    micro_batches: list[int] | None = None,
    deidentify: Any = None,
) -> IngestSummary:
    """The shared tail of a run: its summary, the unmatched-labels warning, markers, ``runs/<id>.json``.

    Args:
        micro_batches: the micro-batches of an incremental run (None for a batch run). An incremental
            run that found no new file does not write the IDENTIFIED marker.
        deidentify: the run's de-identification hook: the summary then lists the inputs as path
            pseudonyms (the originals go to the vault).
    """
    hook = path_hook(FileContext(run_id, deidentify=deidentify))
    if hook is not None:
        inputs = [hook.pseudonymize_path(p) for p in inputs]
        hook.flush(f"driver-{run_id}-inputs")
    summary = _summary(
        run_id,
        inputs,
        out_uri,
        counts,
        started,
        identified=identified,
        labels=labels,
        symlinks_skipped=symlinks_skipped,
    )
    _warn_unmatched_labels(summary, labels)
    if micro_batches is not None:
        summary["incremental"] = True
        summary["micro_batches"] = micro_batches
    if summary["identified"] and (micro_batches is None or summary["files_seen"]):
        _mark_identified(store, out_uri, run_id)
    write_run_summary(store, out_uri, summary)
    return summary


def ingest(
    spark: SparkSession,
    inputs: list[str],
    out: str,
    config: IngestConfig | None = None,
    labels_csv: str | None = None,
    deidentify: Any = None,
    run_id: str | None = None,
) -> IngestSummary:
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
    labels = read_labels(labels_csv) if labels_csv else None
    store = get_storage(spark)
    prepare_lake(out_uri, store)  # before any job: refuses a foreign directory, writes the lake marker
    ctx = _context(run_id, cfg, labels, deidentify, out_uri)
    inputs_ = _scan_inputs(spark, paths)
    unread = _unread_files(inputs_)
    # decoded rows staged by a run that was killed before it could remove them (only in a lake)
    store.delete_glob(join(_glob_escape(out_uri), STAGING_DIR, "decoded-*"))
    try:
        counts = _ingest_files(
            spark, inputs_.remote, unread, out_uri, out_uri, ctx, cfg, labels, local=inputs_.local
        )
    finally:
        store.remove_if_empty(join(out_uri, STAGING_DIR))
    return _finish_run(
        store,
        run_id,
        inputs,
        out_uri,
        counts,
        started,
        identified=deidentify is None,
        labels=labels,
        symlinks_skipped=inputs_.listing.symlinks_skipped,
        deidentify=deidentify,
    )


def _warn_unmatched_labels(summary: IngestSummary, labels: LabelsCSV | None) -> None:
    n = summary.get("labels_unmatched", 0)
    if labels is not None and n:
        log.warning(
            "%d of %d rows of the labels file %s match no input file (by path or file_sha256); "
            "check its paths (relative to the CSV's folder) against the inputs",
            n,
            len(labels.rows),
            labels.path,
        )


# ---------------------------------------------------------------------------------------------
# The output directory: a medimg lake, marked by LAKE_MARKER when ingest creates it.
# ---------------------------------------------------------------------------------------------

#: Marker file of a directory created by medimg ingest (hidden from Spark's readers by its ``_``).
LAKE_MARKER = "_MEDIMG_LAKE"
LAKE_FORMAT = "medimg-lake"
#: Version of the lake layout written by this code (the marker's ``version``).
LAKE_VERSION = 1


def _lake_storage(out: str, store: Storage | None) -> Storage:
    """The storage :func:`prepare_lake` checks ``out`` with.

    A local ``out`` is checked with plain file calls (no SparkSession needed: the CLI checks it before
    Spark starts, and a listing through the JVM costs calls per file); a URI through ``store``, else
    the active session's storage.
    """
    if is_local(out):
        return Storage(None)
    return store if store is not None else get_storage()


def _is_ingest_summary(store: Storage, path: str) -> bool:
    try:
        data = store.read_json(path)
    except StorageError:
        return False
    return isinstance(data, dict) and data.get("stage") == "ingest" and "run_id" in data


def prepare_lake(out: str, store: Storage | None = None, ignore: Iterable[str] = ()) -> str:
    """Make sure ``out`` is a medimg lake ingest may write into, before any Spark job.

    A missing or empty directory becomes a lake (the marker :data:`LAKE_MARKER` is written, JSON with
    the format version); a lake written by an older version (``runs/*.json`` ingest summaries but no
    marker) gets the marker. Its tables must hold only files ingest writes.

    Args:
        out: the output directory (local path or URI).
        store: the storage that reaches a URI ``out`` (default: the active session's); local paths
            need no Spark.
        ignore: names in ``out`` that do not count as content (e.g. the ``--log-json`` file).

    Returns:
        ``"created"``, ``"lake"`` or ``"upgraded"``.

    Raises:
        NotALakeError: ``out`` is a file, or a non-empty directory that is not a lake, or a lake whose
            tables hold files ingest did not write.
        StorageError: a URI ``out`` cannot be reached (no session, unknown host, no connector...).
    """
    fs = _lake_storage(out, store)
    if fs.is_file(out):
        raise NotALakeError(f"--out {out} is a file, not a directory; pass a new or empty directory")
    names = fs.list_names(out)
    marker = join(out, LAKE_MARKER)
    if names is not None and LAKE_MARKER in names:
        _check_marker(marker, fs.read_text(marker))
        _check_unprotected(out, fs)
        _check_tables(out, fs)
        return "lake"
    if names is not None and [n for n in names if n not in set(ignore)]:
        runs = join(out, "runs")
        legacy = (
            "runs" in names
            and fs.is_dir(runs)
            and any(
                _is_ingest_summary(fs, join(runs, n))
                for n in sorted(fs.list_names(runs) or [])[-5:]
                if n.endswith(".json")
            )
        )
        if not legacy:
            raise NotALakeError(
                f"--out {out} is not empty and is not a medimg lake (no {LAKE_MARKER} marker and no "
                "ingest run summaries under runs/): ingest would mix its tables and staging files with files "
                "it did not write. Choose a new or empty directory for --out, or an existing lake written by "
                "medimg ingest"
            )
        _check_tables(out, fs)
        state = "upgraded"
    else:
        state = "created"
    import medimg_spark

    text = json.dumps(
        {
            "format": LAKE_FORMAT,
            "version": LAKE_VERSION,
            "created_by": f"medimg-spark {medimg_spark.__version__}",
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "note": "written by medimg ingest; tables: images/ instances/ quarantine/, summaries: runs/",
        },
        indent=2,
    )
    fs.touch(marker, text + "\n")
    return state


#: Manifest ``medimg access protect`` writes into each table it encrypted (medimg_spark.access.lake.MANIFEST).
PROTECTED_MANIFEST = "_ACCESS_PROTECTED.json"


def _check_unprotected(out: str, fs: Storage) -> None:
    """Ingest cannot append to tables ``medimg access protect`` encrypted: say so before any Spark job."""
    protected = [t for t in TABLES if fs.exists(join(out, t, PROTECTED_MANIFEST))]
    if protected:
        raise NotALakeError(
            f"--out {out}: table(s) {', '.join(protected)} are encrypted by `medimg access protect`; ingest "
            "writes plain Parquet and reads its earlier tables without keys. Ingest into the landing lake "
            "(or a new --out) and run `medimg access protect` on it afterwards"
        )


def _check_marker(marker: str, text: str) -> None:
    try:
        data = json.loads(text)
        version = int(data["version"])
    except (ValueError, KeyError, TypeError):
        raise NotALakeError(
            f"{marker} is not a medimg lake marker (JSON with 'format' and 'version'); if this directory "
            "is a lake written by medimg ingest, delete the marker to have it written again"
        ) from None
    if data.get("format") != LAKE_FORMAT or version > LAKE_VERSION:
        raise NotALakeError(
            f"{marker}: lake format {data.get('format')!r} version {version} is not one this medimg-spark "
            f"writes ({LAKE_FORMAT!r} up to version {LAKE_VERSION}); upgrade medimg-spark or choose another --out"
        )


def _check_tables(out: str, fs: Storage) -> None:
    """Every data file of the ingest tables must be Parquet written by Spark (else reading them fails).

    Checked in local lakes only: listing every file of a lake through Hadoop's API costs Py4J calls per
    file.
    """
    if not is_local(out):
        return
    for table in TABLES:
        try:
            files = fs.data_files(join(out, table))
        except StorageNotADirectoryError:
            raise NotALakeError(
                f"--out {out}: {table} is a file, not a table folder; move it out of the lake"
            ) from None
        visible = [rel for rel in files if not any(c.startswith(("_", ".")) for c in rel.split("/"))]
        foreign = [
            rel
            for rel in visible
            if not rel.endswith(".parquet")
            or (table == "images" and any("=" not in part for part in rel.split("/")[:-1]))
            or (table != "images" and "/" in rel)
        ]
        if foreign:
            shown = ", ".join(f"{table}/{rel}" for rel in sorted(foreign)[:3])
            raise NotALakeError(
                f"--out {out}: table {table}/ holds {len(foreign)} file(s) that ingest did not write "
                f"({shown}); move them out of the lake (tables hold only Spark's Parquet part files)"
            )


def _mark_identified(store: Storage, out: str, run_id: str) -> None:
    """Append to the IDENTIFIED marker: this output holds original identifiers (``--keep-phi``)."""
    text = f"{run_id}: ingested with --keep-phi; tables hold original identifiers (PHI)\n"
    store.append_text(join(out, IDENTIFIED_MARKER), text)


def write_run_summary(store: Storage, out: str, summary: IngestSummary) -> str:
    """Write ``summary`` as ``out/runs/<run_id>.json`` (atomically, any URI) and return the path."""
    return store.write_json(join(out, "runs", f"{summary['run_id']}.json"), summary, default=str)


def format_summary(summary: Mapping[str, Any]) -> str:
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
    keys += [k for k in ("labels_unmatched", "symlinks_skipped") if summary.get(k)]
    width = max(len(k) for k in keys)
    for k in keys:
        lines.append(f"  {k:<{width}}  {summary.get(k)}")
    for cls, n in summary.get("quarantined_by_error_class", {}).items():
        lines.append(f"    quarantine {cls}: {n}")
    if summary.get("labels_unmatched"):
        lines.append(f"  WARNING: {summary['labels_unmatched']} row(s) of --labels match no input file")
    if summary.get("path_phi_files"):
        lines.append(
            f"  note: {summary['path_phi_files']} file(s) had {summary.get('path_phi_components', 0)} path "
            "component(s) equal to a header PHI value (patient name, ID, birth date, ...); the tables hold "
            "only path pseudonyms (the originals only in the vault, when --vault is given)"
        )
    if summary.get("identified"):
        lines.append(
            f"  WARNING: output is IDENTIFIED (--keep-phi): original identifiers kept; see {IDENTIFIED_MARKER}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Incremental ingest: Structured Streaming, each new file processed exactly once across runs
# (the commit protocol of its micro-batches: medimg_spark.io.commit).
# ---------------------------------------------------------------------------------------------


def _stage_micro_batch(
    spark: SparkSession,
    store: Storage,
    batch: DataFrame,
    batch_id: int,
    staging: str,
    *,
    out_uri: str,
    n_sources: int,
    ctx: FileContext,
    cfg: IngestConfig,
    labels: LabelsCSV | None,
    skipped: tuple[str, ...],
    problems: frozenset[str],
) -> dict[str, Any]:
    """Decode one micro-batch into the tables under ``staging`` (the :data:`~medimg_spark.io.commit.StageBatch`).

    Files under ``skipped`` folder symlinks (cycles, folders reached twice; see
    :mod:`medimg_spark.io.listing`), which the streaming source follows, are left out of the batch,
    and so are the listing's ``problems`` (quarantined unread by :func:`ingest_incremental` itself).
    Empty files, which the source logs but ``binaryFile`` does not return, are quarantined.
    """
    from pyspark.sql import functions as F

    for prefix in (f"{link}/" for link in skipped):
        batch = batch.where(~F.col("path").startswith(prefix))
    if problems:
        batch = batch.where(~F.col("path").isin(*sorted(problems)))
    listed = {r.path for r in batch.select("path").collect()}
    logged = batch_files(store, join(out_uri, CHECKPOINT_DIR), n_sources, batch_id)
    empty_sha = hashlib.sha256(b"").hexdigest()
    unread: list[UnreadFile] = [
        (p, empty_sha, 0, EmptyFileError.__name__, EMPTY_MESSAGE)
        for p in sorted(set(logged) - listed - problems)
        if not p.startswith(tuple(f"{link}/" for link in skipped))
    ]
    return _ingest_files(spark, batch, unread, out_uri, staging, ctx, cfg, labels).to_dict()


def ingest_incremental(
    spark: SparkSession,
    inputs: list[str],
    out: str,
    config: IngestConfig | None = None,
    labels_csv: str | None = None,
    deidentify: Any = None,
    run_id: str | None = None,
) -> IngestSummary:
    """Ingest only files not seen by earlier incremental runs into ``out`` (exactly once).

    Uses Structured Streaming's ``binaryFile`` source with ``trigger(availableNow=True)`` and a
    checkpoint under ``out/_checkpoints/ingest``: every file present when the run starts and not
    yet processed is ingested, then the run stops. Meant for cron/Airflow schedules. Keep the
    same ``inputs`` (folders) across runs: the checkpoint tracks each input by position. Each
    micro-batch is committed exactly once (:func:`medimg_spark.io.commit.commit_batch`).

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
    labels = read_labels(labels_csv) if labels_csv else None
    store = get_storage(spark)
    prepare_lake(out_uri, store)  # before any job: refuses a foreign directory, writes the lake marker
    ctx = _context(run_id, cfg, labels, deidentify, out_uri)
    # The streaming source lists the folders itself; the driver's listing only finds the folder
    # symlinks it must not follow (cycles, folders reached twice).
    listing = list_local([p for p in paths if "://" not in p])
    skipped = tuple(listing.skipped)
    schema = "path string, modificationTime timestamp, length long, content binary"
    # Files the streaming source cannot name or read (names that are not UTF-8 it does not list at
    # all): quarantined here, once across runs.
    totals = IngestCounts()
    unread_problems = problem_rows(listing)
    seen_unread = _seen_unread_paths(spark, out_uri) if unread_problems else None
    if seen_unread is not None:
        from pyspark.sql import functions as F

        hook = path_hook(ctx)
        key = (lambda p: hook.path_pseudonym(p)) if hook is not None else (lambda p: p)
        wanted = [key(row[0]) for row in unread_problems]
        done = {r.source_path for r in seen_unread.where(F.col("source_path").isin(*wanted)).collect()}
        unread_problems = [row for row in unread_problems if key(row[0]) not in done]
    if unread_problems:
        totals = _ingest_files(spark, None, unread_problems, out_uri, out_uri, ctx, cfg, labels)
    problems = frozenset(p.path for p in listing.problems)
    stream = None
    for p in paths:
        reader = spark.readStream.format("binaryFile").schema(schema).option("recursiveFileLookup", "true")
        if "://" not in p:
            reader = reader.options(**RAW_LOCAL_FS)
            p = f"file:{_glob_escape(p)}" if re.search(r"[{}\[\]*?\\]", p) else f"file:{p}"
        if cfg.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", cfg.max_files_per_trigger)
        s = reader.load(p)
        stream = s if stream is None else stream.unionByName(s)
    assert stream is not None
    batches: list[int] = []

    def stage(batch: DataFrame, batch_id: int, staging: str) -> dict[str, Any]:
        return _stage_micro_batch(
            spark,
            store,
            batch,
            batch_id,
            staging,
            out_uri=out_uri,
            n_sources=len(paths),
            ctx=ctx,
            cfg=cfg,
            labels=labels,
            skipped=skipped,
            problems=problems,
        )

    def per_batch(batch: DataFrame, batch_id: int) -> None:
        nonlocal totals
        totals += IngestCounts.from_dict(commit_batch(store, out_uri, batch, batch_id, stage))
        batches.append(batch_id)

    run_available_now(store, stream, out_uri, per_batch)
    return _finish_run(
        store,
        run_id,
        inputs,
        out_uri,
        totals,
        started,
        identified=deidentify is None,
        labels=labels,
        symlinks_skipped=listing.symlinks_skipped,
        micro_batches=batches,
        deidentify=deidentify,
    )
