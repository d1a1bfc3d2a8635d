"""NIfTI-1/2 through nibabel: one row per 2-D slice of the stored (unscaled) data."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from medimg_spark.errors import (
    ImageTooLargeError,
    InvalidHeaderError,
    NoPixelDataError,
    TruncatedFileError,
)
from medimg_spark.io.geometry import derived_uid, slice_geometry
from medimg_spark.io.model import Frame, ParsedFile
from medimg_spark.volumes.model import lps_from_ras


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


#: Largest frame count the ``n_frames`` column holds.
_INT32_MAX = 2**31 - 1


def check_size(header: Any, shape: tuple[int, ...], available: int, max_decoded_bytes: int | None) -> int:
    """Check the header's dimensions against the bytes present and the decode limit.

    Returns:
        The number of bytes the image data occupies.

    Raises:
        InvalidHeaderError: a dimension is negative or the frame count does not fit 32 bits.
        TruncatedFileError: the file holds fewer data bytes than the dimensions declare.
        ImageTooLargeError: the data would take more than ``max_decoded_bytes`` in memory.
    """
    if any(d < 0 for d in shape):
        raise InvalidHeaderError(f"NIfTI header declares negative dimensions {shape}; the header is damaged")
    itemsize = int(np.dtype(header.get_data_dtype()).itemsize)
    n_frames = math.prod(shape[2:]) if len(shape) > 2 else 1
    if n_frames > _INT32_MAX:
        raise InvalidHeaderError(
            f"NIfTI header declares {n_frames} slices (dimensions {shape}), more than {_INT32_MAX}; "
            "the header is damaged"
        )
    need = math.prod(shape) * itemsize
    if need > available:
        raise TruncatedFileError(
            f"NIfTI header declares {need} bytes of data (dimensions {shape}) but the file holds {available}; "
            "it is truncated or its header is damaged"
        )
    if max_decoded_bytes is not None and need > max_decoded_bytes:
        raise ImageTooLargeError(
            f"NIfTI image needs {need} bytes (dimensions {shape}), over ingest.max_decoded_bytes = "
            f"{max_decoded_bytes}; raise the limit (and the worker memory) or split the file"
        )
    return need


def parse_nifti(data: bytes, fmt: str, modality: str, max_decoded_bytes: int | None = None) -> ParsedFile:
    """Parse NIfTI bytes. Frames are slices of the raw stored array (``dataobj.get_unscaled()``);
    the scaling goes to ``rescale_slope``/``rescale_intercept`` as for DICOM.

    Frame ``data[:, :, k, t]`` gets its LPS geometry from nibabel's affine (RAS, converted: see
    :mod:`medimg_spark.schema`): rows along array axis 0, columns along axis 1. Study, series and
    frame-of-reference UIDs are derived from the sha256 of the (decompressed) bytes; each time
    point ``t`` of a 4-D file is its own series, so each 3-D volume assembles on its own.

    The dimensions are checked against the data present and ``max_decoded_bytes`` before any voxel
    is read (see :func:`check_size`).
    """
    if data[344:347] == b"ni1" or data[4:7] == b"ni2":
        from medimg_spark.errors import UnsupportedFormatError

        raise UnsupportedFormatError(
            "NIfTI header of a separate .hdr/.img pair (its voxels are in another file); convert the pair to "
            "a single .nii with nibabel or 3D Slicer"
        )
    img = load_nifti(data, fmt)
    header = img.header
    shape = tuple(int(s) for s in img.shape)
    if not shape or math.prod(shape) == 0:
        raise NoPixelDataError(f"NIfTI image has an empty shape {shape}")
    offset = int(header.get_data_offset())
    check_size(header, shape, max(len(data) - offset, 0), max_decoded_bytes)
    n_frames = math.prod(shape[2:]) if len(shape) > 2 else 1
    slope, inter = header.get_slope_inter()
    if slope is None and inter is None:  # nibabel may scale from elsewhere (e.g. an Analyze-style header)
        proxy = (getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0))
        if proxy != (1.0, 0.0):
            slope, inter = proxy
    zooms = [float(z) for z in header.get_zooms()]

    affine = img.affine
    affine_lps = lps_from_ras(affine) if affine is not None else None
    digest = hashlib.sha256(data).hexdigest()
    per_volume = shape[2] if len(shape) > 2 else 1

    def decode() -> Iterator[Frame]:
        raw = np.asanyarray(img.dataobj.get_unscaled())
        if raw.ndim == 1:
            raw = raw[:, np.newaxis]
        for i, (idx, sl) in enumerate(slices(raw)):
            k = idx[0] if idx else 0
            meta: dict[str, Any] = {
                "photometric": "MONOCHROME2",
                "instance_number": k,
                # each 3-D volume (time point) of a 4-D file is its own series
                "series_instance_uid": derived_uid("series", digest, i // per_volume),
            }
            if affine_lps is not None:
                geometry = slice_geometry(affine_lps, k, row_axis=0, col_axis=1)
                meta["image_position"] = geometry.image_position
                meta["image_orientation"] = geometry.image_orientation
                meta["pixel_spacing"] = geometry.pixel_spacing
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
            "study_instance_uid": derived_uid("study", digest),
            "series_instance_uid": derived_uid("series", digest, 0),
            "frame_of_reference_uid": derived_uid("frame_of_reference", digest),
        },
        instance_meta={
            "header_json": _header_json(header),
            "study_instance_uid": derived_uid("study", digest),
            "series_instance_uid": derived_uid("series", digest, 0),
        },
        decode=decode,
    )
