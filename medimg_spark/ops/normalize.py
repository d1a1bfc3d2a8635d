"""Normalisation ops. All return float32; non-finite pixels become 0; a constant image becomes all 0."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from medimg_spark.ops._common import Array, check_image, to_unit
from medimg_spark.ops._step import Meta, Step, register_step


def minmax(image: Array) -> Array:
    """Map the finite range ``[min, max]`` linearly to [0, 1] (float32)."""
    return to_unit(check_image(image)).astype(np.float32)


def zscore(image: Array, mask: Array | None = None) -> Array:
    """``(x - mean) / std`` over finite pixels (inside ``mask`` when given), float32; std 0 → all 0."""
    arr = check_image(image).astype(np.float64)
    finite = np.isfinite(arr)
    sel = finite if mask is None else finite & (mask != 0 if arr.ndim == 2 else (mask != 0)[..., None])
    values = arr[sel]
    if values.size == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    mean = float(values.mean())
    std = float(values.std())
    out = np.zeros(arr.shape) if std == 0 else (arr - mean) / std
    out[~finite] = 0.0
    return out.astype(np.float32)


def percentile_scale(image: Array, lower: float = 1.0, upper: float = 99.0, clip: bool = True) -> Array:
    """Map the ``lower``/``upper`` percentiles of the finite values to 0/1 (float32), clipped by default."""
    arr = check_image(image).astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.float32)
    lo, hi = np.percentile(arr[finite], [lower, upper])
    out = np.zeros(arr.shape) if hi <= lo else (arr - lo) / (hi - lo)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    out[~finite] = 0.0
    return out.astype(np.float32)


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


@register_step
class MinMax(Step):
    """Min-max to [0, 1], float32."""

    op: Literal["minmax"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return minmax(image)


@register_step
class ZScore(Step):
    """``(x - mean) / std``, float32; ``within_mask`` uses the current mask's pixels for the statistics."""

    op: Literal["zscore"]
    within_mask: bool = False

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        return zscore(image, mask if self.within_mask else None), mask


@register_step
class PercentileScale(Step):
    """Map the ``lower``/``upper`` percentiles to 0/1, float32."""

    op: Literal["percentile_scale"]
    lower: float = Field(1.0, ge=0, le=100)
    upper: float = Field(99.0, ge=0, le=100)
    clip: bool = True

    @model_validator(mode="after")
    def _order(self) -> PercentileScale:
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be < upper ({self.upper})")
        return self

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return percentile_scale(image, self.lower, self.upper, self.clip)
