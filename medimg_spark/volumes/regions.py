"""3-D localisation: threshold → 3-D connected components → region properties in physical units.

:func:`find_regions_3d` takes a :class:`~medimg_spark.volumes.model.Volume` and a
:class:`VolumeLocalizeConfig`:

1. **values**: the voxels, times ``rescale_slope`` plus ``rescale_intercept`` when given (so a
   fixed threshold or HU window reads modality units: Hounsfield units for CT);
2. **foreground**: ``threshold: otsu`` (Otsu's threshold over the whole volume, foreground above
   it; ``otsu_dark``: at or below it), ``range`` (``low <= v <= high``, either bound optional) or
   ``window`` (``center ± width / 2``, a DICOM-style HU window);
3. **components**: :func:`scipy.ndimage.label` (int32 labels) with ``connectivity`` 1 (faces:
   6-neighbours), 2 (faces and edges: 18) or 3 (also corners: 26), as :func:`skimage.measure.label`; components under ``min_voxels`` voxels or
   ``min_volume_mm3`` are dropped; the rest are numbered 1..n by size, largest first (ties in
   raster order), as SimpleITK's ``ConnectedComponent`` + ``RelabelComponent``;
4. **properties** per component (:class:`Region3D`): voxel count, volume in mm³ (voxels × the
   product of the spacing), voxel bounding box (x, y, z, inclusive), its LPS box (min/max over the
   box's corner voxel centres mapped through :meth:`Volume.affine_lps`), centroid in LPS mm (the mean
   voxel index mapped through the affine, SimpleITK's ``GetCentroid``) and the mean/min/max value.

The label map is a Volume with the input's geometry and dtype ``uint16`` (``uint32`` beyond 65535
components). Multi-channel volumes are refused (:class:`LocalizeVolumeError`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medimg_spark.errors import RecipeError
from medimg_spark.volumes.model import Volume

__all__ = [
    "LocalizeResult",
    "LocalizeVolumeError",
    "Region3D",
    "VolumeLocalizeConfig",
    "find_regions_3d",
    "foreground_3d",
    "modality_values",
]


class LocalizeVolumeError(RecipeError):
    """A volume cannot be localised (several channels, or no finite voxel); quarantined per volume."""


class VolumeLocalizeConfig(BaseModel):
    """Options of 3-D localisation (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: Literal["otsu", "otsu_dark", "range", "window"] = Field(
        "otsu", description="how the foreground is chosen: Otsu over the volume, a value range or a window"
    )
    low: float | None = Field(None, description="range: lowest foreground value (modality units, e.g. HU)")
    high: float | None = Field(None, description="range: highest foreground value")
    center: float | None = Field(None, description="window: centre (e.g. HU)")
    width: float | None = Field(None, gt=0, description="window: width; foreground is center ± width/2")
    apply_rescale: bool = Field(
        True, description="threshold voxels * rescale_slope + rescale_intercept (when the volume has them)"
    )
    connectivity: Literal[1, 2, 3] = Field(
        1, description="neighbours joined: 1 = faces (6), 2 = +edges (18), 3 = +corners (26)"
    )
    min_voxels: int = Field(1, ge=1, description="drop components with fewer voxels")
    min_volume_mm3: float = Field(0.0, ge=0, description="drop components with a smaller physical volume")
    max_regions: int = Field(
        10_000, ge=1, le=4_294_967_295, description="keep at most this many components, largest first"
    )

    @model_validator(mode="after")
    def _bounds(self) -> VolumeLocalizeConfig:
        if self.threshold == "range":
            if self.low is None and self.high is None:
                raise ValueError("threshold 'range' needs low and/or high")
            if self.low is not None and self.high is not None and self.low > self.high:
                raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.threshold == "window" and (self.center is None or self.width is None):
            raise ValueError("threshold 'window' needs center and width (e.g. center: 40, width: 400)")
        return self


@dataclass(frozen=True)
class Region3D:
    """One connected component. Voxel indices are (x, y, z) order; LPS values in mm."""

    region: int
    voxel_count: int
    volume_mm3: float
    bbox_min_x: int
    bbox_min_y: int
    bbox_min_z: int
    bbox_max_x: int
    bbox_max_y: int
    bbox_max_z: int
    bbox_min_lps: tuple[float, float, float]
    bbox_max_lps: tuple[float, float, float]
    centroid_lps: tuple[float, float, float]
    mean_intensity: float
    min_intensity: float
    max_intensity: float

    def as_row(self) -> dict[str, Any]:
        """A plain dict (tuples as lists) for a ``volume_regions`` row."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class LocalizeResult:
    """The label map (input geometry, uint16/uint32), the regions largest first, and the threshold used."""

    labels: Volume
    regions: list[Region3D]
    threshold: float | None
    n_components: int
    foreground_voxels: int


def modality_values(volume: Volume, slope: float | None = None, intercept: float | None = None) -> np.ndarray:
    """The voxels as floats, times ``slope`` plus ``intercept`` (each skipped when None).

    float32 for voxels of up to 16 bits or float32 (exact for those, half the memory), else float64.

    Raises:
        LocalizeVolumeError: the volume has more than one channel.
    """
    arr = np.asarray(volume.voxels)
    if arr.ndim != 3:
        raise LocalizeVolumeError(
            f"3-D localisation needs a single-channel volume (z, y, x), got shape {arr.shape}; "
            "convert it to grey first"
        )
    small = arr.dtype.itemsize <= 2 or arr.dtype == np.float32
    values: np.ndarray[Any, np.dtype[np.floating[Any]]] = arr.astype(np.float32 if small else np.float64)
    if slope is not None and float(slope) != 1.0:
        values *= float(slope)
    if intercept is not None and float(intercept) != 0.0:
        values += float(intercept)
    return values


def foreground_3d(values: np.ndarray, config: VolumeLocalizeConfig) -> tuple[np.ndarray, float | None]:
    """Boolean foreground of ``values`` and the Otsu threshold (None for range/window).

    Non-finite voxels are never foreground.

    Raises:
        LocalizeVolumeError: no finite voxel.
    """
    finite = np.isfinite(values)
    if not finite.any():
        raise LocalizeVolumeError("the volume has no finite voxel; clean it before localising")
    if config.threshold in ("otsu", "otsu_dark"):
        from skimage.filters import threshold_otsu

        vals = values[finite] if not finite.all() else values
        lo, hi = float(vals.min()), float(vals.max())
        if lo == hi:
            return np.zeros(values.shape, dtype=bool), lo
        t = float(threshold_otsu(vals))
        fg = values > t if config.threshold == "otsu" else values <= t
        return fg & finite, t
    if config.threshold == "window":
        half = float(config.width) / 2.0  # type: ignore[arg-type]
        low, high = float(config.center) - half, float(config.center) + half  # type: ignore[arg-type]
    else:
        low = -np.inf if config.low is None else float(config.low)
        high = np.inf if config.high is None else float(config.high)
    return (values >= low) & (values <= high) & finite, None


def _lps(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """LPS mm of voxel indices ``ijk`` (n, 3) in (x, y, z) order."""
    aff = volume.affine_lps()
    return ijk @ aff[:3, :3].T + aff[:3, 3]


def find_regions_3d(
    volume: Volume,
    config: VolumeLocalizeConfig | None = None,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
) -> LocalizeResult:
    """Threshold, label the 3-D connected components and measure them (see the module docstring).

    Args:
        volume: a single-channel volume.
        config: the options (default: Otsu, 6-connectivity, no size filter).
        rescale_slope: modality LUT slope of the stored voxels (used when ``config.apply_rescale``).
        rescale_intercept: its intercept.

    Raises:
        LocalizeVolumeError: a multi-channel volume or one without a finite voxel.
    """
    from scipy import ndimage

    cfg = config or VolumeLocalizeConfig()
    values = (
        modality_values(volume, rescale_slope, rescale_intercept)
        if cfg.apply_rescale
        else modality_values(volume)
    )
    fg, t = foreground_3d(values, cfg)
    raw = np.zeros(fg.shape, dtype=np.int32)
    n_raw = int(
        ndimage.label(fg, structure=ndimage.generate_binary_structure(3, cfg.connectivity), output=raw)
    )
    counts = np.bincount(raw.ravel(), minlength=n_raw + 1)[1:]
    voxel_mm3 = float(np.prod(np.asarray(volume.spacing, dtype=np.float64)))
    keep = (counts >= cfg.min_voxels) & (counts * voxel_mm3 >= cfg.min_volume_mm3)
    kept = np.nonzero(keep)[0] + 1  # raw labels, raster order of first voxel
    order = np.argsort(-counts[kept - 1], kind="stable")
    kept = kept[order][: cfg.max_regions]
    n = len(kept)
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    remap = np.zeros(n_raw + 1, dtype=dtype)
    remap[kept] = np.arange(1, n + 1, dtype=dtype)
    labels = remap[raw]
    del raw

    regions: list[Region3D] = []
    if n:
        idx = np.nonzero(labels)
        lab = labels[idx].astype(np.int64)
        vals = values[idx]
        cnt = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
        mean_zyx = (
            np.stack([np.bincount(lab, weights=a, minlength=n + 1)[1:] for a in idx], axis=1) / cnt[:, None]
        )
        mean_val = np.bincount(lab, weights=vals, minlength=n + 1)[1:] / cnt
        index = np.arange(1, n + 1)
        vmin = np.asarray(ndimage.minimum(values, labels, index), dtype=np.float64)
        vmax = np.asarray(ndimage.maximum(values, labels, index), dtype=np.float64)
        boxes = ndimage.find_objects(labels, max_label=n)
        centroids = _lps(volume, mean_zyx[:, ::-1])
        for r in range(n):
            sz, sy, sx = boxes[r]  # type: ignore[misc]
            lo = (sx.start, sy.start, sz.start)
            hi = (sx.stop - 1, sy.stop - 1, sz.stop - 1)
            corners = np.array(
                [[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
            )
            pts = _lps(volume, corners.astype(np.float64))
            regions.append(
                Region3D(
                    region=r + 1,
                    voxel_count=int(cnt[r]),
                    volume_mm3=float(cnt[r] * voxel_mm3),
                    bbox_min_x=int(lo[0]),
                    bbox_min_y=int(lo[1]),
                    bbox_min_z=int(lo[2]),
                    bbox_max_x=int(hi[0]),
                    bbox_max_y=int(hi[1]),
                    bbox_max_z=int(hi[2]),
                    bbox_min_lps=tuple(float(v) for v in pts.min(axis=0)),  # type: ignore[arg-type]
                    bbox_max_lps=tuple(float(v) for v in pts.max(axis=0)),  # type: ignore[arg-type]
                    centroid_lps=tuple(float(v) for v in centroids[r]),  # type: ignore[arg-type]
                    mean_intensity=float(mean_val[r]),
                    min_intensity=float(vmin[r]),
                    max_intensity=float(vmax[r]),
                )
            )
    return LocalizeResult(
        labels=Volume(labels, volume.spacing, volume.origin, volume.direction),
        regions=regions,
        threshold=t,
        n_components=n,
        foreground_voxels=int(np.count_nonzero(labels)),
    )
