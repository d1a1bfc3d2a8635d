"""Frame geometry shared by the volume-file readers (NIfTI, NRRD, MetaImage): LPS positions,
orientations and derived series UIDs (see the convention in :mod:`medimg_spark.schema`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def derived_uid(*parts: object) -> str:
    """A deterministic DICOM UID (``2.25.<decimal>``, ISO/IEC 9834-8 form) from ``parts``.

    Used for the study/series of files that carry none (NIfTI, NRRD, MetaImage): e.g.
    ``derived_uid("series", file_sha256, t)``. At most 64 characters.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big") >> 6)


@dataclass(frozen=True)
class SliceGeometry:
    """Position (LPS, centre of the first pixel), orientation (row then column cosines) and
    pixel spacing (row spacing, column spacing) of one 2-D frame."""

    image_position: list[float]
    image_orientation: list[float]
    pixel_spacing: list[float]


def slice_geometry(affine_lps: np.ndarray, k: int, row_axis: int = 0, col_axis: int = 1) -> SliceGeometry:
    """Geometry of frame ``k`` of a 3-D array whose voxel-to-LPS affine is ``affine_lps``.

    The frame is the array indexed with ``k`` on the third remaining axis, its rows running along
    array axis ``row_axis`` and its columns along ``col_axis`` (NIfTI/NRRD frames ``data[:, :, k]``:
    ``row_axis=0, col_axis=1``).

    Args:
        affine_lps: 4x4 matrix from array index to LPS mm (columns: the array axes' steps).
        k: the frame's index along the slice axis.
        row_axis: the array axis along which the frame's row index grows.
        col_axis: the array axis along which the frame's column index grows.
    """
    a = np.asarray(affine_lps, dtype=np.float64)
    slice_axis = 3 - row_axis - col_axis
    index = np.zeros(4)
    index[slice_axis] = k
    index[3] = 1.0
    position = a @ index
    down = a[:3, row_axis]  # moving to the next row
    across = a[:3, col_axis]  # moving to the next column
    row_spacing = float(np.linalg.norm(down))
    col_spacing = float(np.linalg.norm(across))
    safe_down = down / row_spacing if row_spacing > 0 else down
    safe_across = across / col_spacing if col_spacing > 0 else across
    return SliceGeometry(
        image_position=[float(v) for v in position[:3]],
        image_orientation=[float(v) for v in (*safe_across, *safe_down)],
        pixel_spacing=[row_spacing, col_spacing],
    )
