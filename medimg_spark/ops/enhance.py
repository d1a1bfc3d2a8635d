"""Contrast enhancement ops. All preserve the dtype; 3-channel images are processed per channel.

Output range rule: :func:`contrast_stretch`, :func:`equalize` and :func:`clahe` write the dtype's
*display range* (uint8 [0, 255], uint16 [0, 65535], int16 [0, 32767], float32 [0, 1]).
OpenCV's histogram equalisation is 8-bit only and its CLAHE 8/16-bit only, so:

* ``equalize``: uint8 → :func:`cv2.equalizeHist`; any other dtype is min-max scaled to uint16 and
  equalised by the same algorithm with 65536 bins (:func:`equalize_lut`), then mapped to the display range.
* ``clahe``: uint8 and uint16 → :func:`cv2.createCLAHE` directly; int16 and float32 are min-max scaled to
  uint16 first, then mapped to the display range.

:func:`unsharp_mask` and :func:`gamma` stay within the image's own value range conventions (see each).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator, model_validator

from medimg_spark.ops._common import (
    Array,
    cast_like,
    check_image,
    display_range,
    finite_min_max,
    per_channel,
    to_uint,
    to_unit,
)
from medimg_spark.ops._step import Meta, Step, register_step


def _from_uint16(u16: Array, dtype: np.dtype[Any]) -> Array:
    """Map a uint16 result to the display range of ``dtype``."""
    if dtype == np.uint16:
        return u16
    _, top = display_range(dtype)
    return cast_like(u16.astype(np.float64) * (top / 65535.0), dtype)


def contrast_stretch(image: Array, lower: float = 2.0, upper: float = 98.0) -> Array:
    """Linear stretch of the ``lower``/``upper`` percentiles to the dtype's display range, clipped."""
    arr = check_image(image)
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
    x = arr.astype(np.float64)
    finite = np.isfinite(x)
    bottom, top = display_range(arr.dtype)
    if not finite.any():
        return cast_like(np.zeros(arr.shape), arr.dtype)
    p_lo, p_hi = np.percentile(x[finite], [lower, upper])
    unit = np.zeros(arr.shape) if p_hi <= p_lo else np.clip((x - p_lo) / (p_hi - p_lo), 0.0, 1.0)
    unit[~finite] = 0.0
    return cast_like(bottom + unit * (top - bottom), arr.dtype)


def equalize_lut(values: Array, levels: int) -> Array:
    """OpenCV's ``equalizeHist`` algorithm for unsigned integers with ``levels`` bins, in numpy.

    ``lut[v] = round(float32(cdf[v] - hist[vmin]) * float32((levels - 1) / (N - hist[vmin])))`` where
    ``vmin`` is the smallest value present; a constant image is returned unchanged.
    """
    hist = np.bincount(values.ravel(), minlength=levels)
    total = values.size
    first = int(np.flatnonzero(hist)[0])
    if hist[first] == total:
        return values.copy()
    scale = np.float32((levels - 1.0) / (total - hist[first]))
    cdf = np.cumsum(hist).astype(np.int64) - hist[first]
    lut = np.rint(cdf.astype(np.float32) * scale)
    lut[: first + 1] = 0
    return np.clip(lut, 0, levels - 1).astype(values.dtype)[values]


def equalize(image: Array) -> Array:
    """Global histogram equalisation (see the module doc for the non-uint8 rule)."""
    arr = check_image(image)
    if arr.dtype == np.uint8:
        return per_channel(cv2.equalizeHist, arr)

    def one(ch: Array) -> Array:
        u16, _, _ = to_uint(ch, 16)
        return _from_uint16(equalize_lut(u16, 65536), arr.dtype)

    return per_channel(one, arr)


@lru_cache(maxsize=16)
def get_clahe(clip_limit: float, tiles_rows: int, tiles_cols: int) -> Any:
    """A cached :class:`cv2.CLAHE` object (built once per Python worker and parameter set)."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles_cols, tiles_rows))


def clahe(image: Array, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)) -> Array:
    """Contrast-limited adaptive histogram equalisation, OpenCV (see module doc for the dtype rule).

    Args:
        image: the frame.
        clip_limit: OpenCV clip limit (contrast limit per tile; > 0).
        tile_grid: number of tiles as (rows, cols).
    """
    arr = check_image(image)
    if clip_limit <= 0 or min(tile_grid) < 1:
        raise ValueError(f"clip_limit must be > 0 and tile_grid >= 1, got {clip_limit}, {tile_grid}")
    op = get_clahe(float(clip_limit), int(tile_grid[0]), int(tile_grid[1]))
    if arr.dtype in (np.uint8, np.uint16):
        return per_channel(op.apply, arr)

    def one(ch: Array) -> Array:
        u16, _, _ = to_uint(ch, 16)
        return _from_uint16(op.apply(u16), arr.dtype)

    return per_channel(one, arr)


def unsharp_mask(image: Array, sigma: float = 1.0, amount: float = 1.0) -> Array:
    """``x + amount * (x - GaussianBlur(x, sigma))`` computed in float32 with OpenCV.

    Integer results are rounded and saturated to the dtype's range; float32 results are not clipped.
    """
    arr = check_image(image)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = arr.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), sigma)
    return cast_like(x + np.float32(amount) * (x - blurred), arr.dtype)


def gamma(image: Array, gamma: float = 1.0) -> Array:
    """Gamma curve on the image's own range: ``min + (max - min) * ((x - min) / (max - min)) ** gamma``.

    Dtype preserved; non-finite pixels map to ``min``; a constant image is returned unchanged.
    """
    arr = check_image(image)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    lo, hi = finite_min_max(arr)
    if hi <= lo:
        return arr.copy()
    return cast_like(lo + (hi - lo) * to_unit(arr) ** gamma, arr.dtype)


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


@register_step
class ContrastStretch(Step):
    """Stretch the ``lower``/``upper`` percentiles to the dtype's display range."""

    op: Literal["contrast_stretch"]
    lower: float = Field(2.0, ge=0, le=100)
    upper: float = Field(98.0, ge=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> ContrastStretch:
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be < upper ({self.upper})")
        return self

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return contrast_stretch(image, self.lower, self.upper)


@register_step
class Equalize(Step):
    """Global histogram equalisation (uint8: OpenCV; other dtypes via uint16, see ops.enhance)."""

    op: Literal["equalize"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return equalize(image)


@register_step
class Clahe(Step):
    """CLAHE (OpenCV); ``tile_grid`` is [rows, cols] of tiles."""

    op: Literal["clahe"]
    clip_limit: float = Field(2.0, gt=0, le=100)
    tile_grid: tuple[int, int] = (8, 8)

    @field_validator("tile_grid")
    @classmethod
    def _tiles(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1 or max(v) > 256:
            raise ValueError(f"tile counts must be between 1 and 256, got {list(v)}")
        return v

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return clahe(image, self.clip_limit, self.tile_grid)


@register_step
class UnsharpMask(Step):
    """Unsharp-mask sharpening ``x + amount * (x - blur_sigma(x))``."""

    op: Literal["unsharp_mask"]
    sigma: float = Field(1.0, gt=0, le=50)
    amount: float = Field(1.0, ge=0, le=20)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return unsharp_mask(image, self.sigma, self.amount)


@register_step
class Gamma(Step):
    """Gamma curve on the image's own range (dtype preserved)."""

    op: Literal["gamma"]
    gamma: float = Field(gt=0, le=20)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return gamma(image, self.gamma)
