"""NRRD export (``.nrrd``, gzip encoding) of a frame or volume with pynrrd.

The header is in LPS (``space: left-posterior-superior``); the axes are (x, y, z) (pynrrd's Fortran
index order of our (z, y, x) voxels); ``space directions`` row i is the LPS step of axis i (the
direction matrix's column i times the spacing) and ``space origin`` is the centre of voxel 0.
Colour frames get a leading ``vector`` axis (no direction). No other header text.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from medimg_spark.export import ExportFormat
from medimg_spark.export.model import ExportContext, ExportedFile, ExportItem, UnsupportedPixelsError
from medimg_spark.volumes.model import Volume


def nrrd_bytes(volume: Volume) -> bytes:
    """The volume as the bytes of an attached-data NRRD file.

    Raises:
        UnsupportedPixelsError: a dtype NRRD cannot hold.
    """
    import nrrd

    voxels = np.asarray(volume.voxels)
    if voxels.dtype == np.bool_:
        voxels = voxels.astype(np.uint8)
    if voxels.dtype.kind not in "uif":
        raise UnsupportedPixelsError(f"NRRD cannot store {voxels.dtype.name} voxels; convert them first")
    steps = (volume.direction_matrix() * np.asarray(volume.spacing, dtype=np.float64)[np.newaxis, :]).T
    if voxels.ndim == 3:
        data = np.transpose(voxels, (2, 1, 0))  # (x, y, z)
        directions: list = [list(map(float, row)) for row in steps]
        kinds = ["domain", "domain", "domain"]
    else:
        data = np.transpose(voxels, (3, 2, 1, 0))  # (c, x, y, z)
        directions = [None, *[list(map(float, row)) for row in steps]]
        kinds = ["vector", "domain", "domain", "domain"]
    header = {
        "space": "left-posterior-superior",
        "space directions": directions,
        "space origin": [float(v) for v in volume.origin],
        "kinds": kinds,
        "encoding": "gzip",
    }
    fd, path = tempfile.mkstemp(suffix=".nrrd", prefix="medimg-export-")
    os.close(fd)
    try:
        nrrd.write(path, np.asfortranarray(data), header, index_order="F")
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def write(item: ExportItem, context: ExportContext) -> list[ExportedFile]:
    """``<id>.nrrd`` of the item's volume (a frame: one slice)."""
    if item.volume.voxels.size == 0:
        raise UnsupportedPixelsError("the item holds no voxels; nothing to write")
    return [ExportedFile(f"{item.file_stem}.nrrd", nrrd_bytes(item.volume))]


FORMAT = ExportFormat(
    "nrrd", ".nrrd", ("images", "processed", "volumes", "processed_volumes", "volume_labels"), write
)
