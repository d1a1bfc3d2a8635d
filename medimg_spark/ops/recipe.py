"""Recipes: an ordered list of typed op steps, loaded from YAML and validated before any Spark work.

A recipe file::

    name: ct_lung
    description: HU -> lung window -> denoise -> CLAHE
    steps:
      - op: rescale
      - op: window
        preset: lung
      - op: clahe
        clip_limit: 2.0

Every op has one pydantic model (``extra="forbid"``, typed parameters) and the step list is a
discriminated union on ``op``, so a bad recipe fails in :func:`load_recipe` with a
:class:`RecipeConfigError` naming the step index, the op, the parameter and the fix.

Running a recipe (:func:`apply_recipe`) threads ``(image, mask)`` through the steps, MONAI-``Compose``
style: image ops replace the image, segmentation ops replace (or combine into) the mask, mask ops
post-process the mask, and geometric ops (resize, crop) move image and mask together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medimg_spark import resources as shipped_resources
from medimg_spark.errors import ConfigError
from medimg_spark.ops import clean, convert, enhance, filters, morphology, normalize, segment
from medimg_spark.ops._common import (
    Array,
    MissingMetadataError,
    RecipeConfigError,
    RecipeStepError,
    as_supported,
)

Meta = Mapping[str, Any]

RECIPES_DIR = shipped_resources.root().joinpath("recipes")
"""The shipped recipes (``medimg_spark/resources/recipes``; a folder inside the wheel when zipped)."""


class RecipeFileError(RecipeConfigError, ConfigError):
    """The recipe file is missing, is not YAML or is invalid (a :class:`~medimg_spark.errors.ConfigError`)."""


def _meta_value(meta: Meta | None, key: str) -> Any:
    if meta is None:
        return None
    value = meta.get(key)
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def _odd_positive(value: int) -> int:
    if value < 1 or value % 2 == 0:
        raise ValueError(f"must be a positive odd integer such as 3, 5 or 7, got {value}")
    return value


class Step(BaseModel):
    """Base of every step model. ``kind`` says what the step reads and writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[Literal["image", "segment", "mask", "geometry"]] = "image"
    op: str

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        """Transform the image (``kind == "image"``)."""
        raise RecipeConfigError(f"op '{self.op}' has no image transform")

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        """Apply this step to the ``(image, mask)`` state."""
        return self.image_op(image, meta), mask


# --- clean ------------------------------------------------------------------------------------------


class FlagEmpty(Step):
    """Quarantine frames that are too small, constant or mostly non-finite (:func:`clean.flag_empty`)."""

    op: Literal["flag_empty"]
    min_rows: int = Field(2, ge=1)
    min_cols: int = Field(2, ge=1)
    min_range: float = Field(0.0, ge=0)
    max_nonfinite_fraction: float = Field(0.0, ge=0, le=1)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return clean.flag_empty(
            image, self.min_rows, self.min_cols, self.min_range, self.max_nonfinite_fraction
        )


class ReplaceNonfinite(Step):
    """NaN → ``nan``, ±inf → ``posinf``/``neginf`` (default finite max/min)."""

    op: Literal["replace_nonfinite"]
    nan: float = 0.0
    posinf: float | None = None
    neginf: float | None = None

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return clean.replace_nonfinite(image, self.nan, self.posinf, self.neginf)


class Clip(Step):
    """Clip to absolute bounds (``minimum``/``maximum``) and/or percentiles."""

    op: Literal["clip"]
    minimum: float | None = None
    maximum: float | None = None
    lower_percentile: float | None = Field(None, ge=0, le=100)
    upper_percentile: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _bounds(self) -> Clip:
        if all(v is None for v in (self.minimum, self.maximum, self.lower_percentile, self.upper_percentile)):
            raise ValueError("give at least one of minimum, maximum, lower_percentile, upper_percentile")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} must be <= maximum {self.maximum}")
        lo, hi = self.lower_percentile, self.upper_percentile
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"lower_percentile {lo} must be < upper_percentile {hi}")
        return self

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return clean.clip(image, self.minimum, self.maximum, self.lower_percentile, self.upper_percentile)


# --- convert ----------------------------------------------------------------------------------------


class Rescale(Step):
    """Stored values → physical units (HU for CT). ``None`` takes RescaleSlope/Intercept from the header."""

    op: Literal["rescale"]
    slope: float | None = None
    intercept: float | None = None
    require_header: bool = False

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        slope = self.slope if self.slope is not None else _meta_value(meta, "rescale_slope")
        intercept = self.intercept if self.intercept is not None else _meta_value(meta, "rescale_intercept")
        if self.require_header and (slope is None or intercept is None):
            raise MissingMetadataError(
                "frame has no RescaleSlope/RescaleIntercept; set slope/intercept in the step "
                "or require_header: false"
            )
        return convert.rescale(image, 1.0 if slope is None else float(slope), float(intercept or 0.0))


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
            return convert.WINDOW_PRESETS[self.preset]
        if self.center is not None and self.width is not None:
            return self.center, self.width
        c, w = _meta_value(meta, "window_center"), _meta_value(meta, "window_width")
        if c is not None and w is not None and float(w) >= 1:
            return float(c), float(w)
        if self.fallback_preset is not None:
            return convert.WINDOW_PRESETS[self.fallback_preset]
        raise MissingMetadataError(
            "frame has no usable WindowCenter/WindowWidth; add fallback_preset or use an explicit window"
        )

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        center, width = self.resolve(meta)
        return convert.window(image, center, width)


class InvertMonochrome1(Step):
    """Invert MONOCHROME1 frames (photometric from the header) so that high values are bright."""

    op: Literal["invert_monochrome1"]
    force: bool = False

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        photometric = str(_meta_value(meta, "photometric") or "").upper()
        if self.force or photometric == "MONOCHROME1":
            return convert.invert(image)
        return image


class ToFloat(Step):
    """Convert to float32 (``scale``: none, dtype like img_as_float32, or minmax)."""

    op: Literal["to_float"]
    scale: Literal["none", "dtype", "minmax"] = "dtype"

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return convert.to_float(image, self.scale)


class _Geometry(Step):
    kind: ClassVar[Literal["image", "segment", "mask", "geometry"]] = "geometry"


class Resize(_Geometry):
    """Resize to ``rows`` x ``cols`` (keeping the aspect ratio and padding by default); masks follow."""

    op: Literal["resize"]
    rows: int = Field(ge=1, le=16384)
    cols: int = Field(ge=1, le=16384)
    keep_aspect: bool = True
    interpolation: Literal["nearest", "linear", "cubic", "area"] = "area"
    pad_value: float = 0.0

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        out = convert.resize(
            image, self.rows, self.cols, self.keep_aspect, self.interpolation, self.pad_value
        )
        if mask is not None:
            mask = convert.resize(mask, self.rows, self.cols, self.keep_aspect, "nearest", 0.0)
        return out, mask


class ResampleSpacing(_Geometry):
    """Resize so that a pixel covers ``spacing`` mm (needs PixelSpacing; masks follow)."""

    op: Literal["resample_spacing"]
    spacing: float = Field(gt=0)
    interpolation: Literal["nearest", "linear", "cubic", "area"] = "area"
    skip_without_spacing: bool = False

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        ps = _meta_value(meta, "pixel_spacing")
        if ps is None or len(ps) < 2:
            if self.skip_without_spacing:
                return image, mask
            raise MissingMetadataError("frame has no PixelSpacing; set skip_without_spacing: true to pass it")
        spacing = (float(ps[0]), float(ps[1]))
        out = convert.resample_spacing(image, spacing, self.spacing, self.interpolation)
        if mask is not None:
            mask = convert.resize(mask, out.shape[0], out.shape[1], False, "nearest")
        return out, mask


class CropForeground(_Geometry):
    """Crop image (and mask) to the bounding box of luma > ``threshold`` (default: > minimum)."""

    op: Literal["crop_foreground"]
    threshold: float | None = None
    margin: int = Field(0, ge=0)

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        bbox = convert.foreground_bbox(image, self.threshold, self.margin)
        return convert.crop(image, bbox), None if mask is None else convert.crop(mask, bbox)


# --- normalise --------------------------------------------------------------------------------------


class MinMax(Step):
    """Min-max to [0, 1], float32."""

    op: Literal["minmax"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return normalize.minmax(image)


class ZScore(Step):
    """``(x - mean) / std``, float32; ``within_mask`` uses the current mask's pixels for the statistics."""

    op: Literal["zscore"]
    within_mask: bool = False

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        return normalize.zscore(image, mask if self.within_mask else None), mask


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
        return normalize.percentile_scale(image, self.lower, self.upper, self.clip)


# --- filters ----------------------------------------------------------------------------------------


class _Kernel(Step):
    ksize: int = 3

    @field_validator("ksize")
    @classmethod
    def _odd(cls, v: int) -> int:
        return _odd_positive(v)


class Mean(_Kernel):
    """Box filter (dtype preserved)."""

    op: Literal["mean"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return filters.mean_filter(image, self.ksize)


class Median(_Kernel):
    """Median filter (dtype preserved)."""

    op: Literal["median"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return filters.median_filter(image, self.ksize)


class Gaussian(Step):
    """Gaussian blur (dtype preserved); ``ksize: 0`` derives the kernel from ``sigma``."""

    op: Literal["gaussian"]
    sigma: float = Field(1.0, gt=0, le=100)
    ksize: int = 0

    @field_validator("ksize")
    @classmethod
    def _odd(cls, v: int) -> int:
        return v if v == 0 else _odd_positive(v)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return filters.gaussian_filter(image, self.sigma, self.ksize)


class Bilateral(Step):
    """Bilateral filter; ``sigma_color`` is a fraction of the image range (dtype preserved)."""

    op: Literal["bilateral"]
    diameter: int = Field(5, ge=-1, le=31)
    sigma_color: float = Field(0.1, gt=0)
    sigma_space: float = Field(2.0, gt=0)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return filters.bilateral_filter(image, self.diameter, self.sigma_color, self.sigma_space)


class NLMeans(Step):
    """Non-local means; ``h`` is a fraction of the image range, ``null`` = 0.8 x estimated noise σ."""

    op: Literal["nl_means"]
    h: float | None = Field(None, gt=0)
    patch_size: int = Field(5, ge=1, le=21)
    patch_distance: int = Field(6, ge=1, le=30)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return filters.nl_means_filter(image, self.h, self.patch_size, self.patch_distance)


# --- enhance ----------------------------------------------------------------------------------------


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
        return enhance.contrast_stretch(image, self.lower, self.upper)


class Equalize(Step):
    """Global histogram equalisation (uint8: OpenCV; other dtypes via uint16, see ops.enhance)."""

    op: Literal["equalize"]

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return enhance.equalize(image)


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
        return enhance.clahe(image, self.clip_limit, self.tile_grid)


class UnsharpMask(Step):
    """Unsharp-mask sharpening ``x + amount * (x - blur_sigma(x))``."""

    op: Literal["unsharp_mask"]
    sigma: float = Field(1.0, gt=0, le=50)
    amount: float = Field(1.0, ge=0, le=20)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return enhance.unsharp_mask(image, self.sigma, self.amount)


class Gamma(Step):
    """Gamma curve on the image's own range (dtype preserved)."""

    op: Literal["gamma"]
    gamma: float = Field(gt=0, le=20)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return enhance.gamma(image, self.gamma)


# --- segmentation -----------------------------------------------------------------------------------


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


class Threshold(_Segment):
    """Fixed threshold ``x > value`` in the image's current units."""

    op: Literal["threshold"]
    value: float
    invert: bool = False

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return segment.threshold(image, self.value, self.invert)


class Otsu(_Segment):
    """Otsu threshold."""

    op: Literal["otsu"]
    invert: bool = False

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return segment.otsu_threshold(image, self.invert)


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
        return _odd_positive(v)

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return segment.adaptive_threshold(image, self.block_size, self.offset, self.method, self.invert)


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
        return segment.canny_fill(image, self.low, self.high, self.sigma, self.close_ksize, self.min_area)


class Watershed(_Segment):
    """Marker watershed on the Sobel gradient, markers at Otsu ± ``margin``."""

    op: Literal["watershed"]
    margin: float = Field(0.1, ge=0, lt=0.5)

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return segment.watershed(image, self.margin)


class TextureKMeans(_Segment):
    """LBP/Gabor/local-statistics features clustered with k-means."""

    op: Literal["texture_kmeans"]
    n_clusters: int = Field(2, ge=2, le=16)
    window: int = Field(7, ge=1, le=63)
    select: Literal["bright", "dark"] = "bright"
    max_iter: int = Field(50, ge=1, le=1000)

    def make_mask(self, image: Array, meta: Meta | None) -> Array:
        return segment.texture_kmeans(image, self.n_clusters, self.window, self.select, self.max_iter)


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
        return segment.superpixel_mask(
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


# --- mask post-processing ---------------------------------------------------------------------------


class _MaskStep(Step):
    kind: ClassVar[Literal["image", "segment", "mask", "geometry"]] = "mask"

    def mask_op(self, mask: Array) -> Array:
        raise RecipeConfigError(f"op '{self.op}' has no mask transform")

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        if mask is None:
            raise RecipeConfigError(f"op '{self.op}' needs a mask from an earlier segmentation step")
        return image, self.mask_op(mask)


class LargestComponent(_MaskStep):
    """Keep the ``n`` largest connected components."""

    op: Literal["largest_component"]
    n: int = Field(1, ge=1, le=1000)
    connectivity: Literal[4, 8] = 8

    def mask_op(self, mask: Array) -> Array:
        return morphology.largest_component(mask, self.n, self.connectivity)


class FillHoles(_MaskStep):
    """Fill holes in the mask."""

    op: Literal["fill_holes"]

    def mask_op(self, mask: Array) -> Array:
        return morphology.fill_holes(mask)


class RemoveSmallObjects(_MaskStep):
    """Drop components smaller than ``min_size`` pixels."""

    op: Literal["remove_small_objects"]
    min_size: int = Field(64, ge=1)
    connectivity: Literal[4, 8] = 8

    def mask_op(self, mask: Array) -> Array:
        return morphology.remove_small_objects(mask, self.min_size, self.connectivity)


class ApplyMask(_MaskStep):
    """Set image pixels outside the mask to ``fill`` (default: the image minimum)."""

    op: Literal["apply_mask"]
    fill: float | None = None

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        if mask is None:
            raise RecipeConfigError("op 'apply_mask' needs a mask from an earlier segmentation step")
        return morphology.apply_mask(image, mask, self.fill), mask


AnyStep = Annotated[
    FlagEmpty
    | ReplaceNonfinite
    | Clip
    | Rescale
    | Window
    | InvertMonochrome1
    | ToFloat
    | Resize
    | ResampleSpacing
    | CropForeground
    | MinMax
    | ZScore
    | PercentileScale
    | Mean
    | Median
    | Gaussian
    | Bilateral
    | NLMeans
    | ContrastStretch
    | Equalize
    | Clahe
    | UnsharpMask
    | Gamma
    | Threshold
    | Otsu
    | AdaptiveThreshold
    | CannyFill
    | Watershed
    | TextureKMeans
    | Superpixels
    | LargestComponent
    | FillHoles
    | RemoveSmallObjects
    | ApplyMask,
    Field(discriminator="op"),
]

STEP_MODELS: dict[str, type[Step]] = {
    get_args(m.model_fields["op"].annotation)[0]: m for m in get_args(get_args(AnyStep)[0])
}
"""Op name → step model."""


class Recipe(BaseModel):
    """A named, ordered list of steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str | None = None
    steps: list[AnyStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _mask_order(self) -> Recipe:
        has_mask = False
        for i, step in enumerate(self.steps):
            if step.kind == "segment":
                has_mask = True
            elif step.kind == "mask" and not has_mask:
                raise ValueError(
                    f"step {i} (op '{step.op}') needs a mask: put a segmentation step "
                    "(threshold, otsu, adaptive_threshold, canny_fill, watershed, texture_kmeans, superpixels) "
                    "before it"
                )
        return self

    @property
    def segments(self) -> bool:
        """Whether the recipe produces a mask."""
        return any(s.kind == "segment" for s in self.steps)

    def canonical_json(self) -> str:
        """Canonical JSON of ``name`` and the steps with every parameter (defaults included), sorted keys.

        The description is documentation and not part of it.
        """
        body = {"name": self.name, "steps": [s.model_dump(mode="json") for s in self.steps]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @property
    def hash(self) -> str:
        """sha256 hex digest of :meth:`canonical_json`: equal for recipes that process frames identically."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def __call__(self, image: Array, meta: Meta | None = None) -> tuple[Array, Array | None]:
        return apply_recipe(self, image, meta)


def _describe(err: Mapping[str, Any], data: Any) -> str:
    loc = list(err.get("loc", ()))
    typ = str(err.get("type", ""))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if not loc or loc[0] != "steps" or len(loc) < 2 or not isinstance(loc[1], int):
        where = ".".join(str(p) for p in loc) or "recipe"
        if typ == "extra_forbidden":
            return f"{where}: unknown field; a recipe has name, description and steps"
        return f"{where}: {msg}"
    index = loc[1]
    raw = data.get("steps", [])[index] if isinstance(data, Mapping) else None
    op = raw.get("op") if isinstance(raw, Mapping) else None
    head = f"step {index}" + (f" (op '{op}')" if op else "")
    if typ == "union_tag_invalid":
        return f"{head}: unknown op '{op}'; valid ops: {', '.join(sorted(STEP_MODELS))}"
    if typ == "union_tag_not_found":
        return f"{head}: missing 'op'; every step needs one of: {', '.join(sorted(STEP_MODELS))}"
    if typ == "model_type" or typ == "model_attributes_type":
        return f"{head}: a step must be a mapping like {{op: gaussian, sigma: 1.0}}, got {err.get('input')!r}"
    params = loc[3:] if len(loc) > 3 else []
    if not params:
        return f"{head}: {msg}"
    param = ".".join(str(p) for p in params)
    if typ == "extra_forbidden" and op in STEP_MODELS:
        valid = [f for f in STEP_MODELS[op].model_fields if f != "op"]
        return (
            f"{head}, parameter '{param}': unknown parameter; valid parameters of '{op}': "
            f"{', '.join(valid) or '(none)'}"
        )
    if typ == "missing":
        return f"{head}, parameter '{param}': required parameter is missing"
    if typ == "value_error":
        return f"{head}, parameter '{param}': {msg}"
    return f"{head}, parameter '{param}': {msg} (got {err.get('input')!r})"


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping (e.g. parsed YAML).

    Raises:
        RecipeFileError: with one line per problem, each naming the step index, op and parameter.
    """
    if not isinstance(data, Mapping):
        raise RecipeFileError(
            f"recipe {source}: expected a mapping with name and steps, got {type(data).__name__}"
        )
    try:
        return Recipe.model_validate(dict(data))
    except ValidationError as exc:
        lines = [_describe(e, data) for e in exc.errors()]
        raise RecipeFileError(f"invalid recipe {source}:\n  " + "\n  ".join(lines)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a recipe YAML file.

    ``path`` may also be the name of a recipe: ``./conf/recipes/<name>.yaml`` in the working directory,
    else the shipped ``medimg_spark/resources/recipes/<name>.yaml`` (``"ct_lung"``); an existing path wins.

    Raises:
        RecipeFileError: file missing or unreadable, invalid YAML, or invalid recipe.
    """
    import yaml

    found = shipped_resources.resolve("recipes", path, RecipeFileError)
    try:
        data = yaml.safe_load(found.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeFileError(f"recipe {found.location} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise RecipeFileError(f"recipe file {found.location} cannot be read: {exc}") from None
    return parse_recipe(data, found.location)


def apply_recipe(recipe: Recipe, image: Array, meta: Meta | None = None) -> tuple[Array, Array | None]:
    """Run ``recipe`` on one frame in plain Python.

    Args:
        recipe: a validated recipe.
        image: (rows, cols) or (rows, cols, 3) array; converted by :func:`as_supported` first.
        meta: header values keyed like the ``images`` columns (``rescale_slope``, ``rescale_intercept``,
            ``window_center``, ``window_width``, ``photometric``, ``pixel_spacing``, ...); may be None.

    Returns:
        ``(image, mask)``; ``mask`` is a uint8 0/1 (rows, cols) array, or None if no step segments.

    Raises:
        RecipeStepError: a step failed; ``step_index``/``op``/``cause`` say which and why.
    """
    try:
        img = as_supported(image)
    except Exception as exc:
        raise RecipeStepError(-1, "input", exc) from exc
    mask: Array | None = None
    for i, step in enumerate(recipe.steps):
        try:
            img, mask = step.run(img, mask, meta)
        except Exception as exc:
            raise RecipeStepError(i, step.op, exc) from exc
    return img, mask
