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


def slices(volume: np.ndarray) -> Iterator[np.ndarray]:
    """Yield the 2-D slices ``volume[:, :, k, t, ...]`` in C order of the trailing axes."""
    if volume.ndim == 2:
        yield volume
        return
    trailing = volume.shape[2:]
    for idx in np.ndindex(*trailing):
        yield volume[(slice(None), slice(None), *idx)]


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

    def decode() -> Iterator[Frame]:
        raw = np.asanyarray(img.dataobj.get_unscaled())
        if raw.ndim == 1:
            raw = raw[:, np.newaxis]
        for i, sl in enumerate(slices(raw)):
            yield Frame(i, np.ascontiguousarray(sl), {"photometric": "MONOCHROME2"})

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
