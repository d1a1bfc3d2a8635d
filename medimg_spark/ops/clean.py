"""Cleaning ops: clipping, non-finite replacement, flagging empty or constant frames.

:func:`clip` and :func:`replace_nonfinite` preserve the dtype; :func:`flag_empty` returns its input
unchanged or raises :class:`~medimg_spark.ops.EmptyFrameError`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from medimg_spark.ops._common import Array, EmptyFrameError, cast_like, check_image, finite_min_max
from medimg_spark.ops._step import Meta, Step, register_step


def clip(
    image: Array,
    minimum: float | None = None,
    maximum: float | None = None,
    lower_percentile: float | None = None,
    upper_percentile: float | None = None,
) -> Array:
    """Clip to absolute bounds and/or percentiles of the finite values (dtype preserved).

    An absolute bound wins over a percentile on the same side; ``None`` leaves a side open.
    Non-finite values are left as they are (use :func:`replace_nonfinite`).
    """
    arr = check_image(image)
    lo, hi = minimum, maximum
    if (lo is None and lower_percentile is not None) or (hi is None and upper_percentile is not None):
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        if finite.size:
            if lo is None and lower_percentile is not None:
                lo = float(np.percentile(finite, lower_percentile))
            if hi is None and upper_percentile is not None:
                hi = float(np.percentile(finite, upper_percentile))
    if lo is None and hi is None:
        return arr.copy()
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"clip lower bound {lo} is above upper bound {hi}")
    out = np.clip(arr.astype(np.float64), lo, hi)
    out[~np.isfinite(arr)] = arr[~np.isfinite(arr)]
    return cast_like(out, arr.dtype)


def replace_nonfinite(
    image: Array, nan: float = 0.0, posinf: float | None = None, neginf: float | None = None
) -> Array:
    """Replace NaN by ``nan`` and ±inf by ``posinf`` / ``neginf`` (default: the finite max / min).

    Integer images have no non-finite values and are returned unchanged (a copy).
    """
    arr = check_image(image)
    if arr.dtype.kind != "f":
        return arr.copy()
    lo, hi = finite_min_max(arr)
    return np.nan_to_num(
        arr,
        nan=nan,
        posinf=hi if posinf is None else posinf,
        neginf=lo if neginf is None else neginf,
    ).astype(arr.dtype)


def flag_empty(
    image: Array,
    min_rows: int = 2,
    min_cols: int = 2,
    min_range: float = 0.0,
    max_nonfinite_fraction: float = 0.0,
) -> Array:
    """Raise :class:`EmptyFrameError` for frames that cannot be processed meaningfully.

    A frame is flagged when it is smaller than ``min_rows x min_cols``, when more than
    ``max_nonfinite_fraction`` of its pixels are NaN/inf, or when its finite range ``max - min``
    is ``<= min_range`` (constant frame with the default 0). Otherwise it is returned unchanged.
    """
    arr = check_image(image)
    if arr.shape[0] < min_rows or arr.shape[1] < min_cols:
        raise EmptyFrameError(
            f"frame is {arr.shape[0]}x{arr.shape[1]}, smaller than the minimum {min_rows}x{min_cols}"
        )
    if arr.dtype.kind == "f":
        bad = float(np.mean(~np.isfinite(arr)))
        if bad > max_nonfinite_fraction:
            raise EmptyFrameError(
                f"{bad:.1%} of the pixels are NaN or inf (allowed: {max_nonfinite_fraction:.1%}); "
                "add replace_nonfinite before this step or raise max_nonfinite_fraction"
            )
    lo, hi = finite_min_max(arr)
    if hi - lo <= min_range:
        raise EmptyFrameError(
            f"frame is constant or nearly so: finite range {hi - lo:g} <= min_range {min_range:g}"
        )
    return arr


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


@register_step
class FlagEmpty(Step):
    """Quarantine frames that are too small, constant or mostly non-finite (:func:`flag_empty`)."""

    op: Literal["flag_empty"]
    min_rows: int = Field(2, ge=1)
    min_cols: int = Field(2, ge=1)
    min_range: float = Field(0.0, ge=0)
    max_nonfinite_fraction: float = Field(0.0, ge=0, le=1)

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return flag_empty(image, self.min_rows, self.min_cols, self.min_range, self.max_nonfinite_fraction)


@register_step
class ReplaceNonfinite(Step):
    """NaN → ``nan``, ±inf → ``posinf``/``neginf`` (default finite max/min)."""

    op: Literal["replace_nonfinite"]
    nan: float = 0.0
    posinf: float | None = None
    neginf: float | None = None

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return replace_nonfinite(image, self.nan, self.posinf, self.neginf)


@register_step
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
        return clip(image, self.minimum, self.maximum, self.lower_percentile, self.upper_percentile)
