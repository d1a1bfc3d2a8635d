"""Mask post-processing (uint8 0/1 in, uint8 0/1 out) and applying a mask to an image."""

from __future__ import annotations

from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field
from scipy import ndimage

from medimg_spark.ops._common import (
    Array,
    RecipeConfigError,
    cast_like,
    check_image,
    check_mask,
    finite_min_max,
)
from medimg_spark.ops._step import Meta, Step, register_step


def _components(mask: Array, connectivity: int) -> tuple[int, Array, Array]:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(check_mask(mask), connectivity=connectivity)
    return int(n), labels, stats[:, cv2.CC_STAT_AREA]


def largest_component(mask: Array, n: int = 1, connectivity: int = 8) -> Array:
    """Keep the ``n`` largest connected components (ties: lower label first)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    count, labels, areas = _components(mask, connectivity)
    if count <= 1:
        return check_mask(mask)
    order = np.argsort(-areas[1:], kind="stable")[:n] + 1
    return np.isin(labels, order).astype(np.uint8)


def remove_small_objects(mask: Array, min_size: int = 64, connectivity: int = 8) -> Array:
    """Drop connected components with fewer than ``min_size`` pixels."""
    _, labels, areas = _components(mask, connectivity)
    keep = np.flatnonzero(areas >= min_size)
    keep = keep[keep > 0]
    return np.isin(labels, keep).astype(np.uint8)


def fill_holes(mask: Array) -> Array:
    """Fill background regions not connected to the border (:func:`scipy.ndimage.binary_fill_holes`)."""
    return ndimage.binary_fill_holes(check_mask(mask)).astype(np.uint8)


def apply_mask(image: Array, mask: Array, fill: float | None = None) -> Array:
    """Set pixels outside ``mask`` to ``fill`` (default: the image's finite minimum); dtype preserved."""
    arr = check_image(image)
    m = check_mask(mask, arr)
    value = finite_min_max(arr)[0] if fill is None else fill
    out = arr.copy()
    out[m == 0] = cast_like(np.asarray(value, dtype=np.float64), arr.dtype)
    return out


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


class _MaskStep(Step):
    kind: ClassVar[Literal["image", "segment", "mask", "geometry"]] = "mask"

    def mask_op(self, mask: Array) -> Array:
        raise RecipeConfigError(f"op '{self.op}' has no mask transform")

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        if mask is None:
            raise RecipeConfigError(f"op '{self.op}' needs a mask from an earlier segmentation step")
        return image, self.mask_op(mask)


@register_step
class LargestComponent(_MaskStep):
    """Keep the ``n`` largest connected components."""

    op: Literal["largest_component"]
    n: int = Field(1, ge=1, le=1000)
    connectivity: Literal[4, 8] = 8

    def mask_op(self, mask: Array) -> Array:
        return largest_component(mask, self.n, self.connectivity)


@register_step
class FillHoles(_MaskStep):
    """Fill holes in the mask."""

    op: Literal["fill_holes"]

    def mask_op(self, mask: Array) -> Array:
        return fill_holes(mask)


@register_step
class RemoveSmallObjects(_MaskStep):
    """Drop components smaller than ``min_size`` pixels."""

    op: Literal["remove_small_objects"]
    min_size: int = Field(64, ge=1)
    connectivity: Literal[4, 8] = 8

    def mask_op(self, mask: Array) -> Array:
        return remove_small_objects(mask, self.min_size, self.connectivity)


@register_step
class ApplyMask(_MaskStep):
    """Set image pixels outside the mask to ``fill`` (default: the image minimum)."""

    op: Literal["apply_mask"]
    fill: float | None = None

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        if mask is None:
            raise RecipeConfigError("op 'apply_mask' needs a mask from an earlier segmentation step")
        return apply_mask(image, mask, self.fill), mask
