"""Conversion ops: physical units, windowing, MONOCHROME1 inversion, resizing, cropping, to-float.

Output dtypes: :func:`rescale` → float32 (e.g. Hounsfield units); :func:`window` → float32 in [0, 1];
:func:`invert` and the geometric ops (:func:`resize`, :func:`resample_spacing`, :func:`crop`,
:func:`crop_foreground`) preserve the dtype; :func:`to_float` → float32.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from medimg_spark.ops._common import Array, check_image, finite_min_max, luma, to_unit

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
"""CT window presets as (centre, width) in Hounsfield units."""

Interpolation = Literal["nearest", "linear", "cubic", "area"]

_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


def rescale(image: Array, slope: float = 1.0, intercept: float = 0.0) -> Array:
    """Modality LUT: ``image * slope + intercept`` as float32 (stored values → physical units, e.g. HU)."""
    arr = check_image(image)
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


def window(image: Array, center: float, width: float) -> Array:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapped to float32 [0, 1].

    ``x <= c - 0.5 - (w - 1) / 2`` → 0, ``x > c - 0.5 + (w - 1) / 2`` → 1, otherwise
    ``(x - (c - 0.5)) / (w - 1) + 0.5``. Non-finite input stays non-finite.

    Raises:
        ValueError: ``width < 1``.
    """
    arr = check_image(image)
    if width < 1:
        raise ValueError(f"window width must be >= 1 (DICOM LINEAR window), got {width}")
    x = arr.astype(np.float64)
    c = center - 0.5
    w = width - 1.0
    if w == 0:
        out = (x > c).astype(np.float64)
    else:
        out = np.clip((x - c) / w + 0.5, 0.0, 1.0)
        out[x <= c - w / 2] = 0.0
        out[x > c + w / 2] = 1.0
    out[~np.isfinite(x)] = x[~np.isfinite(x)]
    return out.astype(np.float32)


def invert(image: Array) -> Array:
    """Intensity inversion within the image's own range: ``min + max - x`` (dtype preserved).

    Used for MONOCHROME1 frames, where low values are bright. Non-finite values stay as they are.
    """
    arr = check_image(image)
    lo, hi = finite_min_max(arr)
    if arr.dtype.kind == "f":
        return (np.float64(lo) + np.float64(hi) - arr.astype(np.float64)).astype(arr.dtype)
    return (int(lo) + int(hi) - arr.astype(np.int64)).astype(arr.dtype)


def fit_shape(shape: tuple[int, int], rows: int, cols: int) -> tuple[int, int]:
    """The (rows, cols) of ``shape`` scaled to fit inside ``rows x cols`` keeping the aspect ratio."""
    scale = min(rows / shape[0], cols / shape[1])
    return max(1, min(rows, round(shape[0] * scale))), max(1, min(cols, round(shape[1] * scale)))


def resize(
    image: Array,
    rows: int,
    cols: int,
    keep_aspect: bool = True,
    interpolation: Interpolation = "area",
    pad_value: float = 0.0,
) -> Array:
    """Resize with :func:`cv2.resize`; with ``keep_aspect`` fit inside and pad (centred) to ``rows x cols``.

    The dtype is preserved (also for masks: use ``interpolation="nearest"``).
    """
    arr = check_image(image) if image.dtype != np.uint8 else image
    if rows < 1 or cols < 1:
        raise ValueError(f"resize target must be at least 1x1, got {rows}x{cols}")
    nr, nc = fit_shape(arr.shape[:2], rows, cols) if keep_aspect else (rows, cols)
    out = arr
    if (nr, nc) != arr.shape[:2]:
        out = cv2.resize(arr, (nc, nr), interpolation=_INTERP[interpolation])
    if (nr, nc) != (rows, cols):
        top = (rows - nr) // 2
        left = (cols - nc) // 2
        value = [pad_value] * (arr.shape[2] if arr.ndim == 3 else 1)
        out = cv2.copyMakeBorder(
            out, top, rows - nr - top, left, cols - nc - left, cv2.BORDER_CONSTANT, value=value
        )
    return np.asarray(out, dtype=arr.dtype)


def resample_spacing(
    image: Array,
    pixel_spacing: tuple[float, float],
    target_spacing: float,
    interpolation: Interpolation = "area",
) -> Array:
    """Resize so that one pixel covers ``target_spacing`` mm in both directions (dtype preserved).

    Args:
        image: the frame.
        pixel_spacing: (row spacing, column spacing) in mm, as in DICOM PixelSpacing.
        target_spacing: the wanted isotropic spacing in mm.
        interpolation: OpenCV interpolation.
    """
    arr = check_image(image)
    if target_spacing <= 0 or min(pixel_spacing) <= 0:
        raise ValueError(f"spacings must be > 0, got pixel {pixel_spacing} target {target_spacing}")
    rows = max(1, round(arr.shape[0] * pixel_spacing[0] / target_spacing))
    cols = max(1, round(arr.shape[1] * pixel_spacing[1] / target_spacing))
    return resize(arr, rows, cols, keep_aspect=False, interpolation=interpolation)


def foreground_bbox(
    image: Array, threshold: float | None = None, margin: int = 0
) -> tuple[int, int, int, int]:
    """Bounding box ``(r0, r1, c0, c1)`` (half-open) of pixels whose luma exceeds ``threshold``.

    ``threshold=None`` means "above the finite minimum". The box grows by ``margin`` pixels and is
    clipped to the image; without foreground the whole image is returned.
    """
    arr = check_image(image) if image.dtype != np.uint8 else image
    g = luma(arr)
    thr = finite_min_max(g)[0] if threshold is None else threshold
    fg = np.isfinite(g) & (g > thr)
    if not fg.any():
        return 0, arr.shape[0], 0, arr.shape[1]
    rr = np.flatnonzero(fg.any(axis=1))
    cc = np.flatnonzero(fg.any(axis=0))
    r0 = max(0, int(rr[0]) - margin)
    r1 = min(arr.shape[0], int(rr[-1]) + 1 + margin)
    c0 = max(0, int(cc[0]) - margin)
    c1 = min(arr.shape[1], int(cc[-1]) + 1 + margin)
    return r0, r1, c0, c1


def crop(image: Array, bbox: tuple[int, int, int, int]) -> Array:
    """Crop ``image[r0:r1, c0:c1]`` (a copy, dtype preserved)."""
    r0, r1, c0, c1 = bbox
    return np.ascontiguousarray(image[r0:r1, c0:c1])


def crop_foreground(image: Array, threshold: float | None = None, margin: int = 0) -> Array:
    """Crop to :func:`foreground_bbox` (dtype preserved)."""
    return crop(image, foreground_bbox(image, threshold, margin))


def to_float(image: Array, scale: Literal["none", "dtype", "minmax"] = "none") -> Array:
    """Convert to float32.

    Args:
        image: the frame.
        scale: ``"none"`` keeps values; ``"dtype"`` divides integers by the dtype maximum like
            :func:`skimage.util.img_as_float32` (uint → [0, 1], int16 → [-1, 1]; floats unchanged);
            ``"minmax"`` maps the finite range to [0, 1] (non-finite → 0, constant → 0).
    """
    arr = check_image(image)
    if scale == "minmax":
        return to_unit(arr).astype(np.float32)
    if scale == "dtype" and arr.dtype.kind in "ui":
        out = arr.astype(np.float32) * np.float32(1.0 / np.iinfo(arr.dtype).max)
        return np.maximum(out, np.float32(-1.0)) if arr.dtype.kind == "i" else out
    return arr.astype(np.float32)
