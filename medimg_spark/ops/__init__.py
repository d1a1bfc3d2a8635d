"""The image-processing layer: pure numpy ops on one frame, and recipes that chain them.

Each op takes a (rows, cols) or (rows, cols, 3) array of uint8, uint16, int16 or float32 and documents
the dtype it returns (see :mod:`medimg_spark.ops._common` for the shared rules). Segmentation ops
return a uint8 0/1 mask. Recipes (:mod:`medimg_spark.ops.recipe`) are validated YAML step lists; each op's step model sits next to
its function and registers itself in :data:`STEPS` (see :mod:`medimg_spark.ops._step`).
"""

from __future__ import annotations

from medimg_spark.ops._common import (
    SUPPORTED_DTYPES,
    DegenerateOutputError,
    EmptyFrameError,
    MissingMetadataError,
    RecipeConfigError,
    RecipeStepError,
    UnsupportedImageError,
    as_supported,
    check_output,
    display_range,
    noise_sigma_mad,
)
from medimg_spark.ops._step import STEPS, register_step
from medimg_spark.ops.clean import clip, flag_empty, replace_nonfinite
from medimg_spark.ops.convert import (
    WINDOW_PRESETS,
    crop,
    crop_foreground,
    foreground_bbox,
    invert,
    resample_spacing,
    rescale,
    resize,
    to_float,
    window,
)
from medimg_spark.ops.denoise import NoiseEstimate, denoise, estimate_noise
from medimg_spark.ops.enhance import clahe, contrast_stretch, equalize, equalize_lut, gamma, unsharp_mask
from medimg_spark.ops.filters import (
    bilateral_filter,
    gaussian_filter,
    mean_filter,
    median_filter,
    nl_means_filter,
)
from medimg_spark.ops.morphology import apply_mask, fill_holes, largest_component, remove_small_objects
from medimg_spark.ops.normalize import minmax, percentile_scale, zscore
from medimg_spark.ops.recipe import (
    RECIPES_DIR,
    STEP_MODELS,
    Recipe,
    RecipeFileError,
    Step,
    apply_recipe,
    load_recipe,
    parse_recipe,
)
from medimg_spark.ops.segment import (
    adaptive_threshold,
    canny_fill,
    otsu_threshold,
    superpixel_mask,
    superpixels,
    texture_features,
    texture_kmeans,
    threshold,
    watershed,
)

__all__ = [
    "RECIPES_DIR",
    "STEPS",
    "STEP_MODELS",
    "SUPPORTED_DTYPES",
    "WINDOW_PRESETS",
    "DegenerateOutputError",
    "EmptyFrameError",
    "MissingMetadataError",
    "NoiseEstimate",
    "Recipe",
    "RecipeConfigError",
    "RecipeFileError",
    "RecipeStepError",
    "Step",
    "UnsupportedImageError",
    "adaptive_threshold",
    "apply_mask",
    "apply_recipe",
    "as_supported",
    "bilateral_filter",
    "canny_fill",
    "check_output",
    "clahe",
    "clip",
    "contrast_stretch",
    "crop",
    "crop_foreground",
    "denoise",
    "display_range",
    "equalize",
    "equalize_lut",
    "estimate_noise",
    "fill_holes",
    "flag_empty",
    "foreground_bbox",
    "gamma",
    "gaussian_filter",
    "invert",
    "largest_component",
    "load_recipe",
    "mean_filter",
    "median_filter",
    "minmax",
    "nl_means_filter",
    "noise_sigma_mad",
    "otsu_threshold",
    "parse_recipe",
    "percentile_scale",
    "register_step",
    "remove_small_objects",
    "replace_nonfinite",
    "resample_spacing",
    "rescale",
    "resize",
    "superpixel_mask",
    "superpixels",
    "texture_features",
    "texture_kmeans",
    "threshold",
    "to_float",
    "unsharp_mask",
    "watershed",
    "window",
    "zscore",
]
