"""The ``medimg export`` stage: rows of a lake table → files, written by the executors.

``export`` reads ``DIR/<table>`` (``--where`` SQL, ``--limit N`` by id), builds one
:class:`~medimg_spark.export.model.ExportItem` per row inside the executors (``mapInArrow``: pixels
never reach the driver), runs the format's writer and stores the files under
``DIR/exports/<export_run_id>/<format>/<table>/`` (file names are ids or hashes, never source paths
or names). The driver then appends

- ``DIR/exports/manifest/`` (:data:`MANIFEST_SCHEMA`): one row per file written (relative path under
  ``DIR/exports``, bytes, sha256) and one ``ok = false`` row per failed item;
- ``DIR/quarantine/`` (``stage = "export"``, ``step`` = the format): one row per failed item; a bad
  item never fails the job.

``export_run_id`` is derived from the table, format, filter, limit and options (``--run-id`` to
choose one), so a rerun writes into the same folder and skips the items the manifest already holds
for that run: reruns are idempotent. The DICOM formats de-identify every source header with the
``privacy`` section and the pseudonymisation key (``--key-file``/``--ephemeral-key``/
``$MEDIMG_DEID_KEY``).

Storage: the executors write with POSIX file I/O (:class:`~medimg_spark.storage.Storage` without a
session, atomic temporary-file-then-rename writes), so ``--out`` must be a local path, a ``file:``
URI or a shared mount every executor sees. Other Hadoop URIs (``hdfs://``, ``s3a://``) are refused
before Spark starts (exit 2): export to a local or mounted folder and copy it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any, TypedDict

from pyspark.sql.types import (
    BooleanType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from medimg_spark.errors import ConfigError
from medimg_spark.export import FORMATS, format_tables
from medimg_spark.export.model import FRAME_TABLES, TABLES, ExportContext, ExportOptions
from medimg_spark.storage import Storage, get_storage, is_local, join, local_path, spark_path

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

STAGE = "export"

MANIFEST_SCHEMA = StructType(
    [
        StructField("export_run_id", StringType(), False),
        StructField("source_table", StringType(), False),
        StructField("source_id", StringType(), False),
        StructField("variant", StringType(), True),
        StructField("format", StringType(), False),
        StructField("path", StringType(), True),
        StructField("bytes", LongType(), True),
        StructField("sha256", StringType(), True),
        StructField("written_at", TimestampType(), False),
        StructField("ok", BooleanType(), False),
        StructField("error_class", StringType(), True),
        StructField("error_message", StringType(), True),
    ]
)
"""Schema of ``DIR/exports/manifest``: ``path`` is relative to ``DIR/exports``
(``<export_run_id>/<format>/<table>/<file>``); ``variant`` is the recipe (hash) of processed tables."""

#: What an executor task returns per file written or item failed.
RESULT_SCHEMA = StructType(
    [
        StructField("source_id", StringType(), False),
        StructField("variant", StringType(), True),
        StructField("path", StringType(), True),
        StructField("bytes", LongType(), True),
        StructField("sha256", StringType(), True),
        StructField("ok", BooleanType(), False),
        StructField("error_class", StringType(), True),
        StructField("error_message", StringType(), True),
        StructField("source_path", StringType(), True),
        StructField("file_sha256", StringType(), True),
        StructField("frame_index", IntegerType(), True),
    ]
)


class ExportSummary(TypedDict):
    """``medimg export``: what one run wrote."""

    export_run_id: str
    table: str
    format: str
    folder: str
    items_selected: int
    items_skipped: int
    items_exported: int
    items_failed: int
    failed_by_error_class: dict[str, int]
    files_written: int
    bytes_written: int
    identified_sources: bool
    seconds: float


# ----------------------------------------------------------------------------- checks (before Spark)


def check_request(table: str, fmt: str, out: str, key: bytes | None) -> None:
    """Fail before Spark starts on a bad table/format pair, output location or missing key.

    Raises:
        ConfigError: naming the bad argument and the fix (exit code 2).
    """
    check_target(table, fmt, out)
    if fmt in ("dicom", "seg") and key is None:
        raise ConfigError(
            f"--format {fmt} de-identifies the source headers: pass --key-file FILE (or set "
            "$MEDIMG_DEID_KEY / $MEDIMG_DEID_KEY_FILE), or --ephemeral-key for a demo"
        )


def check_target(table: str, fmt: str, out: str) -> None:
    """Fail before Spark starts on a bad table/format pair or an output the executors cannot write.

    Raises:
        ConfigError: naming the bad argument and the fix (exit code 2).
    """
    if table not in TABLES:
        raise ConfigError(f"--table {table!r} is not exportable; choose from {', '.join(TABLES)}")
    tables = format_tables(fmt)  # UnknownFormatError names the registered formats
    if table not in tables:
        choices = [name for name in FORMATS.names() if table in format_tables(name)]
        raise ConfigError(
            f"--format {fmt} exports {', '.join(tables)}, not {table}; for {table} choose --format "
            f"{' | '.join(choices)}"
        )
    if not is_local(out):
        raise ConfigError(
            f"--out {out}: export files are written by the executors with POSIX file I/O; use a local "
            "path, a file: URI or a shared mount (hdfs:// and s3a:// lakes: mount them, or export to a "
            "local folder and copy it)"
        )


def export_run_id(table: str, fmt: str, where: str | None, limit: int | None, options: ExportOptions) -> str:
    """The run id of an export request: the same request, the same id (reruns are idempotent)."""
    text = json.dumps([table, fmt, where or "", limit, options.model_dump(mode="json")], sort_keys=True)
    return f"export-{table}-{fmt}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------- reading the sources


def identified_runs(store: Storage, out: str) -> list[str]:
    """Ingest run ids the lake's IDENTIFIED marker lists (ingested with ``--keep-phi``)."""
    from medimg_spark.io.ingest import IDENTIFIED_MARKER

    marker = join(out, IDENTIFIED_MARKER)
    if not store.is_file(marker):
        return []
    return [line.split(":", 1)[0].strip() for line in store.read_text(marker).splitlines() if ":" in line]


def _headers(spark: SparkSession, out: str) -> DataFrame:
    """``instances`` header per file: (file_sha256, header_json, header_run_id)."""
    from medimg_spark.schema import INSTANCES_SCHEMA

    inst = spark.read.schema(INSTANCES_SCHEMA).parquet(join(out, "instances"))
    return inst.select(
        "file_sha256", "header_json", inst["ingest_run_id"].alias("header_run_id")
    ).dropDuplicates(["file_sha256"])


def source_rows(
    spark: SparkSession, out: str, table: str, fmt: str, where: str | None
) -> tuple[DataFrame, str, str]:
    """The rows to export with the columns :func:`~medimg_spark.export.items.item_from_row` reads.

    Returns:
        ``(rows, id column, variant column expression name)``.
    """
    from pyspark.sql import functions as F

    from medimg_spark.export.items import IMAGE_COLUMNS
    from medimg_spark.preprocess import PROCESSED_SCHEMA
    from medimg_spark.schema import IMAGES_SCHEMA, VOLUMES_SCHEMA

    store = get_storage(spark)
    path = join(out, table)
    if not store.exists(path):
        raise ConfigError(f"no {table} table at {path}; run the stage that writes it into {out} first")
    need_headers = fmt in ("dicom", "seg")
    if need_headers and not store.exists(join(out, "instances")):
        raise ConfigError(f"--format {fmt} needs {out}/instances (the source headers); run ingest first")
    if table == "images":
        rows = spark.read.schema(IMAGES_SCHEMA).parquet(path)
        if where:
            rows = rows.where(where)
        return (
            rows.select(*IMAGE_COLUMNS).withColumn("_variant", F.lit(None).cast("string")),
            "image_id",
            "_variant",
        )
    if table == "processed":
        rows = spark.read.schema(PROCESSED_SCHEMA).parquet(path)
        if where:
            rows = rows.where(where)
        rows = rows.select(
            "image_id",
            "recipe_name",
            "recipe_hash",
            "modality",
            "rows",
            "cols",
            "channels",
            "dtype",
            "pixels",
            "mask",
        )
        images = (
            spark.read.schema(IMAGES_SCHEMA)
            .parquet(join(out, "images"))
            .select(
                "image_id",
                "source_path",
                "file_sha256",
                "frame_index",
                F.col("rows").alias("src_rows"),
                F.col("cols").alias("src_cols"),
                "pixel_spacing",
                "slice_thickness",
                "image_position",
                "image_orientation",
            )
        )
        rows = rows.join(images, "image_id", "left")
        if need_headers:
            rows = rows.join(_headers(spark, out), "file_sha256", "left")
        return rows.withColumn("_variant", F.col("recipe_hash")), "image_id", "_variant"
    rows = spark.read.schema(VOLUMES_SCHEMA).parquet(path)
    if where:
        rows = rows.where(where)
    # "" for a missing recipe: the variant is a join key below (null never joins)
    rows = rows.withColumn(
        "_variant",
        F.coalesce(F.col("recipe_name"), F.lit("")) if table != "volumes" else F.lit(None).cast("string"),
    )
    if need_headers:
        frames = rows.select("volume_id", "_variant", F.posexplode("image_ids").alias("pos", "image_id"))
        images = (
            spark.read.schema(IMAGES_SCHEMA)
            .parquet(join(out, "images"))
            .select("image_id", "file_sha256", "frame_index")
        )
        slices = (
            frames.join(images, "image_id", "left")
            .join(_headers(spark, out), "file_sha256", "left")
            .groupBy("volume_id", "_variant")
            .agg(
                F.collect_list(
                    F.struct("pos", "image_id", "frame_index", "header_json", "header_run_id")
                ).alias("slices")
            )
        )
        rows = (
            rows.join(slices, ["volume_id", "_variant"], "left")
            if table != "volumes"
            else rows.join(slices.drop("_variant"), "volume_id", "left")
        )
    return rows, "volume_id", "_variant"


# ----------------------------------------------------------------------------- executors


def _withheld(message: str) -> str:
    from medimg_spark.privacy.hook import withhold_values

    return withhold_values(message)[:2000]


def export_partition(
    table: str, fmt: str, exports_dir: str, run_id: str, context: ExportContext, identified: Collection[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` body: each row → files written under ``exports_dir/run_id/fmt/table``."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        from pyspark.sql.pandas.types import to_arrow_schema

        from medimg_spark.export.items import item_from_row
        from medimg_spark.privacy.errors import DeidError
        from medimg_spark.worker import configure_worker

        configure_worker()

        schema = to_arrow_schema(RESULT_SCHEMA)
        writer = FORMATS.get(fmt).write
        store = Storage(None)  # executor side: plain POSIX writes, atomic (temporary file, then rename)
        folder = f"{run_id}/{fmt}/{table}"
        for batch in batches:
            results: list[dict[str, Any]] = []
            for row in batch.to_pylist():
                base = {
                    "source_id": str(row.get("image_id") or row.get("volume_id")),
                    "variant": row.get("_variant"),
                    "source_path": row.get("source_path"),
                    "file_sha256": row.get("file_sha256"),
                    "frame_index": row.get("frame_index"),
                }
                try:
                    item = item_from_row(row, table, identified)
                    with warnings.catch_warnings():  # library warnings may quote header values
                        warnings.simplefilter("ignore")
                        files = writer(item, context)
                    written = []
                    for f in files:
                        rel = f"{folder}/{f.rel}"
                        store.write_bytes(join(exports_dir, rel), f.data)
                        written.append(
                            {**base, "path": rel, "bytes": len(f.data), "sha256": f.sha256, "ok": True}
                        )
                    results.extend(written)
                except Exception as exc:  # every failure is an outcome of the item, never of the job
                    message = (
                        str(exc)
                        if isinstance(exc, DeidError) or type(exc).__module__.startswith("medimg_spark")
                        else f"{type(exc).__name__} while writing {fmt}"
                    )
                    results.append(
                        {
                            **base,
                            "ok": False,
                            "error_class": type(exc).__name__,
                            "error_message": _withheld(f"export {fmt}: {message}"),
                        }
                    )
            yield pa.RecordBatch.from_pylist(results, schema=schema)

    return run


# ----------------------------------------------------------------------------- driver


def export(
    spark: SparkSession,
    out: str,
    table: str,
    fmt: str,
    *,
    where: str | None = None,
    limit: int | None = None,
    context: ExportContext | None = None,
    run_id: str | None = None,
) -> ExportSummary:
    """Export the rows of ``out/<table>`` as ``fmt`` files under ``out/exports/<run id>/<fmt>/<table>/``.

    Args:
        spark: the session.
        out: the lake (a local path or ``file:`` URI).
        table: one of :data:`~medimg_spark.export.model.TABLES`.
        fmt: a registered format (:data:`~medimg_spark.export.FORMATS`).
        where: Spark SQL filter on the table's columns.
        limit: at most this many rows (the first by id).
        context: writer options, privacy config and key (the DICOM formats need the key).
        run_id: the export run id (default: derived from the request).

    Raises:
        ConfigError: a bad request or a missing table (before any Spark job).
    """
    from pyspark.sql import functions as F

    from medimg_spark.schema import QUARANTINE_SCHEMA

    started = time.perf_counter()
    context = context or ExportContext()
    check_request(table, fmt, out, context.key)
    lake = spark_path(local_path(out))
    rid = run_id or export_run_id(table, fmt, where, limit, context.options)
    context.export_run_id = rid
    store = get_storage(spark)
    exports = join(lake, "exports")
    marked = identified_runs(store, lake)
    rows, id_col, variant_col = source_rows(spark, lake, table, fmt, where)
    if limit is not None:
        rows = rows.orderBy(id_col, variant_col).limit(limit)
    manifest_path = join(exports, "manifest")
    todo = rows
    rerun = store.exists(manifest_path)
    selected = rows.count() if rerun else -1  # a first run: every selected row has an outcome below
    if rerun:
        done = (
            spark.read.schema(MANIFEST_SCHEMA)
            .parquet(manifest_path)
            .where(
                (F.col("export_run_id") == rid) & (F.col("format") == fmt) & (F.col("source_table") == table)
            )
            .select(F.col("source_id").alias(id_col), F.coalesce("variant", F.lit("")).alias("_done_variant"))
            .distinct()
        )
        todo = (
            todo.withColumn("_done_variant", F.coalesce(variant_col, F.lit("")))
            .join(F.broadcast(done), [id_col, "_done_variant"], "left_anti")
            .drop("_done_variant")
        )
    conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old_batch = spark.conf.get(conf_key, "10000") or "10000"
    spark.conf.set(conf_key, "64" if table in FRAME_TABLES else "2")
    staging = join(exports, "_staging", rid)
    try:
        todo.mapInArrow(
            export_partition(table, fmt, local_path(exports), rid, context, marked), RESULT_SCHEMA
        ).write.mode("overwrite").parquet(staging)
    finally:
        spark.conf.set(conf_key, old_batch)
    try:
        results = spark.read.schema(RESULT_SCHEMA).parquet(staging)
        now = F.current_timestamp()
        manifest = results.select(
            F.lit(rid).alias("export_run_id"),
            F.lit(table).alias("source_table"),
            "source_id",
            "variant",
            F.lit(fmt).alias("format"),
            "path",
            "bytes",
            "sha256",
            now.alias("written_at"),
            "ok",
            "error_class",
            "error_message",
        )
        manifest = manifest.select(*[F.col(f.name).cast(f.dataType) for f in MANIFEST_SCHEMA])
        quarantine = results.where(~F.col("ok")).select(
            F.coalesce("source_path", F.concat(F.lit(f"{table}/"), F.col("source_id"))).alias("source_path"),
            "file_sha256",
            F.lit(None).cast("long").alias("size_bytes"),
            "frame_index",
            F.lit(STAGE).alias("stage"),
            F.lit(fmt).alias("step"),
            F.coalesce("error_class", F.lit("ExportError")).alias("error_class"),
            F.coalesce("error_message", F.lit("")).alias("error_message"),
            F.lit(rid).alias("ingest_run_id"),
            now.alias("quarantined_at"),
        )
        quarantine = quarantine.select(*[F.col(f.name).cast(f.dataType) for f in QUARANTINE_SCHEMA])
        counts = (
            results.groupBy("ok", "error_class")
            .agg(
                F.count("*").alias("n"),
                F.countDistinct("source_id", F.coalesce("variant", F.lit(""))).alias("items"),
                F.sum("bytes").alias("bytes"),
            )
            .collect()
        )
        manifest.write.mode("append").parquet(manifest_path)
        if any(not r["ok"] for r in counts):
            quarantine.write.mode("append").parquet(join(lake, "quarantine"))
    finally:
        store.delete(staging)
        store.remove_if_empty(join(exports, "_staging"))
    failed = {str(r["error_class"]): int(r["items"]) for r in counts if not r["ok"]}
    exported = sum(int(r["items"]) for r in counts if r["ok"])
    if selected < 0:
        selected = exported + sum(failed.values())
    return {
        "export_run_id": rid,
        "table": table,
        "format": fmt,
        "folder": join(exports, rid, fmt, table),
        "items_selected": selected,
        "items_skipped": selected - exported - sum(failed.values()),
        "items_exported": exported,
        "items_failed": sum(failed.values()),
        "failed_by_error_class": dict(sorted(failed.items())),
        "files_written": sum(int(r["n"]) for r in counts if r["ok"]),
        "bytes_written": sum(int(r["bytes"] or 0) for r in counts if r["ok"]),
        "identified_sources": bool(marked),
        "seconds": round(time.perf_counter() - started, 3),
    }


# ----------------------------------------------------------------------------- command line


def add_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``medimg export``."""
    from medimg_spark.cli import _common

    p.add_argument("--out", required=True, help="the lake (output directory of the pipeline)")
    p.add_argument("--table", required=True, choices=TABLES, help="table to export")
    p.add_argument(
        "--format",
        dest="fmt",
        required=True,
        choices=FORMATS.names(),
        help="; ".join(f"{e.name}: {e.help}" for e in FORMATS.entries()),
    )
    p.add_argument("--where", help="Spark SQL filter on the table, e.g. \"modality = 'CT'\"")
    p.add_argument("--limit", type=int, help="at most N rows (the first by id)")
    p.add_argument(
        "--run-id", help="export run id (default: derived from the request; reruns skip done items)"
    )
    p.add_argument("--thumbnail-size", type=int, default=256, help="png/jpeg: longest side in pixels")
    p.add_argument("--jpeg-quality", type=int, default=90, help="jpeg: quality 1-100")
    g = p.add_argument_group("de-identification of the DICOM formats (options: the config's privacy section)")
    g.add_argument("--key-file", help="pseudonymisation key file (0600); else $MEDIMG_DEID_KEY(_FILE)")
    g.add_argument("--ephemeral-key", action="store_true", help="random key for demos (pseudonyms differ)")
    g.add_argument(
        "--allow-burned-in",
        action="store_true",
        help="do not quarantine images that may carry burned-in text",
    )
    _common(p)


def _key(args: argparse.Namespace) -> bytes | None:
    """The pseudonymisation key of the DICOM formats (None for the others)."""
    if args.fmt not in ("dicom", "seg"):
        return None
    from medimg_spark.privacy import DeidKeyError, load_key

    try:
        return load_key(args.key_file, ephemeral=args.ephemeral_key)
    except DeidKeyError as err:
        raise ConfigError(f"{err}. On the command line: --key-file FILE or --ephemeral-key (demos)") from None


def run(args: argparse.Namespace) -> int:
    """``medimg export``."""
    from pydantic import ValidationError

    from medimg_spark.cli import EXIT_OK, _print, _session
    from medimg_spark.config import deid_config, load_config

    cfg = load_config(args.config)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: pass a positive number of rows")
    try:
        options = ExportOptions(thumbnail_size=args.thumbnail_size, jpeg_quality=args.jpeg_quality)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(
            f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']} (thumbnail size 16-4096, jpeg quality 1-100)"
        ) from None
    check_target(args.table, args.fmt, args.out)
    key = _key(args)
    check_request(args.table, args.fmt, args.out, key)
    if not Storage(None).exists(join(args.out, args.table)):
        raise ConfigError(f"no {args.table} table under {args.out}; run the stage that writes it first")
    context = ExportContext(
        options=options,
        deid_config=deid_config(cfg, args.config or "<defaults>") if key is not None else None,
        key=key,
        allow_burned_in=args.allow_burned_in,
    )
    spark = _session(args, cfg, "export")
    summary = export(
        spark,
        args.out,
        args.table,
        args.fmt,
        where=args.where,
        limit=args.limit,
        context=context,
        run_id=args.run_id,
    )
    text = "\n".join(f"  {k}: {v}" for k, v in summary.items())
    _print(args, dict(summary), f"export → {summary['folder']}\n{text}")
    return EXIT_OK
