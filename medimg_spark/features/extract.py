"""Hand-crafted image features of one frame: pure numpy/OpenCV/scikit-image, no Spark.

Every extractor works on one 2-D frame (a 3-D ``rows x cols x channels`` frame is
averaged over its channels) and an optional 0/1 ``mask`` of the same shape, and returns
``(values, names)``: a float64 vector and one stable name per value. Names depend only
on the extractor's parameters (and, for :func:`hog_features` / :func:`pixel_features`
without ``size``, on the frame shape), never on pixel values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import cv2
import numpy as np
from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern
from skimage.measure import label as _cc_label
from skimage.measure import regionprops

from medimg_spark.errors import ConfigError, MedimgError
from medimg_spark.order_stats import exact_percentiles

Features = tuple[np.ndarray, list[str]]

GLCM_PROPS: tuple[str, ...] = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


class FeatureError(MedimgError):
    """A frame, mask or extractor parameter cannot produce features."""


class FeatureSetError(ConfigError):
    """A feature-set YAML is missing or invalid."""


# ----------------------------------------------------------------------------- helpers


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a 2-D float64 view of ``image`` (channels averaged), checking its shape.

    Raises:
        FeatureError: ``image`` is not a 2-D or 3-D array or has no pixels.
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.astype(np.float64).mean(axis=2)
    if arr.ndim != 2 or arr.size == 0:
        raise FeatureError(
            f"expected a non-empty 2-D (rows, cols) or 3-D (rows, cols, channels) frame, got shape "
            f"{np.asarray(image).shape}; pass one frame at a time"
        )
    return arr.astype(np.float64, copy=False)


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale a frame to float64 in [0, 1]: uint8 by 255, bool as 0/1, anything else by its finite min/max.

    Non-finite values become 0. A constant non-uint8 frame maps to all zeros.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return to_gray(arr) / 255.0
    if arr.dtype == np.bool_:
        return to_gray(arr.astype(np.float64))
    g = to_gray(arr)
    if arr.dtype.kind in "ui" or np.isfinite(g).all():  # the common case: no mask, no copies
        lo, hi = float(g.min()), float(g.max())
        out = g
    else:
        finite = np.isfinite(g)
        if not finite.any():
            return np.zeros_like(g)
        vals = np.compress(finite.ravel(), g.ravel())
        lo, hi = float(vals.min()), float(vals.max())
        out = np.where(finite, g, lo)
    if hi <= lo:
        return np.zeros_like(g)
    return (out - lo) / (hi - lo)


def quantize(image: np.ndarray, levels: int) -> np.ndarray:
    """Map a frame to integer grey levels ``0 .. levels-1`` (uint8 input: ``v * levels // 256``)."""
    if not 2 <= levels <= 256:
        raise FeatureError(f"levels={levels} is out of range; use 2..256 grey levels")
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.ndim == 2:
        return (arr.astype(np.uint16) * levels // 256).astype(np.uint8)
    unit = to_unit(arr)
    return np.minimum((unit * levels).astype(np.int64), levels - 1).astype(np.uint8)


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != shape:
        raise FeatureError(f"mask shape {m.shape} does not match frame shape {shape}; resample the mask")
    return m != 0


def _resize(gray: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or gray.shape == (size, size):
        return gray
    return cv2.resize(gray.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)


# ----------------------------------------------------------------------------- extractors


def intensity_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    bins: int = 16,
    percentiles: Sequence[float] = (5, 25, 50, 75, 95),
) -> Features:
    """Mean, std, skewness, kurtosis, min, max, percentiles and a normalised histogram.

    Statistics are computed on the frame scaled to [0, 1] by :func:`to_unit`, inside
    ``mask`` when given (an empty mask gives zeros). The histogram has ``bins`` equal bins
    over [0, 1] and sums to 1.
    """
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    x = np.compress(m.ravel(), unit.ravel()) if m is not None else unit.ravel()
    pct = [float(p) for p in percentiles]
    names = ["intensity_mean", "intensity_std", "intensity_skew", "intensity_kurtosis"]
    names += ["intensity_min", "intensity_max"] + [f"intensity_p{p:g}" for p in pct]
    names += [f"intensity_hist_{i:02d}" for i in range(bins)]
    if x.size == 0:
        return np.zeros(len(names)), names
    mean, std, skew, kurt = _moments(x)
    lo, hi = x.min(), x.max()
    hist, fine = _unit_hist(x, bins, lo, hi)
    vals = np.r_[mean, std, skew, kurt, lo, hi, exact_percentiles(x, pct, binned=fine), hist / x.size]
    return vals.astype(np.float64), names


def _moments(x: np.ndarray) -> tuple[float, float, float, float]:
    """``x.mean()``, ``x.std()``, ``scipy.stats.skew(x)`` and ``scipy.stats.kurtosis(x)`` (skew and kurtosis
    0 for ``std == 0``), bit-equal to those calls, from one centred copy: the same numpy reductions on the
    same arrays as numpy's ``std`` and scipy's ``_moment`` (powers by squaring), without their repeats."""
    mean = x.mean()
    d = x - mean
    d2 = d * d
    m2 = d2.mean()
    std = float(np.sqrt(m2))
    if not std > 0:
        return float(mean), std, 0.0, 0.0
    with np.errstate(all="ignore"):
        degenerate = m2 <= (np.finfo(np.float64).eps * mean) ** 2
        m3 = (d2 * d).mean()
        m4 = (d2 * d2).mean()
        skew = math.nan if degenerate else float(m3 / m2**1.5)
        kurt = math.nan if degenerate else float(m4 / m2**2.0 - 3)
    return float(mean), std, skew, kurt


_FINE_BINS = 4096


def _unit_hist(
    x: np.ndarray, bins: int, lo: float, hi: float
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """``np.histogram(x, bins, range=(0, 1))[0]`` and, when it comes for free, a finer monotone binning of
    ``x`` (``(uint16 index, counts)`` for :func:`exact_percentiles`).

    For ``x`` in [0, 1] and a power-of-two ``bins`` <= 4096: the edges ``k / 4096`` and ``x * 4096`` are exact,
    so the 4096-bin index is ``floor(x * 4096)`` (1.0 in the last bin) and the ``bins``-bin histogram is its
    counts summed in groups of ``4096 / bins`` (``floor(x * bins) = floor(x * 4096) // (4096 / bins)``).
    """
    if bins & (bins - 1) or bins > _FINE_BINS or not (lo >= 0.0 and hi <= 1.0):
        return np.histogram(x, bins=bins, range=(0.0, 1.0))[0], None
    scaled = x * _FINE_BINS
    np.minimum(scaled, _FINE_BINS - 1, out=scaled)
    idx = scaled.astype(np.uint16)
    if idx.size < 1 << 24:
        counts = cv2.calcHist([idx.reshape(1, -1)], [0], None, [_FINE_BINS], [0, _FINE_BINS])
        counts = counts.ravel().astype(np.int64)
    else:
        counts = np.bincount(idx, minlength=_FINE_BINS)
    return counts.reshape(bins, -1).sum(axis=1), (idx, counts)


def glcm_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    distances: Sequence[int] = (1, 2, 3),
    angles: Sequence[float] = (0, 45, 90, 135),
    levels: int = 32,
    props: Sequence[str] = GLCM_PROPS,
    symmetric: bool = True,
) -> Features:
    """Haralick properties of the grey-level co-occurrence matrix (``skimage.feature.graycoprops``).

    The frame is quantised to ``levels`` grey levels (:func:`quantize`); with a mask, pixels
    outside it are moved to an extra level that is dropped from the matrix. ``angles`` are in
    degrees. Names are ``glcm_<prop>_d<distance>_a<angle>``, ordered prop, distance, angle.
    """
    for p in props:
        if p not in GLCM_PROPS:
            raise FeatureError(f"unknown GLCM property {p!r}; choose from {list(GLCM_PROPS)}")
    q = quantize(np.asarray(image) if np.asarray(image).ndim == 2 else to_gray(image), levels)
    m = _check_mask(mask, q.shape)
    n_levels = levels
    if m is not None:
        q = q.copy()
        q[~m] = levels
        n_levels = levels + 1
    rad = [float(np.deg2rad(a)) for a in angles]
    glcm = graycomatrix(q, distances=list(distances), angles=rad, levels=n_levels, symmetric=symmetric)
    glcm = glcm[:levels, :levels].astype(np.float64)
    sums = glcm.sum(axis=(0, 1), keepdims=True)
    glcm = np.divide(glcm, sums, out=np.zeros_like(glcm), where=sums > 0)
    vals = []
    names = []
    for p in props:
        v = graycoprops(glcm, p)
        vals.append(np.nan_to_num(v, nan=0.0).ravel())
        names += [f"glcm_{p}_d{d}_a{a:g}" for d in distances for a in angles]
    return np.concatenate(vals).astype(np.float64), names


def lbp_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    points: int = 8,
    radius: float = 1.0,
    method: Literal["uniform", "ror", "default", "nri_uniform", "var"] = "uniform",
    bins: int | None = None,
) -> Features:
    """Normalised histogram of local binary patterns (``skimage.feature.local_binary_pattern``).

    The frame is converted to uint8 grey levels first. ``bins`` defaults to ``points + 2``
    for ``uniform``, ``points * (points - 1) + 3`` for ``nri_uniform`` and ``2**points``
    otherwise (``var`` needs an explicit ``bins``). Names are ``lbp_p<P>_r<R>_<bin>``.
    """
    if method == "var" and bins is None:
        raise FeatureError("method='var' needs an explicit bins= count")
    if bins is None:
        bins = {"uniform": points + 2, "nri_uniform": points * (points - 1) + 3}.get(method, 2**points)
    q = quantize(image, 256)
    codes = local_binary_pattern(q, points, radius, method=method)
    m = _check_mask(mask, q.shape)
    x = codes[m] if m is not None else codes.ravel()
    names = [f"lbp_p{points}_r{radius:g}_{i:02d}" for i in range(bins)]
    if x.size == 0:
        return np.zeros(bins), names
    if method == "var":
        x = np.nan_to_num(x)
        hist = np.histogram(x, bins=bins, range=(0.0, float(x.max()) + 1e-12))[0]
    else:
        hist = np.histogram(x, bins=bins, range=(0, bins))[0]
    return (hist / x.size).astype(np.float64), names


def hog_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    orientations: int = 9,
    pixels_per_cell: int = 7,
    cells_per_block: int = 2,
    size: int | None = None,
    block_norm: Literal["L1", "L1-sqrt", "L2", "L2-Hys"] = "L2-Hys",
) -> Features:
    """Histogram of oriented gradients (``skimage.feature.hog``) of the [0, 1]-scaled frame.

    ``size`` resizes the frame to ``size x size`` first (``cv2.INTER_AREA``) so frames of any
    shape give the same vector length; with a mask, pixels outside it are set to 0 first.
    Names are ``hog_<index>``.
    """
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    if m is not None:
        unit = np.where(m, unit, 0.0)
    unit = _resize(unit, size)
    need = pixels_per_cell * cells_per_block
    if min(unit.shape) < need:
        raise FeatureError(
            f"frame {unit.shape} is smaller than one HOG block ({need} px); "
            "lower pixels_per_cell/cells_per_block or set size"
        )
    vals = hog(
        unit,
        orientations=orientations,
        pixels_per_cell=(pixels_per_cell, pixels_per_cell),
        cells_per_block=(cells_per_block, cells_per_block),
        block_norm=block_norm,
        feature_vector=True,
    )
    return np.asarray(vals, dtype=np.float64), [f"hog_{i:04d}" for i in range(vals.size)]


def region_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    min_area: int = 1,
    connectivity: int = 2,
) -> Features:
    """Shape of the mask's connected regions (``skimage.measure.regionprops``).

    Returns the region count, total/largest/mean area, total perimeter, the area fraction of
    the frame, and the area-weighted mean eccentricity, solidity and mean intensity (on the
    [0, 1]-scaled frame). Regions smaller than ``min_area`` pixels are ignored. Without a mask
    every value is 0.
    """
    names = [
        "region_count",
        "region_area_total",
        "region_area_largest",
        "region_area_mean",
        "region_perimeter_total",
        "region_area_fraction",
        "region_eccentricity_mean",
        "region_solidity_mean",
        "region_intensity_mean",
    ]
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    if m is None or not m.any():
        return np.zeros(len(names)), names
    labels = _cc_label(m, connectivity=connectivity)
    regions = [r for r in regionprops(labels, intensity_image=unit) if r.area >= min_area]
    if not regions:
        return np.zeros(len(names)), names
    areas = np.array([r.area for r in regions], dtype=np.float64)
    w = areas / areas.sum()
    vals = np.array(
        [
            len(regions),
            areas.sum(),
            areas.max(),
            areas.mean(),
            sum(float(r.perimeter) for r in regions),
            areas.sum() / unit.size,
            float(np.dot(w, [r.eccentricity for r in regions])),
            float(np.dot(w, [r.solidity for r in regions])),
            float(np.dot(w, [r.intensity_mean for r in regions])),
        ],
        dtype=np.float64,
    )
    return vals, names


def pixel_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    size: int | None = 14,
    normalize: Literal["unit", "zscore"] = "unit",
) -> Features:
    """Pixels of the frame resized to ``size x size`` (``cv2.INTER_AREA``; ``None`` keeps the shape).

    ``unit`` scales with :func:`to_unit`; ``zscore`` additionally standardises per image. With a
    mask, pixels outside it are set to 0 before resizing. Names are ``px_<row>_<col>``.
    """
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    if normalize == "zscore":
        sel = unit[m] if m is not None else unit
        sd = float(sel.std()) if sel.size else 0.0
        unit = (unit - (float(sel.mean()) if sel.size else 0.0)) / (sd if sd > 0 else 1.0)
    if m is not None:
        unit = np.where(m, unit, 0.0)
    small = _resize(unit, size)
    names = [f"px_{r:03d}_{c:03d}" for r in range(small.shape[0]) for c in range(small.shape[1])]
    return small.ravel().astype(np.float64), names


EXTRACTORS: dict[str, Callable[..., Features]] = {
    "intensity": intensity_features,
    "glcm": glcm_features,
    "lbp": lbp_features,
    "hog": hog_features,
    "region": region_features,
    "pixels": pixel_features,
}
