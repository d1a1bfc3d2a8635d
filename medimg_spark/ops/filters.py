"""Smoothing filters. Every filter preserves the input dtype and shape (1 or 3 channels).

OpenCV is called directly where it has a kernel for the dtype; otherwise the filter runs on a float32
copy and the result is cast back (round half to even, saturated). Intensity-like parameters
(``sigma_color``, ``h``) are fractions of the image's finite range ``max - min``, so one recipe
behaves the same on uint8 radiographs and int16 CT. Non-finite values propagate: clean them first.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator
from scipy import ndimage

from medimg_spark.ops._common import (
    Array,
    cast_like,
    check_image,
    finite_min_max,
    noise_sigma_mad,
    per_channel,
    to_unit,
)
from medimg_spark.ops._step import Meta, Step, odd_positive, register_step


def _odd(ksize: int, name: str = "ksize") -> int:
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer, got {ksize}")
    return ksize


def mean_filter(image: Array, ksize: int = 3) -> Array:
    """Box (mean) filter, :func:`cv2.blur` with a ``ksize x ksize`` kernel, reflect-101 borders."""
    arr = check_image(image)
    _odd(ksize)
    return np.asarray(cv2.blur(arr, (ksize, ksize)), dtype=arr.dtype)


def median_filter(image: Array, ksize: int = 3) -> Array:
    """Median filter: :func:`cv2.medianBlur` (replicated borders).

    OpenCV supports every odd ``ksize`` for uint8 but only 3 and 5 for the other dtypes; larger kernels on
    those use :func:`scipy.ndimage.median_filter` with ``mode="nearest"``, the same border rule.
    """
    arr = check_image(image)
    _odd(ksize)
    if ksize == 1:
        return arr.copy()
    if arr.dtype == np.uint8 or ksize in (3, 5):
        return np.asarray(cv2.medianBlur(arr, ksize), dtype=arr.dtype)
    return per_channel(lambda ch: ndimage.median_filter(ch, size=ksize, mode="nearest"), arr)


def gaussian_filter(image: Array, sigma: float = 1.0, ksize: int = 0) -> Array:
    """Gaussian blur, :func:`cv2.GaussianBlur`; ``ksize=0`` derives the kernel size from ``sigma``."""
    arr = check_image(image)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if ksize:
        _odd(ksize)
    return np.asarray(cv2.GaussianBlur(arr, (ksize, ksize), sigma), dtype=arr.dtype)


def bilateral_filter(
    image: Array, diameter: int = 5, sigma_color: float = 0.1, sigma_space: float = 2.0
) -> Array:
    """Edge-preserving bilateral filter, :func:`cv2.bilateralFilter` on a float32 copy.

    Args:
        image: the frame.
        diameter: pixel neighbourhood diameter (``<= 0``: derived from ``sigma_space``).
        sigma_color: range sigma as a fraction of the image's finite range ``max - min``.
        sigma_space: spatial sigma in pixels.
    """
    arr = check_image(image)
    if sigma_color <= 0 or sigma_space <= 0:
        raise ValueError(f"sigma_color and sigma_space must be > 0, got {sigma_color}, {sigma_space}")
    lo, hi = finite_min_max(arr)
    sc = sigma_color * (hi - lo) if hi > lo else 1.0
    out = cv2.bilateralFilter(arr.astype(np.float32), diameter, sc, sigma_space)
    return cast_like(out, arr.dtype)


def nl_means_filter(
    image: Array, h: float | None = None, patch_size: int = 5, patch_distance: int = 6
) -> Array:
    """Non-local means, :func:`skimage.restoration.denoise_nl_means` (fast mode) on the [0, 1]-scaled image.

    Args:
        image: the frame (3 channels are denoised jointly).
        h: filter strength as a fraction of the image's finite range; ``None`` uses
            ``0.8 * sigma``, with sigma the wavelet-MAD noise estimate of the scaled image.
        patch_size: side of the compared patches (pixels).
        patch_distance: maximal search distance (pixels).
    """
    from skimage.restoration import denoise_nl_means

    arr = check_image(image)
    if h is not None and h <= 0:
        raise ValueError(f"h must be > 0, got {h}")
    lo, hi = finite_min_max(arr)
    if hi <= lo:
        return arr.copy()
    unit = to_unit(arr)
    strength = h if h is not None else 0.8 * noise_sigma_mad(unit)
    if not np.isfinite(strength) or strength <= 0:
        return arr.copy()
    out = denoise_nl_means(
        unit,
        h=strength,
        patch_size=patch_size,
        patch_distance=patch_distance,
        fast_mode=True,
        channel_axis=-1 if arr.ndim == 3 else None,
    )
    return cast_like(out * (hi - lo) + lo, arr.dtype)


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


class _Kernel(Step):
    ksize: int = 3

    @field_validator("ksize")
    @classmethod
    def _odd(cls, v: int) -> int:
        return odd_positive(v)


@register_step
class Mean(_Kernel):
    """Box filter (dtype preserved)."""

    op: Literal["mean"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return mean_filter(image, self.ksize)


@register_step
class Median(_Kernel):
    """Median filter (dtype preserved)."""

    op: Literal["median"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return median_filter(image, self.ksize)


@register_step
class Gaussian(Step):
    """Gaussian blur (dtype preserved); ``ksize: 0`` derives the kernel from ``sigma``."""

    op: Literal["gaussian"]
    sigma: float = Field(1.0, gt=0, le=100)
    ksize: int = 0

    @field_validator("ksize")
    @classmethod
    def _odd(cls, v: int) -> int:
        return v if v == 0 else odd_positive(v)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return gaussian_filter(image, self.sigma, self.ksize)


@register_step
class Bilateral(Step):
    """Bilateral filter; ``sigma_color`` is a fraction of the image range (dtype preserved)."""

    op: Literal["bilateral"]
    diameter: int = Field(5, ge=-1, le=31)
    sigma_color: float = Field(0.1, gt=0)
    sigma_space: float = Field(2.0, gt=0)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return bilateral_filter(image, self.diameter, self.sigma_color, self.sigma_space)


@register_step
class NLMeans(Step):
    """Non-local means; ``h`` is a fraction of the image range, ``null`` = 0.8 x estimated noise σ."""

    op: Literal["nl_means"]
    h: float | None = Field(None, gt=0)
    patch_size: int = Field(5, ge=1, le=21)
    patch_distance: int = Field(6, ge=1, le=30)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return nl_means_filter(image, self.h, self.patch_size, self.patch_distance)
