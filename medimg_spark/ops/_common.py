"""Shared helpers of the op layer: supported dtypes, value ranges, casting and per-channel application.

Dtype policy of the op layer (every op documents which rule it follows):

* Supported image dtypes are ``uint8``, ``uint16``, ``int16`` and ``float32``, with shape
  ``(rows, cols)`` (one channel) or ``(rows, cols, 3)``. :func:`as_supported` converts other
  real dtypes once, at the start of a recipe: ``bool`` → ``uint8``, ``int8`` → ``int16``,
  every other integer and float type → ``float32``.
* *Dtype-preserving* ops (filters, clip, resize, …) compute in ``float32`` when OpenCV lacks a
  kernel for the input dtype and cast back with round-half-even and saturation to the dtype range.
* The *display range* of a dtype is where enhancement ops put their output:
  ``uint8`` [0, 255], ``uint16`` [0, 65535], ``int16`` [0, 32767], ``float32`` [0, 1].
* Masks are ``uint8`` arrays of shape ``(rows, cols)`` holding 0 and 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medimg_spark.errors import RecipeError

SUPPORTED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "int16", "float32")

Array = np.ndarray[Any, Any]


class UnsupportedImageError(RecipeError):
    """The array is not an image the op layer accepts (wrong shape, channel count or dtype kind)."""


class EmptyFrameError(RecipeError):
    """The frame is empty, too small, constant or (almost) all non-finite: flagged for quarantine."""


class MissingMetadataError(RecipeError):
    """A step needs a DICOM header value (e.g. window centre) that the frame does not carry."""


class RecipeConfigError(RecipeError):
    """A recipe file or step has invalid parameters; raised when the recipe is loaded, before Spark."""


class RecipeStepError(RecipeError):
    """A recipe step failed on one frame.

    Attributes:
        step_index: 0-based index of the failing step (``-1`` before the first step).
        op: name of the failing op.
        cause: the original exception.
    """

    def __init__(self, step_index: int, op: str, cause: BaseException) -> None:
        self.step_index = step_index
        self.op = op
        self.cause = cause
        super().__init__(f"step {step_index} ({op}) failed: {type(cause).__name__}: {cause}")

    @property
    def step(self) -> str:
        """The step label written to the quarantine table, ``"<index>:<op>"``."""
        return f"{self.step_index}:{self.op}"


def as_supported(image: Array) -> Array:
    """Validate the shape of ``image`` and convert its dtype to one of :data:`SUPPORTED_DTYPES`.

    ``(rows, cols, 1)`` is squeezed to ``(rows, cols)``; 3-D arrays must have 3 channels.

    Raises:
        UnsupportedImageError: wrong number of dimensions or channels, or a non-real dtype.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise UnsupportedImageError(
            f"expected an image of shape (rows, cols) or (rows, cols, 3), got {arr.shape}; "
            "convert RGBA to RGB and split volumes into 2-D frames first"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UnsupportedImageError(f"image has no pixels (shape {arr.shape})")
    kind = arr.dtype.kind
    name = arr.dtype.name
    if name in SUPPORTED_DTYPES:
        return arr
    if kind == "b":
        return arr.astype(np.uint8)
    if name == "int8":
        return arr.astype(np.int16)
    if kind in "uif":
        return arr.astype(np.float32)
    raise UnsupportedImageError(
        f"unsupported pixel dtype {arr.dtype}; use one of {', '.join(SUPPORTED_DTYPES)}"
    )


def check_image(image: Array) -> Array:
    """Raise :class:`UnsupportedImageError` unless ``image`` already has a supported dtype and shape."""
    arr = np.asarray(image)
    if arr.dtype.name not in SUPPORTED_DTYPES:
        raise UnsupportedImageError(
            f"op got dtype {arr.dtype}; supported: {', '.join(SUPPORTED_DTYPES)} (apply as_supported first)"
        )
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise UnsupportedImageError(f"expected shape (rows, cols) or (rows, cols, 3), got {arr.shape}")
    return arr


def check_mask(mask: Array, image: Array | None = None) -> Array:
    """Validate a mask: 2-D, 0/1 values; same rows and cols as ``image`` when given. Returns it as uint8."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise UnsupportedImageError(f"a mask must be 2-D (rows, cols), got shape {m.shape}")
    if image is not None and m.shape != image.shape[:2]:
        raise UnsupportedImageError(f"mask shape {m.shape} does not match image shape {image.shape[:2]}")
    return (m != 0).astype(np.uint8)


def dtype_limits(dtype: np.dtype[Any] | str) -> tuple[float, float]:
    """The representable range of an integer dtype, ``(-inf, inf)`` for floats."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    return -np.inf, np.inf


def display_range(dtype: np.dtype[Any] | str) -> tuple[float, float]:
    """Where enhancement ops put their output: uint8 [0,255], uint16 [0,65535], int16 [0,32767], float [0,1]."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        return 0.0, float(np.iinfo(dt).max)
    return 0.0, 1.0


def cast_like(values: Array, dtype: np.dtype[Any] | str) -> Array:
    """Cast float ``values`` to ``dtype``: round half to even and saturate for integers, plain cast for floats."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        lo, hi = dtype_limits(dt)
        return np.clip(np.rint(values), lo, hi).astype(dt)
    return np.asarray(values).astype(dt, copy=False)


def finite_min_max(image: Array) -> tuple[float, float]:
    """Minimum and maximum of the finite values (``(0, 0)`` when there are none)."""
    arr = np.asarray(image)
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return 0.0, 0.0
        return float(finite.min()), float(finite.max())
    return float(arr.min()), float(arr.max())


def to_unit(image: Array) -> Array:
    """Min-max scale to float64 [0, 1] over finite values; non-finite pixels → 0, constant image → 0."""
    arr = np.asarray(image, dtype=np.float64)
    lo, hi = finite_min_max(arr)
    out = np.zeros(arr.shape, dtype=np.float64) if hi <= lo else (arr - lo) / (hi - lo)
    if not np.isfinite(out).all():
        out = np.where(np.isfinite(out), out, 0.0)
    return out


def to_uint(image: Array, bits: int) -> tuple[Array, float, float]:
    """Min-max scale to ``uint8`` (bits=8) or ``uint16`` (bits=16); returns the array and the (min, max) used.

    ``uint8`` input with bits=8 and ``uint16`` input with bits=16 are returned unchanged (scale 0..max).
    """
    arr = np.asarray(image)
    target = np.uint8 if bits == 8 else np.uint16
    if arr.dtype == target:
        return arr, 0.0, float(np.iinfo(target).max)
    lo, hi = finite_min_max(arr)
    top = float(np.iinfo(target).max)
    scaled = to_unit(arr) * top
    return np.rint(scaled).astype(target), lo, hi


def luma(image: Array) -> Array:
    """Grey-scale float64 view: the image itself, or ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    rgb = arr.astype(np.float64, copy=False)  # float32 channels would otherwise give a float32 luma
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def gray(image: Array) -> Array:
    """Like :func:`luma` but keeps the dtype (rounded for integer types)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr
    return cast_like(luma(arr), arr.dtype)


def per_channel(fn: Callable[[Array], Array], image: Array) -> Array:
    """Apply a 2-D function to each channel of a (rows, cols, 3) image, or directly to a 2-D image."""
    if image.ndim == 2:
        return fn(image)
    return np.stack([fn(np.ascontiguousarray(image[:, :, c])) for c in range(image.shape[2])], axis=2)


def noise_sigma_mad(image: Array) -> float:
    """Noise standard deviation by Donoho's wavelet MAD rule on the finest Haar diagonal sub-band.

    ``sigma = median(|HH|) / 0.6745`` with ``HH = (a - b - c + d) / 2`` over disjoint 2x2 blocks, in the
    units of ``image`` (luma for 3 channels; non-finite pixels ignored). NaN for images under 2x2.
    """
    arr = np.asarray(image)
    g = arr if arr.ndim == 2 and arr.dtype == np.float64 else luma(arr)  # luma of that is a copy of it
    rows, cols = (g.shape[0] // 2) * 2, (g.shape[1] // 2) * 2
    if rows == 0 or cols == 0:
        return float("nan")
    g = g[:rows, :cols]
    hh = g[0::2, 0::2] - g[0::2, 1::2]  # ((a - b) - c + d) / 2 in place: the same operations, fewer copies
    hh -= g[1::2, 0::2]
    hh += g[1::2, 1::2]
    hh /= 2.0
    if not np.isfinite(hh).all():
        hh = hh[np.isfinite(hh)]
    if hh.size == 0:
        return float("nan")
    return float(np.median(np.abs(hh, out=hh)) / 0.6745)


class DegenerateOutputError(RecipeError):
    """A recipe turned a frame with content into a degenerate output: quarantined, never written as an image.

    Attributes:
        reason: ``"constant"``, ``"nonfinite"``, ``"saturated"`` or ``"entropy"`` (see :func:`check_output`).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


#: :func:`check_output` bounds. An output is degenerate when its non-finite share exceeds
#: ``MAX_NONFINITE_SHARE`` (and the input's), when more than ``MAX_SATURATED_SHARE`` of its pixels sit at
#: one end of its finite range where the input had less than ``MAX_INPUT_END_SHARE`` at that end, or when
#: its entropy falls below ``MIN_ENTROPY_RATIO`` of the input's (inputs of at least ``MIN_INPUT_ENTROPY`` bits).
MAX_NONFINITE_SHARE = 0.5
MAX_SATURATED_SHARE = 0.95
MAX_INPUT_END_SHARE = 0.5
MIN_ENTROPY_RATIO = 0.1
MIN_INPUT_ENTROPY = 1.0
_CHECK_SAMPLE = 1 << 20


def _sample(values: Array) -> Array:
    """At most about :data:`_CHECK_SAMPLE` values of a flat array (a regular stride: cheap, deterministic)."""
    step = max(1, values.size // _CHECK_SAMPLE)
    return values[::step]


def _end_shares(values: Array) -> tuple[float, float, float, float]:
    """``(lo, hi, share at lo, share at hi)`` of finite ``values`` (non-empty)."""
    lo, hi = float(values.min()), float(values.max())
    return lo, hi, float(np.mean(values == lo)), float(np.mean(values == hi))


def _entropy_bits(values: Array, lo: float, hi: float, bins: int = 256) -> float:
    """Shannon entropy (bits) of the ``bins``-bin histogram of ``values`` over their own ``[lo, hi]``."""
    if hi <= lo:
        return 0.0
    idx = np.clip(((values - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
    p = np.bincount(idx, minlength=bins).astype(np.float64)
    p = p[p > 0] / values.size
    return float(-(p * np.log2(p)).sum()) + 0.0


def check_output(before: Array, after: Array) -> None:
    """Raise :class:`DegenerateOutputError` when ``after`` (a recipe's output) lost the content of ``before``.

    Checked on the luma of both frames (3 channels: BT.601), in this order:

    * ``nonfinite``: the output has no finite pixel, or more than :data:`MAX_NONFINITE_SHARE` of its pixels
      are non-finite and more than the input's share;
    * ``constant``: the output's finite max equals its finite min while the input's do not;
    * ``saturated``: more than :data:`MAX_SATURATED_SHARE` (95 %) of the output's finite pixels are at one end
      (min or max) of its finite range, where the input had less than :data:`MAX_INPUT_END_SHARE` (50 %)
      at the same end of its own range (e.g. a CT frame without its rescale driven through a lung window);
    * ``entropy``: the entropy of the output's 256-bin histogram over its finite range is below
      :data:`MIN_ENTROPY_RATIO` (10 %) of the input's in the same binning (inputs of at least
      :data:`MIN_INPUT_ENTROPY` bit).

    A constant or all-non-finite input is not checked (``flag_empty`` is the step that refuses those).
    Saturation and entropy use a regular subsample of at most about 2**20 pixels.
    """
    b = luma(np.asarray(before)).ravel()
    a = luma(np.asarray(after)).ravel()
    b_fin = b if np.isfinite(b).all() else b[np.isfinite(b)]
    if b_fin.size == 0 or b_fin.min() == b_fin.max():
        return
    finite = np.isfinite(a)
    n_fin = int(np.count_nonzero(finite))
    share_bad = 1.0 - n_fin / max(a.size, 1)
    share_bad_in = 1.0 - b_fin.size / b.size
    if n_fin == 0:
        raise DegenerateOutputError("nonfinite", "the recipe output has no finite pixel (all NaN/inf)")
    if share_bad > MAX_NONFINITE_SHARE and share_bad > share_bad_in:
        raise DegenerateOutputError(
            "nonfinite",
            f"{share_bad:.0%} of the recipe output's pixels are NaN/inf (input: {share_bad_in:.0%}; "
            f"bound {MAX_NONFINITE_SHARE:.0%})",
        )
    a_fin = a[finite] if n_fin < a.size else a
    lo, hi, at_lo, at_hi = _end_shares(_sample(a_fin))
    if float(a_fin.min()) == float(a_fin.max()):
        raise DegenerateOutputError(
            "constant",
            f"the recipe output is constant ({float(a_fin.min()):.6g}) but the input was not "
            f"(range {float(b_fin.min()):.6g}..{float(b_fin.max()):.6g}); check the rescale and window "
            "the frame went through",
        )
    bs = _sample(b_fin)
    b_lo, b_hi, in_lo, in_hi = _end_shares(bs)
    for end, share, share_in in (("minimum", at_lo, in_lo), ("maximum", at_hi, in_hi)):
        if share > MAX_SATURATED_SHARE and share_in < MAX_INPUT_END_SHARE:
            raise DegenerateOutputError(
                "saturated",
                f"{share:.1%} of the recipe output's pixels are saturated at its {end} "
                f"(input: {share_in:.1%}; bound {MAX_SATURATED_SHARE:.0%}): most of the input's information "
                "is lost; check the rescale and window the frame went through",
            )
    h_in = _entropy_bits(bs, b_lo, b_hi)
    h_out = _entropy_bits(_sample(a_fin), lo, hi)
    if h_in >= MIN_INPUT_ENTROPY and h_out < MIN_ENTROPY_RATIO * h_in:
        raise DegenerateOutputError(
            "entropy",
            f"the recipe output's entropy is {h_out:.2f} bits, under {MIN_ENTROPY_RATIO:.0%} of the "
            f"input's {h_in:.2f} bits (256 bins over each frame's finite range): most of the input's "
            "information is lost",
        )
