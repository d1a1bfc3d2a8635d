"""Spark functions of volume-wise processing over ``out/volumes`` (driven by the ``medimg volumes`` stage).

Every volume is decoded, processed and encoded inside the executors (``mapInArrow``, one volume row
per Arrow batch so a task holds one volume at a time; no voxel reaches the driver). A volume that
fails becomes a ``quarantine`` row (stage ``volumes``), never a job failure. Results go to a staging
folder first and are appended to their tables from there, so each volume is computed exactly once.

:func:`process_volumes` (``filters:`` steps of :mod:`medimg_spark.volumes.ops`) appends

* ``out/processed_volumes`` (:data:`~medimg_spark.schema.VOLUMES_SCHEMA`, partitioned by modality):
  the filtered voxels with the source row's ``volume_id``, ids, geometry and checks, ``source_table``
  ``processed_volumes`` and ``recipe_name`` = :func:`~medimg_spark.volumes.ops.filters_name` of the steps
  (``<source recipe>+<filters name>`` when the source row has a recipe). Its key is
  ``(volume_id, recipe_name)``; the source volume is the ``volumes`` row of the same ``volume_id``
  (as ``processed`` keeps the ``image_id`` of ``images``);
* ``out/volume_quality`` (:data:`VOLUME_QUALITY_SCHEMA`): the metrics of
  :mod:`medimg_spark.volumes.quality` before and after, one row per processed volume.

:func:`localize_volumes` (:class:`~medimg_spark.volumes.regions.VolumeLocalizeConfig`) appends

* ``out/volume_labels`` (VOLUMES_SCHEMA, partitioned by modality): the label map (uint16, uint32
  beyond 65535 components) with the source geometry, ``source_table`` ``volume_labels``,
  ``rescale_*``/``window_*`` null, ``recipe_name`` = :func:`localize_name` (prefixed like above);
* ``out/volume_regions`` (:data:`VOLUME_REGIONS_SCHEMA`): one row per component.

Quarantine rows: ``source_path`` = ``volume:<volume_id>`` (a volume has no single file),
``stage`` = ``volumes``, ``step`` = ``<index>:<op>`` of the failing filter (``input``, ``quality``,
``encode`` or ``localize`` otherwise), ``error_class`` the exception's class, ``ingest_run_id`` this
run's id, and an ``error_message`` starting with ``<table> <recipe_name> hash=<sha256>:``.

Reruns are idempotent: a ``(volume_id, recipe_name)`` already in the output table (``processed_volumes``
or ``volume_labels``), or quarantined by a run writing it under that name, is skipped; the name carries
8 hex digits of the steps' (config's) sha256, so changed parameters make new rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from medimg_spark.schema import QUARANTINE_SCHEMA, VOLUMES_SCHEMA
from medimg_spark.storage import get_storage, join, spark_path
from medimg_spark.volumes.ops import VolumeOp, filters_hash, filters_name, parse_volume_filters
from medimg_spark.volumes.quality import VOLUME_QUALITY_KEYS
from medimg_spark.volumes.regions import VolumeLocalizeConfig
from medimg_spark.volumes.stage import append_by_modality, new_run_id

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "VOLUME_QUALITY_SCHEMA",
    "VOLUME_QUALITY_STRUCT",
    "VOLUME_REGIONS_SCHEMA",
    "LocalizeVolumesSummary",
    "ProcessVolumesSummary",
    "localize_name",
    "localize_volumes",
    "process_volumes",
]

VOLUME_QUALITY_STRUCT = StructType([StructField(k, DoubleType(), True) for k in VOLUME_QUALITY_KEYS])
"""Spark struct of :class:`medimg_spark.volumes.quality.VolumeQuality` (NaN where undefined)."""

VOLUME_QUALITY_SCHEMA = StructType(
    [
        StructField("volume_id", StringType(), False),
        StructField("source_table", StringType(), False),
        StructField("recipe_name", StringType(), False),
        StructField("recipe_hash", StringType(), False),
        StructField("modality", StringType(), False),
        StructField("quality_before", VOLUME_QUALITY_STRUCT, False),
        StructField("quality_after", VOLUME_QUALITY_STRUCT, False),
        StructField("volumes_run_id", StringType(), False),
        StructField("created_at", TimestampType(), True),
    ]
)
"""Schema of ``out/volume_quality``: one row per ``processed_volumes`` row (same ``volume_id`` and
``recipe_name``; ``recipe_hash`` is the full sha256 of the steps): the metrics of the source volume
(``quality_before``, read from ``source_table``) and of the filtered one (``quality_after``)."""

_LPS = ArrayType(DoubleType())

VOLUME_REGIONS_SCHEMA = StructType(
    [
        StructField("volume_id", StringType(), False),
        StructField("recipe_name", StringType(), False),
        StructField("modality", StringType(), False),
        StructField("series_instance_uid", StringType(), True),
        StructField("region", IntegerType(), False),
        StructField("voxel_count", LongType(), False),
        StructField("volume_mm3", DoubleType(), False),
        StructField("bbox_min_x", IntegerType(), False),
        StructField("bbox_min_y", IntegerType(), False),
        StructField("bbox_min_z", IntegerType(), False),
        StructField("bbox_max_x", IntegerType(), False),
        StructField("bbox_max_y", IntegerType(), False),
        StructField("bbox_max_z", IntegerType(), False),
        StructField("bbox_min_lps", _LPS, False),
        StructField("bbox_max_lps", _LPS, False),
        StructField("centroid_lps", _LPS, False),
        StructField("mean_intensity", DoubleType(), False),
        StructField("min_intensity", DoubleType(), False),
        StructField("max_intensity", DoubleType(), False),
        StructField("threshold", DoubleType(), True),
        StructField("volumes_run_id", StringType(), False),
        StructField("created_at", TimestampType(), True),
    ]
)
"""Schema of ``out/volume_regions``: one row per 3-D connected component of a ``volume_labels`` row
(same ``volume_id`` and ``recipe_name``; ``region`` is its value in the label map, 1 = largest).
Voxel indices are (x, y, z), bounding boxes inclusive; ``*_lps`` are [L, P, S] mm; intensities are in
the thresholded units (rescaled when ``apply_rescale``); ``threshold`` is Otsu's (null for a range or
window)."""

_REGION_FIELDS = [f for f in VOLUME_REGIONS_SCHEMA.fields if f.name not in {f.name for f in VOLUMES_SCHEMA}]
_OUTCOME = [
    StructField("kind", StringType(), False),
    StructField("recipe_hash", StringType(), True),
    StructField("step", StringType(), True),
    StructField("error_class", StringType(), True),
    StructField("error_message", StringType(), True),
]
_VOLUME_WORK = [
    StructField(f.name, f.dataType, True) for f in VOLUMES_SCHEMA.fields if f.name != "created_at"
]

PROCESS_WORK_SCHEMA = StructType(
    [
        *_VOLUME_WORK,
        StructField("quality_before", VOLUME_QUALITY_STRUCT, True),
        StructField("quality_after", VOLUME_QUALITY_STRUCT, True),
        *_OUTCOME,
    ]
)
"""What a :func:`process_volumes` task writes per volume (``kind`` = ``volume`` or ``error``)."""

LOCALIZE_WORK_SCHEMA = StructType(
    [*_VOLUME_WORK, *[StructField(f.name, f.dataType, True) for f in _REGION_FIELDS], *_OUTCOME]
)
"""What a :func:`localize_volumes` task writes: one ``volume`` (label map) row and one ``region`` row per
component, or one ``error`` row."""


class ProcessVolumesSummary(TypedDict):
    """:func:`process_volumes`: the filters applied to ``out/volumes``."""

    run_id: str
    recipe_name: str
    recipe_hash: str
    volumes_selected: int
    volumes_skipped: int
    volumes_processed: int
    volumes_quarantined: int
    quarantined_by_error_class: dict[str, int]
    seconds: float


class LocalizeVolumesSummary(TypedDict):
    """:func:`localize_volumes`: label maps and regions of a volume table."""

    run_id: str
    recipe_name: str
    config_hash: str
    volumes_selected: int
    volumes_skipped: int
    volumes_localized: int
    regions: int
    volumes_quarantined: int
    quarantined_by_error_class: dict[str, int]
    seconds: float


def localize_config_hash(config: VolumeLocalizeConfig) -> str:
    """sha256 of the config's canonical JSON (every option, defaults included)."""
    return hashlib.sha256(config.model_dump_json().encode("utf-8")).hexdigest()


def localize_name(config: VolumeLocalizeConfig) -> str:
    """The label maps' recipe name: ``localize-<threshold>-<8 hex of the config hash>``."""
    return f"localize-{config.threshold}-{localize_config_hash(config)[:8]}"


def _out_name(source_recipe: Any, name: str) -> str:
    return f"{source_recipe}+{name}" if source_recipe else name


def _out_name_col(name: str) -> Column:
    from pyspark.sql import functions as F

    rn = F.col("recipe_name")
    return F.when(rn.isNull() | (rn == ""), F.lit(name)).otherwise(F.concat(rn, F.lit("+" + name)))


# --- executors -----------------------------------------------------------------------------------


def _error_row(
    row: dict[str, Any], table: str, name: str, digest: str, step: str, exc: BaseException
) -> dict[str, Any]:
    return {
        "volume_id": row.get("volume_id"),
        "modality": row.get("modality"),
        "recipe_name": _out_name(row.get("recipe_name"), name),
        "voxels": None,
        "kind": "error",
        "recipe_hash": digest,
        "step": step,
        "error_class": type(exc).__name__,
        "error_message": f"{table} {_out_name(row.get('recipe_name'), name)} hash={digest}: {step}: {exc}"[
            :4000
        ],
    }


def process_volume_row(
    row: dict[str, Any], steps: Sequence[VolumeOp], name: str, digest: str, run_id: str
) -> dict[str, Any]:
    """Filter one ``volumes`` row (a dict) into one row of :data:`PROCESS_WORK_SCHEMA`; never raises."""
    from medimg_spark.ops._common import RecipeStepError
    from medimg_spark.volumes.model import volume_columns, volume_from_row
    from medimg_spark.volumes.ops import apply_filters
    from medimg_spark.volumes.quality import volume_quality

    step = "input"
    try:
        volume = volume_from_row(row)
        step = "quality"
        before = volume_quality(volume)
        result = apply_filters(steps, volume)
        step = "quality"
        after = volume_quality(result)
        step = "encode"
        cols = volume_columns(result)
    except RecipeStepError as exc:
        return _error_row(row, "processed_volumes", name, digest, exc.step, exc.cause)
    except Exception as exc:  # one volume never fails the job
        return _error_row(row, "processed_volumes", name, digest, step, exc)
    out = {f.name: row.get(f.name) for f in _VOLUME_WORK}
    out.update(cols)
    out.update(
        source_table="processed_volumes",
        recipe_name=_out_name(row.get("recipe_name"), name),
        volumes_run_id=run_id,
        quality_before=before.as_dict(),
        quality_after=after.as_dict(),
        kind="volume",
        recipe_hash=digest,
    )
    return out


def localize_volume_row(
    row: dict[str, Any], config: VolumeLocalizeConfig, name: str, digest: str, run_id: str
) -> list[dict[str, Any]]:
    """Label one volume row: a label-map row plus one row per region (:data:`LOCALIZE_WORK_SCHEMA`).

    Never raises: a failure is one ``error`` row.
    """
    from medimg_spark.volumes.model import volume_columns, volume_from_row
    from medimg_spark.volumes.regions import find_regions_3d

    step = "input"
    try:
        volume = volume_from_row(row)
        step = "localize"
        res = find_regions_3d(volume, config, row.get("rescale_slope"), row.get("rescale_intercept"))
        step = "encode"
        cols = volume_columns(res.labels)
    except Exception as exc:  # one volume never fails the job
        return [_error_row(row, "volume_labels", name, digest, step, exc)]
    out_name = _out_name(row.get("recipe_name"), name)
    label = {f.name: row.get(f.name) for f in _VOLUME_WORK}
    label.update(cols)
    label.update(
        source_table="volume_labels",
        recipe_name=out_name,
        rescale_slope=None,
        rescale_intercept=None,
        window_center=None,
        window_width=None,
        volumes_run_id=run_id,
        kind="volume",
        recipe_hash=digest,
    )
    rows = [label]
    base = {
        "volume_id": row.get("volume_id"),
        "recipe_name": out_name,
        "modality": row.get("modality"),
        "series_instance_uid": row.get("series_instance_uid"),
        "volumes_run_id": run_id,
        "threshold": res.threshold,
        "kind": "region",
        "recipe_hash": digest,
    }
    rows.extend({**base, **r.as_row()} for r in res.regions)
    return rows


def _to_batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    columns = [pa.array([r.get(n) for r in rows], type=schema.field(n).type) for n in schema.names]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _partitions(
    per_row: Callable[[dict[str, Any]], list[dict[str, Any]]], work: StructType
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark.sql.pandas.types import to_arrow_schema

        from medimg_spark.worker import configure_worker

        configure_worker()
        schema = to_arrow_schema(work)
        for batch in batches:
            for row in batch.to_pylist():  # one volume at a time: its result is yielded before the next
                yield _to_batch(per_row(row), schema)

    return run


# --- driver --------------------------------------------------------------------------------------


def _read_source(spark: SparkSession, out: str, source: str, where: str | None) -> DataFrame:
    from medimg_spark.errors import ConfigError

    if source not in ("volumes", "processed_volumes"):
        raise ConfigError(f"source must be 'volumes' or 'processed_volumes', got {source!r}")
    path = join(out, source)
    if not get_storage(spark).exists(path):
        raise ConfigError(f"no {source} table at {path}; run `medimg volumes` into this output first")
    df = spark.read.schema(VOLUMES_SCHEMA).parquet(path)
    return df.where(where) if where else df


def _done_keys(spark: SparkSession, out: str, table: str) -> DataFrame | None:
    """``(volume_id, out_name)`` pairs already in ``table``, or quarantined by a run writing ``table``."""
    from pyspark.sql import functions as F

    store = get_storage(spark)
    parts: list[DataFrame] = []
    if store.exists(join(out, table)):
        t = spark.read.schema(VOLUMES_SCHEMA).parquet(join(out, table))
        parts.append(t.select("volume_id", F.col("recipe_name").alias("out_name")))
    if store.exists(join(out, "quarantine")):
        q = spark.read.schema(QUARANTINE_SCHEMA).parquet(join(out, "quarantine"))
        pattern = f"^{table} (\\S+) hash="
        parts.append(
            q.where((F.col("stage") == "volumes") & F.col("error_message").rlike(pattern)).select(
                F.regexp_replace("source_path", "^volume:", "").alias("volume_id"),
                F.regexp_extract("error_message", pattern, 1).alias("out_name"),
            )
        )
    if not parts:
        return None
    done = parts[0]
    for p in parts[1:]:
        done = done.unionByName(p)
    return done.distinct()


def _run(
    spark: SparkSession,
    out_dir: str,
    table: str,
    name: str,
    digest: str,
    run_id: str,
    source: str,
    where: str | None,
    work_schema: StructType,
    per_row: Callable[[dict[str, Any]], list[dict[str, Any]]],
    write: Callable[[DataFrame, Column, set[str]], None],
) -> tuple[int, int, int, dict[str, int], int]:
    """Select the volumes to do, run ``per_row`` on the executors into staging, append the tables.

    ``write(work, now, kinds)`` appends the output tables from the staged rows; ``kinds`` are the row
    kinds present (an empty output is not written). It writes ``table`` (the done-set's) last, so a
    crash between the appends redoes the volume rather than leaving a side table without its rows.

    Returns: (selected, done ok, regions, quarantined by class, skipped).
    """
    from pyspark.sql import functions as F

    out = spark_path(out_dir)
    vols = _read_source(spark, out, source, where).withColumn("_out_name", _out_name_col(name))
    done = _done_keys(spark, out, table)
    todo = vols
    if done is not None:
        todo = vols.join(
            F.broadcast(done.withColumnRenamed("out_name", "_out_name")),
            ["volume_id", "_out_name"],
            "left_anti",
        )
    selected = vols.count()
    todo = todo.drop("_out_name")
    conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old_batch = spark.conf.get(conf_key, "10000") or "10000"
    spark.conf.set(conf_key, "1")  # one volume per Arrow batch: bounded memory per task
    staging = join(out, "_staging", run_id)
    store = get_storage(spark)
    try:
        todo.mapInArrow(_partitions(per_row, work_schema), work_schema).write.parquet(staging)
    finally:
        spark.conf.set(conf_key, old_batch)
    try:
        work = spark.read.schema(work_schema).parquet(staging)
        now = F.current_timestamp()
        counts = work.groupBy("kind", "error_class").count().collect()
        kinds = {str(r["kind"]) for r in counts}
        write(work, now, kinds)
        errors = work.where(F.col("kind") == "error")
        defaults = {
            "source_path": F.concat(F.lit("volume:"), F.col("volume_id")),
            "file_sha256": F.lit(None),
            "size_bytes": F.lit(None),
            "frame_index": F.lit(None),
            "stage": F.lit("volumes"),
            "ingest_run_id": F.lit(run_id),
            "quarantined_at": now,
        }
        if "error" in kinds:
            errors.select(
                *[
                    defaults.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name)
                    for f in QUARANTINE_SCHEMA
                ]
            ).write.mode("append").parquet(join(out, "quarantine"))
    finally:
        store.delete(staging)
        store.remove_if_empty(join(out, "_staging"))
    n_ok = sum(int(r["count"]) for r in counts if r["kind"] == "volume")
    n_regions = sum(int(r["count"]) for r in counts if r["kind"] == "region")
    by_class = {str(r["error_class"]): int(r["count"]) for r in counts if r["kind"] == "error"}
    skipped = selected - n_ok - sum(by_class.values())
    return selected, n_ok, n_regions, dict(sorted(by_class.items())), skipped


def _volume_rows(work: DataFrame, now: Column) -> DataFrame:
    from pyspark.sql import functions as F

    return work.where(F.col("kind") == "volume").select(
        *[
            (now if f.name == "created_at" else F.col(f.name)).cast(f.dataType).alias(f.name)
            for f in VOLUMES_SCHEMA
        ]
    )


def process_volumes(
    spark: SparkSession,
    out_dir: str,
    steps: Sequence[VolumeOp] | Sequence[dict[str, Any]],
    run_id: str | None = None,
    where: str | None = None,
) -> ProcessVolumesSummary:
    """Filter every volume of ``out_dir/volumes``; append ``processed_volumes``, ``volume_quality``, quarantine.

    Args:
        spark: the session.
        out_dir: the lake holding ``volumes`` (local path or URI).
        steps: the ``filters:`` steps (models or mappings; validated before any Spark work).
        run_id: this run's id (default: a new ``volumes-...`` id).
        where: optional Spark SQL filter on ``volumes`` columns, e.g. ``"modality = 'CT'"``.

    Raises:
        VolumeOpConfigError: invalid steps (a ConfigError, exit 2), or an empty list.
        ConfigError: ``out_dir/volumes`` does not exist.
    """
    from pyspark.sql import functions as F

    from medimg_spark.volumes.ops import VolumeOpConfigError

    models = parse_volume_filters(list(steps))
    if not models:
        raise VolumeOpConfigError(
            "filters is empty; give at least one step like [{op: gaussian, sigma_mm: 1.0}]"
        )
    started = time.perf_counter()
    run_id = run_id or new_run_id()
    name, digest = filters_name(models), filters_hash(models)

    def per_row(row: dict[str, Any]) -> list[dict[str, Any]]:
        return [process_volume_row(row, models, name, digest, run_id)]

    def write(work: DataFrame, now: Column, kinds: set[str]) -> None:
        if "volume" not in kinds:
            return
        out = spark_path(out_dir)
        ok = work.where(F.col("kind") == "volume")
        ok.select(
            *[
                (
                    now
                    if f.name == "created_at"
                    else F.lit("volumes")
                    if f.name == "source_table"
                    else F.col(f.name)
                )
                .cast(f.dataType)
                .alias(f.name)
                for f in VOLUME_QUALITY_SCHEMA
            ]
        ).write.mode("append").parquet(join(out, "volume_quality"))
        append_by_modality(_volume_rows(work, now), join(out, "processed_volumes"))

    selected, n_ok, _, by_class, skipped = _run(
        spark,
        out_dir,
        "processed_volumes",
        name,
        digest,
        run_id,
        "volumes",
        where,
        PROCESS_WORK_SCHEMA,
        per_row,
        write,
    )
    return {
        "run_id": run_id,
        "recipe_name": name,
        "recipe_hash": digest,
        "volumes_selected": selected,
        "volumes_skipped": skipped,
        "volumes_processed": n_ok,
        "volumes_quarantined": sum(by_class.values()),
        "quarantined_by_error_class": by_class,
        "seconds": round(time.perf_counter() - started, 3),
    }


def localize_volumes(
    spark: SparkSession,
    out_dir: str,
    config: VolumeLocalizeConfig | dict[str, Any] | None = None,
    run_id: str | None = None,
    source: str = "volumes",
    where: str | None = None,
) -> LocalizeVolumesSummary:
    """Label the 3-D components of every volume of ``out_dir/<source>``; append ``volume_labels``,
    ``volume_regions`` and quarantine.

    Args:
        spark: the session.
        out_dir: the lake (local path or URI).
        config: the localisation options (validated before any Spark work).
        run_id: this run's id (default: a new ``volumes-...`` id).
        source: ``volumes`` or ``processed_volumes``.
        where: optional Spark SQL filter on the source's columns.

    Raises:
        ConfigError: invalid config or source, or a missing source table.
    """
    from pyspark.sql import functions as F

    from medimg_spark.config import validate_section

    cfg = (
        config
        if isinstance(config, VolumeLocalizeConfig)
        else validate_section(VolumeLocalizeConfig, config, "volumes.localize")
    )
    started = time.perf_counter()
    run_id = run_id or new_run_id()
    name, digest = localize_name(cfg), localize_config_hash(cfg)

    def per_row(row: dict[str, Any]) -> list[dict[str, Any]]:
        return localize_volume_row(row, cfg, name, digest, run_id)

    def write(work: DataFrame, now: Column, kinds: set[str]) -> None:
        out = spark_path(out_dir)
        if "region" in kinds:
            work.where(F.col("kind") == "region").select(
                *[
                    (now if f.name == "created_at" else F.col(f.name)).cast(f.dataType).alias(f.name)
                    for f in VOLUME_REGIONS_SCHEMA
                ]
            ).write.mode("append").parquet(join(out, "volume_regions"))
        if "volume" in kinds:
            append_by_modality(_volume_rows(work, now), join(out, "volume_labels"))

    selected, n_ok, n_regions, by_class, skipped = _run(
        spark,
        out_dir,
        "volume_labels",
        name,
        digest,
        run_id,
        source,
        where,
        LOCALIZE_WORK_SCHEMA,
        per_row,
        write,
    )
    return {
        "run_id": run_id,
        "recipe_name": name,
        "config_hash": digest,
        "volumes_selected": selected,
        "volumes_skipped": skipped,
        "volumes_localized": n_ok,
        "regions": n_regions,
        "volumes_quarantined": sum(by_class.values()),
        "quarantined_by_error_class": by_class,
        "seconds": round(time.perf_counter() - started, 3),
    }
