"""Segmentation ops: each returns a ``uint8`` mask of shape (rows, cols) holding 0 and 1.

3-channel images are segmented on their BT.601 luma. Ops built on 8-bit OpenCV functions
(:func:`adaptive_threshold`, :func:`canny_fill`) min-max scale non-uint8 input to uint8 first, so their
intensity parameters are on the 0..255 scale of that scaled image. Non-finite pixels are background.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator, model_validator

from medimg_spark.ops._common import (
    Array,
    RecipeConfigError,
    check_image,
    finite_min_max,
    gray,
    luma,
    to_uint,
    to_unit,
)
from medimg_spark.ops._step import Meta, Step, odd_positive, register_step

Select = Literal["bright", "dark"]


def _gray_unit(image: Array) -> Array:
    return to_unit(luma(check_image(image)))


def _otsu(values: Array) -> float:
    from skimage.filters import threshold_otsu

    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.min() == finite.max():
        return float(finite.max()) if finite.size else 0.0
    return float(threshold_otsu(finite))


def threshold(image: Array, value: float, invert: bool = False) -> Array:
    """Fixed threshold on luma in the image's own units: ``x > value`` (``x <= value`` when ``invert``)."""
    g = luma(check_image(image))
    fg = (g <= value) if invert else (g > value)
    return (fg & np.isfinite(g)).astype(np.uint8)


def otsu_threshold(image: Array, invert: bool = False) -> Array:
    """Otsu threshold (:func:`skimage.filters.threshold_otsu` on the finite luma): ``x > t``.

    A constant image gives an all-zero mask (all-one with ``invert``).
    """
    g = luma(check_image(image))
    t = _otsu(g)
    fg = (g <= t) if invert else (g > t)
    return (fg & np.isfinite(g)).astype(np.uint8)


def adaptive_threshold(
    image: Array,
    block_size: int = 11,
    offset: float = 2.0,
    method: Literal["mean", "gaussian"] = "gaussian",
    invert: bool = False,
) -> Array:
    """Local threshold, :func:`cv2.adaptiveThreshold`: ``x > local_mean(block_size) - offset``.

    ``offset`` is on the 0..255 scale (non-uint8 input is min-max scaled to uint8 first). A frame
    without contrast (constant or all non-finite) gives an all-zero mask.
    """
    arr = check_image(image)
    if block_size < 3 or block_size % 2 == 0:
        raise ValueError(f"block_size must be an odd integer >= 3, got {block_size}")
    lo, hi = finite_min_max(luma(arr))
    if hi <= lo:
        return np.zeros(arr.shape[:2], dtype=np.uint8)
    u8, _, _ = to_uint(gray(arr), 8)
    kind = cv2.ADAPTIVE_THRESH_MEAN_C if method == "mean" else cv2.ADAPTIVE_THRESH_GAUSSIAN_C
    mode = cv2.THRESH_BINARY_INV if invert else cv2.THRESH_BINARY
    return np.asarray(cv2.adaptiveThreshold(u8, 1, kind, mode, block_size, offset), dtype=np.uint8)


def canny_fill(
    image: Array,
    low: float = 50.0,
    high: float = 150.0,
    sigma: float = 1.0,
    close_ksize: int = 3,
    min_area: float = 0.0,
) -> Array:
    """Edge-based segmentation: Gaussian blur → :func:`cv2.Canny` → morphological closing of the edges →
    outer contours (:func:`cv2.findContours`) filled with :func:`cv2.drawContours`.

    Args:
        image: the frame (non-uint8 is min-max scaled to uint8).
        low: lower Canny hysteresis threshold (0..255 gradient scale).
        high: upper Canny hysteresis threshold.
        sigma: pre-blur sigma in pixels (0 = none).
        close_ksize: elliptical closing kernel that joins broken edges (0 or 1 = none).
        min_area: contours enclosing less area (pixels) are dropped.
    """
    arr = check_image(image)
    u8, _, _ = to_uint(gray(arr), 8)
    if sigma > 0:
        u8 = cv2.GaussianBlur(u8, (0, 0), sigma)
    edges = cv2.Canny(u8, low, high)
    if close_ksize > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_ksize, close_ksize))
        edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    keep = [c for c in contours if cv2.contourArea(c) >= min_area]
    mask = np.zeros(u8.shape, dtype=np.uint8)
    if keep:
        cv2.drawContours(mask, keep, -1, 1, thickness=cv2.FILLED)
    return mask


def watershed(image: Array, margin: float = 0.1) -> Array:
    """Marker-based watershed (:func:`skimage.segmentation.watershed`) on the Sobel gradient.

    On the [0, 1]-scaled luma with Otsu threshold ``t``: background markers where ``x < t - margin``,
    foreground markers where ``x > t + margin``; the mask is the region flooded from the foreground.
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed as sk_watershed

    unit = _gray_unit(image)
    t = _otsu(unit)
    markers = np.zeros(unit.shape, dtype=np.int32)
    markers[unit < t - margin] = 1
    markers[unit > t + margin] = 2
    if not (markers == 2).any():
        return np.zeros(unit.shape, dtype=np.uint8)
    if not (markers == 1).any():
        return np.ones(unit.shape, dtype=np.uint8)
    labels = sk_watershed(sobel(unit), markers)
    return (labels == 2).astype(np.uint8)


def texture_features(image: Array, window: int = 7) -> Array:
    """Per-pixel texture features, shape (rows, cols, 5), float64.

    Local mean and local std of the [0, 1]-scaled luma (box ``window``), local mean of the uniform LBP
    code (P=8, R=1, :func:`skimage.feature.local_binary_pattern`, divided by 9), and the Gabor
    magnitude (:func:`cv2.getGaborKernel`, averaged over 4 orientations) at wavelengths 4 and 8 pixels.
    """
    from skimage.feature import local_binary_pattern

    unit = _gray_unit(image)
    box = (window, window)
    mean = cv2.blur(unit, box)
    std = np.sqrt(np.maximum(cv2.blur(unit * unit, box) - mean * mean, 0.0))
    u8 = np.rint(unit * 255).astype(np.uint8)
    lbp = cv2.blur(local_binary_pattern(u8, 8, 1, method="uniform") / 9.0, box)
    feats = [mean, std, lbp]
    for wavelength in (4.0, 8.0):
        acc = np.zeros(unit.shape)
        for theta in np.arange(4) * np.pi / 4:
            ksize = int(2 * round(wavelength) + 1)
            real = cv2.getGaborKernel((ksize, ksize), wavelength / 2, theta, wavelength, 0.5, 0)
            imag = cv2.getGaborKernel((ksize, ksize), wavelength / 2, theta, wavelength, 0.5, np.pi / 2)
            re = cv2.filter2D(unit, cv2.CV_64F, real)
            im = cv2.filter2D(unit, cv2.CV_64F, imag)
            acc += np.sqrt(re * re + im * im)
        feats.append(cv2.blur(acc / 4, box))
    return np.stack(feats, axis=2)


def texture_kmeans(
    image: Array,
    n_clusters: int = 2,
    window: int = 7,
    select: Select = "bright",
    max_iter: int = 50,
) -> Array:
    """Texture segmentation: :func:`texture_features` (z-scored) clustered with :func:`cv2.kmeans`.

    k-means starts from intensity quantile bins (``KMEANS_USE_INITIAL_LABELS``), so the result is
    deterministic without a random seed. The mask is the cluster with the highest
    (``select="bright"``) or lowest mean intensity.
    """
    feats = texture_features(image, window)
    rows, cols, n = feats.shape
    x = feats.reshape(-1, n)
    std = x.std(axis=0)
    x = ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)
    k = min(n_clusters, rows * cols)
    intensity = feats[..., 0].ravel()
    edges = np.quantile(intensity, np.linspace(0, 1, k + 1)[1:-1])
    init = np.searchsorted(edges, intensity, side="right").astype(np.int32)
    if k < 2 or np.unique(init).size < k:
        return np.zeros((rows, cols), dtype=np.uint8)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, max_iter, 1e-4)
    _, labels, _ = cv2.kmeans(x, k, init.reshape(-1, 1), criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    labels = labels.ravel()
    means = np.array([intensity[labels == i].mean() if (labels == i).any() else np.nan for i in range(k)])
    chosen = int(np.nanargmax(means) if select == "bright" else np.nanargmin(means))
    return (labels == chosen).reshape(rows, cols).astype(np.uint8)


def superpixels(
    image: Array,
    method: Literal["slic", "quickshift"] = "slic",
    n_segments: int = 100,
    compactness: float = 0.1,
    sigma: float = 1.0,
    kernel_size: float = 3.0,
    max_dist: float = 6.0,
    ratio: float = 0.5,
) -> Array:
    """Superpixel label image (int32, labels from 0) of the [0, 1]-scaled luma.

    ``slic``: :func:`skimage.segmentation.slic` (``n_segments``, ``compactness``, ``sigma``).
    ``quickshift``: :func:`skimage.segmentation.quickshift` on the grey value repeated in 3 channels
    (``kernel_size``, ``max_dist``, ``ratio``, ``sigma``), without Lab conversion.
    """
    from skimage.segmentation import quickshift, slic

    unit = _gray_unit(image)
    labels: Any
    if method == "slic":
        labels = slic(
            unit,
            n_segments=n_segments,
            compactness=compactness,
            sigma=sigma,
            channel_axis=None,
            start_label=0,
        )
    else:
        rgb = np.repeat(unit[:, :, None], 3, axis=2)
        labels = quickshift(
            rgb, ratio=ratio, kernel_size=kernel_size, max_dist=max_dist, sigma=sigma, convert2lab=False
        )
    return np.asarray(labels, dtype=np.int32)


def superpixel_mask(image: Array, select: Select = "dark", **params: Any) -> Array:
    """Region mask from superpixels: each superpixel gets its mean intensity, the Otsu threshold of that
    piecewise-constant image splits them, and the darker (``select="dark"``, e.g. lungs on a chest
    X-ray) or brighter side becomes the mask. ``params`` go to :func:`superpixels`.
    """
    unit = _gray_unit(image)
    labels = superpixels(image, **params)
    sums = np.bincount(labels.ravel(), weights=unit.ravel())
    counts = np.bincount(labels.ravel())
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    piecewise = means[labels]
    t = _otsu(piecewise)
    fg = piecewise <= t if select == "dark" else piecewise > t
    if piecewise.min() == piecewise.max():
        fg = np.zeros(unit.shape, dtype=bool)
    return fg.astype(np.uint8)


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


class _Segment(Step):
    kind: ClassVar[Literal["image", "segment", "mask", "geometry"]] = "segment"
    combine: Literal["replace", "and", "or"] = "replace"

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        raise RecipeConfigError(f"op '{self.op}' has no segmentation")

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        new = self.make_mask(image, meta)
        if mask is None or self.combine == "replace":
            return image, new
        return image, (
            np.logical_and(mask, new) if self.combine == "and" else np.logical_or(mask, new)
        ).astype(np.uint8)


@register_step
class Threshold(_Segment):
    """Fixed threshold ``x > value`` in the image's current units."""

    op: Literal["threshold"]
    value: float
    invert: bool = False

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return threshold(image, self.value, self.invert)


@register_step
class Otsu(_Segment):
    """Otsu threshold."""

    op: Literal["otsu"]
    invert: bool = False

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return otsu_threshold(image, self.invert)


@register_step
class AdaptiveThreshold(_Segment):
    """Local (adaptive) threshold; ``offset`` on the 0..255 scale."""

    op: Literal["adaptive_threshold"]
    block_size: int = Field(11, ge=3, le=255)
    offset: float = 2.0
    method: Literal["mean", "gaussian"] = "gaussian"
    invert: bool = False

    @field_validator("block_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        return odd_positive(v)

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return adaptive_threshold(image, self.block_size, self.offset, self.method, self.invert)


@register_step
class CannyFill(_Segment):
    """Edge-based segmentation: Canny → closing → filled outer contours."""

    op: Literal["canny_fill"]
    low: float = Field(50.0, ge=0, le=1020)
    high: float = Field(150.0, ge=0, le=1020)
    sigma: float = Field(1.0, ge=0, le=20)
    close_ksize: int = Field(3, ge=0, le=51)
    min_area: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> CannyFill:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return canny_fill(image, self.low, self.high, self.sigma, self.close_ksize, self.min_area)


@register_step
class Watershed(_Segment):
    """Marker watershed on the Sobel gradient, markers at Otsu ± ``margin``."""

    op: Literal["watershed"]
    margin: float = Field(0.1, ge=0, lt=0.5)

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return watershed(image, self.margin)


@register_step
class TextureKMeans(_Segment):
    """LBP/Gabor/local-statistics features clustered with k-means."""

    op: Literal["texture_kmeans"]
    n_clusters: int = Field(2, ge=2, le=16)
    window: int = Field(7, ge=1, le=63)
    select: Literal["bright", "dark"] = "bright"
    max_iter: int = Field(50, ge=1, le=1000)

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return texture_kmeans(image, self.n_clusters, self.window, self.select, self.max_iter)


@register_step
class Superpixels(_Segment):
    """Superpixels (SLIC or quickshift) → Otsu on superpixel means → dark or bright region mask."""

    op: Literal["superpixels"]
    method: Literal["slic", "quickshift"] = "slic"
    n_segments: int = Field(100, ge=2, le=100000)
    compactness: float = Field(0.1, gt=0)
    sigma: float = Field(1.0, ge=0)
    kernel_size: float = Field(3.0, gt=0)
    max_dist: float = Field(6.0, gt=0)
    ratio: float = Field(0.5, ge=0, le=1)
    select: Literal["bright", "dark"] = "dark"

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return superpixel_mask(
            image,
            select=self.select,
            method=self.method,
            n_segments=self.n_segments,
            compactness=self.compactness,
            sigma=self.sigma,
            kernel_size=self.kernel_size,
            max_dist=self.max_dist,
            ratio=self.ratio,
        )
