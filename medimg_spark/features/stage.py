"""The Spark stage that writes the ``features`` table.

:func:`compute_features` runs a feature set over the ``images`` or ``processed`` table
and writes ``out_dir/features/`` (image_id, label, split, features) where ``features``
is a :class:`pyspark.ml.linalg.Vector` column whose ML attribute metadata names every slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medimg_spark.errors import MedimgError
from medimg_spark.features.extract import FeatureError
from medimg_spark.features.spec import FeatureSet, load_feature_set
from medimg_spark.storage import get_storage, join
from medimg_spark.summaries import FeaturesSummary

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

#: The feature set a features table was computed with, recorded next to its Parquet files.
FEATURE_SET_FILE = "_feature_set.json"


# ----------------------------------------------------------------------------- Spark stage


def vector_metadata(names: Sequence[str]) -> dict[str, Any]:
    """ML attribute metadata naming each slot of a vector column (read by VectorAssembler & co)."""
    return {
        "ml_attr": {
            "attrs": {"numeric": [{"idx": i, "name": n} for i, n in enumerate(names)]},
            "num_attrs": len(names),
        }
    }


def feature_names_of(df: DataFrame, column: str = "features") -> list[str]:
    """Names stored in the ML attribute metadata of a vector column (empty if none)."""
    meta = df.schema[column].metadata.get("ml_attr", {})
    attrs = meta.get("attrs", {})
    slots = sorted((a["idx"], a.get("name", f"f{a['idx']}")) for group in attrs.values() for a in group)
    return [n for _, n in slots]


def _decode_mask(mask: Any, rows: int, cols: int) -> np.ndarray | None:
    if mask is None or (isinstance(mask, float) and np.isnan(mask)):
        return None
    buf = bytes(mask)
    if len(buf) != rows * cols:
        raise FeatureError(
            f"mask holds {len(buf)} bytes but the frame is {rows}x{cols}; masks must be uint8 0/1 of the frame shape"
        )
    return np.frombuffer(buf, dtype=np.uint8).reshape(rows, cols)


def _feature_partitions(
    fs_json: str, use_mask: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        try:
            import cv2

            cv2.setNumThreads(1)  # one task per core: OpenCV's own threads would oversubscribe
        except ImportError:
            pass
        fs = FeatureSet.model_validate_json(fs_json)
        for pdf in batches:
            feats: list[list[float] | None] = []
            errors: list[str | None] = []
            for row in pdf.to_dict("records"):
                try:
                    img, msk = decode_row(row, use_mask)
                    v, _ = fs.extract(img, msk)
                    feats.append(v.tolist())
                    errors.append(None)
                except Exception as exc:
                    feats.append(None)
                    errors.append(f"{type(exc).__name__}: {exc}")
            yield pd.DataFrame(
                {
                    "image_id": pdf["image_id"].to_numpy(),
                    "label": pdf["label"].to_numpy(),
                    "split": pdf["split"].to_numpy(),
                    "values": feats,
                    "error": errors,
                }
            )

    return run


def decode_row(row: Mapping[Any, Any], use_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(frame, mask)`` of an ``images``/``processed`` row (mask None when absent or ``use_mask`` is false)."""
    from medimg_spark.io.pixels import decode

    rows, cols = int(row["rows"]), int(row["cols"])
    img = decode(bytes(row["pixels"]), rows, cols, int(row["channels"]), str(row["dtype"]))
    msk = _decode_mask(row.get("mask"), rows, cols) if use_mask else None
    return img, msk


def _names_for(fs: FeatureSet, first: Mapping[Any, Any], use_mask: bool) -> list[str]:
    img, msk = decode_row(first, use_mask)
    return fs.extract(img, msk)[1]


def compute_features(
    spark: SparkSession,
    out_dir: str | Path,
    source: Literal["images", "processed"] = "images",
    feature_set: str | Path | FeatureSet | dict[str, Any] = "texture",
    use_mask: bool = True,
) -> FeaturesSummary:
    """Compute a feature set for every frame of ``out_dir/<source>`` and write ``out_dir/features/``.

    Args:
        spark: active session.
        out_dir: the run's output folder holding ``images/`` or ``processed/`` (local path or URI,
            reached through :mod:`medimg_spark.storage`).
        source: ``images`` (schema :data:`medimg_spark.schema.IMAGES_SCHEMA`) or ``processed``
            (image_id, pixels, dtype, rows, cols, channels, mask, label, split); ``processed``
            masks are passed to the extractors.
        feature_set: feature-set name (shipped, or ``./conf/features/<name>.yaml``), YAML path, mapping or
            :class:`FeatureSet`.
        use_mask: pass the ``processed`` table's masks to the extractors; ``False`` computes every
            feature on the whole frame (the config's ``features.use_mask``).

    Returns:
        Summary: path, feature_set, n_features, feature_names, n_images, n_failed, failures
        (up to 20 ``{image_id, error}``), seconds.

    Raises:
        FeatureError: the source table is missing, empty, or every frame failed.
    """
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

    t0 = time.time()
    if source not in ("images", "processed"):
        raise FeatureError(f"source={source!r} is not supported; use 'images' or 'processed'")
    fs = load_feature_set(feature_set)
    store = get_storage(spark)
    src = join(out_dir, source)
    if not store.exists(src):
        raise FeatureError(f"{src} does not exist; run the stage that writes the {source} table first")
    df = spark.read.parquet(src)
    use_mask = use_mask and "mask" in df.columns
    cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype", "label", "split"]
    missing = [c for c in cols if c not in df.columns and c not in ("label", "split")]
    if missing:
        raise FeatureError(f"{src} lacks columns {missing}; it must follow the {source} table schema")
    sel = [F.col(c) if c in df.columns else F.lit(None).cast("string").alias(c) for c in cols]
    if use_mask:
        sel.append(F.col("mask"))
    df = df.select(*sel)
    first_rows = df.limit(1).collect()
    if not first_rows:
        raise FeatureError(f"{src} holds no frames; nothing to compute")
    try:
        names = _names_for(fs, first_rows[0].asDict(), use_mask)
    except MedimgError:
        raise
    except Exception as exc:
        raise FeatureError(
            f"feature set {fs.name!r} failed on frame {first_rows[0]['image_id']}: {exc}"
        ) from exc
    schema = StructType(
        [
            StructField("image_id", StringType(), False),
            StructField("label", StringType(), True),
            StructField("split", StringType(), True),
            StructField("values", ArrayType(DoubleType()), True),
            StructField("error", StringType(), True),
        ]
    )
    fn = _feature_partitions(fs.model_dump_json(), use_mask)
    computed = df.mapInPandas(fn, schema).cache()
    try:
        n_images = computed.count()
        fails = computed.where(F.col("error").isNotNull() | (F.size("values") != len(names)))
        n_failed = fails.count()
        failures = [
            {"image_id": r["image_id"], "error": r["error"] or f"feature count differs from {len(names)}"}
            for r in fails.limit(20).collect()
        ]
        if n_failed == n_images:
            raise FeatureError(
                f"every frame of {src} failed feature set {fs.name!r}; first error: {failures[0]['error']}"
            )
        ok = computed.where(F.col("error").isNull() & (F.size("values") == len(names)))
        out = ok.select(
            "image_id",
            "label",
            "split",
            array_to_vector(F.col("values")).alias("features", metadata=vector_metadata(names)),
        )
        dest = join(out_dir, "features")
        out.write.mode("overwrite").parquet(dest)
    finally:
        computed.unpersist()
    summary: FeaturesSummary = {
        "path": dest,
        "feature_set": fs.name,
        "n_features": len(names),
        "feature_names": names,
        "n_images": int(n_images - n_failed),
        "n_failed": int(n_failed),
        "failures": failures,
        "seconds": round(time.time() - t0, 3),
    }
    store.write_text(
        join(dest, FEATURE_SET_FILE), json.dumps({"feature_set": json.loads(fs.model_dump_json())})
    )
    return summary
