"""Modality-matched degradations and the full-reference protocol (core layer: numpy/scipy/skimage, no Spark).

Degradations take a clean 2-D frame and a seeded :class:`numpy.random.Generator` and return the degraded
frame **in the clean frame's own units and dtype** (integer results rounded half to even and saturated to
the dtype's range). Each has named levels; level ``"none"`` returns an exact copy.

===============  ========  =======================================================================
name             modality  model (parameter of the named levels)
===============  ========  =======================================================================
``rician``       MR        magnitude of complex Gaussian noise: ``sqrt((x + σ n1)² + (σ n2)²)``;
                           σ = fraction of the frame's robust max (99.5th percentile)
``ct_low_dose``  CT        simulated in the sinogram: stored values → HU (slope/intercept) → μ
                           (``μ_water (1 + HU/1000)``, ≥ 0) → Radon transform (line integrals) →
                           Poisson counts at ``I0`` photons per unattenuated ray → ``-log(N/I0)``;
                           the noise part (noisy minus clean sinogram) is reconstructed by filtered
                           back-projection (ramp filter) and added, in HU, to the clean frame.
                           Signal dependent (rays through dense tissue are noisier) and spatially
                           correlated (streaks), as in real low-dose CT. Padding outside the scan
                           field (HU < -1100) keeps its value. Level parameter: ``I0``.
``xray_quantum`` CR, DX    Poisson quantum noise: the value above the frame's minimum is taken as
                           proportional to detected quanta, ``counts`` quanta at the robust max;
                           optional Gaussian blur (detector MTF, σ in pixels) before the noise.
``speckle``      US        multiplicative speckle on the amplitude: ``x · sqrt(G) / E[sqrt(G)]``,
                           ``G ~ Gamma(L, 1/L)`` (``L`` looks; L = 1 is a Rayleigh amplitude), so
                           the mean is kept and the std is proportional to the intensity.
``low_contrast`` all       range compressed towards the median by ``factor`` after a ``gamma``
                           curve on the frame's range, then requantised to the frame's dtype.
===============  ========  =======================================================================

The full-reference protocol (:func:`full_reference`) scores a recipe ``R`` on a (clean, degraded) pair.
``P`` is ``R`` restricted to its *unit* steps, the steps that only map units or geometry
(:data:`UNIT_OPS`: rescale, window, clip, minmax, to_float, normalise, MONOCHROME1 inversion, non-finite
replacement, resize, crop, flag_empty, ...) plus the segmentation and mask steps, which never change the
image; every other step (filters, ``denoise``, enhancement) is a *quality* step. Then::

    ref      = P(clean)          the target, in the recipe output's units
    baseline = P(degraded)       what the recipe would output without its quality steps
    output   = R(degraded)       what the recipe outputs

PSNR and SSIM (:func:`medimg_spark.quality.reference_metrics`) of ``baseline`` and ``output`` against
``ref`` use ``data_range`` = the span of ``ref``'s units (finite max - min of ``ref``), never the
min-max of the output, so a recipe cannot gain by stretching its output.

Real clean frames carry their own noise, which bounds what a full-reference score can tell: removing it
moves the output away from the (noisy) reference, and at level ``"none"`` the baseline *is* the reference
(PSNR = inf), so only an exact identity would pass a strict comparison. :class:`FullReferenceScore`
therefore carries the *native tolerance*: the MSE and SSIM of ``ref`` against ``ref`` plus one seeded
realisation of its own noise (Gaussian, σ_native = the project's estimate on ``ref``,
:func:`medimg_spark.ops.denoise.estimate_noise`). An output is *not lowered* when the error it adds stays
within that tolerance::

    MSE(output) <= MSE(baseline) + MSE_tol      and      SSIM(output) >= SSIM(baseline) - (1 - SSIM_tol)

(each up to 0.01 dB / 0.001), and *improved* when its PSNR and SSIM are both strictly above the baseline's.
:meth:`FullReferenceScore.strictly_not_lowered` is the comparison without tolerance, reported alongside.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medimg_spark.errors import RecipeError
from medimg_spark.ops._common import Array, cast_like, noise_sigma_mad

if TYPE_CHECKING:
    from medimg_spark.ops.recipe import Recipe

Level = Literal["none", "low", "moderate", "high"]
LEVELS: tuple[Level, ...] = ("none", "low", "moderate", "high")
"""The named levels, mildest first."""

MU_WATER_PER_MM = 0.0193
"""Linear attenuation of water at ~70 keV effective energy (1/mm)."""

CT_PADDING_HU = -1100.0
"""HU below this are padding outside the scan field (e.g. -2000 stored + -1024 intercept); left untouched."""


class DegradeError(RecipeError):
    """A degradation cannot be applied to this frame (wrong shape, unknown name or level, bad parameter)."""


class NotApplicableError(DegradeError):
    """The protocol does not apply: the reference pipeline P itself gives a degenerate frame (quarantined by
    ``apply_recipe``'s output check whatever the recipe's quality steps do), e.g. a lung window on a CT frame
    whose contrast was compressed into air."""


# --- degradations ---------------------------------------------------------------------------------------


def _frame(image: Array) -> Array:
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise DegradeError(
            f"degradations take one 2-D grey frame, got shape {arr.shape}; convert to luma first"
        )
    if arr.dtype.kind not in "uif":
        raise DegradeError(f"degradations take a real-valued frame, got dtype {arr.dtype}")
    return arr


def robust_max(image: Array) -> float:
    """The 99.5th percentile of the finite values (the scale of the relative noise levels)."""
    arr = np.asarray(image, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return float(np.percentile(finite, 99.5)) if finite.size else 0.0


def rician(image: Array, sigma_fraction: float, rng: np.random.Generator) -> Array:
    """MR Rician noise: magnitude of the frame plus complex Gaussian noise of σ = ``sigma_fraction`` · robust max.

    Raises:
        DegradeError: not a 2-D frame or ``sigma_fraction`` < 0.
    """
    arr = _frame(image)
    if sigma_fraction < 0:
        raise DegradeError(f"rician sigma_fraction must be >= 0, got {sigma_fraction}")
    x = arr.astype(np.float64)
    sigma = sigma_fraction * max(robust_max(x), 0.0)
    real = x + rng.normal(0.0, sigma, x.shape)
    imag = rng.normal(0.0, sigma, x.shape)
    return cast_like(np.hypot(real, imag), arr.dtype)


_SINOGRAM_CACHE: dict[str, tuple[Array, Array]] = {}


def _ct_geometry(
    image: Array, slope: float, intercept: float, pixel_mm: float, n_angles: int
) -> tuple[Array, Array]:
    """(theta, clean sinogram of μ·pixel_mm) of the square-padded frame, cached per frame and parameters."""
    from skimage.transform import radon

    key = hashlib.blake2b(
        np.ascontiguousarray(image).tobytes()
        + repr((image.shape, image.dtype.str, slope, intercept, pixel_mm, n_angles)).encode(),
        digest_size=16,
    ).hexdigest()
    hit = _SINOGRAM_CACHE.get(key)
    if hit is not None:
        return hit
    hu = image.astype(np.float64) * slope + intercept
    mu = MU_WATER_PER_MM * np.clip(1.0 + hu / 1000.0, 0.0, None) * pixel_mm
    mu[~np.isfinite(mu)] = 0.0
    side = max(mu.shape)
    square = np.zeros((side, side))
    r0, c0 = (side - mu.shape[0]) // 2, (side - mu.shape[1]) // 2
    square[r0 : r0 + mu.shape[0], c0 : c0 + mu.shape[1]] = mu
    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    sino = radon(square, theta, circle=False)
    if len(_SINOGRAM_CACHE) > 8:
        _SINOGRAM_CACHE.clear()
    _SINOGRAM_CACHE[key] = (theta, sino)
    return theta, sino


def ct_low_dose(
    image: Array,
    i0: float,
    rng: np.random.Generator,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    pixel_mm: float = 0.5,
    n_angles: int = 180,
) -> Array:
    """CT low-dose noise simulated in the sinogram (see the module doc); result in the frame's stored units.

    Args:
        image: stored values of one CT frame (HU = value · slope + intercept).
        i0: photons per unattenuated ray (lower = lower dose = noisier).
        rng: the seeded generator.
        slope: rescale slope (stored → HU).
        intercept: rescale intercept.
        pixel_mm: pixel size in mm (line integrals are in μ · mm).
        n_angles: projections over 180°.

    Raises:
        DegradeError: not a 2-D frame, ``i0`` <= 0, ``slope`` = 0 or fewer than 2 angles.
    """
    from skimage.transform import iradon

    arr = _frame(image)
    if i0 <= 0 or slope == 0 or pixel_mm <= 0 or n_angles < 2:
        raise DegradeError(
            f"ct_low_dose needs i0 > 0, slope != 0, pixel_mm > 0, n_angles >= 2; got {i0}, {slope}, {pixel_mm}, "
            f"{n_angles}"
        )
    theta, sino = _ct_geometry(arr, slope, intercept, pixel_mm, n_angles)
    counts = rng.poisson(i0 * np.exp(-sino)).astype(np.float64)
    noisy = -np.log(np.maximum(counts, 1.0) / i0)
    side = max(arr.shape)
    noise = iradon(noisy - sino, theta, output_size=side, filter_name="ramp", circle=False)
    r0, c0 = (side - arr.shape[0]) // 2, (side - arr.shape[1]) // 2
    noise = noise[r0 : r0 + arr.shape[0], c0 : c0 + arr.shape[1]]
    delta_hu = 1000.0 * noise / (pixel_mm * MU_WATER_PER_MM)
    x = arr.astype(np.float64)
    out = x + delta_hu / slope
    padding = ct_padding(arr, slope, intercept)
    out[padding] = x[padding]
    return cast_like(out, arr.dtype)


def ct_padding(image: Array, slope: float = 1.0, intercept: float = 0.0) -> Array:
    """Boolean mask of the padding pixels outside the scan field (HU < :data:`CT_PADDING_HU`)."""
    hu = np.asarray(image, dtype=np.float64) * slope + intercept
    return np.asarray(hu < CT_PADDING_HU)


def xray_quantum(image: Array, counts: float, rng: np.random.Generator, blur_sigma: float = 0.0) -> Array:
    """X-ray quantum (Poisson) noise at ``counts`` quanta per pixel at the robust max, after an optional blur.

    The value above the frame's minimum is treated as proportional to detected quanta, so the noise
    variance is proportional to that value.

    Raises:
        DegradeError: not a 2-D frame, ``counts`` <= 0 or ``blur_sigma`` < 0.
    """
    from scipy import ndimage

    arr = _frame(image)
    if counts <= 0 or blur_sigma < 0:
        raise DegradeError(f"xray_quantum needs counts > 0 and blur_sigma >= 0, got {counts}, {blur_sigma}")
    x = arr.astype(np.float64)
    if blur_sigma > 0:
        x = ndimage.gaussian_filter(x, blur_sigma, mode="reflect")
    lo = float(np.nanmin(x))
    span = robust_max(x) - lo
    if span <= 0:
        return cast_like(x, arr.dtype)
    scale = counts / span
    quanta = rng.poisson(np.clip((x - lo) * scale, 0.0, None))
    return cast_like(quanta / scale + lo, arr.dtype)


def speckle_factor_mean(looks: float) -> float:
    """E[sqrt(G)] for G ~ Gamma(looks, 1/looks): Γ(L + 1/2) / (Γ(L) sqrt(L))."""
    return math.exp(math.lgamma(looks + 0.5) - math.lgamma(looks)) / math.sqrt(looks)


def speckle(image: Array, looks: float, rng: np.random.Generator) -> Array:
    """Ultrasound speckle on the amplitude: ``x · sqrt(G) / E[sqrt(G)]``, ``G ~ Gamma(looks, 1/looks)``.

    Raises:
        DegradeError: not a 2-D frame or ``looks`` <= 0.
    """
    arr = _frame(image)
    if looks <= 0:
        raise DegradeError(f"speckle needs looks > 0, got {looks}")
    g = rng.gamma(looks, 1.0 / looks, arr.shape)
    factor = np.sqrt(g) / speckle_factor_mean(looks)
    return cast_like(arr.astype(np.float64) * factor, arr.dtype)


def low_contrast(image: Array, factor: float, gamma: float = 1.0) -> Array:
    """Low contrast: gamma on the frame's [min, max], range compressed by ``factor`` towards the median.

    Deterministic (no generator). Integer frames are requantised (fewer grey levels survive).

    Raises:
        DegradeError: not a 2-D frame, ``factor`` outside (0, 1] or ``gamma`` <= 0.
    """
    arr = _frame(image)
    if not 0 < factor <= 1 or gamma <= 0:
        raise DegradeError(f"low_contrast needs 0 < factor <= 1 and gamma > 0, got {factor}, {gamma}")
    x = arr.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return arr.copy()
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if hi <= lo:
        return arr.copy()
    u = np.clip((x - lo) / (hi - lo), 0.0, 1.0) ** gamma
    centre = float(np.median(u[finite]))
    out = lo + (hi - lo) * (centre + factor * (u - centre))
    out[~finite] = x[~finite]
    return cast_like(out, arr.dtype)


# --- named degradations and levels ----------------------------------------------------------------------


@dataclass(frozen=True)
class Degradation:
    """A named degradation with its parameter per level.

    Attributes:
        name: the degradation's name.
        modalities: DICOM modalities it models.
        parameter: what the level values are.
        levels: level name → parameters (keyword arguments of the function); ``"none"`` is implicit.
        noise: whether it adds noise (a denoiser is expected to help) or only changes contrast.
    """

    name: str
    modalities: tuple[str, ...]
    parameter: str
    levels: Mapping[str, Mapping[str, float]]
    noise: bool

    def describe(self, level: str) -> str:
        """``"σ 0.03"``-style label of ``level``'s parameters (``"none"`` for none)."""
        if level == "none":
            return "none"
        return ", ".join(f"{k} {v:g}" for k, v in self.levels[level].items())


DEGRADATIONS: dict[str, Degradation] = {
    "rician": Degradation(
        "rician", ("MR",), "sigma_fraction: σ / robust max", {
            "low": {"sigma_fraction": 0.01}, "moderate": {"sigma_fraction": 0.03}, "high": {"sigma_fraction": 0.06},
        }, True,
    ),
    "ct_low_dose": Degradation(
        "ct_low_dose", ("CT",), "i0: photons per unattenuated ray", {
            "low": {"i0": 5.0e6}, "moderate": {"i0": 9.0e5}, "high": {"i0": 2.2e5},
        }, True,
    ),
    "xray_quantum": Degradation(
        "xray_quantum", ("CR", "DX", "DR", "RG"), "counts: quanta at the robust max; blur_sigma: px", {
            "low": {"counts": 2000.0, "blur_sigma": 0.0},
            "moderate": {"counts": 300.0, "blur_sigma": 0.5},
            "high": {"counts": 60.0, "blur_sigma": 1.0},
        }, True,
    ),
    "speckle": Degradation(
        "speckle", ("US",), "looks: L of Gamma(L, 1/L) intensity speckle", {
            "low": {"looks": 64.0}, "moderate": {"looks": 8.0}, "high": {"looks": 2.0},
        }, True,
    ),
    "low_contrast": Degradation(
        "low_contrast", ("CT", "MR", "CR", "DX", "DR", "RG", "US"), "factor: range kept; gamma", {
            "low": {"factor": 0.7, "gamma": 1.0},
            "moderate": {"factor": 0.4, "gamma": 1.3},
            "high": {"factor": 0.2, "gamma": 1.6},
        }, False,
    ),
}  # fmt: skip
"""Name → degradation, with its levels."""

MODALITY_DEGRADATIONS: dict[str, tuple[str, ...]] = {
    "CT": ("ct_low_dose", "low_contrast"),
    "MR": ("rician", "low_contrast"),
    "CR": ("xray_quantum", "low_contrast"),
    "DX": ("xray_quantum", "low_contrast"),
    "US": ("speckle", "low_contrast"),
}
"""Modality → the degradations that match it (noise model first)."""


def degrade(
    image: Array, name: str, level: str, rng: np.random.Generator, meta: Mapping[str, Any] | None = None
) -> Array:
    """Apply degradation ``name`` at ``level`` (``"none"`` → an exact copy); same units and dtype as ``image``.

    Args:
        image: the clean 2-D frame.
        name: a key of :data:`DEGRADATIONS`.
        level: ``"none"`` or one of the degradation's levels.
        rng: the seeded generator (unused by deterministic degradations).
        meta: for ``ct_low_dose``: ``rescale_slope``, ``rescale_intercept`` and ``pixel_spacing`` (mm).

    Raises:
        DegradeError: unknown name or level, or the degradation refuses the frame.
    """
    arr = _frame(image)
    if name == "none" and level == "none":
        return arr.copy()
    deg = DEGRADATIONS.get(name)
    if deg is None:
        raise DegradeError(f"unknown degradation '{name}'; valid: {', '.join(DEGRADATIONS)}")
    if level == "none":
        return arr.copy()
    if level not in deg.levels:
        raise DegradeError(f"unknown level '{level}' of {name}; valid: none, {', '.join(deg.levels)}")
    p = dict(deg.levels[level])
    if name == "rician":
        return rician(arr, p["sigma_fraction"], rng)
    if name == "ct_low_dose":
        m = meta or {}
        spacing = m.get("pixel_spacing") or [0.5]
        return ct_low_dose(
            arr,
            p["i0"],
            rng,
            slope=float(m.get("rescale_slope") or 1.0),
            intercept=float(m.get("rescale_intercept") or 0.0),
            pixel_mm=float(spacing[0]) or 0.5,
        )
    if name == "xray_quantum":
        return xray_quantum(arr, p["counts"], rng, p["blur_sigma"])
    if name == "speckle":
        return speckle(arr, p["looks"], rng)
    return low_contrast(arr, p["factor"], p["gamma"])


# --- variance-stabilising transforms (for the BM3D anchor and for tests) --------------------------------

Transform = Callable[[Array], Array]


def anscombe(x: Array) -> Array:
    """Anscombe transform ``2 sqrt(x + 3/8)``: Poisson counts → approximately unit-variance Gaussian."""
    return 2.0 * np.sqrt(np.clip(np.asarray(x, dtype=np.float64), 0.0, None) + 0.375)


def inverse_anscombe(y: Array) -> Array:
    """Closed-form approximation of the exact unbiased inverse of :func:`anscombe` (Mäkitalo & Foi 2011)."""
    y = np.maximum(np.asarray(y, dtype=np.float64), 1e-6)
    return 0.25 * y**2 + 0.25 * math.sqrt(1.5) / y - 1.375 / y**2 + 0.625 * math.sqrt(1.5) / y**3 - 0.125


# --- the full-reference protocol ------------------------------------------------------------------------

UNIT_OPS: frozenset[str] = frozenset(
    {
        "flag_empty",
        "replace_nonfinite",
        "clip",
        "rescale",
        "window",
        "invert_monochrome1",
        "to_float",
        "minmax",
        "zscore",
        "percentile_scale",
        "normalize",
        "resize",
        "resample_spacing",
        "crop",
        "crop_foreground",
    }
)
"""Image ops that only map units or geometry (the reference pipeline ``P``); segmentation and mask steps too."""


def is_unit_step(op: str, kind: str) -> bool:
    """Whether a step with ``op`` and ``kind`` belongs to the reference pipeline ``P``."""
    return op in UNIT_OPS or kind in ("segment", "mask", "geometry")


def reference_recipe(recipe: Recipe) -> Recipe:
    """``P``: ``recipe`` restricted to its unit steps (named ``<name>.reference``).

    Raises:
        DegradeError: the recipe has no unit step (``P`` would be empty).
    """
    from medimg_spark.ops.recipe import Recipe

    steps = [s for s in recipe.steps if is_unit_step(s.op, s.kind)]
    if not steps:
        raise DegradeError(
            f"recipe {recipe.name} has no unit step (flag_empty, rescale, window, minmax, ...); "
            "the full-reference protocol needs one, add flag_empty"
        )
    name = f"{recipe.name}.reference"[:100]
    return Recipe(name=name, description=recipe.description, steps=steps)


def quality_ops(recipe: Recipe) -> list[str]:
    """The ops of ``recipe``'s quality steps (everything :func:`reference_recipe` leaves out)."""
    return [s.op for s in recipe.steps if not is_unit_step(s.op, s.kind)]


def reference_span(ref: Array) -> float:
    """``data_range`` of the protocol: finite max - min of ``ref`` (1.0 for a constant reference)."""
    r = np.asarray(ref, dtype=np.float64)
    finite = r[np.isfinite(r)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    return span if span > 0 else 1.0


TOLERANCE_SEED = 16
"""Seed of the Gaussian realisation behind the native-noise tolerance (fixed: the tolerance is a property
of the reference frame, not of the run)."""


@dataclass(frozen=True)
class FullReferenceScore:
    """PSNR (dB) / SSIM of the baseline ``P(degraded)`` and the output ``R(degraded)`` against ``P(clean)``.

    Attributes:
        baseline_psnr: PSNR of ``P(degraded)``.
        baseline_ssim: SSIM of ``P(degraded)``.
        output_psnr: PSNR of ``R(degraded)``.
        output_ssim: SSIM of ``R(degraded)``.
        data_range: span of ``ref``'s units used by both metrics.
        native_sigma: noise σ of ``ref`` (its own noise, ``ref``'s units; :func:`estimate_native_sigma`).
        tolerance_psnr: PSNR of ``ref`` + N(0, native_sigma²) against ``ref``.
        tolerance_ssim: SSIM of the same.
    """

    baseline_psnr: float
    baseline_ssim: float
    output_psnr: float
    output_ssim: float
    data_range: float
    native_sigma: float
    tolerance_psnr: float
    tolerance_ssim: float

    @property
    def psnr_gain(self) -> float:
        """``output_psnr - baseline_psnr`` (dB; 0 when both are inf)."""
        if math.isinf(self.baseline_psnr) and math.isinf(self.output_psnr):
            return 0.0
        return self.output_psnr - self.baseline_psnr

    @property
    def ssim_gain(self) -> float:
        """``output_ssim - baseline_ssim``."""
        return self.output_ssim - self.baseline_ssim

    def _mse(self, psnr: float) -> float:
        return 0.0 if math.isinf(psnr) else self.data_range**2 / 10.0 ** (psnr / 10.0)

    @property
    def psnr_floor(self) -> float:
        """The lowest output PSNR that is not lowered: MSE(baseline) + MSE_tol in dB."""
        mse = self._mse(self.baseline_psnr) + self._mse(self.tolerance_psnr)
        return math.inf if mse <= 0 else 10.0 * math.log10(self.data_range**2 / mse)

    @property
    def ssim_floor(self) -> float:
        """The lowest output SSIM that is not lowered: SSIM(baseline) - (1 - SSIM_tol)."""
        return self.baseline_ssim - (1.0 - self.tolerance_ssim)

    def not_lowered(self, psnr_eps: float = 0.01, ssim_eps: float = 1e-3) -> bool:
        """The output adds at most the native tolerance to the baseline's error (module doc)."""
        return (
            self.output_psnr >= self.psnr_floor - psnr_eps and self.output_ssim >= self.ssim_floor - ssim_eps
        )

    def strictly_not_lowered(self, psnr_eps: float = 0.01, ssim_eps: float = 1e-3) -> bool:
        """Output PSNR and SSIM each at least the baseline's (no tolerance; fails at level none unless identity)."""
        return (
            self.output_psnr >= self.baseline_psnr - psnr_eps
            and self.output_ssim >= self.baseline_ssim - ssim_eps
        )

    def improved(self) -> bool:
        """Output PSNR and SSIM both strictly above the baseline's."""
        return self.output_psnr > self.baseline_psnr and self.output_ssim > self.baseline_ssim


def estimate_native_sigma(ref: Array) -> float:
    """The noise σ of ``ref`` in its units: the project's estimate (``ops.denoise``), else the wavelet MAD."""
    try:
        from medimg_spark.ops.denoise import estimate_noise
    except ImportError:  # pragma: no cover - the denoise op ships with this module
        return noise_sigma_mad(ref)
    with np.errstate(all="ignore"):
        sigma = float(estimate_noise(ref).sigma)
    return sigma if np.isfinite(sigma) else noise_sigma_mad(ref)


def native_tolerance(ref: Array, data_range: float) -> tuple[float, float, float]:
    """``(σ_native, PSNR, SSIM)`` of ``ref`` against ``ref`` + one seeded N(0, σ_native²) realisation."""
    from medimg_spark.quality import reference_metrics

    r = np.asarray(ref, dtype=np.float64)
    sigma = estimate_native_sigma(r)
    if not np.isfinite(sigma) or sigma <= 0:
        return 0.0, math.inf, 1.0
    noisy = r + np.random.default_rng(TOLERANCE_SEED).normal(0.0, sigma, r.shape)
    m = reference_metrics(r, noisy, data_range=data_range)
    return sigma, m["psnr"], m["ssim"]


def score_against(ref: Array, baseline: Array, output: Array) -> FullReferenceScore:
    """The protocol's scores for already-computed ``ref``, ``baseline`` and ``output`` arrays.

    Raises:
        DegradeError: shapes differ (a data-dependent geometry step moved the frame).
    """
    from medimg_spark.quality import reference_metrics

    ref = np.asarray(ref)
    if ref.shape != np.shape(baseline) or ref.shape != np.shape(output):
        raise DegradeError(
            f"reference {ref.shape}, baseline {np.shape(baseline)} and output {np.shape(output)} differ in shape; "
            "the protocol needs geometry steps that do not depend on the pixel values"
        )
    span = reference_span(ref)
    base = reference_metrics(ref, baseline, data_range=span)
    out = reference_metrics(ref, output, data_range=span)
    sigma, tol_psnr, tol_ssim = native_tolerance(ref, span)
    return FullReferenceScore(
        baseline_psnr=base["psnr"],
        baseline_ssim=base["ssim"],
        output_psnr=out["psnr"],
        output_ssim=out["ssim"],
        data_range=span,
        native_sigma=sigma,
        tolerance_psnr=tol_psnr,
        tolerance_ssim=tol_ssim,
    )


def full_reference(
    recipe: Recipe,
    clean: Array,
    degraded: Array,
    meta: Mapping[str, Any] | None = None,
    trace: list[str] | None = None,
) -> FullReferenceScore:
    """Score ``recipe`` on one (clean, degraded) pair by the protocol of the module doc.

    ``trace``, when a list, receives the recipe's branch notes on the degraded frame (see ``apply_recipe``).

    Raises:
        RecipeStepError: the recipe (or its reference pipeline) failed on a frame.
        DegenerateOutputError: the recipe's output is degenerate (while P's is not): a failure of R.
        NotApplicableError: P's output on the clean or degraded frame is degenerate.
        DegradeError: the recipe has no unit step, or outputs differ in shape.
    """
    from medimg_spark.ops._common import DegenerateOutputError
    from medimg_spark.ops.recipe import apply_recipe

    unit = reference_recipe(recipe)
    try:
        ref, _ = apply_recipe(unit, clean, meta)
        baseline, _ = apply_recipe(unit, degraded, meta)
    except DegenerateOutputError as exc:
        raise NotApplicableError(f"P = {unit.name} alone gives a degenerate frame: {exc}") from exc
    output, _ = (
        apply_recipe(recipe, degraded, meta) if trace is None else apply_recipe(recipe, degraded, meta, trace)
    )
    return score_against(ref, baseline, output)
