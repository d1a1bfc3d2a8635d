"""Spark adapter of the op layer: apply a recipe to every frame of ``out/images``.

``preprocess`` reads ``out/images`` (:data:`~medimg_spark.schema.IMAGES_SCHEMA`), runs the recipe on
each frame inside the executors (``mapInArrow``; pixel data never reaches the driver) and appends

* ``out/processed`` (:data:`PROCESSED_SCHEMA`): the result pixels, the mask (uint8 0/1 bytes of
  ``rows x cols``, null when the recipe does not segment), the recipe trace (the branch each guarded or
  noise-aware step took on this frame) and the quality metrics before/after in a fixed scale
  (:func:`medimg_spark.quality.paired_metrics`);
* ``out/quarantine`` (:data:`~medimg_spark.schema.QUARANTINE_SCHEMA`): one row per frame that failed,
  ``stage = "preprocess"``, ``step = "<index>:<op>"`` (``-1:input`` for undecodable pixels, ``check``
  with ``error_class = "DegenerateOutputError"`` for an output that is constant, non-finite or lost most of
  the input's information: :func:`medimg_spark.ops._common.check_output`; never written as an image),
  ``error_class`` = the original exception's class, ``ingest_run_id`` = this preprocess run's id and an
  ``error_message`` that starts with ``recipe <name> recipe_hash=<sha256>``.

Reruns are idempotent: frames already in ``processed`` with the same ``recipe_hash``, or quarantined
by a run of the same ``recipe_hash``, are skipped.

``quality_report`` aggregates ``quality_before``/``quality_after`` with Spark (``percentile_approx``)
into ``out/metrics/quality.json``; :func:`format_quality_table` renders it as text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from medimg_spark.quality import QUALITY_KEYS
from medimg_spark.schema import IMAGES_SCHEMA, QUARANTINE_SCHEMA
from medimg_spark.session import run_concurrently, session_conf, unsorted_partitioned_writes
from medimg_spark.storage import get_storage, join, parent, spark_path
from medimg_spark.summaries import FeaturesSummary, PreprocessSummary

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from medimg_spark.features.spec import FeatureSet
    from medimg_spark.quality_stage import QUALITY_FILE, format_quality_table, quality_report  # noqa: F401

QUALITY_STRUCT = StructType([StructField(k, DoubleType(), True) for k in QUALITY_KEYS])
"""Spark struct of :func:`medimg_spark.quality.quality_metrics` (NaN where a metric is undefined)."""

PROCESSED_SCHEMA = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("recipe_name", StringType(), False),
        StructField("recipe_hash", StringType(), False),
        StructField("modality", StringType(), False),
        StructField("label", StringType(), True),
        StructField("split", StringType(), True),
        StructField("rows", IntegerType(), False),
        StructField("cols", IntegerType(), False),
        StructField("channels", IntegerType(), False),
        StructField("dtype", StringType(), False),
        StructField("pixels", BinaryType(), False),
        StructField("mask", BinaryType(), True),
        StructField("recipe_trace", StringType(), True),
        StructField("quality_before", QUALITY_STRUCT, False),
        StructField("quality_after", QUALITY_STRUCT, False),
        StructField("preprocess_run_id", StringType(), False),
        StructField("processed_at", TimestampType(), False),
    ]
)
"""Schema of ``out/processed``. ``pixels`` decodes with :func:`medimg_spark.io.pixels.to_array`;
``mask`` is ``rows * cols`` uint8 bytes (C order) or null. ``recipe_trace`` holds the notes of the steps
that said which branch they took, ``"<index>:<op>: <note>"`` joined by ``"; "`` (e.g.
``"4:clahe: skipped (noise x1.31 > 1.15)"``); null when no step had a note, and in tables written before
the column existed (read with this schema)."""

#: The ``images`` columns a recipe reads (pixels plus the header values ops may use) and passes on.
RECIPE_INPUT_COLUMNS: tuple[str, ...] = (
    "image_id",
    "source_path",
    "file_sha256",
    "frame_index",
    "modality",
    "rows",
    "cols",
    "channels",
    "dtype",
    "pixels",
    "photometric",
    "bits_stored",
    "rescale_slope",
    "rescale_intercept",
    "window_center",
    "window_width",
    "pixel_spacing",
    "slice_thickness",
    "label",
    "split",
)

_PASS_THROUGH = ("source_path", "file_sha256", "frame_index")

#: What a recipe task writes per frame: the processed columns plus the outcome (ok/step/error).
WORK_SCHEMA = StructType(
    [StructField(f.name, f.dataType, True) for f in PROCESSED_SCHEMA.fields if f.name != "processed_at"]
    + [
        StructField("source_path", StringType(), True),
        StructField("file_sha256", StringType(), True),
        StructField("frame_index", IntegerType(), True),
        StructField("ok", BooleanType(), False),
        StructField("step", StringType(), True),
        StructField("error_class", StringType(), True),
        StructField("error_message", StringType(), True),
    ]
)


#: What a recipe task writes to its staging table, partitioned by ``_part``: ``_part=frame`` rows are
#: ``processed`` rows (these files are moved into the table as they are: the processed pixels are written
#: once), ``_part=side`` rows carry a failed frame's quarantine fields or a fused run's feature values as
#: JSON in ``pixels`` (:data:`SIDE_JSON_SCHEMA`), with ``image_id`` and ``recipe_hash`` set and the other
#: columns null.
STAGED_SCHEMA = StructType(
    [StructField(f.name, f.dataType, True) for f in PROCESSED_SCHEMA.fields]
    + [StructField("_part", StringType(), True)]
)
FRAME_PART, SIDE_PART = "frame", "side"
#: The column of a recipe task's input rows that says which of the run's recipes a frame gets (its index).
PASS_COL = "_pass"
SIDE_JSON_SCHEMA = StructType(
    [
        StructField("kind", StringType(), True),  # "quarantine" or "features"
        StructField("source_path", StringType(), True),
        StructField("file_sha256", StringType(), True),
        StructField("frame_index", IntegerType(), True),
        StructField("step", StringType(), True),
        StructField("error_class", StringType(), True),
        StructField("error_message", StringType(), True),
        StructField("label", StringType(), True),
        StructField("split", StringType(), True),
        StructField("values", ArrayType(DoubleType()), True),
        StructField("error", StringType(), True),
    ]
)
"""The JSON of a side row's ``pixels``: quarantine fields (``kind = "quarantine"``) or the feature values and
extractor error of a processed frame (``kind = "features"``)."""

_PROCESSED_NAMES = tuple(f.name for f in PROCESSED_SCHEMA.fields)
_QUARANTINE_JSON = ("source_path", "file_sha256", "frame_index", "step", "error_class", "error_message")


def staged_rows(work: list[dict[str, Any]], fused: bool, now: Any) -> list[dict[str, Any]]:
    """The :data:`STAGED_SCHEMA` rows of a batch of work rows (see :func:`process_row`).

    A processed frame gives its ``processed`` row (``processed_at = now``) and, when ``fused``, a side row
    with its feature values; a failed frame gives a side row with its quarantine fields.
    """
    import json

    out: list[dict[str, Any]] = []
    for r in work:
        if r["ok"]:
            row = {name: r.get(name) for name in _PROCESSED_NAMES}
            row["processed_at"] = now
            row["_part"] = FRAME_PART
            out.append(row)
            if not fused:
                continue
            side: dict[str, Any] = {
                "kind": "features",
                "label": r.get("label"),
                "split": r.get("split"),
                "values": r.get("_features"),
                "error": r.get("_feature_error"),
            }
        else:
            side = {"kind": "quarantine", **{k: r.get(k) for k in _QUARANTINE_JSON}}
        out.append(
            {
                "image_id": r.get("image_id"),
                "recipe_hash": r.get("recipe_hash"),
                "pixels": json.dumps(side, allow_nan=True).encode(),
                "_part": SIDE_PART,
            }
        )
    return out


#: Each core gets about this many tasks of a stage's frames (the last tasks finish close together).
TASKS_PER_CORE = 4
#: ``spark.sql.files.openCostInBytes`` of the frame scans (Spark's 4 MB would make a split of at least
#: 4 MB: 8 CT frames, so a table of 60 CT frames would still leave a core idle for most of a task).
SPLIT_OPEN_COST = 1 << 20
#: Largest split of a frame scan (``spark.sql.files.maxPartitionBytes`` if the session's is larger). With
#: Spark's 128 MB, N = 2,000 CT frames (1 GB) are 8 tasks of about 85 s, and the last one of a stage keeps
#: a core idle for about half a task; 32 MB is about 60 CT frames (about 20 s) per task.
SPLIT_MAX_BYTES = 32 << 20


def _conf_bytes(spark: SparkSession, key: str, default: str = "128m") -> int:
    """A byte-size setting of the session (``128m``, ``134217728b``, ``1g`` ...) in bytes (``default``
    when unset: Spark's default of the key)."""
    value = str(spark.conf.get(key, default)).strip().lower()
    units = {"b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix) and value[: -len(suffix)].strip().isdigit():
            return int(value[: -len(suffix)]) * units[suffix]
    return int(value) if value.isdigit() else 128 << 20


class PreprocessRunSummary(PreprocessSummary, total=False):
    """:class:`PreprocessSummary`, and with ``features=`` the summary of the features table written."""

    features: FeaturesSummary


# Up to this many already-done image ids are broadcast to skip them (measured: 15.6 MB + ~200 bytes per id, ~56 MB at
# the limit, docs/scaling.md); a larger done-set is joined by Spark's choice (a shuffle of the pixel rows, only on very
# large incremental reruns).
_BROADCAST_DONE_IDS = 200_000
#: Where :func:`quality_report` writes its JSON, relative to the output directory.


def new_run_id() -> str:
    """A sortable unique id such as ``preprocess-20261121T101500Z-3fa2c1``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"preprocess-{stamp}-{secrets.token_hex(3)}"


def _arrow_schema(schema: StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC")


def process_row(row: dict[str, Any], recipe: Any, run_id: str) -> dict[str, Any]:
    """Run ``recipe`` on one ``images`` row (a dict) and return one row of the work schema.

    Never raises: a failure becomes a row with ``ok = False`` and the step, class and message.
    """
    import numpy as np

    from medimg_spark.io.pixels import encode, to_array
    from medimg_spark.ops import RecipeStepError, apply_recipe
    from medimg_spark.ops._common import DegenerateOutputError
    from medimg_spark.quality import paired_metrics

    out: dict[str, Any] = {k: row.get(k) for k in ("image_id", "modality", "label", "split", *_PASS_THROUGH)}
    out.update(recipe_name=recipe.name, recipe_hash=recipe.hash, preprocess_run_id=run_id)
    prefix = f"recipe {recipe.name} recipe_hash={recipe.hash}"
    step = "-1:input"
    trace: list[str] = []
    try:
        image = to_array(row)
        step = "recipe"
        result, mask = apply_recipe(recipe, image, row, trace)
        step = "quality"
        before, after = paired_metrics(image, result, recipe.keeps_units)
        step = "encode"
        pixels, rows, cols, channels, dtype = encode(result)
        if mask is not None and mask.shape != result.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {result.shape[:2]}")
    except RecipeStepError as exc:
        cause = exc.cause
        out.update(
            ok=False,
            step=exc.step,
            error_class=type(cause).__name__,
            error_message=f"{prefix}: step {exc.step}: {cause}",
        )
        return out
    except DegenerateOutputError as exc:
        notes = f" (trace: {'; '.join(trace)})" if trace else ""
        out.update(
            ok=False,
            step="check",
            error_class=type(exc).__name__,
            error_message=f"{prefix}: check: {exc}{notes}",
        )
        return out
    except Exception as exc:
        out.update(
            ok=False, step=step, error_class=type(exc).__name__, error_message=f"{prefix}: {step}: {exc}"
        )
        return out
    out.update(
        ok=True,
        rows=rows,
        cols=cols,
        channels=channels,
        dtype=dtype,
        pixels=pixels,
        mask=None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8).tobytes(),
        recipe_trace="; ".join(trace) if trace else None,
        quality_before=before,
        quality_after=after,
    )
    return out


def _process_partition(
    batches: Iterator[pa.RecordBatch],
    recipes_json: list[str],
    run_id: str,
    features_json: list[str | None] | None = None,
    use_mask: bool = True,
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: the recipes are parsed once per partition, OpenCV objects are cached per worker.

    Each row gets the recipe ``recipes_json[row[PASS_COL]]`` (:data:`PASS_COL`; the first recipe when the
    rows have no such column). Where ``features_json`` holds a
    :class:`~medimg_spark.features.FeatureSet` as JSON for that recipe, the feature set runs on the
    processed frame as :func:`~medimg_spark.features.compute_features` runs it on the ``processed`` row
    (the encoded pixels decoded again, the mask unless ``use_mask`` is false), and the feature values go
    to side rows. Rows follow :data:`STAGED_SCHEMA` (:func:`staged_rows`).
    """
    import pyarrow as pa

    from medimg_spark.ops import Recipe
    from medimg_spark.worker import configure_worker

    configure_worker()  # one OpenCV thread per task, the allocator keeps frame-sized blocks
    recipes = [Recipe.model_validate_json(r) for r in recipes_json]
    sets: list[Any] = [None] * len(recipes)
    if features_json is not None and any(f is not None for f in features_json):
        from medimg_spark.features.spec import FeatureSet
        from medimg_spark.features.stage import frame_features

        sets = [None if f is None else FeatureSet.model_validate_json(f) for f in features_json]
    schema = _arrow_schema(STAGED_SCHEMA)
    for batch in batches:
        rows: list[dict[str, Any]] = []
        now = dt.datetime.now(dt.UTC)
        for r in batch.to_pylist():
            k = r.get(PASS_COL) or 0
            work = process_row(r, recipes[k], run_id)
            fs = sets[k]
            if fs is not None and work["ok"]:
                work["_features"], work["_feature_error"] = frame_features(fs, work, use_mask)
            rows += staged_rows([work], fs is not None, now)
        columns = [
            pa.array([r.get(name) for r in rows], type=schema.field(name).type) for name in schema.names
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _exists(spark: SparkSession, path: str) -> bool:
    return get_storage(spark).exists(path)


def _delete(spark: SparkSession, path: str) -> None:
    """Delete the folder ``path``, and its parent when that is left empty (the ``_staging`` folder)."""
    store = get_storage(spark)
    store.delete(path)
    store.remove_if_empty(parent(path))


@dataclass(frozen=True)
class RecipePass:
    """One recipe of a :func:`preprocess_passes` run.

    Attributes:
        recipe: a recipe YAML path or the name of a shipped recipe.
        where: optional Spark SQL filter on ``images`` columns, e.g. ``"modality = 'CT'"``.
        features: a feature set (name, YAML path or :class:`~medimg_spark.features.FeatureSet`) whose
            table the recipe's pass also writes (see :func:`preprocess`), or None.
    """

    recipe: str
    where: str | None = None
    features: str | FeatureSet | None = None


def preprocess(
    spark: SparkSession,
    out_dir: str,
    recipe_path: str,
    where: str | None = None,
    *,
    features: str | FeatureSet | None = None,
    use_mask: bool = True,
) -> PreprocessRunSummary:
    """Apply a recipe to ``out_dir/images`` and append ``out_dir/processed`` and ``out_dir/quarantine``.

    Args:
        spark: the session.
        out_dir: the output directory written by ingest (local path or URI).
        recipe_path: a recipe YAML path or the name of a shipped recipe; validated before any Spark work.
        where: optional Spark SQL filter on ``images`` columns, e.g. ``"modality = 'CT'"``.
        features: a feature set (name, YAML path or :class:`~medimg_spark.features.FeatureSet`): also
            write ``out_dir/features`` as ``compute_features(spark, out_dir, source="processed",
            feature_set=features, use_mask=use_mask, recipe=<this recipe>)`` would, the same table, but
            computed in the recipe's pass on the frames it just processed (no write and re-read of their
            pixels). When ``processed`` held frames of this recipe before the run, the features of all
            of them are computed by :func:`~medimg_spark.features.compute_features` after the run.
        use_mask: with ``features``: pass the recipe's masks to the extractors.

    Returns:
        Run summary: run id, recipe name and hash, frames selected, skipped (already done), processed,
        quarantined (total and by error class), seconds; with ``features``, ``features`` holds the
        features stage's summary.

    Raises:
        RecipeFileError: the recipe is invalid (a ConfigError).
        ConfigError: ``out_dir/images`` does not exist.
        FeatureSetError: ``features`` is not a valid feature set (before any Spark work).
        FeatureError: with ``features``, every frame failed the feature set.
    """
    (summary,) = preprocess_passes(
        spark, out_dir, [RecipePass(recipe_path, where, features)], use_mask=use_mask
    )
    return summary


def preprocess_passes(
    spark: SparkSession, out_dir: str, passes: Sequence[RecipePass], *, use_mask: bool = True
) -> list[PreprocessRunSummary]:
    """Apply several recipes, each to its own frames, in one pass over ``out_dir/images``.

    The result is what :func:`preprocess` gives for each pass in turn (the same rows in ``processed``,
    ``quarantine`` and ``features``), but from one Spark job: the frames of every recipe are read by
    one scan, their tasks share the cores (the last tasks of one recipe overlap the next recipe's
    instead of leaving a core idle between two jobs), and the bookkeeping after the job (quarantine
    append, the move of the frame files, the counts) happens once. Passes that repeat a recipe (same
    ``recipe_hash``) run in a later round, so a frame is never processed twice by one recipe.

    Args:
        spark: the session.
        out_dir: the output directory written by ingest (local path or URI).
        passes: the recipes, their filters and feature sets; every recipe and feature set is validated
            before any Spark work.
        use_mask: with features: pass the recipe's masks to the extractors.

    Returns:
        One summary per pass, in the order of ``passes`` (see :func:`preprocess`); ``run_id`` and
        ``seconds`` are those of the round the pass ran in.

    Raises:
        RecipeFileError: a recipe is invalid (a ConfigError).
        ConfigError: ``out_dir/images`` does not exist, or ``passes`` is empty.
        FeatureSetError: a feature set is not valid (before any Spark work).
        FeatureError: with features, every frame of a pass failed the feature set.
    """
    from medimg_spark.errors import ConfigError
    from medimg_spark.ops import load_recipe

    if not passes:
        raise ConfigError("preprocess: no recipe to apply; name at least one recipe")
    loaded: list[_Pass] = []
    for p in passes:
        recipe = load_recipe(p.recipe)
        fset: FeatureSet | None = None
        if p.features is not None:
            from medimg_spark.features.spec import load_feature_set

            fset = load_feature_set(p.features)
        loaded.append(_Pass(recipe, p.where, fset))
    out = spark_path(out_dir)
    if not _exists(spark, join(out, "images")):
        raise ConfigError(f"no images table at {out}/images; run ingest into {out_dir} first")
    # rounds of distinct recipes: a recipe's second pass sees its first pass's frames as done
    rounds: list[list[int]] = []
    for i, this in enumerate(loaded):
        k = sum(q.recipe.hash == this.recipe.hash for q in loaded[:i])
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    summaries: dict[int, PreprocessRunSummary] = {}
    for members in rounds:
        results = _run_round(spark, out_dir, [loaded[i] for i in members], use_mask)
        summaries.update(zip(members, results, strict=True))
    return [summaries[i] for i in range(len(loaded))]


class _Pass(NamedTuple):
    recipe: Any  # medimg_spark.ops.Recipe
    where: str | None
    fset: FeatureSet | None


def _run_round(
    spark: SparkSession, out_dir: str, passes: list[_Pass], use_mask: bool
) -> list[PreprocessRunSummary]:
    """One Spark job over the frames of ``passes`` (distinct recipes), then its bookkeeping."""
    from pyspark.sql import functions as F

    from medimg_spark.io.ingest import IMAGE_ROW_GROUP_BYTES

    started = time.perf_counter()
    run_id = new_run_id()
    out = spark_path(out_dir)
    images = spark.read.schema(IMAGES_SCHEMA).parquet(join(out, "images"))
    selections = [
        (images.where(p.where) if p.where else images).select(*RECIPE_INPUT_COLUMNS) for p in passes
    ]
    hashes = [p.recipe.hash for p in passes]

    done_parts: list[DataFrame] = []  # (image_id, _pass) of the frames each pass skips
    earlier: set[str] = set()  # recipes of which processed holds frames from earlier runs
    if _exists(spark, join(out, "processed")):
        prev = spark.read.schema(PROCESSED_SCHEMA).parquet(join(out, "processed"))
        # one scan of processed for every pass (a round's recipes are distinct: one pass per hash)
        ours = prev.where(F.col("recipe_hash").isin(hashes))
        pass_of = F.create_map(*[F.lit(x) for i, h in enumerate(hashes) for x in (h, i)])
        done_parts.append(ours.select("image_id", pass_of[F.col("recipe_hash")].alias(PASS_COL)))
        if any(p.fset is not None for p in passes):
            found = ours.select("recipe_hash").distinct().collect()
            earlier = {str(r["recipe_hash"]) for r in found}
    if _exists(spark, join(out, "quarantine")):
        q = spark.read.schema(QUARANTINE_SCHEMA).parquet(join(out, "quarantine"))
        for i, (h, sel) in enumerate(zip(hashes, selections, strict=True)):
            failed = q.where(
                (F.col("stage") == "preprocess") & F.col("error_message").contains(f"recipe_hash={h}")
            ).select("source_path", "frame_index")
            done_parts.append(
                sel.join(failed, ["source_path", "frame_index"], "left_semi").select(
                    "image_id", F.lit(i).alias(PASS_COL)
                )
            )
    selected = [int(n) for n in run_concurrently(spark, *[sel.count for sel in selections])]
    # every pass's frames, tagged with the pass: the file scans the job reads (frame_splits sizes them)
    scan = selections[0].withColumn(PASS_COL, F.lit(0))
    for i, sel in enumerate(selections[1:], start=1):
        scan = scan.unionByName(sel.withColumn(PASS_COL, F.lit(i)))
    todo = scan
    done: DataFrame | None = None
    if done_parts:
        done = done_parts[0]
        for part in done_parts[1:]:
            done = done.unionByName(part)
        done = done.distinct().persist()
        n_done = done.count()
        if n_done:
            # Never shuffle pixel rows for this: a done-set that fits is broadcast (Spark's size estimate
            # comes from the Parquet files, pixels included, so it would choose a sort-merge join).
            small = n_done <= _BROADCAST_DONE_IDS
            todo = todo.join(F.broadcast(done) if small else done, ["image_id", PASS_COL], "left_anti")

    conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old_batch = spark.conf.get(conf_key, "10000") or "10000"
    if int(old_batch) > 256:
        spark.conf.set(conf_key, "64")
    fused = [p.fset is not None and p.recipe.hash not in earlier for p in passes]
    recipes_json = [p.recipe.model_dump_json() for p in passes]
    fs_json = [
        p.fset.model_dump_json() if f and p.fset is not None else None
        for p, f in zip(passes, fused, strict=True)
    ]
    # The results go to a staging table first, computed exactly once: appending to ``processed`` refreshes
    # every cached plan that reads it (a persisted DataFrame would be redone). Its frame files are then
    # moved into ``processed`` as they are, so the processed pixels are written once (before: written to
    # the staging table, read back and written again).
    staging = join(out, "_staging", run_id)
    store = get_storage(spark)
    try:
        with (
            frame_splits(spark, scan=scan, row_group_bytes=IMAGE_ROW_GROUP_BYTES),
            unsorted_partitioned_writes(spark),
        ):
            todo.mapInArrow(
                lambda it: _process_partition(it, recipes_json, run_id, fs_json, use_mask), STAGED_SCHEMA
            ).write.partitionBy("_part").parquet(staging)
    finally:
        spark.conf.set(conf_key, old_batch)
        if done is not None:
            done.unpersist()
    features: dict[int, FeaturesSummary] = {}
    try:
        staged = spark.read.schema(STAGED_SCHEMA).parquet(staging)
        side = (
            staged.where(F.col("_part") == SIDE_PART)
            .select(
                "image_id",
                "recipe_hash",
                F.from_json(F.col("pixels").cast("string"), SIDE_JSON_SCHEMA).alias("j"),
            )
            .select("image_id", "recipe_hash", "j.*")
        )
        failed = side.where(F.col("kind") == "quarantine")
        now = F.current_timestamp()
        defaults = {
            "size_bytes": F.lit(None),
            "stage": F.lit("preprocess"),
            "ingest_run_id": F.lit(run_id),
            "quarantined_at": now,
        }
        quarantine = failed.select(
            *[defaults.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in QUARANTINE_SCHEMA]
        )
        frames = staged.where(F.col("_part") == FRAME_PART)
        n_ok: dict[str, int] = {}
        by_class: dict[str, dict[str, int]] = {h: {} for h in hashes}
        counted, classes = run_concurrently(
            spark,
            # one pass: only the recipe_hash column of the frame files; with one recipe, their footers
            lambda: frames.groupBy("recipe_hash").count().collect() if len(passes) > 1 else frames.count(),
            lambda: failed.groupBy("recipe_hash", "error_class").count().collect(),
        )
        if isinstance(counted, int):
            n_ok[hashes[0]] = counted
        else:
            n_ok.update({str(r["recipe_hash"]): int(r["count"]) for r in counted})
        for r in classes:
            by_class[str(r["recipe_hash"])][str(r["error_class"])] = int(r["count"])
        # a processed frame per fused recipe, for the feature names: read before the frame files move
        first: dict[int, dict[str, Any]] = {}
        cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype", "mask"]
        for i, (h, f) in enumerate(zip(hashes, fused, strict=True)):
            if f and n_ok.get(h):
                row = frames.where(F.col("recipe_hash") == h) if len(passes) > 1 else frames
                first[i] = row.select(*cols).limit(1).collect()[0].asDict()
        quarantine.write.mode("append").parquet(join(out, "quarantine"))
        frames_dir = join(staging, f"_part={FRAME_PART}")
        dest = join(out, "processed")
        moved = store.move_tree(frames_dir, dest)
        if not moved and not store.exists(dest):
            store.mkdirs(dest)  # an empty table, as Spark's append of no rows leaves it
        for i, frame in first.items():  # the side rows stay in the staging table
            recipe, fset = passes[i].recipe, passes[i].fset
            if fset is not None:  # always: ``first`` holds fused passes only
                own = side.where(F.col("recipe_hash") == recipe.hash)
                features[i] = _fused_features(spark, out_dir, frame, own, fset, recipe, use_mask)
    finally:
        _delete(spark, staging)
    for i, p in enumerate(passes):
        if p.fset is not None and i not in features:
            from medimg_spark.features.stage import compute_features

            features[i] = compute_features(
                spark,
                out_dir,
                source="processed",
                feature_set=p.fset,
                use_mask=use_mask,
                recipe=p.recipe.hash,
            )
    seconds = round(time.perf_counter() - started, 3)
    summaries: list[PreprocessRunSummary] = []
    for i, (p, h) in enumerate(zip(passes, hashes, strict=True)):
        ok, classes_h = n_ok.get(h, 0), by_class[h]
        summary: PreprocessRunSummary = {
            "run_id": run_id,
            "recipe_name": p.recipe.name,
            "recipe_hash": h,
            "frames_selected": selected[i],
            "frames_skipped": selected[i] - ok - sum(classes_h.values()),
            "frames_processed": ok,
            "frames_quarantined": sum(classes_h.values()),
            "quarantined_by_error_class": dict(sorted(classes_h.items())),
            "seconds": seconds,
        }
        if i in features:
            summary["features"] = features[i]
        summaries.append(summary)
    return summaries


def _fused_features(
    spark: SparkSession,
    out_dir: str,
    first: dict[str, Any],
    side: DataFrame,
    fs: FeatureSet,
    recipe: Any,
    use_mask: bool,
) -> FeaturesSummary:
    """Write ``out_dir/features`` from the feature side rows of a fused run's staging table.

    Only the side rows are read (ids, label, split, the values); ``first`` (one processed frame's pixels)
    gives the feature names, as :func:`~medimg_spark.features.compute_features` gets them.
    """
    from pyspark.sql import functions as F

    from medimg_spark.features.stage import feature_names, write_features

    started = time.time()
    src = join(out_dir, "processed")
    names = feature_names(fs, first, use_mask, src)
    computed = side.where(F.col("kind") == "features").select(
        "image_id",
        F.lit(recipe.name).alias("recipe"),
        "label",
        "split",
        "values",
        "error",
    )
    return write_features(
        spark,
        out_dir,
        computed,
        fs,
        names,
        source="processed",
        recipe_name=recipe.name,
        recipe_hash=recipe.hash,
        use_mask=use_mask,
        src=src,
        started=started,
    )


@contextlib.contextmanager
def frame_splits(
    spark: SparkSession,
    tasks_per_core: int = TASKS_PER_CORE,
    max_split_bytes: int | None = SPLIT_MAX_BYTES,
    scan: DataFrame | None = None,
    row_group_bytes: int | None = None,
) -> Iterator[None]:
    """File scans planned in this block give every core about ``tasks_per_core`` tasks.

    ``max_split_bytes`` caps the split size (for work that is slow per byte, the recipes); None keeps
    the session's ``spark.sql.files.maxPartitionBytes`` (the features stage: cheap per byte, where more
    tasks would mostly add per-task overhead).

    Spark sizes a scan's splits as ``min(maxPartitionBytes, max(openCostInBytes, bytes / minPartitionNum))``
    with ``minPartitionNum`` = the default parallelism: one split per core, so a core whose split holds
    the slower frames keeps the others idle at the stage's tail. Here ``minPartitionNum`` is the
    parallelism times ``tasks_per_core`` (``openCostInBytes`` :data:`SPLIT_OPEN_COST`), and ingest writes ``images`` in row groups of
    :data:`~medimg_spark.io.ingest.IMAGE_ROW_GROUP_BYTES` (a split cannot cut a row group).

    With ``scan`` (the file scan the block's job reads, its Parquet row groups up to ``row_group_bytes``),
    the split size is also lowered, if need be, until the scan's task count is a multiple of the
    parallelism (:func:`even_task_count`): 9 tasks on 2 cores leave one core idle for a whole task at the
    stage's end.
    """
    keys = {
        "spark.sql.files.minPartitionNum": str(spark.sparkContext.defaultParallelism * tasks_per_core),
        "spark.sql.files.openCostInBytes": str(SPLIT_OPEN_COST),
    }
    if max_split_bytes is not None:
        limit = min(_conf_bytes(spark, "spark.sql.files.maxPartitionBytes"), max_split_bytes)
        keys["spark.sql.files.maxPartitionBytes"] = str(limit)
    # maxPartitionBytes is restored also when only even_task_count changed it (max_split_bytes None)
    with session_conf(spark, keys, restore=["spark.sql.files.maxPartitionBytes"]):
        if scan is not None:
            even_task_count(spark, scan, row_group_bytes or SPLIT_OPEN_COST)
        yield


#: Split sizes :func:`even_task_count` tries, as fractions of the current one (largest first).
EVEN_SPLIT_STEPS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
#: From this many tasks per core on, a partly idle last round is a small share of a stage: not evened.
EVEN_TASKS_PER_CORE_MAX = 16


class ScanPlan(NamedTuple):
    """A file scan as Spark plans it under the session's current settings."""

    tasks: int
    files: int  # files read after partition pruning (0: unknown)
    bytes: int  # their total size (0: unknown)


def scan_plan(scan: DataFrame) -> ScanPlan:
    """Plan ``scan`` (no job: Spark lists and prunes its files, cuts and packs their splits) and read the
    task count and the scan node's ``numFiles`` / ``filesSize`` metrics (0 when the plan has no single
    file scan)."""
    qe = scan.select("*")._jdf.queryExecution()  # a new plan each call (``scan.rdd`` is memoised)
    tasks = int(qe.toRdd().getNumPartitions())
    files = size = 0
    leaves = qe.executedPlan().collectLeaves()
    if leaves.size() == 1:
        metrics = leaves.apply(0).metrics()
        if metrics.contains("numFiles") and metrics.contains("filesSize"):
            files = int(metrics.get("numFiles").get().value())
            size = int(metrics.get("filesSize").get().value())
    return ScanPlan(tasks, files, size)


def scan_tasks(scan: DataFrame) -> int:
    """How many tasks a file scan gets under the session's current split settings (planning only: no job)."""
    return scan_plan(scan).tasks


def even_task_count(spark: SparkSession, scan: DataFrame, row_group_bytes: int) -> int:
    """Shrink the split size of the session's file scans until ``scan`` gets a multiple of the default
    parallelism in tasks; returns the task count.

    Spark cuts a scan's files into splits of ``min(maxPartitionBytes, max(openCostInBytes, (bytes + files x
    openCostInBytes) / minPartitionNum))`` and packs them into tasks of up to that size, so the count moves
    in jumps (27 files of 7 MB: 9 tasks from 24 to 32 MB, 11 at 22 MB, 14 at 18 MB). Each try sets the
    split size (``maxPartitionBytes``; ``minPartitionNum`` 1) to a fraction of :data:`EVEN_SPLIT_STEPS` of
    the current one and plans the scan again (about 60 ms); the first try whose count is a multiple is kept,
    else the settings are left as they were. Equal task counts per core let the cores finish together when
    tasks hold about equal work (the frames of one recipe). No split is made smaller than two of the
    scan's row groups (``row_group_bytes``): a split that holds no row group's middle reads nothing, and
    the count would be even only on paper.
    """
    cores = max(1, spark.sparkContext.defaultParallelism)
    plan = scan_plan(scan)
    if cores == 1 or plan.tasks % cores == 0 or plan.tasks >= cores * EVEN_TASKS_PER_CORE_MAX:
        return plan.tasks
    max_key, min_key = "spark.sql.files.maxPartitionBytes", "spark.sql.files.minPartitionNum"
    before = {k: spark.conf.get(k, None) for k in (max_key, min_key)}
    split = _conf_bytes(spark, max_key)
    if plan.bytes:
        open_cost = _conf_bytes(spark, "spark.sql.files.openCostInBytes", "4m")
        per_task = (plan.bytes + plan.files * open_cost) // max(1, int(before[min_key] or cores))
        split = min(split, max(open_cost, per_task))
    floor = max(SPLIT_OPEN_COST, 2 * row_group_bytes)
    spark.conf.set(min_key, "1")
    for step in EVEN_SPLIT_STEPS:
        if split * step < floor:
            break
        spark.conf.set(max_key, str(int(split * step)))
        tasks = scan_tasks(scan)
        if tasks % cores == 0:
            return tasks
    for k, v in before.items():
        if v is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, v)
    return plan.tasks


_QUALITY_NAMES = ("QUALITY_FILE", "format_quality_table", "quality_report")


def __getattr__(name: str) -> Any:
    """Re-export of :mod:`medimg_spark.quality_stage` (imported on use: it imports this module)."""
    if name in _QUALITY_NAMES:
        from medimg_spark import quality_stage

        return getattr(quality_stage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
