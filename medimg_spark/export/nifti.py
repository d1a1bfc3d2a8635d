"""NIfTI-1 export (``.nii.gz``) of a frame or volume with nibabel.

NIfTI's world is RAS and its voxel order (i, j, k) is (x, y, z): the (z, y, x) voxels are transposed
and the affine is :meth:`~medimg_spark.volumes.model.Volume.affine_ras` (LPS with x and y negated),
stored as both qform and sform (code 1, scanner anatomical), units mm. Colour frames are vector
images (dim 5, intent ``vector``), as ITK writes them. The header carries no text but the tool name.
"""

from __future__ import annotations

import gzip

import numpy as np

from medimg_spark.export import ExportFormat
from medimg_spark.export.model import ExportContext, ExportedFile, ExportItem, UnsupportedPixelsError
from medimg_spark.volumes.model import Volume

#: dtypes NIfTI-1 stores as they are; others are converted (bool → uint8, float16 → float32).
_NATIVE = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"}


def nifti_bytes(volume: Volume) -> bytes:
    """The volume as the bytes of a gzip-compressed NIfTI-1 file (deterministic: no timestamp).

    Raises:
        UnsupportedPixelsError: a dtype NIfTI cannot hold (complex, object).
    """
    import nibabel as nib

    voxels = np.asarray(volume.voxels)
    if voxels.dtype.name not in _NATIVE:
        if voxels.dtype == np.bool_:
            voxels = voxels.astype(np.uint8)
        elif voxels.dtype.kind == "f":
            voxels = voxels.astype(np.float32)
        else:
            raise UnsupportedPixelsError(
                f"NIfTI cannot store {voxels.dtype.name} voxels; convert them (e.g. to_float) first"
            )
    data = np.transpose(voxels, (2, 1, 0) if voxels.ndim == 3 else (2, 1, 0, 3))
    if data.ndim == 4:  # (x, y, z, c) → (x, y, z, t=1, c): a vector image
        data = data[:, :, :, np.newaxis, :]
    affine = volume.affine_ras()
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    header = img.header
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units(xyz="mm")
    header["descrip"] = b"medimg-spark export"
    if data.ndim == 5:
        header.set_intent("vector")
    return gzip.compress(img.to_bytes(), mtime=0)


def write(item: ExportItem, context: ExportContext) -> list[ExportedFile]:
    """``<id>.nii.gz`` of the item's volume (a frame: one slice)."""
    if item.volume.voxels.size == 0:
        raise UnsupportedPixelsError("the item holds no voxels; nothing to write")
    return [ExportedFile(f"{item.file_stem}.nii.gz", nifti_bytes(item.volume))]


FORMAT = ExportFormat(
    "nifti", ".nii.gz", ("images", "processed", "volumes", "processed_volumes", "volume_labels"), write
)
