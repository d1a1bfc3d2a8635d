"""No-reference and full-reference image quality metrics of one frame.

Scale rule: every no-reference metric is computed on ``u = (L - lo) / (hi - lo)``, the frame's luma ``L``
(BT.601 for 3 channels; non-finite pixels → 0) in a scale ``[lo, hi]``:

* alone (:func:`quality_metrics` without ``scale``): the frame's own finite min-max, so ``u`` is in [0, 1]
  and the metrics are invariant to affine intensity changes such as rescale slope/intercept or a dtype cast;
* before/after a recipe (:func:`paired_metrics`, what ``preprocess`` writes), a **fixed scale**:

  - the recipe keeps the input's units (filters, denoising, sharpening, gamma, clipping, geometry): both
    frames on the *input's* finite min-max, so a sharpening overshoot shows as a wider range and more
    contrast (``u`` outside [0, 1]) instead of shrinking the rest of the frame, and a denoised frame's
    σ is in the same units as the noisy one's;
  - the recipe changes units (rescale, window, minmax, zscore, percentile_scale, contrast_stretch,
    equalize, clahe, to_float with a scale): the input on its own finite min-max, the output on its
    *nominal* range: [0, 1] for a float output whose 1st-99th percentiles lie in [-0.05, 1.05], the
    dtype's display range for integers (uint8 [0, 255], uint16 [0, 65535], int16 [0, 32767]), else its
    own finite min-max. A window that saturates most of the frame then scores a low dynamic range
    instead of being stretched back to [0, 1].

==================  ===================================================================  ==========
key                 definition (on ``u``)                                                 better
==================  ===================================================================  ==========
``mean``            mean of ``u``                                                        neutral
``std``             standard deviation of ``u``                                          neutral
``dynamic_range``   robust used range: 99th minus 1st percentile of ``u``                higher
``entropy``         Shannon entropy (bits) of the 256-bin histogram of ``u`` on [0, 1]   higher
                    (values outside [0, 1] counted in the end bins)
``rms_contrast``    relative RMS contrast ``std / mean`` (0 for a constant frame or      higher
                    a mean <= 0)
``sharpness``       variance of the Laplacian (:func:`cv2.Laplacian`, 3x3 4-neighbour)   higher
``noise_sigma``     wavelet MAD noise σ, finest Haar diagonal band (Donoho)              lower
``snr``             ``mean_fg / std_bg`` with fg/bg split by Otsu's threshold            higher
``cnr``             ``|mean_fg - mean_bg| / std_bg`` (same split)                        higher
``blur_effect``     :func:`skimage.measure.blur_effect` (0 sharp … 1 blurred)            lower
==================  ===================================================================  ==========

Undefined values are NaN, never an exception: ``snr``/``cnr`` when Otsu finds no split or the background
is constant, ``noise_sigma`` below 2x2 pixels, ``blur_effect`` below 3x3.

With a reference: :func:`reference_metrics` gives PSNR and SSIM exactly as :mod:`skimage.metrics`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from medimg_spark.ops._common import Array, display_range, finite_min_max, luma, noise_sigma_mad, to_unit

Scale = tuple[float, float]
"""``(lo, hi)``: the intensity mapped to 0 and 1 before the no-reference metrics."""

QUALITY_KEYS: tuple[str, ...] = (
    "mean",
    "std",
    "dynamic_range",
    "entropy",
    "rms_contrast",
    "sharpness",
    "noise_sigma",
    "snr",
    "cnr",
    "blur_effect",
)
"""The metric names, in the fixed order of :func:`quality_metrics` (and of the Spark struct)."""

METRIC_DIRECTION: dict[str, int] = {
    "mean": 0,
    "std": 0,
    "dynamic_range": 1,
    "entropy": 1,
    "rms_contrast": 1,
    "sharpness": 1,
    "noise_sigma": -1,
    "snr": 1,
    "cnr": 1,
    "blur_effect": -1,
}
"""+1: higher is better, -1: lower is better, 0: no direction (no "improved" share is reported)."""

REFERENCE_KEYS: tuple[str, ...] = ("psnr", "ssim")


def unit_luma(image: Array, scale: Scale | None = None) -> Array:
    """The luma every no-reference metric is computed on (float64): min-max scaled to [0, 1], or
    ``(L - lo) / (hi - lo)`` in the fixed ``scale`` (not clipped; non-finite → 0; ``hi <= lo`` → all 0)."""
    g = luma(np.asarray(image))
    if scale is None:
        return to_unit(g)
    lo, hi = float(scale[0]), float(scale[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(g.shape, dtype=np.float64)
    u = (g - lo) / (hi - lo)
    return np.where(np.isfinite(u), u, 0.0)


def own_scale(image: Array) -> Scale:
    """The frame's finite luma min-max (what :func:`quality_metrics` uses without a scale)."""
    return finite_min_max(luma(np.asarray(image)))


def nominal_scale(image: Array) -> Scale:
    """The nominal range of a recipe output in new units (see the module doc): [0, 1] for a float frame whose
    1st-99th luma percentiles lie in [-0.05, 1.05], the display range of an integer dtype, else its min-max."""
    arr = np.asarray(image)
    if arr.dtype.kind in "ui":
        return display_range(arr.dtype)
    g = luma(arr)
    finite = g[np.isfinite(g)]
    if finite.size:
        p1, p99 = np.percentile(finite, [1.0, 99.0])
        if p1 >= -0.05 and p99 <= 1.05:
            return 0.0, 1.0
    return own_scale(arr)


def paired_scales(before: Array, after: Array, keeps_units: bool) -> tuple[Scale, Scale]:
    """The fixed scales of the before and after frames of a recipe (module doc)."""
    scale_before = own_scale(before)
    return scale_before, (scale_before if keeps_units else nominal_scale(after))


def paired_metrics(
    before: Array, after: Array, keeps_units: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """No-reference metrics of a recipe's input and output in fixed scales (:func:`paired_scales`).

    ``before`` equals :func:`quality_metrics` of the input alone (its own min-max).
    """
    scale_before, scale_after = paired_scales(before, after, keeps_units)
    return quality_metrics(before, scale_before), quality_metrics(after, scale_after)


def shannon_entropy(u: Array, bins: int = 256) -> float:
    """Shannon entropy in bits of the ``bins``-bin histogram of ``u`` over [0, 1]."""
    hist = np.histogram(np.clip(u, 0.0, 1.0), bins=bins, range=(0.0, 1.0))[0].astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def otsu_regions(u: Array) -> tuple[Array, Array] | None:
    """Foreground (``u > t``) and background pixel values split by Otsu's threshold, or None if no split."""
    from skimage.filters import threshold_otsu

    if u.size < 2 or u.min() == u.max():
        return None
    t = threshold_otsu(u)
    fg = u > t
    if fg.all() or not fg.any():
        return None
    return u[fg], u[~fg]


def quality_metrics(image: Array, scale: Scale | None = None) -> dict[str, float]:
    """No-reference metrics of one frame as a flat ``{key: float}`` dict in :data:`QUALITY_KEYS` order.

    Args:
        image: the frame.
        scale: ``(lo, hi)`` mapped to 0 and 1 (a fixed scale, e.g. the input's range for a recipe's output);
            None: the frame's own finite min-max.
    """
    import cv2

    u = unit_luma(image, scale)
    mean = float(u.mean())
    std = float(u.std())
    p1, p99 = np.percentile(u, [1.0, 99.0])
    sharpness = float(cv2.Laplacian(u, cv2.CV_64F, ksize=1).var())
    snr = cnr = math.nan
    regions = otsu_regions(u)
    if regions is not None:
        fg, bg = regions
        bg_std = float(bg.std())
        if bg_std > 0:
            snr = float(fg.mean()) / bg_std
            cnr = abs(float(fg.mean()) - float(bg.mean())) / bg_std
    blur = math.nan
    if min(u.shape) >= 3:
        from skimage.measure import blur_effect

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            blur = float(blur_effect(u, h_size=min(11, min(u.shape) - 1)))
    return {
        "mean": mean,
        "std": std,
        "dynamic_range": float(p99 - p1),
        "entropy": shannon_entropy(u),
        "rms_contrast": std / mean if mean > 0 else 0.0,
        "sharpness": sharpness,
        "noise_sigma": noise_sigma_mad(u),
        "snr": snr,
        "cnr": cnr,
        "blur_effect": blur,
    }


def default_data_range(reference: Array) -> float:
    """skimage's rule for integer dtypes (the dtype's span); for floats the reference's finite max - min."""
    ref = np.asarray(reference)
    if ref.dtype.kind in "ui":
        info = np.iinfo(ref.dtype)
        return float(info.max) - float(info.min)
    finite = ref[np.isfinite(ref)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    return span if span > 0 else 1.0


def reference_metrics(reference: Array, image: Array, data_range: float | None = None) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``image`` against ``reference`` via :mod:`skimage.metrics`.

    Args:
        reference: the clean frame.
        image: the frame to score, same shape (its dtype may differ).
        data_range: value span; default :func:`default_data_range` of the reference.

    SSIM uses a 7x7 window (the largest odd size that fits for smaller frames; NaN below 3x3) and
    ``channel_axis=-1`` for 3 channels. PSNR of identical frames is ``inf``.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = np.asarray(reference)
    img = np.asarray(image)
    if ref.shape != img.shape:
        raise ValueError(f"reference shape {ref.shape} differs from image shape {img.shape}")
    dr = default_data_range(ref) if data_range is None else float(data_range)
    r64, i64 = ref.astype(np.float64), img.astype(np.float64)
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(r64, i64, data_range=dr))
    side = min(ref.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    ssim = math.nan
    if win >= 3:
        kwargs: dict[str, Any] = {"channel_axis": -1} if ref.ndim == 3 else {}
        ssim = float(structural_similarity(r64, i64, data_range=dr, win_size=win, **kwargs))
    return {"psnr": psnr, "ssim": ssim}
