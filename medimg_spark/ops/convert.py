"""Conversion ops: physical units, windowing, MONOCHROME1 inversion, resizing, cropping, to-float.

Output dtypes: :func:`rescale` → float32 (e.g. Hounsfield units); :func:`window` → float32 in [0, 1];
:func:`invert` and the geometric ops (:func:`resize`, :func:`resample_spacing`, :func:`crop`,
:func:`crop_foreground`) preserve the dtype; :func:`to_float` → float32.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from medimg_spark.ops._common import Array, MissingMetadataError, check_image, finite_min_max, luma, to_unit
from medimg_spark.ops._step import Meta, Step, meta_value, register_step

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


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


@register_step
class Rescale(Step):
    """Stored values → physical units (HU for CT). ``None`` takes RescaleSlope/Intercept from the header."""

    op: Literal["rescale"]
    slope: float | None = None
    intercept: float | None = None
    require_header: bool = False

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        slope = self.slope if self.slope is not None else meta_value(meta, "rescale_slope")
        intercept = self.intercept if self.intercept is not None else meta_value(meta, "rescale_intercept")
        if self.require_header and (slope is None or intercept is None):
            raise MissingMetadataError(
                "frame has no RescaleSlope/RescaleIntercept; set slope/intercept in the step "
                "or require_header: false"
            )
        return rescale(image, 1.0 if slope is None else float(slope), float(intercept or 0.0))


@register_step
class Window(Step):
    """VOI window to [0, 1]: explicit ``center``/``width``, a ``preset``, or ``from_header``."""

    op: Literal["window"]
    center: float | None = None
    width: float | None = Field(None, ge=1)
    preset: Literal["lung", "mediastinum", "bone", "brain"] | None = None
    from_header: bool = False
    fallback_preset: Literal["lung", "mediastinum", "bone", "brain"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Window:
        explicit = self.center is not None or self.width is not None
        if explicit and (self.center is None or self.width is None):
            raise ValueError("give both center and width (e.g. center: -600, width: 1500)")
        sources = int(explicit) + int(self.preset is not None) + int(self.from_header)
        if sources != 1:
            raise ValueError(
                "give exactly one window source: center+width, preset (lung, mediastinum, bone, brain) "
                "or from_header: true"
            )
        if self.fallback_preset is not None and not self.from_header:
            raise ValueError("fallback_preset only applies with from_header: true")
        return self

    def resolve(self, meta: Meta | None) -> tuple[float, float]:
        """The (centre, width) used for a frame with header values ``meta``."""
        if self.preset is not None:
            return WINDOW_PRESETS[self.preset]
        if self.center is not None and self.width is not None:
            return self.center, self.width
        c, w = meta_value(meta, "window_center"), meta_value(meta, "window_width")
        if c is not None and w is not None and float(w) >= 1:
            return float(c), float(w)
        if self.fallback_preset is not None:
            return WINDOW_PRESETS[self.fallback_preset]
        raise MissingMetadataError(
            "frame has no usable WindowCenter/WindowWidth; add fallback_preset or use an explicit window"
        )

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        center, width = self.resolve(meta)
        return window(image, center, width)


@register_step
class InvertMonochrome1(Step):
    """Invert MONOCHROME1 frames (photometric from the header) so that high values are bright."""

    op: Literal["invert_monochrome1"]
    force: bool = False

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        photometric = str(meta_value(meta, "photometric") or "").upper()
        if self.force or photometric == "MONOCHROME1":
            return invert(image)
        return image


@register_step
class ToFloat(Step):
    """Convert to float32 (``scale``: none, dtype like img_as_float32, or minmax)."""

    op: Literal["to_float"]
    scale: Literal["none", "dtype", "minmax"] = "dtype"

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return to_float(image, self.scale)


class _Geometry(Step):
    kind: ClassVar[Literal["image", "segment", "mask", "geometry"]] = "geometry"


@register_step
class Resize(_Geometry):
    """Resize to ``rows`` x ``cols`` (keeping the aspect ratio and padding by default); masks follow."""

    op: Literal["resize"]
    rows: int = Field(ge=1, le=16384)
    cols: int = Field(ge=1, le=16384)
    keep_aspect: bool = True
    interpolation: Literal["nearest", "linear", "cubic", "area"] = "area"
    pad_value: float = 0.0

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        out = resize(image, self.rows, self.cols, self.keep_aspect, self.interpolation, self.pad_value)
        if mask is not None:
            mask = resize(mask, self.rows, self.cols, self.keep_aspect, "nearest", 0.0)
        return out, mask


@register_step
class ResampleSpacing(_Geometry):
    """Resize so that a pixel covers ``spacing`` mm (needs PixelSpacing; masks follow)."""

    op: Literal["resample_spacing"]
    spacing: float = Field(gt=0)
    interpolation: Literal["nearest", "linear", "cubic", "area"] = "area"
    skip_without_spacing: bool = False

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        ps = meta_value(meta, "pixel_spacing")
        if ps is None or len(ps) < 2:
            if self.skip_without_spacing:
                return image, mask
            raise MissingMetadataError("frame has no PixelSpacing; set skip_without_spacing: true to pass it")
        spacing = (float(ps[0]), float(ps[1]))
        out = resample_spacing(image, spacing, self.spacing, self.interpolation)
        if mask is not None:
            mask = resize(mask, out.shape[0], out.shape[1], False, "nearest")
        return out, mask


@register_step
class CropForeground(_Geometry):
    """Crop image (and mask) to the bounding box of luma > ``threshold`` (default: > minimum)."""

    op: Literal["crop_foreground"]
    threshold: float | None = None
    margin: int = Field(0, ge=0)

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        bbox = foreground_bbox(image, self.threshold, self.margin)
        return crop(image, bbox), None if mask is None else crop(mask, bbox)
