"""``medimg volumes``: assemble the frames of ``out/images`` (or ``out/processed``) into ``out/volumes``.

Three passes, pixels read only in the last:

1. **Size** (metadata only): the frames with a position and orientation are grouped by series
   (SeriesInstanceUID, else the file); a group whose stored pixels exceed
   ``volumes.max_volume_bytes`` is quarantined frame by frame (``VolumeTooLargeError``, stage
   ``volumes``, step ``size``) without reading its pixels.
2. **Plan** (metadata only, ``applyInPandas`` per series): :func:`medimg_spark.volumes.assemble.plan_series`
   gives the volumes, their geometry and checks; planned volumes already in ``out/volumes`` (the
   same deterministic ``volume_id``) are skipped, so a rerun writes nothing twice.
3. **Stack** (``applyInPandas`` per volume: one volume's frames in memory at a time): the pixels are
   joined by ``image_id`` and stacked; a failure quarantines the volume's frames (step ``assemble``).

``out/volumes`` follows :data:`medimg_spark.schema.VOLUMES_SCHEMA`, partitioned by modality; the run
summary goes to ``out/runs/<run_id>.json``. With ``--table processed`` the pixels come from the
recipe's ``processed`` frames and the geometry from ``images`` (a resized frame keeps its field of
view: see :func:`medimg_spark.volumes.assemble.resampled`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import TYPE_CHECKING, Any, TypedDict

from pyspark.sql.types import (
    BinaryType,
    BooleanType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from medimg_spark.errors import ConfigError
from medimg_spark.schema import IMAGES_SCHEMA, QUARANTINE_SCHEMA, VOLUMES_SCHEMA
from medimg_spark.storage import get_storage, join, parent, spark_path

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from medimg_spark.config_models import VolumesConfig
    from medimg_spark.volumes.spark import LocalizeVolumesSummary, ProcessVolumesSummary

STAGE = "volumes"
VOLUMES_DIR = "volumes"

#: The ``images`` columns planning reads (everything but the pixels).
META_COLUMNS: tuple[str, ...] = (
    "image_id",
    "file_sha256",
    "source_path",
    "source_format",
    "frame_index",
    "n_frames",
    "modality",
    "rows",
    "cols",
    "channels",
    "dtype",
    "rescale_slope",
    "rescale_intercept",
    "window_center",
    "window_width",
    "pixel_spacing",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "instance_number",
    "image_position",
    "image_orientation",
    "frame_of_reference_uid",
    "label",
    "split",
)

_PLAN_ONLY = [
    StructField("group_key", StringType(), False),
    StructField("kind", StringType(), False),  # "volume" or the reason frames were left out
    StructField("n_frames_left_out", IntegerType(), False),
    StructField("rescale_per_slice", BooleanType(), False),
]
_NOT_PLANNED = {"voxels", "dtype", "channels", "volumes_run_id", "created_at", "source_table", "recipe_name"}
PLAN_SCHEMA = StructType(
    [StructField(f.name, f.dataType, True) for f in VOLUMES_SCHEMA.fields if f.name not in _NOT_PLANNED]
    + [StructField("channels", IntegerType(), True), StructField("frame_dtype", StringType(), True)]
    + _PLAN_ONLY
)
"""One row per planned volume (``kind = "volume"``) or per group of frames left out."""

#: The plan's columns of a ``volumes`` row, carried into the stack pass on each volume's first slice so
#: that the stacked row is complete: rows holding voxels are never joined (shuffled or broadcast).
_CARRIED = [
    f for f in VOLUMES_SCHEMA.fields if f.name not in _NOT_PLANNED - {"channels"} and f.name != "volume_id"
]

BUILT_SCHEMA = StructType(
    [
        StructField("volume_id", StringType(), False),
        *[StructField(f.name, f.dataType, True) for f in _CARRIED],
        StructField("dtype", StringType(), True),
        StructField("voxels", BinaryType(), True),
        StructField("ok", BooleanType(), False),
        StructField("error_class", StringType(), True),
        StructField("error_message", StringType(), True),
    ]
)


class VolumesSummary(TypedDict):
    """``medimg volumes``: what one run assembled (also written to ``out/runs/<run_id>.json``)."""

    run_id: str
    source_table: str
    recipe_name: str | None
    recipe_hash: str | None
    frames_selected: int
    frames_without_geometry: int
    series: int
    series_too_large: int
    volumes_planned: int
    volumes_existing: int
    volumes_written: int
    volumes_flagged: int
    flags: dict[str, int]
    frame_groups_left_out: dict[str, int]
    frames_quarantined: int
    quarantined_by_error_class: dict[str, int]
    seconds: float


#: Characters Spark escapes (``%XX``) in a partition directory's value (``ExternalCatalogUtils``).
_PARTITION_ESCAPES = frozenset("\"#%'*/:=?\\\x7f{[]^") | frozenset(chr(c) for c in range(0x20))


def _partition_dir(column: str, value: str) -> str:
    escaped = "".join(f"%{ord(ch):02X}" if ch in _PARTITION_ESCAPES else ch for ch in value)
    return f"{column}={escaped}"


def append_by_modality(df: DataFrame, dest: str) -> None:
    """Append ``df`` to the table ``dest`` partitioned by ``modality``, one plain write per modality.

    Rows holding whole volumes are large: ``partitionBy`` would sort them in the executor's heap
    first (a copy of each row), which exhausts a default-sized JVM on volumes of a few hundred MB.
    Written into the ``modality=<value>`` folders directly, each row streams from the reader to the
    Parquet writer; readers see the same partitioned table.
    """
    from pyspark.sql import functions as F

    modalities = sorted(str(r["modality"]) for r in df.select("modality").distinct().collect())
    for modality in modalities:
        part = df.where(F.col("modality") == modality).drop("modality")
        part.write.mode("append").parquet(join(dest, _partition_dir("modality", modality)))


def new_run_id() -> str:
    """A sortable unique id such as ``volumes-20261121T101500Z-3fa2c1``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"volumes-{stamp}-{secrets.token_hex(3)}"


def _itemsize(col: Any) -> Any:
    from pyspark.sql import functions as F

    return (
        F.when(col.isin("uint8", "int8", "bool"), 1)
        .when(col.isin("uint16", "int16", "float16"), 2)
        .when(col.isin("uint32", "int32", "float32"), 4)
        .otherwise(8)
    )


def _source_frames(
    spark: SparkSession, out: str, table: str, recipe: str | None
) -> tuple[DataFrame, DataFrame, str | None, str | None]:
    """``(metadata frames, pixel frames, recipe name, recipe hash)`` of the source table."""
    from pyspark.sql import functions as F

    store = get_storage(spark)
    if not store.exists(join(out, "images")):
        raise ConfigError(f"no images table at {out}/images; run `medimg ingest --out {out}` first")
    images = spark.read.schema(IMAGES_SCHEMA).parquet(join(out, "images"))
    meta = images.select(*META_COLUMNS)
    if table == "images":
        return meta, images.select("image_id", "rows", "cols", "channels", "dtype", "pixels"), None, None
    from medimg_spark.features.stage import select_recipe
    from medimg_spark.preprocess import PROCESSED_SCHEMA

    if not store.exists(join(out, "processed")):
        raise ConfigError(
            f"volumes.source is processed but {out}/processed does not exist; run `medimg preprocess` first "
            "or use --table images"
        )
    processed = spark.read.schema(PROCESSED_SCHEMA).parquet(join(out, "processed"))
    name, digest = select_recipe(processed, recipe)
    processed = processed.where(F.col("recipe_hash") == digest)
    sized = processed.select(
        "image_id",
        F.col("rows").alias("p_rows"),
        F.col("cols").alias("p_cols"),
        F.col("channels").alias("p_channels"),
        F.col("dtype").alias("p_dtype"),
        F.col("label").alias("p_label"),
        F.col("split").alias("p_split"),
    )
    meta = meta.join(sized, "image_id")
    pixels = processed.select("image_id", "rows", "cols", "channels", "dtype", "pixels")
    return meta, pixels, name, digest


def _frame_infos(pdf: pd.DataFrame) -> list[Any]:
    """SliceInfos of a pandas group (processed frames: resized and re-typed as processed)."""
    from dataclasses import replace

    from medimg_spark.volumes.assemble import resampled, slice_info

    out = []
    for rec in pdf.to_dict("records"):
        info = slice_info(rec)
        if rec.get("p_rows") is not None:
            info = resampled(info, int(rec["p_rows"]), int(rec["p_cols"]))
            info = replace(
                info,
                channels=int(rec["p_channels"]),
                dtype=str(rec["p_dtype"]),
                rescale_slope=None,
                rescale_intercept=None,
            )
        out.append(info)
    return out


def _common(values: list[Any]) -> Any:
    """The value every frame shares, else None."""
    found = {None if v is None or v != v else v for v in values}  # NaN counts as missing
    return found.pop() if len(found) == 1 else None


def plan_group(pdf: pd.DataFrame, table: str, recipe_hash: str | None, options: Any) -> pd.DataFrame:
    """``applyInPandas`` body of the plan pass: one series' frame metadata → its plan rows."""
    import pandas as pd

    from medimg_spark.volumes.assemble import plan_series, rescale_of, volume_id

    infos = _frame_infos(pdf)
    by_id = {r["image_id"]: r for r in pdf.to_dict("records")}
    processed = table == "processed"
    plan = plan_series(infos, options)
    key = str(pdf["group_key"].iloc[0])
    rows: list[dict[str, Any]] = []
    info_of = {i.image_id: i for i in infos}
    for v in plan.volumes:
        frames = [by_id[i] for i in v.image_ids]
        shared = rescale_of([info_of[i] for i in v.image_ids])
        first = frames[0]
        rows.append(
            {
                "volume_id": volume_id(table, recipe_hash, v.image_ids),
                "modality": first["modality"],
                "source_format": first["source_format"],
                "study_instance_uid": first["study_instance_uid"],
                "series_instance_uid": first["series_instance_uid"],
                "frame_of_reference_uid": v.frame_of_reference_uid,
                "dim_x": v.shape_xyz[0],
                "dim_y": v.shape_xyz[1],
                "dim_z": v.shape_xyz[2],
                "channels": v.channels,
                "frame_dtype": v.dtype,
                "spacing": list(v.spacing),
                "origin": list(v.origin),
                "direction": list(v.direction),
                "image_ids": list(v.image_ids),
                "slice_positions": list(v.slice_positions),
                "rescale_slope": None if shared is None else shared[0],
                "rescale_intercept": None if shared is None else shared[1],
                "rescale_per_slice": shared is None,
                "window_center": None if processed else _common([f["window_center"] for f in frames]),
                "window_width": None if processed else _common([f["window_width"] for f in frames]),
                "label": _common([f.get("p_label", f["label"]) if processed else f["label"] for f in frames]),
                "split": _common([f.get("p_split", f["split"]) if processed else f["split"] for f in frames]),
                "missing_slices": v.missing_slices,
                "duplicate_slices": v.duplicate_slices,
                "irregular_spacing": v.irregular_spacing,
                "max_spacing_deviation": v.max_spacing_deviation,
                "mixed_geometry": v.mixed_geometry,
                "status": v.status,
                "flags": list(v.flags),
                "group_key": key,
                "kind": "volume",
                "n_frames_left_out": 0,
            }
        )
    for skipped in plan.skipped:
        rows.append(
            {
                "volume_id": volume_id(table, recipe_hash, skipped.image_ids),
                "group_key": key,
                "kind": skipped.reason,
                "n_frames_left_out": len(skipped.image_ids),
                "rescale_per_slice": False,
            }
        )
    blank = dict.fromkeys(PLAN_SCHEMA.names)
    return pd.DataFrame([{**blank, **r} for r in rows], columns=PLAN_SCHEMA.names, dtype=object)


def build_group(pdf: pd.DataFrame) -> pd.DataFrame:
    """``applyInPandas`` body of the stack pass: one volume's frames (with their slice index z) → voxels."""
    import pandas as pd

    from medimg_spark.io.pixels import to_array
    from medimg_spark.volumes.assemble import stack_frames
    from medimg_spark.volumes.model import Volume, volume_columns
    from medimg_spark.worker import configure_worker

    configure_worker()

    pdf = pdf.sort_values("z")
    vid = str(pdf["volume_id"].iloc[0])
    first = pdf.iloc[0]
    carried = {f.name: first.get(f"plan_{f.name}") for f in _CARRIED}
    try:
        frames = [(str(r["image_id"]), to_array(r)) for r in pdf.to_dict("records")]
        rescale = None
        if bool(first["rescale_per_slice"]):
            rescale = {
                str(r["image_id"]): (
                    1.0 if r["f_slope"] is None or r["f_slope"] != r["f_slope"] else float(r["f_slope"]),
                    0.0
                    if r["f_intercept"] is None or r["f_intercept"] != r["f_intercept"]
                    else float(r["f_intercept"]),
                )
                for r in pdf.to_dict("records")
            }
        voxels = stack_frames(
            frames, int(first["dim_y"]), int(first["dim_x"]), int(first["v_channels"]), rescale
        )
        if voxels.shape[0] != int(first["dim_z"]):
            raise ValueError(f"{voxels.shape[0]} frames found for {int(first['dim_z'])} planned slices")
        cols = volume_columns(
            Volume(voxels, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        )
        row = {"volume_id": vid, **carried, "dtype": cols["dtype"], "voxels": cols["voxels"], "ok": True}
        return pd.DataFrame([row], columns=BUILT_SCHEMA.names, dtype=object)
    except Exception as exc:
        row = {
            "volume_id": vid,
            **carried,
            "ok": False,
            "error_class": type(exc).__name__,
            "error_message": f"volume {vid}: {exc}"[:2000],
        }
        return pd.DataFrame([row], columns=BUILT_SCHEMA.names, dtype=object)


def _quarantine_rows(frames: DataFrame, step: str, error_class: Any, message: Any, run_id: str) -> DataFrame:
    from pyspark.sql import functions as F

    values = {
        "size_bytes": F.lit(None),
        "stage": F.lit(STAGE),
        "step": F.lit(step),
        "error_class": error_class,
        "error_message": message,
        "ingest_run_id": F.lit(run_id),
        "quarantined_at": F.current_timestamp(),
    }
    return frames.select(
        *[values.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in QUARANTINE_SCHEMA]
    )


def assemble_volumes(
    spark: SparkSession,
    out_dir: str,
    config: VolumesConfig,
    table: str | None = None,
    recipe: str | None = None,
) -> VolumesSummary:
    """Assemble the series of ``out_dir``'s ``images`` (or ``processed``) into ``out_dir/volumes``.

    Args:
        spark: the session.
        out_dir: the lake (local path or URI).
        config: the ``volumes`` section.
        table: ``images`` or ``processed`` (default: ``config.source``).
        recipe: with ``processed``: the recipe name or hash (default: ``config.recipe``, else the only one).

    Returns:
        The run summary (also written to ``out_dir/runs/<run_id>.json``).

    Raises:
        ConfigError: the source table is missing, or ``processed`` holds several recipes and none is named.
    """
    from pyspark.sql import functions as F

    from medimg_spark.volumes.assemble import AssemblyOptions

    started = time.perf_counter()
    run_id = new_run_id()
    table = table or config.source
    if table not in ("images", "processed"):
        raise ConfigError(f"--table {table!r}: choose images or processed")
    out = spark_path(out_dir)
    store = get_storage(spark)
    meta, pixels, recipe_name, recipe_hash = _source_frames(spark, out, table, recipe or config.recipe)
    tag = f"volumes table={table} recipe_hash={recipe_hash or '-'}"
    limit = int(config.max_volume_bytes)
    options = AssemblyOptions(
        min_slices=config.min_slices,
        orientation_tolerance=config.orientation_tolerance,
        spacing_tolerance=config.spacing_tolerance,
    )
    has_geometry = F.col("image_position").isNotNull() & F.col("image_orientation").isNotNull()
    key = F.coalesce(F.col("series_instance_uid"), F.concat(F.lit("file:"), F.col("file_sha256")))
    rows_c = F.coalesce(F.col("p_rows"), F.col("rows")) if table == "processed" else F.col("rows")
    cols_c = F.coalesce(F.col("p_cols"), F.col("cols")) if table == "processed" else F.col("cols")
    ch_c = F.coalesce(F.col("p_channels"), F.col("channels")) if table == "processed" else F.col("channels")
    dt_c = F.coalesce(F.col("p_dtype"), F.col("dtype")) if table == "processed" else F.col("dtype")
    nbytes = rows_c.cast("long") * cols_c.cast("long") * ch_c.cast("long") * _itemsize(dt_c)
    frames = meta.withColumn("group_key", key).withColumn("nbytes", nbytes)

    # frames of this source quarantined by an earlier run at the same limit are not retried
    quarantine_path = join(out, "quarantine")
    if store.exists(quarantine_path):
        earlier = (
            spark.read.schema(QUARANTINE_SCHEMA)
            .parquet(quarantine_path)
            .where(
                (F.col("stage") == STAGE)
                & F.col("error_message").startswith(f"{tag} max_volume_bytes={limit}")
            )
            .select("source_path", "frame_index")
        )
        frames = frames.join(earlier, ["source_path", "frame_index"], "left_anti")

    staging = join(out, "_staging", run_id)
    try:
        # 1. size, from metadata only: one small row per series, on the driver
        per_series = (
            frames.groupBy("group_key")
            .agg(
                F.count(F.lit(1)).alias("n"),
                F.sum(F.when(has_geometry, 0).otherwise(1)).alias("no_geometry"),
                F.sum(F.when(has_geometry, F.col("nbytes")).otherwise(0)).alias("bytes"),
            )
            .collect()
        )
        counts = {
            "n": sum(int(r["n"]) for r in per_series),
            "no_geometry": sum(int(r["no_geometry"]) for r in per_series),
        }
        over = {str(r["group_key"]): int(r["bytes"]) for r in per_series if int(r["bytes"] or 0) > limit}
        located = frames.where(has_geometry)
        too_large = spark.createDataFrame(sorted(over.items()), "group_key string, bytes long")
        large = located.join(F.broadcast(too_large), "group_key")
        message = F.concat(
            F.lit(f"{tag} max_volume_bytes={limit}: series "),
            F.col("group_key"),
            F.lit(" holds "),
            F.col("bytes").cast("string"),
            F.lit(
                f" bytes of pixels, over volumes.max_volume_bytes = {limit}; raise volumes.max_volume_bytes "
                "(and the executor memory) to assemble it"
            ),
        )
        size_q = _quarantine_rows(large, "size", F.lit("VolumeTooLargeError"), message, run_id)
        # 2. plan, from metadata only
        todo = located.join(F.broadcast(too_large.select("group_key")), "group_key", "left_anti")
        pcols = [c for c in todo.columns if c != "nbytes"]
        todo.select(*pcols).groupBy("group_key").applyInPandas(
            lambda pdf: plan_group(pdf, table, recipe_hash, options), PLAN_SCHEMA
        ).write.parquet(join(staging, "plans"))
        plans = spark.read.schema(PLAN_SCHEMA).parquet(join(staging, "plans"))
        volumes = plans.where(F.col("kind") == "volume")
        dest = join(out, VOLUMES_DIR)
        existing = (
            spark.read.schema(VOLUMES_SCHEMA)
            .parquet(dest)
            .select("volume_id")
            .withColumn("existing", F.lit(True))
            if store.exists(dest)
            else spark.createDataFrame([], "volume_id string, existing boolean")
        )
        # the plans without their arrays are small: one row per volume or left-out group
        planned = (
            plans.select("volume_id", "group_key", "kind", "n_frames_left_out", "status", "flags")
            .join(F.broadcast(existing), "volume_id", "left")
            .collect()
        )
        new = volumes.join(existing, "volume_id", "left_anti")
        # 3. stack: one volume's frames per group
        slices = new.select(
            "volume_id",
            "dim_x",
            "dim_y",
            "dim_z",
            F.col("channels").alias("v_channels"),
            "rescale_per_slice",
            *[F.col(f.name).alias(f"_plan_{f.name}") for f in _CARRIED],
            F.posexplode("image_ids").alias("z", "image_id"),
        ).select(
            "volume_id",
            "dim_x",
            "dim_y",
            "dim_z",
            "v_channels",
            "rescale_per_slice",
            "z",
            "image_id",
            *[F.when(F.col("z") == 0, F.col(f"_plan_{f.name}")).alias(f"plan_{f.name}") for f in _CARRIED],
        )
        rescale_cols = meta.select(
            "image_id",
            F.col("rescale_slope").alias("f_slope"),
            F.col("rescale_intercept").alias("f_intercept"),
        )
        # a side holding pixels is never broadcast (a well-compressed table looks small to the planner;
        # collecting it would exhaust the driver): the metadata side is the hash side
        with_pixels = slices.hint("shuffle_hash").join(pixels, "image_id").join(rescale_cols, "image_id")
        with_pixels.groupBy("volume_id").applyInPandas(build_group, BUILT_SCHEMA).write.parquet(
            join(staging, "built")
        )
        built = spark.read.schema(BUILT_SCHEMA).parquet(join(staging, "built"))
        outcomes = {r["volume_id"]: r["ok"] for r in built.select("volume_id", "ok").collect()}
        now = F.current_timestamp()
        values = {
            "source_table": F.lit(table),
            "recipe_name": F.lit(recipe_name),
            "volumes_run_id": F.lit(run_id),
            "created_at": now,
        }
        done = built.where(F.col("ok"))  # complete rows: no join, the voxels are read once and written
        result = done.select(
            *[values.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in VOLUMES_SCHEMA]
        )
        failed = built.where(~F.col("ok"))
        failed_frames = failed.select(
            "error_class", "error_message", F.explode("image_ids").alias("image_id")
        ).join(meta.select("image_id", "source_path", "file_sha256", "frame_index"), "image_id")
        failed_q = _quarantine_rows(
            failed_frames,
            "assemble",
            F.col("error_class"),
            F.concat(F.lit(f"{tag} max_volume_bytes={limit}: "), F.col("error_message")),
            run_id,
        )
        if any(outcomes.values()):
            append_by_modality(result, dest)
        quarantined = (size_q.unionByName(failed_q) if over else failed_q).persist()
        q_counts = quarantined.groupBy("error_class").agg(F.count(F.lit(1)).alias("count")).collect()
        if q_counts:
            quarantined.write.mode("append").parquet(quarantine_path)
        quarantined.unpersist()
    finally:
        store.delete(staging)
        store.remove_if_empty(parent(staging))
    by_class = {str(r["error_class"]): int(r["count"]) for r in q_counts}
    n_large = len(over)
    written = [r for r in planned if r["kind"] == "volume" and outcomes.get(r["volume_id"])]
    flag_counts: dict[str, int] = {}
    for r in written:
        for flag in r["flags"] or []:
            flag_counts[flag] = flag_counts.get(flag, 0) + 1
    left_out: dict[str, int] = {}
    for r in planned:
        if r["kind"] != "volume":
            left_out[r["kind"]] = left_out.get(r["kind"], 0) + int(r["n_frames_left_out"])
    n_planned = sum(1 for r in planned if r["kind"] == "volume")
    n_existing = sum(1 for r in planned if r["kind"] == "volume" and r["existing"])
    summary: VolumesSummary = {
        "run_id": run_id,
        "source_table": table,
        "recipe_name": recipe_name,
        "recipe_hash": recipe_hash,
        "frames_selected": counts["n"],
        "frames_without_geometry": counts["no_geometry"],
        "series": len(per_series),
        "series_too_large": n_large,
        "volumes_planned": n_planned,
        "volumes_existing": n_existing,
        "volumes_written": len(written),
        "volumes_flagged": sum(1 for r in written if r["status"] == "flagged"),
        "flags": dict(sorted(flag_counts.items())),
        "frame_groups_left_out": dict(sorted(left_out.items())),
        "frames_quarantined": sum(by_class.values()),
        "quarantined_by_error_class": dict(sorted(by_class.items())),
        "seconds": round(time.perf_counter() - started, 3),
    }
    store.write_json(join(out, "runs", f"{run_id}.json"), summary, default=str)
    return summary


def format_summary(summary: VolumesSummary) -> str:
    """The summary as the few lines ``medimg volumes`` prints."""
    lines = [f"volumes → {summary['run_id']} ({summary['source_table']})"]
    for key in (
        "frames_selected",
        "frames_without_geometry",
        "series",
        "volumes_planned",
        "volumes_existing",
        "volumes_written",
        "volumes_flagged",
        "frames_quarantined",
        "seconds",
    ):
        lines.append(f"  {key}: {summary[key]}")  # type: ignore[literal-required]
    if summary["flags"]:
        lines.append("  flags: " + ", ".join(f"{k}={v}" for k, v in summary["flags"].items()))
    return "\n".join(lines)


class VolumesRunSummary(TypedDict):
    """``medimg volumes`` as a whole: the assembly, then the optional 3-D filters and localisation."""

    assemble: VolumesSummary
    filters: ProcessVolumesSummary | None
    localize: LocalizeVolumesSummary | None


def run_volumes(
    spark: SparkSession,
    out_dir: str,
    config: VolumesConfig,
    table: str | None = None,
    recipe: str | None = None,
) -> VolumesRunSummary:
    """Assemble the volumes, then apply ``config.filters`` (→ ``processed_volumes``) and
    ``config.localize`` (→ ``volume_labels``/``volume_regions``, of the filtered volumes when
    filters are set). Each step skips the volumes it already holds, so a rerun adds only new ones.

    Args:
        spark: the session.
        out_dir: the lake (local path or URI).
        config: the ``volumes`` section.
        table: ``images`` or ``processed`` (default: ``config.source``).
        recipe: with ``processed``: the recipe name or hash.
    """
    from medimg_spark.volumes.spark import localize_volumes, process_volumes

    assembled = assemble_volumes(spark, out_dir, config, table=table, recipe=recipe)
    run_id = assembled["run_id"]
    store, out = get_storage(spark), spark_path(out_dir)
    # a step whose input table does not exist (no series assembled, every volume quarantined) is skipped
    filtered = localized = None
    if config.filters and store.exists(join(out, VOLUMES_DIR)):
        filtered = process_volumes(spark, out_dir, config.filters, run_id=run_id)
    source = "processed_volumes" if config.filters else VOLUMES_DIR
    if config.localize is not None and store.exists(join(out, source)):
        localized = localize_volumes(spark, out_dir, config.localize, run_id=run_id, source=source)
    return {"assemble": assembled, "filters": filtered, "localize": localized}


def format_run_summary(summary: VolumesRunSummary) -> str:
    """:func:`format_summary` plus a line per 3-D step that ran."""
    lines = [format_summary(summary["assemble"])]
    filtered = summary["filters"]
    if filtered is not None:
        lines.append(
            f"  filters {filtered['recipe_name']}: {filtered['volumes_processed']} processed, "
            f"{filtered['volumes_skipped']} already done, {filtered['volumes_quarantined']} quarantined"
        )
    localized = summary["localize"]
    if localized is not None:
        lines.append(
            f"  localize {localized['recipe_name']}: {localized['volumes_localized']} volumes, "
            f"{localized['regions']} regions, {localized['volumes_quarantined']} quarantined"
        )
    return "\n".join(lines)
