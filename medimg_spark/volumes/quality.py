"""No-reference quality metrics of one volume: the 2-D metrics of :mod:`medimg_spark.quality`, in 3-D.

Scale rule (as in 2-D): every metric is computed on ``u``, the voxels (the channel mean for a
multi-channel volume) min-max scaled to [0, 1] over the finite voxels (non-finite → 0, a constant
volume → all 0), so the numbers are invariant to rescale slope/intercept and dtype casts and
comparable before and after a filter.

==================  ======================================================================  ======
key                 definition (on ``u``)                                                    better
==================  ======================================================================  ======
``mean``            mean of ``u``                                                           neutral
``std``             standard deviation of ``u``                                             neutral
``dynamic_range``   99th minus 1st percentile of ``u``                                      higher
``entropy``         Shannon entropy (bits) of the 256-bin histogram of ``u`` on [0, 1]      higher
``rms_contrast``    ``std / mean`` (0 for a constant volume)                                higher
``sharpness``       mean squared 3-D gradient magnitude, central differences in voxel       higher
                    units (``numpy.gradient``); axes with one voxel are left out
``noise_sigma``     wavelet MAD noise σ: ``median(|HHH|) / 0.6745`` on the finest 3-D Haar  lower
                    diagonal band over disjoint 2x2x2 blocks (the 2-D HH band per slice
                    when the volume has a single slice); NaN below 2x2(x2)
``snr``             ``mean_fg / std_bg`` with fg/bg split by Otsu's threshold over ``u``    higher
``cnr``             ``|mean_fg - mean_bg| / std_bg`` (same split)                           higher
``foreground``      fraction of voxels in the Otsu foreground                               neutral
==================  ======================================================================  ======

Undefined values are NaN, never an exception.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from medimg_spark.ops._common import to_unit
from medimg_spark.quality import otsu_regions, shannon_entropy
from medimg_spark.volumes.model import Volume

__all__ = ["VOLUME_QUALITY_KEYS", "VolumeQuality", "noise_sigma_3d", "unit_voxels", "volume_quality"]


@dataclass(frozen=True)
class VolumeQuality:
    """The metrics of one volume (see the module docstring for their definitions)."""

    mean: float
    std: float
    dynamic_range: float
    entropy: float
    rms_contrast: float
    sharpness: float
    noise_sigma: float
    snr: float
    cnr: float
    foreground: float

    def as_dict(self) -> dict[str, float]:
        """``{key: value}`` in :data:`VOLUME_QUALITY_KEYS` order (the Spark struct's fields)."""
        return asdict(self)


VOLUME_QUALITY_KEYS: tuple[str, ...] = tuple(f.name for f in fields(VolumeQuality))
"""The metric names in their fixed order."""


def unit_voxels(volume: Volume) -> np.ndarray:
    """The [0, 1]-scaled grey voxels (z, y, x) every metric is computed on.

    float32 (float64 for float64 voxels): a volume's metrics hold a few arrays of its size at once,
    and float64 copies of a 100 MB int16 series would take 400 MB each in the worker.
    """
    arr = np.asarray(volume.voxels)
    if arr.dtype == np.float64:
        return to_unit(arr.mean(axis=3) if arr.ndim == 4 else arr)
    grey = arr.mean(axis=3, dtype=np.float32) if arr.ndim == 4 else arr.astype(np.float32)
    finite = np.isfinite(grey)
    all_finite = bool(finite.all())
    values = grey if all_finite else grey[finite]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    del values
    if hi <= lo:
        return np.zeros(grey.shape, dtype=np.float32)
    grey -= np.float32(lo)
    grey *= np.float32(1.0 / (hi - lo))
    if not all_finite:
        grey[~finite] = 0.0
    return grey


def noise_sigma_3d(u: np.ndarray) -> float:
    """Donoho's wavelet-MAD noise σ on the finest Haar diagonal band (3-D, or 2-D for one slice).

    The orthonormal 3-D diagonal coefficient of a 2x2x2 block is the ±-alternating sum of its voxels
    over ``2 * sqrt(2)``; for white noise of σ its median absolute value is ``0.6745 σ``.
    """
    z, y, x = ((n // 2) * 2 for n in u.shape)
    if y == 0 or x == 0:
        return math.nan
    if z == 0:
        g = u[:, :y, :x]
        hh = (g[:, 0::2, 0::2] - g[:, 0::2, 1::2] - g[:, 1::2, 0::2] + g[:, 1::2, 1::2]) / 2.0
    else:
        g = u[:z, :y, :x]
        hh = np.zeros((z // 2, y // 2, x // 2), dtype=u.dtype)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    sign = -1.0 if (dz + dy + dx) % 2 else 1.0
                    hh += sign * g[dz::2, dy::2, dx::2]
        hh /= 2.0 * math.sqrt(2.0)
    return float(np.median(np.abs(hh)) / 0.6745)


def _sharpness(u: np.ndarray) -> float:
    axes = [a for a in range(3) if u.shape[a] > 1]
    if not axes:
        return 0.0
    total = 0.0
    for axis in axes:  # one gradient array at a time
        g = np.gradient(u, axis=axis)
        total += float(np.mean(np.square(g, out=g), dtype=np.float64))
    return total


def volume_quality(volume: Volume) -> VolumeQuality:
    """No-reference quality metrics of ``volume`` (see the module docstring)."""
    u = unit_voxels(volume)
    mean = float(u.mean(dtype=np.float64))
    std = float(u.std())  # in u's dtype: a float64 temporary would double the peak memory
    p1, p99 = np.percentile(u, [1.0, 99.0])
    snr = cnr = math.nan
    fg_fraction = math.nan
    regions = otsu_regions(u.ravel())
    if regions is not None:
        fg, bg = regions
        fg_fraction = fg.size / u.size
        bg_std = float(bg.std())
        if bg_std > 0:
            snr = float(fg.mean()) / bg_std
            cnr = abs(float(fg.mean()) - float(bg.mean())) / bg_std
    return VolumeQuality(
        mean=mean,
        std=std,
        dynamic_range=float(p99 - p1),
        entropy=shannon_entropy(u),
        rms_contrast=std / mean if mean > 0 else 0.0,
        sharpness=_sharpness(u),
        noise_sigma=noise_sigma_3d(u),
        snr=snr,
        cnr=cnr,
        foreground=fg_fraction,
    )
