"""Training-time image augmentation (flips, small shifts/rotations/scaling, optional photometric jitter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from medimg_spark.config_models import AugmentConfig
from medimg_spark.features import FEATURE_SET_FILE, FeatureSet, load_feature_set
from medimg_spark.ml.errors import ModelDataError
from medimg_spark.storage import get_storage, join

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["AugmentConfig", "augment_image", "augment_stack", "augment_summary", "augmented_features"]


def augment_image(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random affine (+ optional gamma/contrast/brightness) perturbation of a frame; dtype kept.

    Borders are filled by reflection. Photometric jitter works on the frame's own value range.
    """
    arr = np.asarray(image)
    rows, cols = arr.shape[:2]
    angle = rng.uniform(-cfg.max_rotation, cfg.max_rotation)
    scale = rng.uniform(1 - cfg.max_scale, 1 + cfg.max_scale)
    tx, ty = rng.uniform(-cfg.max_shift, cfg.max_shift, 2)
    M = cv2.getRotationMatrix2D(((cols - 1) / 2, (rows - 1) / 2), angle, scale)
    M[:, 2] += (tx, ty)
    work = arr.astype(np.float32)
    out = cv2.warpAffine(work, M, (cols, rows), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if out.ndim == 2 and arr.ndim == 3:
        out = out[..., None]
    if cfg.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    if cfg.photometric:
        lo, hi = float(np.min(arr)), float(np.max(arr))
        span = hi - lo if hi > lo else 1.0
        x = np.clip((out - lo) / span, 0, 1) ** rng.uniform(0.7, 1.4)
        x = (x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
        out = np.clip(x, 0, 1) * span + lo
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return np.ascontiguousarray(out.astype(arr.dtype))


def augment_stack(images: np.ndarray, cfg: AugmentConfig, seed: int | None = None) -> np.ndarray:
    """``cfg.copies`` augmented copies of a stack of frames, ``(copies * n, ...)``, copy-major order."""
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    return np.stack([augment_image(im, rng, cfg) for _ in range(cfg.copies) for im in images])


def _augment_partitions(
    fs_json: str, cfg_json: str, use_mask: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import hashlib

        import pandas as pd

        from medimg_spark.features import decode_row

        fs = FeatureSet.model_validate_json(fs_json)
        cfg = AugmentConfig.model_validate_json(cfg_json)
        for pdf in batches:
            ids, labels, feats = [], [], []
            for row in pdf.to_dict("records"):
                img, msk = decode_row(row, use_mask)
                digest = hashlib.sha256(f"{cfg.seed}:{row['image_id']}".encode()).digest()
                rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
                for k in range(cfg.copies):
                    aug = augment_image(img, rng, cfg)
                    ids.append(f"{row['image_id']}#aug{k}")
                    labels.append(row["label"])
                    feats.append(fs.extract(aug, msk)[0].tolist())
            yield pd.DataFrame({"image_id": ids, "label": labels, "values": feats})

    return run


def augmented_features(
    spark: SparkSession,
    out_dir: str | Path,
    split: str,
    cfg: AugmentConfig,
    feature_set: str | Path | FeatureSet | None = None,
    features_dir: str = "features",
) -> DataFrame:
    """Features of ``cfg.copies`` augmented copies of each ``split`` frame, computed on executors.

    The feature set defaults to the one recorded in ``out_dir/<features_dir>/_feature_set.json``;
    from ``processed``, only the frames of the recipe recorded there are augmented.
    Masks (``processed`` source) are passed unchanged (augmentation is for mask-free sets).
    Returns a DataFrame (image_id ``<id>#aug<k>``, label, split, features vector).

    Raises:
        ModelDataError: the source table or the recorded feature set is missing.
    """
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

    store = get_storage(spark)
    rec = join(out_dir, features_dir, FEATURE_SET_FILE)
    record = store.read_json(rec) if store.exists(rec) else {}
    if feature_set is None:
        if not record:
            raise ModelDataError(f"{rec} is missing; run compute_features or pass feature_set explicitly")
        fs = FeatureSet.model_validate(record["feature_set"])
    else:
        fs = load_feature_set(feature_set)
    src = join(out_dir, cfg.source)
    if not store.exists(src):
        raise ModelDataError(f"augmentation needs {src}; run ingest/preprocess or set augment.source")
    df = spark.read.parquet(src).where(F.col("split") == split)
    if cfg.source == "processed" and record.get("recipe_hash") and "recipe_hash" in df.columns:
        df = df.where(F.col("recipe_hash") == record["recipe_hash"])  # the recipe the features came from
    use_mask = "mask" in df.columns
    cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype", "label"] + (
        ["mask"] if use_mask else []
    )
    schema = StructType(
        [
            StructField("image_id", StringType(), False),
            StructField("label", StringType(), True),
            StructField("values", ArrayType(DoubleType()), False),
        ]
    )
    out = df.select(*cols).mapInPandas(
        _augment_partitions(fs.model_dump_json(), cfg.model_dump_json(), use_mask), schema
    )
    return out.select(
        "image_id", "label", F.lit(split).alias("split"), array_to_vector(F.col("values")).alias("features")
    )


def augment_summary(cfg: AugmentConfig | None) -> dict[str, Any] | None:
    """The augmentation settings as a plain dict for model cards (None when off)."""
    return None if cfg is None else cfg.model_dump()
