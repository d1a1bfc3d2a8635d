"""The in-memory 3-D volume and its geometry, in the convention of SimpleITK and DICOM (LPS).

A :class:`Volume` holds ``voxels`` of shape ``(z, y, x)`` (or ``(z, y, x, channels)``): slice ``k``
is a 2-D frame, its rows along y and its columns along x. ``spacing`` is (x, y, z) in mm, ``origin``
the LPS position of the centre of voxel (0, 0, 0), ``direction`` the 3x3 matrix whose columns are
the x, y and z axis unit vectors in LPS (flattened row-major, as ``SimpleITK.Image.GetDirection``).
So the LPS position of voxel index (i, j, k) (x, y, z order) is
``origin + direction @ (spacing * (i, j, k))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A 3-D image with its physical geometry (see the module docstring for the convention)."""

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """(dim_x, dim_y, dim_z)."""
        z, y, x = self.voxels.shape[:3]
        return int(x), int(y), int(z)

    @property
    def channels(self) -> int:
        """Samples per voxel (1 for grey)."""
        return int(self.voxels.shape[3]) if self.voxels.ndim == 4 else 1

    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns: x, y, z axis unit vectors in LPS)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k) = (x, y, z) to LPS mm."""
        out = np.eye(4)
        out[:3, :3] = self.direction_matrix() * np.asarray(self.spacing, dtype=np.float64)[np.newaxis, :]
        out[:3, 3] = np.asarray(self.origin, dtype=np.float64)
        return out

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k) to RAS mm (NIfTI's world: LPS with x and y negated)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()


def lps_from_ras(affine_ras: np.ndarray) -> np.ndarray:
    """A 4x4 voxel-to-RAS affine (NIfTI) as voxel-to-LPS."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)


def to_sitk(volume: Volume) -> Any:
    """The volume as a ``SimpleITK.Image`` with the same voxels and geometry."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume.voxels, isVector=volume.voxels.ndim == 4)
    img.SetSpacing(tuple(float(v) for v in volume.spacing))
    img.SetOrigin(tuple(float(v) for v in volume.origin))
    img.SetDirection(tuple(float(v) for v in volume.direction))
    return img


def from_sitk(image: Any) -> Volume:
    """A ``SimpleITK.Image`` (3-D) as a :class:`Volume`."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D SimpleITK image, got {image.GetDimension()}-D")
    return Volume(
        voxels=sitk.GetArrayFromImage(image),
        spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
    )


def volume_from_row(row: Any) -> Volume:
    """Decode a ``volumes`` row (a Row, dict or pandas Series; :data:`medimg_spark.schema.VOLUMES_SCHEMA`)."""
    get = row.__getitem__
    shape: tuple[int, ...] = (int(get("dim_z")), int(get("dim_y")), int(get("dim_x")))
    channels = int(get("channels"))
    if channels > 1:
        shape = (*shape, channels)
    voxels = np.frombuffer(bytes(get("voxels")), dtype=np.dtype(get("dtype")).newbyteorder("<")).reshape(
        shape
    )
    return Volume(
        voxels=voxels.astype(voxels.dtype.newbyteorder("="), copy=False),
        spacing=tuple(float(v) for v in get("spacing")),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in get("origin")),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in get("direction")),
    )


def volume_columns(volume: Volume) -> dict[str, Any]:
    """The voxel and geometry columns of a ``volumes`` row for ``volume``."""
    arr = np.ascontiguousarray(volume.voxels)
    x, y, z = volume.shape_xyz
    return {
        "dim_x": x,
        "dim_y": y,
        "dim_z": z,
        "channels": volume.channels,
        "dtype": arr.dtype.name,
        "voxels": arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(),
        "spacing": [float(v) for v in volume.spacing],
        "origin": [float(v) for v in volume.origin],
        "direction": [float(v) for v in volume.direction],
    }
