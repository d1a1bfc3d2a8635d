"""NIfTI-1/2 through nibabel: one row per 2-D slice of the stored (unscaled) data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from medimg_spark.errors import NoPixelDataError
from medimg_spark.io.model import Frame, ParsedFile


def _header_json(header: Any) -> str:
    out: dict[str, Any] = {}
    for key in header:
        value = header[key]
        arr = np.asarray(value)
        if arr.dtype.kind in "SU":
            out[key] = arr.astype(str).tolist() if arr.ndim else str(arr.astype(str))
        elif arr.dtype.kind in "biuf":
            out[key] = [None if not np.isfinite(v) else v for v in arr.astype(float).ravel().tolist()]
    return json.dumps(out, sort_keys=True)


def load_nifti(data: bytes, fmt: str) -> Any:
    """Load a NIfTI image from bytes (uncompressed; gzip is removed by the caller)."""
    import nibabel as nib

    cls = nib.Nifti1Image if fmt == "nifti1" else nib.Nifti2Image
    return cls.from_bytes(data)


def slice_indices(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Trailing indices ``(k, t, ...)`` of the 2-D slices, slice index fastest: frame ``k + Z*t``."""
    trailing = shape[2:]
    for rev in np.ndindex(*reversed(trailing)):
        yield tuple(reversed(rev))


def slices(volume: np.ndarray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(trailing index, volume[:, :, k, t, ...])`` in frame order (see :func:`slice_indices`)."""
    if volume.ndim == 2:
        yield (), volume
        return
    for idx in slice_indices(volume.shape):
        index: tuple[Any, ...] = (slice(None), slice(None), *idx)
        yield idx, volume[index]


def parse_nifti(data: bytes, fmt: str, modality: str) -> ParsedFile:
    """Parse NIfTI bytes. Frames are slices of the raw stored array (``dataobj.get_unscaled()``);
    the scaling goes to ``rescale_slope``/``rescale_intercept`` as for DICOM."""
    img = load_nifti(data, fmt)
    header = img.header
    shape = tuple(int(s) for s in img.shape)
    if not shape or int(np.prod(shape)) == 0:
        raise NoPixelDataError(f"NIfTI image has an empty shape {shape}")
    n_frames = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    slope, inter = header.get_slope_inter()
    zooms = [float(z) for z in header.get_zooms()]

    affine = img.affine

    def decode() -> Iterator[Frame]:
        raw = np.asanyarray(img.dataobj.get_unscaled())
        if raw.ndim == 1:
            raw = raw[:, np.newaxis]
        for i, (idx, sl) in enumerate(slices(raw)):
            k = idx[0] if idx else 0
            meta: dict[str, Any] = {"photometric": "MONOCHROME2", "instance_number": k}
            if affine is not None:
                meta["image_position"] = [float(v) for v in (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]]
            yield Frame(i, np.ascontiguousarray(sl), meta)

    return ParsedFile(
        source_format=fmt,
        modality=modality,
        has_pixels=True,
        n_frames=n_frames,
        image_meta={
            "rescale_slope": None if slope is None or not np.isfinite(slope) else float(slope),
            "rescale_intercept": None if inter is None or not np.isfinite(inter) else float(inter),
            "pixel_spacing": zooms[:2] if len(zooms) >= 2 else None,
            "slice_thickness": zooms[2] if len(zooms) > 2 else None,
            "bits_stored": int(np.dtype(header.get_data_dtype()).itemsize * 8),
        },
        instance_meta={"header_json": _header_json(header)},
        decode=decode,
    )
