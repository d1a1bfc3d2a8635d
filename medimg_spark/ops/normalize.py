"""Normalisation ops. All return float32; non-finite pixels become 0; a constant image becomes all 0."""

from __future__ import annotations

import numpy as np

from medimg_spark.ops._common import Array, check_image, to_unit


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
