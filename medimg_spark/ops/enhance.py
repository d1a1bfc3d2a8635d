"""Contrast enhancement ops. All preserve the dtype; 3-channel images are processed per channel.

Output range rule: :func:`contrast_stretch`, :func:`equalize` and :func:`clahe` write the dtype's
*display range* (uint8 [0, 255], uint16 [0, 65535], int16 [0, 32767], float32 [0, 1]).
OpenCV's histogram equalisation is 8-bit only and its CLAHE 8/16-bit only, so:

* ``equalize``: uint8 → :func:`cv2.equalizeHist`; any other dtype is min-max scaled to uint16 and
  equalised by the same algorithm with 65536 bins (:func:`equalize_lut`), then mapped to the display range.
* ``clahe``: uint8 and uint16 → :func:`cv2.createCLAHE` directly; int16 and float32 are min-max scaled to
  uint16 first, then mapped to the display range.

:func:`unsharp_mask` and :func:`gamma` stay within the image's own value range conventions (see each).

Do-no-harm guard (optional ``guard`` parameter of the clahe, equalize, unsharp_mask, contrast_stretch and gamma
steps, :class:`EnhanceGuard`): the step's output is measured against its input on every frame and kept only when

* noise gain ``(σ_out / R_out) / (σ_in / R_in) <= max_noise_gain``: σ is the wavelet MAD noise estimate
  over the 2x2 blocks that are not flat (:func:`guard_noise`), floored at the quantisation noise 1/√12 of one
  integer level), R the frame's robust range (1st-99th percentile of the luma); ops that keep the input's units
  (unsharp_mask, gamma) measure both frames against the input's R, so an overshoot does not hide noise;
* CNR loss ``1 - CNR_out / CNR_in <= max_cnr_loss`` with ``CNR = |mean_fg - mean_bg| / std_bg`` on the *same*
  two regions in both frames (Otsu's split of the input).

Both ratios are scale-free, so they compare an input in HU with an output in [0, 1]. Otherwise the
``fallbacks`` (gentler parameter sets, e.g. ``[{clip_limit: 1.0}]``) are tried in order, and when none passes
the step is skipped: its output is its input, unchanged. The optional ``when`` gate (:class:`EnhanceWhen`)
skips the step on frames that are already well exposed. The branch taken (applied / fallback k / skipped,
with the measured ratios) is the step's :meth:`~medimg_spark.ops._step.Step.explain` note, recorded in the
recipe trace. Without ``guard`` and ``when`` a step behaves exactly as the plain op (and has no note).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medimg_spark.ops._common import (
    Array,
    cast_like,
    check_image,
    display_range,
    finite_min_max,
    luma,
    per_channel,
    to_uint,
    to_unit,
)
from medimg_spark.ops._step import Meta, Step, register_step
from medimg_spark.order_stats import exact_percentiles


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


# --- do-no-harm guard ---------------------------------------------------------------------------------


class EnhanceGuard(BaseModel):
    """Do-no-harm bounds of an enhancement step (module doc). At least one bound is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_noise_gain: float | None = Field(None, ge=1.0, le=100.0)
    """Largest accepted noise gain (σ relative to the robust range, output / input), e.g. 1.15."""
    max_cnr_loss: float | None = Field(None, ge=0.0, lt=1.0)
    """Largest accepted relative CNR loss, e.g. 0.10 (CNR may fall by at most 10 %)."""
    fallbacks: list[dict[str, Any]] = Field(default_factory=list, max_length=8)
    """Gentler parameter sets tried in order when a bound is exceeded, e.g. ``[{clip_limit: 1.0}]``."""

    @model_validator(mode="after")
    def _some_bound(self) -> EnhanceGuard:
        if self.max_noise_gain is None and self.max_cnr_loss is None:
            raise ValueError("a guard needs max_noise_gain (e.g. 1.15) and/or max_cnr_loss (e.g. 0.10)")
        return self


class EnhanceWhen(BaseModel):
    """Gate: apply the step only to frames whose robust dynamic range is below a bound."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_dynamic_range: float = Field(gt=0.0, le=1.0)
    """Apply only when :func:`robust_dynamic_range` of the frame is below this (e.g. 0.6); else skip."""


def robust_dynamic_range(image: Array) -> float:
    """The 1st-99th luma percentile span as a share of the frame's nominal range.

    Nominal range: the display range of uint8 ([0, 255]); [0, 1] for a float frame inside [0, 1]; otherwise
    (uint16, int16, other floats: no fixed nominal range) the finite min-max. 0 for an empty or constant frame.
    """
    arr = np.asarray(image)
    g = luma(arr)
    finite = g[np.isfinite(g)]
    if finite.size == 0:
        return 0.0
    lo, hi = float(finite.min()), float(finite.max())
    if arr.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    elif arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        return 0.0
    p1, p99 = exact_percentiles(finite, [1.0, 99.0])
    return float((p99 - p1) / (hi - lo))


def _sample(values: Array, limit: int = 1 << 20) -> Array:
    """At most about ``limit`` values of a flat array (a regular stride: cheap and deterministic)."""
    return values[:: max(1, values.size // limit)]


def _robust_span(g: Array) -> float:
    """The 1st-99th percentile span of the finite values of ``g`` (its min-max when that is 0)."""
    finite = _sample(g.ravel() if np.isfinite(g).all() else g[np.isfinite(g)])
    if finite.size == 0:
        return 0.0
    p1, p99 = exact_percentiles(finite, [1.0, 99.0])
    span = float(p99 - p1)
    return span if span > 0 else float(finite.max() - finite.min())


_TRIMMED_HALF_NORMAL = 0.6574
"""Mean of ``|x|`` below its 90th percentile for ``x ~ N(0, 1)``: makes :func:`guard_noise` a σ."""


def guard_noise(image: Array, g: Array | None = None) -> float:
    """The guard's noise σ, from the finest Haar diagonal band over the 2x2 blocks that are not flat.

    ``HH = (a - b - c + d) / 2`` per disjoint 2x2 block (luma for 3 channels). Unlike the MAD rule of
    :func:`~medimg_spark.ops._common.noise_sigma_mad`, whose median of ``|HH|`` moves in half-level steps on
    integer frames and is 0 when more than half the frame is flat, this is the mean of ``|HH|`` below its 90th
    percentile (edges trimmed) divided by its Gaussian expectation (0.6574 σ): continuous, so a ratio of two
    frames is meaningful. Flat blocks (four equal pixels: padding outside the field of view, saturated areas)
    carry no noise information and are left out (all blocks are used when fewer than 5 % are not flat).
    Floored at the quantisation noise of one level, 1/√12, for integer dtypes. ``g``: the frame's
    :func:`~medimg_spark.ops._common.luma` when the caller has it (not recomputed).
    """
    arr = np.asarray(image)
    g = luma(arr) if g is None else g
    rows, cols = (g.shape[0] // 2) * 2, (g.shape[1] // 2) * 2
    floor = 1.0 / math.sqrt(12.0) if arr.dtype.kind in "ui" else 0.0
    if rows == 0 or cols == 0:
        return floor
    g = g[:rows, :cols]
    a, b, c, d = g[0::2, 0::2], g[0::2, 1::2], g[1::2, 0::2], g[1::2, 1::2]
    hh = (a - b - c + d) / 2.0
    keep = np.isfinite(hh)
    busy = keep & ~((a == b) & (a == c) & (a == d))
    if busy.sum() >= 0.05 * hh.size:
        keep = busy
    vals = np.abs(hh[keep])
    if vals.size == 0:
        return floor
    cut = float(np.percentile(_sample(vals), 90.0))
    low = vals[vals <= cut]
    sigma = float(low.mean()) / _TRIMMED_HALF_NORMAL if low.size else 0.0
    return max(sigma, floor)


@dataclass(frozen=True)
class GuardMeasure:
    """What a guard measured on one candidate output."""

    noise_gain: float
    """σ/R of the output over σ/R of the input (1.0 when undefined)."""
    cnr_ratio: float
    """CNR of the output over CNR of the input on the input's Otsu regions (1.0 when undefined)."""

    @property
    def cnr_loss(self) -> float:
        """``1 - cnr_ratio`` (negative when CNR rose)."""
        return 1.0 - self.cnr_ratio

    def violations(self, guard: EnhanceGuard) -> list[str]:
        """The bounds of ``guard`` this output exceeds, as short texts (empty: it passes)."""
        out = []
        if guard.max_noise_gain is not None and self.noise_gain > guard.max_noise_gain:
            out.append(f"noise ×{self.noise_gain:.2f} > {guard.max_noise_gain:g}")
        if guard.max_cnr_loss is not None and self.cnr_loss > guard.max_cnr_loss:
            out.append(f"CNR −{self.cnr_loss:.0%} > {guard.max_cnr_loss:.0%}")
        return out

    def summary(self) -> str:
        """``"noise ×1.08, CNR −3%"`` (notes never contain ``"; "``, the trace's separator)."""
        sign = "−" if self.cnr_loss > 0 else "+"
        return f"noise ×{self.noise_gain:.2f}, CNR {sign}{abs(self.cnr_loss):.0%}"


class GuardReference:
    """The input-side measurements of a guard, computed once per frame and compared with each candidate."""

    def __init__(self, image: Array) -> None:
        g = luma(np.asarray(image))
        self.span = _robust_span(g)
        self.rel_noise = guard_noise(image, g) / self.span if self.span > 0 else math.nan
        self.fg: Array | None = None
        self.bg: Array | None = None
        finite = np.isfinite(g)
        if self.span > 0 and finite.any():
            from skimage.filters import threshold_otsu

            vals = g[finite]
            t = float(threshold_otsu(_sample(vals)))
            fg = (g > t) & finite
            bg = (g <= t) & finite
            if fg.any() and bg.any():
                self.fg, self.bg = fg, bg
        self.cnr = self._cnr(g)

    def _cnr(self, g: Array) -> float:
        if self.fg is None or self.bg is None:
            return math.nan
        bg_vals = g[self.bg]
        std = float(bg_vals.std()) if np.isfinite(bg_vals).all() else math.nan
        if not std > 0:
            return math.nan
        return abs(float(np.nanmean(g[self.fg])) - float(bg_vals.mean())) / std

    def measure(self, out: Array, keeps_units: bool) -> GuardMeasure:
        """Noise gain and CNR ratio of ``out`` (same rows/cols) against the input."""
        g = luma(np.asarray(out))
        span = self.span if keeps_units else _robust_span(g)
        gain = 1.0
        if span > 0 and math.isfinite(self.rel_noise) and self.rel_noise > 0:
            gain = (guard_noise(out, g) / span) / self.rel_noise
        ratio = 1.0
        cnr_out = self._cnr(g) if g.shape == self.fg_shape else math.nan
        if math.isfinite(self.cnr) and self.cnr > 0 and math.isfinite(cnr_out):
            ratio = cnr_out / self.cnr
        return GuardMeasure(noise_gain=float(gain), cnr_ratio=float(ratio))

    @property
    def fg_shape(self) -> tuple[int, ...] | None:
        return None if self.fg is None else self.fg.shape


class _GuardedStep(Step):
    """An enhancement step with the optional do-no-harm ``guard`` and ``when`` gate (module doc)."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"guard", "when"})
    keeps_units: ClassVar[bool] = False
    """Whether the op keeps the input's units (the guard then measures the output against the input's range)."""
    guard: EnhanceGuard | None = None
    when: EnhanceWhen | None = None

    @abstractmethod
    def enhance(self, image: Array) -> Array:
        """The plain op with this step's parameters (each guarded op defines it)."""

    def _params(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"op", "guard", "when"})

    @model_validator(mode="after")
    def _fallbacks(self) -> _GuardedStep:
        if self.guard is None:
            return self
        valid = list(self._params())
        for k, fb in enumerate(self.guard.fallbacks):
            unknown = sorted(set(fb) - set(valid))
            if unknown:
                raise ValueError(
                    f"guard.fallbacks[{k}]: unknown parameter(s) {', '.join(unknown)}; "
                    f"valid parameters of '{self.op}': {', '.join(valid) or '(none)'}"
                )
            try:
                type(self).model_validate({"op": self.op, **self._params(), **fb})
            except ValidationError as exc:
                msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"guard.fallbacks[{k}]: {msgs}") from None
        return self

    def _fallback_steps(self) -> list[tuple[str, _GuardedStep]]:
        assert self.guard is not None
        out = []
        for fb in self.guard.fallbacks:
            label = ", ".join(f"{key}={_fmt(v)}" for key, v in fb.items())
            out.append((label, type(self).model_validate({"op": self.op, **self._params(), **fb})))
        return out

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return self.guarded(image)[0]

    def explain(
        self, image: Array, mask: Array | None, meta: Meta | None
    ) -> tuple[Array, Array | None, str | None]:
        out, note = self.guarded(image)
        return out, mask, note

    def guarded(self, image: Array) -> tuple[Array, str | None]:
        """Run the op under its ``when`` gate and ``guard``; returns the output and the branch note."""
        gate = ""
        if self.when is not None:
            dr = robust_dynamic_range(image)
            bound = self.when.max_dynamic_range
            if dr >= bound:
                return image, f"skipped (dynamic range {dr:.2f} ≥ {bound:g})"
            gate = f"dynamic range {dr:.2f} < {bound:g}"
        if self.guard is None:
            out = self.enhance(image)
            return out, (f"applied ({gate})" if gate else None)
        ref = GuardReference(image)
        rejected: list[str] = []
        candidates: list[tuple[str, _GuardedStep]] = [("", self), *self._fallback_steps()]
        extra = f", {gate}" if gate else ""
        for k, (label, step) in enumerate(candidates):
            out = step.enhance(image)
            m = ref.measure(out, self.keeps_units)
            bad = m.violations(self.guard)
            if not bad:
                if k == 0:
                    return out, f"applied ({m.summary()}{extra})"
                return out, f"fallback {k} {label} ({m.summary()}, after {' / '.join(rejected)}{extra})"
            rejected.append(("params" if k == 0 else f"fallback {k}") + ": " + " & ".join(bad))
        return image, f"skipped ({' / '.join(rejected)}{extra})"


def _fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- recipe steps (registered by op name; see medimg_spark.ops.recipe) ------------------------------


@register_step
class ContrastStretch(_GuardedStep):
    """Stretch the ``lower``/``upper`` percentiles to the dtype's display range."""

    op: Literal["contrast_stretch"]
    lower: float = Field(2.0, ge=0, le=100)
    upper: float = Field(98.0, ge=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> ContrastStretch:
        if self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be < upper ({self.upper})")
        return self

    def enhance(self, image: Array) -> Array:
        return contrast_stretch(image, self.lower, self.upper)


@register_step
class Equalize(_GuardedStep):
    """Global histogram equalisation (uint8: OpenCV; other dtypes via uint16, see ops.enhance)."""

    op: Literal["equalize"]

    def enhance(self, image: Array) -> Array:
        return equalize(image)


@register_step
class Clahe(_GuardedStep):
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

    def enhance(self, image: Array) -> Array:
        return clahe(image, self.clip_limit, self.tile_grid)


@register_step
class UnsharpMask(_GuardedStep):
    """Unsharp-mask sharpening ``x + amount * (x - blur_sigma(x))``."""

    keeps_units: ClassVar[bool] = True
    op: Literal["unsharp_mask"]
    sigma: float = Field(1.0, gt=0, le=50)
    amount: float = Field(1.0, ge=0, le=20)

    def enhance(self, image: Array) -> Array:
        return unsharp_mask(image, self.sigma, self.amount)


@register_step
class Gamma(_GuardedStep):
    """Gamma curve on the image's own range (dtype preserved)."""

    keeps_units: ClassVar[bool] = True
    op: Literal["gamma"]
    gamma: float = Field(gt=0, le=20)

    def enhance(self, image: Array) -> Array:
        return gamma(image, self.gamma)
