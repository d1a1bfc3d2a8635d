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
import logging
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
    "LocalizeFrameError",
    "LocalizeTooLargeError",
    "downsample_factor",
    "find_regions",
    "foreground_mask",
    "localize",
    "parse_localize_config",
]

log = logging.getLogger(__name__)

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


class LocalizeFrameError(ModelDataError):
    """One frame cannot be localised (too large even downsampled, or undecodable); it is quarantined."""


class LocalizeTooLargeError(LocalizeFrameError):
    """A frame's foreground exceeds ``max_points`` even at the largest downsampling factor."""


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
            raise LocalizeTooLargeError(
                f"{n} foreground pixels exceed max_points={cfg.max_points} for DBSCAN; raise max_points or "
                "max_downsample"
            )
        return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples).fit_predict(points)
    raise ModelConfigError(f"unknown per-frame method {method!r}; choose from {list(FRAME_METHODS)}")


def downsample_factor(shape: tuple[int, int], n_foreground: int, cfg: LocalizeConfig) -> int:
    """The integer factor a frame is shrunk by before clustering (1: none).

    The longer side is brought to at most ``max_side`` and the foreground to about ``max_points``
    pixels.

    Raises:
        LocalizeTooLargeError: the factor needed exceeds ``max_downsample``.
    """
    by_side = -(-max(shape) // cfg.max_side)
    by_points = int(np.ceil(np.sqrt(n_foreground / cfg.max_points))) if n_foreground > cfg.max_points else 1
    f = max(1, by_side, by_points)
    if f > cfg.max_downsample:
        raise LocalizeTooLargeError(
            f"a {shape[0]}x{shape[1]} frame with {n_foreground} foreground pixels needs downsampling by {f}, "
            f"over max_downsample={cfg.max_downsample}; raise max_downsample or max_points"
        )
    return f


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = image.shape[:2]
    size = (max(1, cols // factor), max(1, rows // factor))
    return cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def _label_map(
    gray: np.ndarray, fg: np.ndarray, method: str, cfg: LocalizeConfig, unit: np.ndarray
) -> np.ndarray:
    """Cluster labels per pixel of a (possibly downsampled) frame: -1 off the foreground or noise."""
    rr, cc = np.nonzero(fg)
    lab = np.full(fg.shape, -1, dtype=np.int32)
    if rr.size == 0:
        return lab
    pts = np.column_stack([rr, cc]).astype(np.float64)
    if cfg.intensity_weight > 0:
        scale = max(gray.shape)
        pts = np.column_stack([pts, unit[rr, cc] * scale * cfg.intensity_weight])
    lab[rr, cc] = _cluster_labels(pts, method, cfg)
    return lab


def _upsample_labels(lab: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Nearest-neighbour label map of a frame downsampled by ``factor``, back at full resolution."""
    if factor == 1 and lab.shape == shape:
        return lab
    r_idx = np.minimum(np.arange(shape[0]) // factor, lab.shape[0] - 1)
    c_idx = np.minimum(np.arange(shape[1]) // factor, lab.shape[1] - 1)
    return lab[np.ix_(r_idx, c_idx)]


def region_row(r: np.ndarray, c: np.ndarray, gray: np.ndarray) -> dict[str, Any]:
    """One ``regions`` row (area, centroid, inclusive bbox, mean intensity) of the pixels ``(r, c)``."""
    return {
        "area": int(r.size),
        "centroid_row": float(r.mean()),
        "centroid_col": float(c.mean()),
        "bbox_min_row": int(r.min()),
        "bbox_min_col": int(c.min()),
        "bbox_max_row": int(r.max()),
        "bbox_max_col": int(c.max()),
        "mean_intensity": float(gray[r, c].mean()),
    }


def _regions_of(labels: np.ndarray, gray: np.ndarray, min_area: int) -> list[dict[str, Any]]:
    regions = []
    for lab in np.unique(labels):
        if lab < 0:
            continue
        r, c = np.nonzero(labels == lab)
        if r.size < min_area:
            continue
        regions.append(region_row(r, c, gray))
    regions.sort(key=lambda d: (-d["area"], d["centroid_row"], d["centroid_col"]))
    for i, reg in enumerate(regions):
        reg["region"] = i
    return regions


def find_regions(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    method: str = "kmeans",
    config: LocalizeConfig | dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Regions of one frame, largest first: clusters of foreground pixels, or the lung fields (``lungs``).

    A frame whose longer side exceeds ``max_side`` or whose foreground exceeds ``max_points`` pixels
    is clustered downsampled (by an integer factor, see :func:`downsample_factor`); the cluster
    labels are carried back to the full-resolution foreground, so every box, area and centroid is
    in full-resolution pixels.

    Returns:
        One dict per region: region (0-based rank by area), area, centroid_row, centroid_col,
        bbox_min_row, bbox_min_col, bbox_max_row, bbox_max_col (inclusive), mean_intensity
        (on the original pixel values). DBSCAN noise pixels are dropped.

    Raises:
        LocalizeTooLargeError: the frame would need more than ``max_downsample``.
        ModelConfigError: unknown method or invalid config.
    """
    cfg = parse_localize_config(config)
    if method == "lungs":
        from medimg_spark.ml.lungs import find_lungs

        return find_lungs(image, cfg)
    if method not in FRAME_METHODS:
        raise ModelConfigError(f"unknown per-frame method {method!r}; choose from {list(FRAME_METHODS)}")
    gray = to_gray(image)
    fg = foreground_mask(image, mask, cfg.foreground)
    n_fg = int(fg.sum())
    if n_fg == 0:
        return []
    factor = downsample_factor(gray.shape, n_fg, cfg)
    if factor == 1:
        labels = _label_map(gray, fg, method, cfg, to_unit(image))
    else:
        small = _shrink(gray, factor)
        small_fg = _shrink(fg.astype(np.float32), factor) >= 0.5
        labels = _upsample_labels(
            _label_map(small, small_fg, method, cfg, to_unit(small)), gray.shape, factor
        )
        labels = np.where(fg, labels, -1)
    return _regions_of(labels, gray, cfg.min_area)


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
#: Columns of ``out_dir/regions`` (``method`` is its partition column).
REGION_COLUMNS = ("image_id", "recipe", *(n for n, _ in REGION_FIELDS), "method")
_WORK_COLUMNS = (*REGION_COLUMNS, "error_class", "error_message")


def _region_partitions(
    method: str, cfg_json: str, use_mask: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        from medimg_spark.features import decode_row
        from medimg_spark.worker import configure_worker

        configure_worker()  # one OpenCV thread per task, the allocator keeps frame-sized blocks
        cfg = LocalizeConfig.model_validate_json(cfg_json)
        for pdf in batches:
            rows: list[dict[str, Any]] = []
            for row in pdf.to_dict("records"):
                base = {"image_id": row["image_id"], "recipe": row.get("recipe"), "method": method}
                try:
                    img, msk = decode_row(row, use_mask)
                    if method == "lungs" and str(row.get("photometric") or "") == "MONOCHROME1":
                        img = img.max() - img if np.issubdtype(img.dtype, np.integer) else -img
                    regs = find_regions(img, msk, method, cfg)
                except (ModelConfigError, MemoryError):
                    raise
                except Exception as exc:  # quarantined with its class: one frame never fails the job
                    rows.append({**base, "error_class": type(exc).__name__, "error_message": str(exc)[:2000]})
                    continue
                rows.extend({**base, **reg, "error_class": None, "error_message": None} for reg in regs)
            yield pd.DataFrame(rows, columns=list(_WORK_COLUMNS))

    return run


def localize(
    spark: SparkSession,
    out_dir: str | Path,
    method: str,
    config: LocalizeConfig | dict[str, Any] | None = None,
) -> LocalizeSummary:
    """Per-frame regions (``kmeans``/``dbscan``/``gmm``/``lungs``) or dataset clusters (``mllib_*``).

    Writes ``out_dir/regions/`` partitioned by ``method`` (only this method's partition is
    replaced, so several methods' regions live side by side) with columns image_id, recipe
    (the processed frame's recipe_name; null for ``images``), region, area, centroid_row,
    centroid_col, bbox_min_row, bbox_min_col, bbox_max_row, bbox_max_col, mean_intensity, method;
    or ``out_dir/clusters/`` (image_id, label, split, cluster) plus ``clusters/_summary.json``.
    A frame that cannot be localised (see :class:`LocalizeFrameError`) is appended to
    ``out_dir/quarantine`` (stage ``localize``, step = method) instead of failing the job.

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
    from pyspark.sql import functions as F

    t0 = time.time()
    src = join(out_dir, cfg.source)
    if not get_storage(spark).exists(src):
        other = "images" if cfg.source == "processed" else "processed"
        raise ModelDataError(f"{src} does not exist; run the stage that writes it or set source: {other}")
    df = spark.read.parquet(src)
    use_mask = "mask" in df.columns
    cols: list[Any] = ["image_id", "pixels", "rows", "cols", "channels", "dtype"] + (
        ["mask"] if use_mask else []
    )
    cols.append(
        F.col("recipe_name").alias("recipe")
        if "recipe_name" in df.columns
        else F.lit(None).cast("string").alias("recipe")
    )
    if "photometric" in df.columns:
        cols.append("photometric")
    schema = (
        "image_id string, recipe string, "
        + ", ".join(f"{n} {t}" for n, t in REGION_FIELDS)
        + ", method string, error_class string, error_message string"
    )
    work = (
        df.select(*cols)
        .mapInPandas(_region_partitions(method, cfg.model_dump_json(), use_mask), schema)
        .cache()
    )
    try:
        failed = work.where(F.col("error_class").isNotNull())
        by_class = {
            str(r["error_class"]): int(r["count"]) for r in failed.groupBy("error_class").count().collect()
        }
        if by_class:
            _quarantine(spark, out_dir, df, failed, method)
        dest = join(out_dir, "regions")
        _drop_legacy_regions(spark, dest)
        (
            work.where(F.col("error_class").isNull())
            .select(*REGION_COLUMNS)
            .write.mode("overwrite")
            .option("partitionOverwriteMode", "dynamic")
            .partitionBy("method")
            .parquet(dest)
        )
    finally:
        work.unpersist()
    written = spark.read.parquet(dest).where(F.col("method") == method)
    n_regions = written.count()
    n_frames = written.select("image_id", "recipe").distinct().count()
    return {
        "path": dest,
        "partition": join(dest, f"method={method}"),
        "method": method,
        "n_regions": int(n_regions),
        "n_frames_with_regions": int(n_frames),
        "n_quarantined": sum(by_class.values()),
        "quarantined_by_error_class": dict(sorted(by_class.items())),
        "options": json.loads(cfg.model_dump_json()),
        "seconds": round(time.time() - t0, 3),
    }


def _drop_legacy_regions(spark: SparkSession, dest: str) -> None:
    """Delete a ``regions`` table written before it was partitioned by method (Parquet files at its root)."""
    store = get_storage(spark)
    if not store.exists(dest):
        return
    if store.list(dest, dirs=False, pattern="*.parquet"):
        log.warning("%s holds an unpartitioned regions table from an older version; replacing it", dest)
        store.delete(dest, recursive=True)


def _quarantine(spark: SparkSession, out_dir: str | Path, src: Any, failed: Any, method: str) -> None:
    """Append the frames ``method`` could not localise to ``out_dir/quarantine`` (stage ``localize``)."""
    from pyspark.sql import functions as F

    from medimg_spark.schema import QUARANTINE_SCHEMA

    images_path = join(out_dir, "images")
    f = failed.select("image_id", "recipe", "error_class", "error_message").distinct()
    id_cols = ["image_id", "source_path", "file_sha256", "frame_index"]
    if get_storage(spark).exists(images_path):
        images = spark.read.parquet(images_path)
        if all(c in images.columns for c in id_cols):
            f = f.join(images.select(*id_cols), "image_id", "left")
    values = {
        "source_path": F.coalesce(F.col("source_path"), F.col("image_id"))
        if "source_path" in f.columns
        else F.col("image_id"),
        "stage": F.lit("localize"),
        "step": F.lit(method),
        "error_message": F.concat(
            F.lit(f"method={method} image_id="),
            F.col("image_id"),
            F.lit(" recipe="),
            F.coalesce(F.col("recipe"), F.lit("-")),
            F.lit(": "),
            F.col("error_message"),
        ),
        "ingest_run_id": F.lit(f"localize-{method}"),
        "quarantined_at": F.current_timestamp(),
    }
    out = f.select(
        *[
            values.get(fld.name, F.col(fld.name) if fld.name in f.columns else F.lit(None))
            .cast(fld.dataType)
            .alias(fld.name)
            for fld in QUARANTINE_SCHEMA
        ]
    )
    out.write.mode("append").parquet(join(out_dir, "quarantine"))


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
