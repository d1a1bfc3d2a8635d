"""Region-level recognition: equalise → superpixels → features of each region → softmax.

The chest X-ray flow of the source documents, region by region:

1. **Working size.** A frame larger than ``max_side`` is downsampled (``cv2.INTER_AREA``) so its
   longer side is ``max_side`` (quickshift on 12 full-size CR/DX frames took 134 s; at 128 px a
   frame costs ~0.3 s); a frame smaller than ``min_side`` is upsampled (``cv2.INTER_CUBIC``) so
   superpixels have room. The frame is scaled to [0, 1] and histogram-equalised.
2. **Regions.** SLIC or quickshift superpixels (:class:`SuperpixelConfig`) of the working frame.
3. **Per-region features** (:func:`region_feature_names`): intensity statistics of the equalised and of
   the un-equalised frame inside the region, the region's contrast to the frame and to its
   neighbourhood (bbox ring), GLCM and LBP texture restricted to the region
   (:func:`medimg_spark.features.glcm_features` / :func:`~medimg_spark.features.lbp_features` with the
   region as mask), position (centroid, distance to the vertical midline), bbox shape, area fraction
   and edge density (Canny) / mean gradient magnitude.
4. **Region labels from image labels** (multiple-instance learning, :func:`fit_region_model`): an
   image is positive if any of its regions is. Every region of a positive image starts positive,
   every region of a negative image negative; a standardised multinomial logistic regression (softmax)
   is fitted; then, in positive images only, the ``top_fraction`` best-scoring regions (at least one)
   keep the image's class and the others become background, and the model is refitted (mi-SVM style,
   ``mil_rounds`` times). With ``region_labels: mask`` the regions overlapping the frame's mask take the
   image's class directly (no re-labelling).
5. **Image score** from its regions' class probabilities (:func:`aggregate_scores`): ``max``,
   ``noisy_or`` or ``top_k_mean``, chosen on val unless fixed; the binary decision threshold is chosen
   on val (``threshold.rule``).

Bounding boxes are in full-resolution pixel coordinates of the input frame: ``x0, y0`` inclusive,
``x1, y1`` exclusive (``frame[y0:y1, x0:x1]`` holds the region), ``area`` is the region's pixel count
scaled to full resolution.

The core (everything up to :func:`recognize_frame`, :func:`fit_region_model` and the
:class:`RegionModel`) imports no Spark; :func:`recognize` is the ``medimg recognize`` stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import cv2
import numpy as np
import sklearn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medimg_spark.config_models import Aggregate, RecognizeConfig, SuperpixelConfig
from medimg_spark.features.extract import to_unit
from medimg_spark.ml.errors import ModelConfigError, ModelDataError, ModelLoadError
from medimg_spark.storage import Storage, get_storage, join

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "AGGREGATES",
    "REGION_CARD_KIND",
    "FrameRegions",
    "RecognizeConfig",
    "RecognizeSummary",
    "RegionModel",
    "RegionModelCard",
    "SuperpixelConfig",
    "aggregate_scores",
    "evaluate_region_model",
    "fit_region_model",
    "is_region_model",
    "load_region_model",
    "parse_recognize_config",
    "predict_regions",
    "recognize",
    "recognize_frame",
    "region_feature_names",
    "working_frame",
]

AGGREGATES: tuple[Aggregate, ...] = ("max", "noisy_or", "top_k_mean")
REGION_CARD_KIND = "regions"
CARD_FILE = "card.json"
MODEL_FILE = "model.joblib"
REGION_PREDICTIONS_DIR = "region_predictions"
REGION_FEATURES_DIR = "region_features"
PREDICTIONS_DIR = "predictions"

_LBP_POINTS, _LBP_RADIUS = 8, 1.0
_GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")
_GLCM_ANGLES = (0, 90)


class RegionDataError(ModelDataError):
    """A frame or table cannot give region features or labels (the message names it and the fix)."""


def parse_recognize_config(data: RecognizeConfig | dict[str, Any] | None) -> RecognizeConfig:
    """Validate a recognize config.

    Raises:
        ModelConfigError: unknown keys or bad values (a ConfigError: exit code 2).
    """
    if data is None:
        return RecognizeConfig()
    if isinstance(data, RecognizeConfig):
        return data
    try:
        return RecognizeConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelConfigError(f"invalid recognize config: {exc}") from exc


# ----------------------------------------------------------------------------- per frame (core)


def working_frame(image: np.ndarray, cfg: RecognizeConfig) -> tuple[np.ndarray, float, float]:
    """The frame at working size, scaled to [0, 1] (not equalised), and its (row, col) scale to full size.

    The longer side is brought down to ``cfg.max_side`` when larger, the shorter side up to
    ``cfg.min_side`` when smaller (the larger bound wins: the longer side never exceeds ``max_side``).

    Returns:
        ``(unit, sy, sx)``: float32 frame and the factors mapping working rows/cols to full resolution.
    """
    unit = to_unit(image).astype(np.float32)
    rows, cols = unit.shape
    scale = 1.0
    if max(rows, cols) > cfg.max_side:
        scale = cfg.max_side / max(rows, cols)
    elif min(rows, cols) < cfg.min_side:
        scale = min(cfg.min_side / min(rows, cols), cfg.max_side / max(rows, cols))
    h, w = max(1, round(rows * scale)), max(1, round(cols * scale))
    if (h, w) != (rows, cols):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        unit = np.clip(cv2.resize(unit, (w, h), interpolation=interp), 0.0, 1.0)
    return unit, rows / h, cols / w


def _equalize(unit: np.ndarray) -> np.ndarray:
    u8 = np.rint(unit * 255).astype(np.uint8)
    return cv2.equalizeHist(u8).astype(np.float32) / 255.0


def _superpixels(eq: np.ndarray, sp: SuperpixelConfig, seed: int) -> np.ndarray:
    from skimage.segmentation import quickshift, slic

    if sp.method == "slic":
        labels = slic(
            eq.astype(np.float64),
            n_segments=sp.n_segments,
            compactness=sp.compactness,
            sigma=sp.sigma,
            channel_axis=None,
            start_label=0,
        )
    else:
        rgb = np.repeat(eq.astype(np.float64)[:, :, None], 3, axis=2)
        labels = quickshift(
            rgb,
            ratio=sp.ratio,
            kernel_size=sp.kernel_size,
            max_dist=sp.max_dist,
            sigma=sp.sigma,
            convert2lab=False,
            rng=seed,
        )
    return np.asarray(labels, dtype=np.int32)


def region_feature_names() -> list[str]:
    """Names of the per-region feature vector, in order (independent of the frame)."""
    names = [f"eq_{s}" for s in ("mean", "std", "min", "max", "p10", "p50", "p90")]
    names += [f"raw_{s}" for s in ("mean", "std", "p10", "p90")]
    names += ["contrast_frame", "contrast_ring", "ring_std"]
    names += [f"glcm_{p}_a{a}" for p in _GLCM_PROPS for a in _GLCM_ANGLES]
    names += [f"lbp_{i:02d}" for i in range(_LBP_POINTS + 2)]
    names += ["centroid_y", "centroid_x", "midline_dist", "bbox_h", "bbox_w", "extent", "area_fraction"]
    names += ["edge_density", "grad_mean"]
    return names


N_REGION_FEATURES = len(region_feature_names())


@dataclass(frozen=True)
class FrameRegions:
    """The regions of one frame.

    Attributes:
        labels: working-size superpixel label image (region ids; -1 = dropped superpixel).
        region_ids: the ids present, ascending (0-based, unique in the frame).
        bboxes: ``(n, 4)`` int array x0, y0, x1, y1 in full-resolution pixels (x1, y1 exclusive).
        areas: ``(n,)`` full-resolution pixel counts (rounded).
        features: ``(n, N_REGION_FEATURES)`` float64.
        mask_overlap: ``(n,)`` fraction of each region inside the frame's mask (NaN without a mask).
        shape: working size ``(rows, cols)``; ``full_shape`` the input frame's.
    """

    labels: np.ndarray
    region_ids: np.ndarray
    bboxes: np.ndarray
    areas: np.ndarray
    features: np.ndarray
    mask_overlap: np.ndarray
    shape: tuple[int, int]
    full_shape: tuple[int, int]


def _percentiles(values: np.ndarray, lab: np.ndarray, n: int, qs: Sequence[float]) -> np.ndarray:
    """``(n, len(qs))`` nearest-rank percentiles of ``values`` per label ``0..n-1`` (every label present)."""
    order = np.lexsort((values, lab))
    v = values[order]
    counts = np.bincount(lab, minlength=n)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    out = np.empty((n, len(qs)))
    for j, q in enumerate(qs):
        out[:, j] = v[starts + np.rint(q / 100.0 * (counts - 1)).astype(np.int64)]
    return out


def _region_glcm(q: np.ndarray, lab: np.ndarray, n: int, levels: int) -> np.ndarray:
    """Symmetric, normalised GLCM properties (:data:`_GLCM_PROPS` x angles 0°/90°, distance 1) per region.

    Only pixel pairs with both pixels in the region count: the co-occurrence matrix of the region
    alone, as :func:`medimg_spark.features.glcm_features` computes it with the region as mask, for
    every region of the frame in one pass.
    """
    i_idx, j_idx = np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij")
    out = np.zeros((n, len(_GLCM_PROPS) * len(_GLCM_ANGLES)))
    for a, (dr, dc) in enumerate(((0, 1), (1, 0))):  # 0° (right neighbour), 90° (neighbour below)
        h, w = q.shape
        la, lb = lab[: h - dr, : w - dc], lab[dr:, dc:]
        qa, qb = q[: h - dr, : w - dc], q[dr:, dc:]
        same = (la == lb) & (la >= 0)
        r, x, y = la[same].astype(np.int64), qa[same].astype(np.int64), qb[same].astype(np.int64)
        P = np.bincount((r * levels + x) * levels + y, minlength=n * levels * levels).astype(np.float64)
        P = P.reshape(n, levels, levels)
        P = P + P.transpose(0, 2, 1)
        tot = P.sum(axis=(1, 2), keepdims=True)
        P = np.divide(P, tot, out=np.zeros_like(P), where=tot > 0)
        d2 = (i_idx - j_idx) ** 2
        contrast = (P * d2).sum(axis=(1, 2))
        homogeneity = (P / (1.0 + d2)).sum(axis=(1, 2))
        energy = np.sqrt((P**2).sum(axis=(1, 2)))
        mu_i = (P * i_idx).sum(axis=(1, 2))
        mu_j = (P * j_idx).sum(axis=(1, 2))
        sd_i = np.sqrt((P * (i_idx - mu_i[:, None, None]) ** 2).sum(axis=(1, 2)))
        sd_j = np.sqrt((P * (j_idx - mu_j[:, None, None]) ** 2).sum(axis=(1, 2)))
        cov = (P * (i_idx - mu_i[:, None, None]) * (j_idx - mu_j[:, None, None])).sum(axis=(1, 2))
        denom = sd_i * sd_j
        corr = np.divide(cov, denom, out=np.ones_like(cov), where=denom > 1e-15)  # constant: 1 (skimage)
        for p, vals in enumerate((contrast, homogeneity, energy, corr)):
            out[:, p * len(_GLCM_ANGLES) + a] = vals
    return out


def recognize_frame(
    image: np.ndarray, config: RecognizeConfig | dict[str, Any] | None = None, mask: np.ndarray | None = None
) -> FrameRegions:
    """Superpixel regions of one frame with their features and full-resolution bounding boxes.

    Args:
        image: a 2-D frame (or rows x cols x channels, averaged), any dtype.
        config: a :class:`RecognizeConfig` (or mapping).
        mask: optional 0/1 mask of the frame (full resolution): only its overlap per region is kept.

    Raises:
        RegionDataError: the frame has no pixels or the mask's shape differs from it.
    """
    from scipy import ndimage
    from skimage.feature import local_binary_pattern

    cfg = parse_recognize_config(config)
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.size == 0 or (arr.ndim == 3 and arr.shape[2] > 4):
        raise RegionDataError(f"frame of shape {arr.shape} is not one 2-D frame; pass one frame at a time")
    full_shape = (int(arr.shape[0]), int(arr.shape[1]))
    unit, sy, sx = working_frame(arr, cfg)
    eq = _equalize(unit) if cfg.equalize else unit
    sp = _superpixels(eq, cfg.superpixels, cfg.seed)
    h, w = sp.shape
    counts_all = np.bincount(sp.ravel())
    ids = np.flatnonzero(counts_all >= cfg.min_region_pixels).astype(np.int32)
    n = int(ids.size)
    compact = np.full(counts_all.size, -1, dtype=np.int64)
    compact[ids] = np.arange(n)
    lab = compact[sp]  # 0..n-1, -1 = dropped superpixel
    labels = np.where(lab >= 0, sp, -1).astype(np.int32)

    small_mask = None
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[..., 0]
        if m.shape != full_shape:
            raise RegionDataError(f"mask shape {m.shape} differs from frame shape {full_shape}; resample it")
        small_mask = cv2.resize((m != 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0

    u8 = np.rint(eq * 255).astype(np.uint8)
    edges = cv2.Canny(u8, 50, 150) > 0
    gx = cv2.Sobel(eq, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(eq, cv2.CV_32F, 0, 1, ksize=3)
    grad = np.sqrt(gx * gx + gy * gy)
    codes = local_binary_pattern(u8, _LBP_POINTS, _LBP_RADIUS, method="uniform").astype(np.int64)
    q = (u8.astype(np.int64) * cfg.glcm_levels) // 256

    keep = lab >= 0
    L = lab[keep]
    cnt = np.bincount(L, minlength=n).astype(np.float64)
    if n == 0:
        empty = np.zeros((0, N_REGION_FEATURES))
        return FrameRegions(
            labels,
            ids,
            np.zeros((0, 4), np.int64),
            np.zeros(0, np.int64),
            empty,
            np.zeros(0),
            (h, w),
            full_shape,
        )

    def mean_of(img: np.ndarray) -> np.ndarray:
        return np.bincount(L, weights=img[keep].astype(np.float64), minlength=n) / cnt

    e, r = eq[keep].astype(np.float64), unit[keep].astype(np.float64)
    e_mean, r_mean = mean_of(eq), mean_of(unit)
    e_std = np.sqrt(np.maximum(mean_of(eq.astype(np.float64) ** 2) - e_mean**2, 0.0))
    r_std = np.sqrt(np.maximum(mean_of(unit.astype(np.float64) ** 2) - r_mean**2, 0.0))
    e_pct = _percentiles(e, L, n, (0, 10, 50, 90, 100))
    r_pct = _percentiles(r, L, n, (10, 90))

    # neighbours: regions sharing an edge (4-connectivity); ring = the pixels of the neighbours
    adj = np.zeros((n, n), dtype=bool)
    for la, lb in ((lab[:, :-1], lab[:, 1:]), (lab[:-1, :], lab[1:, :])):
        d = (la != lb) & (la >= 0) & (lb >= 0)
        adj[la[d], lb[d]] = True
    adj |= adj.T
    sums = e_mean * cnt
    sq = (e_std**2 + e_mean**2) * cnt
    nb_cnt = adj @ cnt
    nb_mean = np.divide(adj @ sums, nb_cnt, out=e_mean.copy(), where=nb_cnt > 0)
    nb_sq = np.divide(adj @ sq, nb_cnt, out=e_mean**2, where=nb_cnt > 0)
    nb_std = np.sqrt(np.maximum(nb_sq - nb_mean**2, 0.0))

    glcm = _region_glcm(q, lab, n, cfg.glcm_levels)
    n_lbp = _LBP_POINTS + 2
    lbp = np.bincount(L * n_lbp + codes[keep], minlength=n * n_lbp).reshape(n, n_lbp) / cnt[:, None]

    rr, cc = np.nonzero(keep)
    cy = np.bincount(L, weights=rr.astype(np.float64), minlength=n) / cnt
    cx = np.bincount(L, weights=cc.astype(np.float64), minlength=n) / cnt
    objs = ndimage.find_objects(lab + 1, max_label=n)
    box = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in objs], dtype=np.int64)
    r0, r1, c0, c1 = box[:, 0], box[:, 1], box[:, 2], box[:, 3]
    bh, bw = (r1 - r0).astype(np.float64), (c1 - c0).astype(np.float64)

    feats = np.column_stack(
        [
            e_mean,
            e_std,
            e_pct[:, 0],
            e_pct[:, 4],
            e_pct[:, 1:4],
            r_mean,
            r_std,
            r_pct,
            e_mean - float(eq.mean()),
            e_mean - nb_mean,
            nb_std,
            glcm,
            lbp,
            (cy + 0.5) / h,
            (cx + 0.5) / w,
            np.abs((cx + 0.5) / w - 0.5),
            bh / h,
            bw / w,
            cnt / (bh * bw),
            cnt / (h * w),
            mean_of(edges),
            mean_of(grad),
        ]
    )
    x0 = np.floor(c0 * sx).astype(np.int64)
    y0 = np.floor(r0 * sy).astype(np.int64)
    x1 = np.minimum(full_shape[1], np.maximum(x0 + 1, np.ceil(c1 * sx).astype(np.int64)))
    y1 = np.minimum(full_shape[0], np.maximum(y0 + 1, np.ceil(r1 * sy).astype(np.int64)))
    overlap = mean_of(small_mask) if small_mask is not None else np.full(n, np.nan)
    return FrameRegions(
        labels=labels,
        region_ids=ids,
        bboxes=np.column_stack([x0, y0, x1, y1]),
        areas=np.maximum(1, np.rint(cnt * sy * sx)).astype(np.int64),
        features=np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0),
        mask_overlap=overlap,
        shape=(h, w),
        full_shape=full_shape,
    )


# ----------------------------------------------------------------------------- image scores


def aggregate_scores(region_scores: np.ndarray, how: Aggregate, top_k: int = 3) -> float:
    """One image score in [0, 1] from its regions' class probabilities (an empty image scores 0).

    ``max``: the best region; ``noisy_or``: ``1 - prod(1 - p)`` (any region positive, regions
    independent); ``top_k_mean``: mean of the ``top_k`` best regions.
    """
    p = np.clip(np.asarray(region_scores, dtype=np.float64), 0.0, 1.0)
    if p.size == 0:
        return 0.0
    if how == "max":
        return float(p.max())
    if how == "noisy_or":
        return float(1.0 - np.exp(np.sum(np.log1p(-np.minimum(p, 1 - 1e-12)))))
    if how == "top_k_mean":
        return float(np.sort(p)[::-1][:top_k].mean())
    raise ModelConfigError(f"unknown aggregate {how!r}; choose from {list(AGGREGATES)}")


def image_probabilities(
    proba: np.ndarray, groups: np.ndarray, n_images: int, neg_index: int, how: Aggregate, top_k: int
) -> np.ndarray:
    """``(n_images, K)`` image class probabilities from ``(n_regions, K)`` region probabilities.

    Each non-background class scores the aggregate of its regions' probabilities; background scores
    ``1 - max`` of those; the row is normalised to sum to 1 (binary: ``[1 - s, s]``).
    """
    K = proba.shape[1]
    out = np.zeros((n_images, K))
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_images + 1))
    for i in range(n_images):
        rows = order[bounds[i] : bounds[i + 1]]
        for c in range(K):
            if c != neg_index:
                out[i, c] = aggregate_scores(proba[rows, c], how, top_k)
        others = np.delete(out[i], neg_index)
        out[i, neg_index] = 1.0 - (others.max() if others.size else 0.0)
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / K), where=total > 0)


# ----------------------------------------------------------------------------- the model


class RegionModelCard(BaseModel):
    """What a saved region model was trained on and how it decides (``card.json``, kind ``regions``)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    kind: Literal["regions"] = "regions"
    estimator: str = "StandardScaler + LogisticRegression (multinomial softmax)"
    classes: list[str]
    negative_label: str
    positive_label: str | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    aggregate: Aggregate
    top_k: int
    region_labels: Literal["mil", "mask"]
    feature_names: list[str]
    config: dict[str, Any]
    train_data_sha256: str
    n_train_images: int
    n_train_regions: int
    n_val_images: int = 0
    region_label_counts: dict[str, int] = {}
    mil_history: list[dict[str, Any]] = []
    aggregate_search: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    sklearn_version: str = sklearn.__version__
    python_version: str = platform.python_version()
    numpy_version: str = np.__version__
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class RegionModel:
    """A fitted region classifier (scaler + softmax) plus the image-level rule of its card."""

    def __init__(self, estimator: Any, card: RegionModelCard) -> None:
        self.estimator = estimator
        self.card = card
        #: the final region labels of the training rows (set by :func:`fit_region_model`; not saved)
        self.train_region_labels: np.ndarray | None = None
        est_classes = [str(c) for c in getattr(estimator, "classes_", [])]
        if est_classes and est_classes != card.classes:
            raise ModelLoadError(f"estimator classes {est_classes} differ from the card's {card.classes}")

    @property
    def classes(self) -> list[str]:
        """Class labels in probability order."""
        return list(self.card.classes)

    @property
    def config(self) -> RecognizeConfig:
        """The recognize options the model was trained with (working size, superpixels...)."""
        return RecognizeConfig.model_validate(self.card.config)

    def region_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n_regions, K)`` class probabilities of region feature rows."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.card.feature_names):
            raise RegionDataError(
                f"region features have shape {X.shape}; the model expects (n, {len(self.card.feature_names)})"
            )
        if len(X) == 0:
            return np.zeros((0, len(self.classes)))
        return np.asarray(self.estimator.predict_proba(X), dtype=np.float64)

    def image_proba(self, region_proba: np.ndarray, groups: np.ndarray, n_images: int) -> np.ndarray:
        """``(n_images, K)`` image probabilities (``groups``: the image index of each region row)."""
        neg = self.classes.index(self.card.negative_label)
        return image_probabilities(
            region_proba, np.asarray(groups), n_images, neg, self.card.aggregate, self.card.top_k
        )

    def decide(self, image_proba: np.ndarray) -> np.ndarray:
        """Predicted class labels from image probabilities (the binary threshold when set)."""
        p = np.asarray(image_proba, dtype=np.float64)
        classes = np.asarray(self.classes, dtype=object)
        if len(self.classes) == 2 and self.card.threshold is not None and self.card.positive_label:
            pos = self.classes.index(self.card.positive_label)
            return np.where(p[:, pos] >= self.card.threshold, classes[pos], classes[1 - pos])
        return classes[np.argmax(p, axis=1)] if len(p) else np.zeros(0, dtype=object)

    def predict_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Image probabilities and predictions of frames on the driver (regions computed here)."""
        cfg = self.config
        Xs, groups = [], []
        for i, img in enumerate(images):
            fr = recognize_frame(img, cfg)
            Xs.append(fr.features)
            groups.append(np.full(len(fr.features), i))
        X = np.vstack(Xs) if Xs else np.zeros((0, len(self.card.feature_names)))
        g = np.concatenate(groups) if groups else np.zeros(0, dtype=int)
        proba = self.image_proba(self.region_proba(X), g, len(images))
        return proba, self.decide(proba)

    def save(self, path: str | Path, storage: Storage | None = None) -> str:
        """Write ``model.joblib`` and ``card.json`` into the folder ``path`` (local path or URI)."""
        import joblib

        store = storage or get_storage()
        folder = os.fspath(path)
        store.mkdirs(folder)
        with store.staged_file(join(folder, MODEL_FILE)) as local:
            joblib.dump(self.estimator, local)
        store.write_text(join(folder, CARD_FILE), self.card.model_dump_json(indent=2))
        return folder


def is_region_model(path: str | Path, storage: Storage | None = None) -> bool:
    """Whether ``path/card.json`` is a region model's card (kind ``regions``)."""
    store = storage or get_storage()
    card = join(os.fspath(path), CARD_FILE)
    if not store.exists(card):
        return False
    try:
        return json.loads(store.read_text(card)).get("kind") == REGION_CARD_KIND
    except (ValueError, AttributeError):
        return False


def load_region_model(path: str | Path, storage: Storage | None = None) -> RegionModel:
    """Load a region model folder written by :func:`recognize` (or :meth:`RegionModel.save`).

    Raises:
        ModelLoadError: the folder, card or model file is missing or unreadable.
    """
    import joblib

    store = storage or get_storage()
    folder = os.fspath(path)
    card_path = join(folder, CARD_FILE)
    if not store.exists(card_path):
        raise ModelLoadError(f"{folder} has no {CARD_FILE}; pass the folder written by medimg recognize")
    try:
        card = RegionModelCard.model_validate(json.loads(store.read_text(card_path)))
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{card_path} is not a region model card: {exc}") from exc
    f = join(folder, MODEL_FILE)
    if not store.exists(f):
        raise ModelLoadError(f"{folder} lacks {MODEL_FILE}; re-run medimg recognize or copy the whole folder")
    with store.local_copy(f) as local:
        est = joblib.load(local)
    return RegionModel(est, card)


# ----------------------------------------------------------------------------- fitting (driver)


class RegionTable(TypedDict):
    """Region rows as arrays: one entry per region (``image`` indexes ``image_ids``)."""

    image_ids: np.ndarray
    image_labels: np.ndarray
    image: np.ndarray
    X: np.ndarray
    mask_overlap: np.ndarray


def region_table(
    image_ids: Sequence[str],
    image_labels: Sequence[str],
    regions: Sequence[FrameRegions],
) -> RegionTable:
    """Stack per-frame regions into one table (the driver side of :func:`fit_region_model`)."""
    X = [r.features for r in regions]
    return {
        "image_ids": np.asarray(image_ids, dtype=object),
        "image_labels": np.asarray(image_labels, dtype=object),
        "image": np.concatenate([np.full(len(r.features), i) for i, r in enumerate(regions)])
        if regions
        else np.zeros(0, dtype=int),
        "X": np.vstack(X) if X else np.zeros((0, N_REGION_FEATURES)),
        "mask_overlap": np.concatenate([r.mask_overlap for r in regions]) if regions else np.zeros(0),
    }


def _estimator(cfg: RecognizeConfig, sample_weight_balanced: bool) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        LogisticRegression(
            C=cfg.C,
            max_iter=cfg.max_iter,
            class_weight="balanced" if sample_weight_balanced else None,
            random_state=cfg.seed,
        ),
    )


def _table_hash(table: RegionTable) -> str:
    h = hashlib.sha256()
    for i, lab in zip(table["image_ids"], table["image_labels"], strict=True):
        h.update(f"{i}\0{lab}\0".encode())
    h.update(np.ascontiguousarray(table["X"], dtype="<f8").tobytes())
    return h.hexdigest()


def _relabel(
    proba: np.ndarray, table: RegionTable, img_class: np.ndarray, neg: int, top_fraction: float
) -> np.ndarray:
    """mi-SVM step: in each positive image, its top regions (by its class probability) keep the class."""
    y = np.full(len(table["image"]), neg)
    order = np.argsort(table["image"], kind="stable")
    groups = table["image"][order]
    bounds = np.searchsorted(groups, np.arange(len(img_class) + 1))
    for i, c in enumerate(img_class):
        if c == neg:
            continue
        rows = order[bounds[i] : bounds[i + 1]]
        if rows.size == 0:
            continue
        k = max(1, int(np.ceil(top_fraction * rows.size)))
        best = rows[np.argsort(-proba[rows, c], kind="stable")[:k]]
        y[best] = c
    return y


def fit_region_model(
    train: RegionTable,
    val: RegionTable | None,
    config: RecognizeConfig | dict[str, Any] | None = None,
    name: str | None = None,
) -> RegionModel:
    """Fit the region softmax from image labels (MIL or mask labels); choose aggregate and threshold on val.

    Args:
        train: region rows of the training images (:func:`region_table`).
        val: region rows of the validation images (``None``: aggregate ``max`` unless fixed, threshold
            from ``threshold.rule`` on train).
        config: the recognize options.
        name: the model name (default ``config.name``).

    Raises:
        RegionDataError: fewer than two classes, no regions, or mask labels without masks.
    """
    from medimg_spark.ml.metrics import choose_threshold

    cfg = parse_recognize_config(config)
    labels = np.asarray(train["image_labels"], dtype=object)
    classes = sorted({str(v) for v in labels if v is not None})
    if len(classes) < 2:
        raise RegionDataError(
            f"the {cfg.train_split!r} split has labels {classes}; region recognition needs at least two classes"
        )
    if len(train["X"]) == 0:
        raise RegionDataError(f"the {cfg.train_split!r} split gave no regions; check the frames and min_side")
    negative = cfg.negative_label if cfg.negative_label is not None else classes[0]
    if negative not in classes:
        raise ModelConfigError(f"recognize.negative_label {negative!r} is not among the classes {classes}")
    neg = classes.index(negative)
    positive = classes[1 - neg] if len(classes) == 2 else None
    img_class = np.array([classes.index(str(v)) for v in labels])
    region_img_class = img_class[train["image"]]
    X = train["X"]
    balanced = cfg.class_weight == "balanced"
    history: list[dict[str, Any]] = []

    if cfg.region_labels == "mask":
        ov = train["mask_overlap"]
        if np.isnan(ov).all():
            raise RegionDataError(
                "region_labels: mask needs frames with masks; recognize from the processed table "
                "(source: processed) or use region_labels: mil"
            )
        y = np.where(
            (region_img_class != neg) & (np.nan_to_num(ov) >= cfg.mask_overlap), region_img_class, neg
        )
        # an image of a positive class whose mask covers no region keeps its best-covered region
        for i in np.flatnonzero(img_class != neg):
            rows = np.flatnonzero(train["image"] == i)
            if rows.size and not (y[rows] != neg).any():
                y[rows[np.argmax(np.nan_to_num(ov[rows]))]] = img_class[i]
        rounds = 0
    else:
        y = region_img_class.copy()
        rounds = cfg.mil_rounds
    est = _estimator(cfg, balanced)
    if np.unique(y).size < 2:
        raise RegionDataError("every training region has the same label; check the labels and masks")
    est.fit(X, np.asarray(classes, dtype=object)[y])
    history.append({"round": 0, "positive_regions": int((y != neg).sum())})
    for r in range(rounds):
        proba = est.predict_proba(X)
        y_new = _relabel(proba, train, img_class, neg, cfg.top_fraction)
        changed = int((y_new != y).sum())
        y = y_new
        # warm start: the same pipeline refits from the previous round's coefficients (same scaling)
        est.set_params(logisticregression__warm_start=True)
        est.fit(X, np.asarray(classes, dtype=object)[y])
        history.append({"round": r + 1, "positive_regions": int((y != neg).sum()), "changed": changed})
        if changed == 0:
            break
    est_classes = [str(c) for c in est.classes_]
    if est_classes != classes:  # a class lost every region cannot be predicted
        raise RegionDataError(f"after re-labelling the regions hold classes {est_classes}, not {classes}")

    card = RegionModelCard(
        model_name=name or cfg.name,
        classes=classes,
        negative_label=negative,
        positive_label=positive,
        aggregate="max" if cfg.aggregate == "auto" else cfg.aggregate,
        top_k=cfg.top_k,
        region_labels=cfg.region_labels,
        feature_names=region_feature_names(),
        config=cfg.model_dump(mode="json"),
        train_data_sha256=_table_hash(train),
        n_train_images=len(labels),
        n_train_regions=len(X),
        region_label_counts={c: int((y == i).sum()) for i, c in enumerate(classes)},
        mil_history=history,
    )
    model = RegionModel(est, card)
    model.train_region_labels = np.asarray(classes, dtype=object)[y]

    choose_on = val if val is not None and len(val["image_ids"]) else train
    ch_labels = np.asarray(choose_on["image_labels"], dtype=object)
    known = np.array([str(v) in classes for v in ch_labels])
    rproba = model.region_proba(choose_on["X"])
    n_img = len(ch_labels)
    if cfg.aggregate == "auto" and positive is not None and known.any():
        from sklearn.metrics import roc_auc_score

        y_bin = np.array([str(v) == positive for v in ch_labels])[known]
        search: dict[str, float] = {}
        if np.unique(y_bin).size == 2:
            for how in AGGREGATES:
                model.card.aggregate = how
                s = model.image_proba(rproba, choose_on["image"], n_img)[known, classes.index(positive)]
                search[how] = round(float(roc_auc_score(y_bin, s)), 6)
            best = max(AGGREGATES, key=lambda a: (search[a], -AGGREGATES.index(a)))
            model.card.aggregate = best
            model.card.aggregate_search = search
    if positive is not None:
        s = model.image_proba(rproba, choose_on["image"], n_img)[:, classes.index(positive)]
        y_bin = np.array([str(v) == positive for v in ch_labels])
        if known.any() and np.unique(y_bin[known]).size == 2:
            model.card.threshold = float(
                choose_threshold(y_bin[known].astype(int), s[known], cfg.threshold.rule, cfg.threshold.value)
            )
            model.card.threshold_rule = cfg.threshold.rule
    model.card.n_val_images = len(val["image_ids"]) if val is not None else 0
    return model


# ----------------------------------------------------------------------------- Spark stage


class RecognizeSummary(TypedDict):
    """``medimg recognize``: the region model, its tables and its val scores."""

    model_name: str
    model_path: str
    region_predictions: str
    predictions: str
    n_images: int
    n_regions: int
    regions_per_image: float
    n_failed: int
    region_labels: str
    aggregate: str
    threshold: float | None
    val: dict[str, Any] | None
    seconds: float


REGION_FEATURE_FIELDS = (
    "image_id string, label string, split string, region_id int, x0 int, y0 int, x1 int, y1 int, "
    "area long, mask_overlap double, features array<double>, error string"
)


def _region_partitions(
    cfg_json: str, use_mask: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        from medimg_spark.features import decode_row

        cfg = RecognizeConfig.model_validate_json(cfg_json)
        cols = [f.split()[0] for f in REGION_FEATURE_FIELDS.split(", ")]
        for pdf in batches:
            out: list[dict[str, Any]] = []
            for row in pdf.to_dict("records"):
                base = {"image_id": row["image_id"], "label": row.get("label"), "split": row.get("split")}
                try:
                    img, msk = decode_row(row, use_mask)
                    fr = recognize_frame(img, cfg, msk)
                except Exception as err:  # one bad frame must not abort the job: it is counted
                    out.append({**base, "region_id": -1, "error": f"{type(err).__name__}: {err}"[:500]})
                    continue
                for k, rid in enumerate(fr.region_ids):
                    x0, y0, x1, y1 = (int(v) for v in fr.bboxes[k])
                    ov = float(fr.mask_overlap[k])
                    out.append(
                        {
                            **base,
                            "region_id": int(rid),
                            "x0": x0,
                            "y0": y0,
                            "x1": x1,
                            "y1": y1,
                            "area": int(fr.areas[k]),
                            "mask_overlap": None if np.isnan(ov) else ov,
                            "features": fr.features[k].tolist(),
                            "error": None,
                        }
                    )
            yield pd.DataFrame(out, columns=cols)

    return run


def region_features_frame(spark: SparkSession, out_dir: str | Path, cfg: RecognizeConfig) -> DataFrame:
    """Region rows (image_id, label, split, region_id, bbox, area, mask_overlap, features, error), lazily.

    A frame that cannot be processed gives one row with ``region_id = -1`` and its ``error``.

    Raises:
        RegionDataError: the source table is missing.
    """
    from pyspark.sql import functions as F

    src = join(out_dir, cfg.source)
    if not get_storage(spark).exists(src):
        other = "images" if cfg.source == "processed" else "processed"
        raise RegionDataError(f"{src} does not exist; run the stage that writes it or set source: {other}")
    df = spark.read.parquet(src)
    use_mask = "mask" in df.columns
    cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype"] + (["mask"] if use_mask else [])
    extra = [
        (F.col(c).cast("string") if c in df.columns else F.lit(None).cast("string")).alias(c)
        for c in ("label", "split")
    ]
    return df.select(*cols, *extra).mapInPandas(
        _region_partitions(cfg.model_dump_json(), use_mask), REGION_FEATURE_FIELDS
    )


def _collect_splits(
    rf: DataFrame, splits: Sequence[str], counts: dict[str, int], limit: int, seed: int
) -> dict[str, RegionTable]:
    """Labelled region rows of ``splits`` on the driver (one job), sorted by (image_id, region_id).

    ``counts``: region rows per split; a split above ``limit`` is sampled by whole images (a bound on
    driver memory). The sort makes the fit independent of partitioning, so it is deterministic.
    """
    from pyspark.sql import functions as F

    parts = []
    for split in splits:
        part = rf.where((F.col("split") == split) & (F.col("region_id") >= 0) & F.col("label").isNotNull())
        n = counts.get(split, 0)
        if n > limit:
            ids = part.select("image_id").distinct().sample(fraction=limit / n, seed=seed)
            part = part.join(ids, "image_id")
        parts.append(part.select("image_id", "label", "split", "region_id", "mask_overlap", "features"))
    both = parts[0]
    for extra in parts[1:]:
        both = both.unionByName(extra)
    pdf = both.toPandas()
    return {split: region_table_from_pandas(pdf[pdf["split"] == split]) for split in splits}


def region_table_from_pandas(pdf: pd.DataFrame) -> RegionTable:
    """A :class:`RegionTable` from region rows (image_id, label, region_id, mask_overlap, features)."""
    pdf = pdf.sort_values(["image_id", "region_id"], kind="stable")
    ids_sorted, image = np.unique(pdf["image_id"].to_numpy(dtype=object).astype(str), return_inverse=True)
    first = np.searchsorted(image, np.arange(len(ids_sorted)))
    labels = pdf["label"].to_numpy(dtype=object)[first] if len(pdf) else np.zeros(0, dtype=object)
    X = np.vstack([np.asarray(v, dtype=np.float64) for v in pdf["features"]]) if len(pdf) else None
    return {
        "image_ids": ids_sorted.astype(object),
        "image_labels": labels,
        "image": image.astype(np.int64),
        "X": X if X is not None else np.zeros((0, N_REGION_FEATURES)),
        "mask_overlap": pdf["mask_overlap"].to_numpy(dtype=np.float64, na_value=np.nan),
    }


def _score_regions(rf: DataFrame, model: RegionModel) -> DataFrame:
    """Region rows with their class probabilities, on the executors (the estimator broadcast once)."""
    from pyspark.sql import functions as F

    sc = rf.sparkSession.sparkContext
    bc = sc.broadcast(model.estimator)
    card_json = model.card.model_dump_json()
    name = model.card.model_name
    ok = rf.where(F.col("region_id") >= 0).drop("error", "mask_overlap")

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        card = RegionModelCard.model_validate_json(card_json)
        m = RegionModel(bc.value, card)
        for pdf in batches:
            X = (
                np.vstack([np.asarray(v, dtype=np.float64) for v in pdf["features"]])
                if len(pdf)
                else np.zeros((0, len(card.feature_names)))
            )
            p = m.region_proba(X)
            classes = np.asarray(card.classes, dtype=object)
            yield pdf.drop(columns=["features"]).assign(
                probability=list(p), prediction=classes[np.argmax(p, axis=1)] if len(p) else [], model=name
            )

    reg_schema = (
        "image_id string, label string, split string, region_id int, x0 int, y0 int, x1 int, y1 int, "
        "area long, probability array<double>, prediction string, model string"
    )
    return ok.mapInPandas(score, reg_schema)


def _image_rows(regions: DataFrame, model: RegionModel) -> DataFrame:
    """One row per image (the columns of ``predictions/``) aggregated from its scored regions.

    The region rows are hash-partitioned by image and sorted, so each partition streams through
    ``mapInPandas`` holding at most one image's rows across Arrow batches (no per-group Python call).
    """
    import pandas as pd

    rule = RegionModel(None, model.card)  # the image rule only; pickled into the closure
    name = model.card.model_name
    columns = ["image_id", "label", "split", "prediction", "probability", "score", "model"]

    def rows_of(pdf: pd.DataFrame) -> pd.DataFrame:
        codes, uniques = pd.factorize(pdf["image_id"], sort=False)
        P = np.vstack([np.asarray(v, dtype=np.float64) for v in pdf["probability"]])
        proba = rule.image_proba(P, codes, len(uniques))
        first = np.searchsorted(codes, np.arange(len(uniques))) if len(codes) else np.zeros(0, dtype=int)
        classes = rule.card.classes
        pos = rule.card.positive_label
        return pd.DataFrame(
            {
                "image_id": pdf["image_id"].to_numpy()[first],
                "label": pdf["label"].to_numpy()[first],
                "split": pdf["split"].to_numpy()[first],
                "prediction": rule.decide(proba),
                "probability": list(proba),
                "score": proba[:, classes.index(pos)] if pos is not None else np.full(len(uniques), np.nan),
                "model": name,
            },
            columns=columns,
        )

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        carry: pd.DataFrame | None = None
        for pdf in batches:
            if carry is not None:
                pdf = pd.concat([carry, pdf], ignore_index=True)
            if len(pdf) == 0:
                continue
            last = pdf["image_id"].iloc[-1]
            tail = (pdf["image_id"] == last).to_numpy()
            carry = pdf[tail]
            if (~tail).any():
                yield rows_of(pdf[~tail].reset_index(drop=True))
        if carry is not None and len(carry):
            yield rows_of(carry.reset_index(drop=True))

    img_schema = (
        "image_id string, label string, split string, prediction string, probability array<double>, "
        "score double, model string"
    )
    ordered = (
        regions.select("image_id", "label", "split", "region_id", "probability")
        .repartition("image_id")
        .sortWithinPartitions("image_id", "region_id")
    )
    return ordered.mapInPandas(run, img_schema)


def _metrics_of(pdf: pd.DataFrame, model: RegionModel) -> dict[str, Any]:
    from medimg_spark.ml.metrics import classification_metrics

    proba = np.vstack([np.asarray(p, dtype=np.float64) for p in pdf["probability"]])
    return classification_metrics(
        pdf["label"].to_numpy(dtype=object),
        pdf["prediction"].to_numpy(dtype=object),
        model.classes,
        proba,
        model.card.positive_label,
    )


def _write_predictions(
    spark: SparkSession, out_dir: str | Path, rf: DataFrame, model: RegionModel
) -> tuple[str, str, DataFrame]:
    """Score the region features ``rf`` into ``region_predictions/model=<name>``, then aggregate the
    written region rows (the regions are not scored twice) into ``predictions/model=<name>``.

    Returns ``(region_predictions root, predictions root, this model's written predictions)``.
    """
    from pyspark.sql import functions as F

    name = model.card.model_name
    reg_root = join(out_dir, REGION_PREDICTIONS_DIR)
    _score_regions(rf, model).write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(
        "model"
    ).parquet(reg_root)
    images = _image_rows(spark.read.parquet(reg_root).where(F.col("model") == name), model)
    pred_root = join(out_dir, PREDICTIONS_DIR)
    images.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("model").parquet(
        pred_root
    )
    return reg_root, pred_root, spark.read.parquet(pred_root).where(F.col("model") == name)


def recognize(
    spark: SparkSession,
    out_dir: str | Path,
    config: RecognizeConfig | dict[str, Any] | None = None,
    name: str | None = None,
) -> RecognizeSummary:
    """The ``medimg recognize`` stage: regions of every frame, a region softmax fitted by MIL, predictions.

    Reads ``out_dir/<source>`` (``images`` or ``processed``); computes region features on the
    executors (``mapInPandas``) into ``out_dir/region_features/``; fits on the driver from the
    train (and val, for the aggregate and threshold) region rows; writes

    * ``out_dir/region_predictions/`` partition ``model=<name>``: image_id, label, split, region_id,
      x0, y0, x1, y1 (full-resolution pixels, x1/y1 exclusive), area, probability (class order of
      the card), prediction;
    * ``out_dir/predictions/`` partition ``model=<name>``: one row per image with the columns
      :func:`medimg_spark.ml.predict.predict` writes, so ``medimg evaluate`` and the report read it;
    * ``out_dir/models/<name>/`` (card.json + model.joblib) and, with a val split,
      ``out_dir/metrics/eval_<name>_<val>.json``.

    Raises:
        RegionDataError: the source table is missing or its train split cannot train a model.
        ModelConfigError: invalid options.
    """
    from pyspark.sql import functions as F

    from medimg_spark.ml.evaluate import write_metrics

    t0 = time.time()
    cfg = parse_recognize_config(config)
    name = name or cfg.name
    store = get_storage(spark)
    if cfg.region_labels == "mask" and cfg.source != "processed":
        raise ModelConfigError("recognize.region_labels: mask needs source: processed (the table with masks)")
    rf_root = join(out_dir, REGION_FEATURES_DIR)
    region_features_frame(spark, out_dir, cfg).withColumn("model", F.lit(name)).write.mode(
        "overwrite"
    ).option("partitionOverwriteMode", "dynamic").partitionBy("model").parquet(rf_root)
    rf = spark.read.parquet(rf_root).where(F.col("model") == name).drop("model")
    counts: dict[str, int] = {}
    n_failed = 0
    for r in rf.groupBy("split", (F.col("region_id") < 0).alias("failed")).count().collect():
        if r["failed"]:
            n_failed += int(r["count"])
        elif r["split"] is not None:
            counts[str(r["split"])] = counts.get(str(r["split"]), 0) + int(r["count"])
    splits = [cfg.train_split] + (
        [cfg.val_split] if cfg.val_split and cfg.val_split != cfg.train_split else []
    )
    tables = _collect_splits(rf, splits, counts, cfg.max_train_regions, cfg.seed)
    val = tables.get(cfg.val_split) if cfg.val_split else None
    if val is not None and len(val["image_ids"]) == 0:
        val = None
    model = fit_region_model(tables[cfg.train_split], val, cfg, name)
    model_dir = join(out_dir, "models", name)

    reg_root, pred_root, written = _write_predictions(spark, out_dir, rf, model)
    val_metrics: dict[str, Any] | None = None
    if cfg.val_split:
        pdf = written.where((F.col("split") == cfg.val_split) & F.col("label").isNotNull()).toPandas()
        if len(pdf):
            val_metrics = _metrics_of(pdf, model)
            model.card.metrics = {"val": {k: v for k, v in val_metrics.items() if k != "roc_curve"}}
    model.save(model_dir, store)
    if val_metrics is not None and cfg.val_split:
        val_metrics.update(model=name, split=cfg.val_split, threshold=model.card.threshold)
        write_metrics(out_dir, name, cfg.val_split, val_metrics, store)
    n_images = written.count()
    n_regions = spark.read.parquet(reg_root).where(F.col("model") == name).count()
    return {
        "model_name": name,
        "model_path": model_dir,
        "region_predictions": join(reg_root, f"model={name}"),
        "predictions": join(pred_root, f"model={name}"),
        "n_images": int(n_images),
        "n_regions": int(n_regions),
        "regions_per_image": round(n_regions / n_images, 2) if n_images else 0.0,
        "n_failed": int(n_failed),
        "region_labels": cfg.region_labels,
        "aggregate": model.card.aggregate,
        "threshold": model.card.threshold,
        "val": {
            k: val_metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "roc_auc") if k in val_metrics
        }
        if val_metrics
        else None,
        "seconds": round(time.time() - t0, 3),
    }


def predict_regions(
    spark: SparkSession, out_dir: str | Path, model_path: str | Path, split: str | None = None
) -> dict[str, Any]:
    """Apply a saved region model to ``out_dir/<source>`` (``medimg predict`` with a region model).

    Recomputes the regions with the model's own options (working size, superpixels), scores them on the
    executors and replaces the model's partitions of ``region_predictions/`` and ``predictions/`` (only
    ``split`` when given).

    Returns:
        Summary: path, partition, model, split, n_rows, counts per predicted class, seconds.
    """
    from pyspark.sql import functions as F

    t0 = time.time()
    store = get_storage(spark)
    model = load_region_model(model_path, store)
    name = model.card.model_name
    rf = region_features_frame(spark, out_dir, model.config)
    if split is not None:
        rf = rf.where(F.col("split") == split)
    _, pred_root, written = _write_predictions(spark, out_dir, rf, model)
    counts = {r["prediction"]: int(r["count"]) for r in written.groupBy("prediction").count().collect()}
    return {
        "path": pred_root,
        "partition": join(pred_root, f"model={name}"),
        "model": name,
        "split": split,
        "n_rows": sum(counts.values()),
        "counts": counts,
        "seconds": round(time.time() - t0, 3),
    }


def evaluate_region_model(
    spark: SparkSession, out_dir: str | Path, model_path: str | Path, split: str
) -> dict[str, Any]:
    """Metrics of a region model on ``split`` from its rows in ``out_dir/predictions/`` (written by recognize).

    Raises:
        RegionDataError: the model has no prediction rows for the split.
    """
    from pyspark.sql import functions as F

    from medimg_spark.ml.evaluate import write_metrics

    store = get_storage(spark)
    model = load_region_model(model_path, store)
    name = model.card.model_name
    root = join(out_dir, PREDICTIONS_DIR)
    part = join(root, f"model={name}")
    if not store.exists(part):
        raise RegionDataError(
            f"{part} does not exist; run medimg recognize --out {out_dir} --name {name} first"
        )
    pdf = (
        spark.read.parquet(root)
        .where((F.col("model") == name) & (F.col("split") == split) & F.col("label").isNotNull())
        .toPandas()
    )
    if len(pdf) == 0:
        raise RegionDataError(
            f"split {split!r} of {out_dir} has no labelled rows of model {name}; check the split"
        )
    metrics = _metrics_of(pdf, model)
    metrics.update(model=name, split=split, threshold=model.card.threshold)
    return dict(write_metrics(out_dir, name, split, metrics, store))
