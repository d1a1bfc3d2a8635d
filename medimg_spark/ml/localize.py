"""Localisation: per-frame clusters of foreground pixels, and dataset-level clusters of feature vectors.

Per frame (``method`` = ``kmeans`` | ``dbscan`` | ``gmm``), the foreground is the frame's mask
(``processed`` table) or an Otsu threshold; its pixels are clustered on position (plus, with
``intensity_weight > 0``, on scaled intensity) with OpenCV k-means, scikit-learn DBSCAN or a
Gaussian mixture. Each cluster becomes one row of ``out_dir/regions/`` with its bounding box,
centroid, area and mean intensity.

Dataset level (``method`` = ``mllib_kmeans`` | ``mllib_gmm``), standardised feature vectors of
``out_dir/features`` are clustered with MLlib and written to ``out_dir/clusters/`` with the
silhouette score from :class:`pyspark.ml.evaluation.ClusteringEvaluator`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pydantic import ValidationError

from medimg_spark.config_models import DATASET_METHODS, FRAME_METHODS, LocalizeConfig
from medimg_spark.features import to_gray, to_unit
from medimg_spark.ml.errors import ModelConfigError, ModelDataError
from medimg_spark.storage import get_storage, join
from medimg_spark.summaries import LocalizeSummary

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

__all__ = [
    "DATASET_METHODS",
    "FRAME_METHODS",
    "LocalizeConfig",
    "find_regions",
    "foreground_mask",
    "localize",
    "parse_localize_config",
]

#: Summary of a dataset clustering, written next to the ``clusters`` table's Parquet files.
CLUSTERS_SUMMARY = "_summary.json"


def parse_localize_config(data: LocalizeConfig | dict[str, Any] | None) -> LocalizeConfig:
    """Validate a localisation config.

    Raises:
        ModelConfigError: unknown keys or bad values.
    """
    if data is None:
        return LocalizeConfig()
    if isinstance(data, LocalizeConfig):
        return data
    try:
        return LocalizeConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelConfigError(f"invalid localize config: {exc}") from exc


def foreground_mask(image: np.ndarray, mask: np.ndarray | None = None, mode: str = "mask") -> np.ndarray:
    """Boolean foreground: ``mask != 0`` when given and ``mode == 'mask'``, else an Otsu threshold."""
    gray = to_gray(image)
    if mask is not None and mode == "mask":
        m = np.asarray(mask)
        if m.shape[:2] != gray.shape:
            raise ModelDataError(f"mask shape {m.shape} differs from frame shape {gray.shape}")
        return (m.reshape(gray.shape) if m.ndim == 3 else m) != 0
    u8 = np.rint(to_unit(image) * 255).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return u8 <= t if mode == "otsu_dark" else u8 > t


def _cluster_labels(points: np.ndarray, method: str, cfg: LocalizeConfig) -> np.ndarray:
    n = len(points)
    rng = np.random.default_rng(cfg.seed)
    fit_idx = rng.choice(n, cfg.max_points, replace=False) if n > cfg.max_points else np.arange(n)
    fit = points[fit_idx]
    if method == "kmeans":
        k = min(cfg.k, len(fit))
        cv2.setRNGSeed(cfg.seed)
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)
        _, _, centers = cv2.kmeans(
            fit.astype(np.float32),
            k,
            None,
            criteria,  # type: ignore[call-overload]
            5,
            cv2.KMEANS_PP_CENTERS,
        )
        d = ((points[:, None, :] - centers[None, :, :].astype(np.float64)) ** 2).sum(axis=2)
        return np.argmin(d, axis=1)
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=min(cfg.k, len(fit)), covariance_type="full", random_state=cfg.seed)
        gm.fit(fit)
        return gm.predict(points)
    if method == "dbscan":
        from sklearn.cluster import DBSCAN

        if n > cfg.max_points:
            raise ModelConfigError(
                f"{n} foreground pixels exceed max_points={cfg.max_points} for DBSCAN; raise max_points or downsample"
            )
        return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples).fit_predict(points)
    raise ModelConfigError(f"unknown per-frame method {method!r}; choose from {list(FRAME_METHODS)}")


def find_regions(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    method: str = "kmeans",
    config: LocalizeConfig | dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Clusters of foreground pixels of one frame, largest first.

    Returns:
        One dict per cluster: region (0-based rank by area), area, centroid_row, centroid_col,
        bbox_min_row, bbox_min_col, bbox_max_row, bbox_max_col (inclusive), mean_intensity
        (on the original pixel values). DBSCAN noise pixels are dropped.
    """
    cfg = parse_localize_config(config)
    gray = to_gray(image)
    fg = foreground_mask(image, mask, cfg.foreground)
    rr, cc = np.nonzero(fg)
    if rr.size == 0:
        return []
    pts = np.column_stack([rr, cc]).astype(np.float64)
    if cfg.intensity_weight > 0:
        unit = to_unit(image)
        scale = max(gray.shape)
        pts = np.column_stack([pts, unit[rr, cc] * scale * cfg.intensity_weight])
    labels = _cluster_labels(pts, method, cfg)
    regions = []
    for lab in np.unique(labels):
        if lab < 0:
            continue
        sel = labels == lab
        if sel.sum() < cfg.min_area:
            continue
        r, c = rr[sel], cc[sel]
        regions.append(
            {
                "area": int(sel.sum()),
                "centroid_row": float(r.mean()),
                "centroid_col": float(c.mean()),
                "bbox_min_row": int(r.min()),
                "bbox_min_col": int(c.min()),
                "bbox_max_row": int(r.max()),
                "bbox_max_col": int(c.max()),
                "mean_intensity": float(gray[r, c].mean()),
            }
        )
    regions.sort(key=lambda d: (-d["area"], d["centroid_row"], d["centroid_col"]))
    for i, reg in enumerate(regions):
        reg["region"] = i
    return regions


REGION_FIELDS = (
    ("region", "int"),
    ("area", "int"),
    ("centroid_row", "double"),
    ("centroid_col", "double"),
    ("bbox_min_row", "int"),
    ("bbox_min_col", "int"),
    ("bbox_max_row", "int"),
    ("bbox_max_col", "int"),
    ("mean_intensity", "double"),
)


def _region_partitions(
    method: str, cfg_json: str, use_mask: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        from medimg_spark.features import decode_row

        cfg = LocalizeConfig.model_validate_json(cfg_json)
        for pdf in batches:
            rows: list[dict[str, Any]] = []
            for row in pdf.to_dict("records"):
                img, msk = decode_row(row, use_mask)
                for reg in find_regions(img, msk, method, cfg):
                    rows.append({"image_id": row["image_id"], "method": method, **reg})
            cols = ["image_id", "method"] + [n for n, _ in REGION_FIELDS]
            yield pd.DataFrame(rows, columns=cols)

    return run


def localize(
    spark: SparkSession,
    out_dir: str | Path,
    method: str,
    config: LocalizeConfig | dict[str, Any] | None = None,
) -> LocalizeSummary:
    """Per-frame regions (``kmeans``/``dbscan``/``gmm``) or dataset clusters (``mllib_kmeans``/``mllib_gmm``).

    Writes ``out_dir/regions/`` (image_id, method, region, area, centroid_row, centroid_col,
    bbox_min_row, bbox_min_col, bbox_max_row, bbox_max_col, mean_intensity) or
    ``out_dir/clusters/`` (image_id, label, split, cluster) plus ``clusters/_summary.json``.

    Returns:
        Summary with path, method and counts (and silhouette, cluster sizes for dataset methods).

    Raises:
        ModelConfigError: unknown method or invalid config.
        ModelDataError: the input table is missing.
    """
    cfg = parse_localize_config(config)
    if method in DATASET_METHODS:
        return _cluster_dataset(spark, out_dir, method, cfg)
    if method not in FRAME_METHODS:
        raise ModelConfigError(
            f"unknown localize method {method!r}; choose from {list(FRAME_METHODS + DATASET_METHODS)}"
        )
    t0 = time.time()
    src = join(out_dir, cfg.source)
    if not get_storage(spark).exists(src):
        other = "images" if cfg.source == "processed" else "processed"
        raise ModelDataError(f"{src} does not exist; run the stage that writes it or set source: {other}")
    df = spark.read.parquet(src)
    use_mask = "mask" in df.columns
    cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype"] + (["mask"] if use_mask else [])
    schema = "image_id string, method string, " + ", ".join(f"{n} {t}" for n, t in REGION_FIELDS)
    regions = df.select(*cols).mapInPandas(
        _region_partitions(method, cfg.model_dump_json(), use_mask), schema
    )
    dest = join(out_dir, "regions")
    regions.write.mode("overwrite").parquet(dest)
    written = spark.read.parquet(dest)
    n_regions = written.count()
    n_frames = written.select("image_id").distinct().count()
    return {
        "path": dest,
        "method": method,
        "n_regions": int(n_regions),
        "n_frames_with_regions": int(n_frames),
        "seconds": round(time.time() - t0, 3),
    }


def _cluster_dataset(
    spark: SparkSession, out_dir: str | Path, method: str, cfg: LocalizeConfig
) -> LocalizeSummary:
    from pyspark.ml.clustering import GaussianMixture, KMeans
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.feature import StandardScaler
    from pyspark.sql import functions as F

    from medimg_spark.ml.train import read_features

    t0 = time.time()
    df = read_features(spark, out_dir, cfg.features_dir)
    n = df.count()
    if n < cfg.k:
        raise ModelDataError(f"{n} feature rows cannot form k={cfg.k} clusters; lower k")
    scaled = (
        StandardScaler(inputCol="features", outputCol="__x", withMean=True, withStd=True)
        .fit(df)
        .transform(df)
    )
    est: Any
    if method == "mllib_kmeans":
        est = KMeans(featuresCol="__x", predictionCol="cluster", k=cfg.k, seed=cfg.seed)
    else:
        est = GaussianMixture(featuresCol="__x", predictionCol="cluster", k=cfg.k, seed=cfg.seed)
    model = est.fit(scaled)
    assigned = model.transform(scaled).cache()
    try:
        sil = ClusteringEvaluator(
            featuresCol="__x", predictionCol="cluster", metricName="silhouette"
        ).evaluate(assigned)
        cols = [c for c in ("image_id", "label", "split") if c in df.columns]
        dest = join(out_dir, "clusters")
        assigned.select(*cols, F.col("cluster").cast("int")).write.mode("overwrite").parquet(dest)
        sizes = {int(r["cluster"]): int(r["count"]) for r in assigned.groupBy("cluster").count().collect()}
    finally:
        assigned.unpersist()
    summary: LocalizeSummary = {
        "path": dest,
        "method": method,
        "k": cfg.k,
        "n_rows": int(n),
        "silhouette": float(sil),
        "cluster_sizes": dict(sorted(sizes.items())),
        "seconds": round(time.time() - t0, 3),
    }
    get_storage(spark).write_text(join(dest, CLUSTERS_SUMMARY), json.dumps(summary, indent=2))
    return summary
