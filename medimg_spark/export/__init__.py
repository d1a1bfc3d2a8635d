"""``medimg export``: results back out of the lake as files ITK, 3D Slicer and PACS open.

Core writers (no Spark), one module per format, registered in :data:`FORMATS`; each turns an
:class:`~medimg_spark.export.model.ExportItem` (a frame or a volume with its LPS geometry and, for
DICOM, the source headers) into files:

- ``nifti`` (:mod:`.nifti`): ``.nii.gz``, RAS affine in qform and sform;
- ``nrrd`` (:mod:`.nrrd`): ``.nrrd``, space left-posterior-superior;
- ``dicom`` (:mod:`.dicom`): a derived secondary series of processed pixels, the source header
  de-identified by the privacy engine;
- ``seg`` (:mod:`.seg`): DICOM-SEG (highdicom) of masks and label maps, referencing the sources;
- ``png`` / ``jpeg`` (:mod:`.png`, :mod:`.jpeg`): 8-bit windowed thumbnails.

The Spark stage is :mod:`medimg_spark.export.stage` (files written by the executors, a manifest
table, failures quarantined).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medimg_spark.registry import Registry, UnknownNameError


class UnknownFormatError(UnknownNameError):
    """No export format is registered under that name (a ConfigError: exit code 2)."""


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: the ``--format`` value.
        extension: file name suffix of what it writes (``.nii.gz``, ``.dcm``).
        tables: the source tables it can export.
        write: ``(item, context) -> list[ExportedFile]``.
    """

    name: str
    extension: str
    tables: tuple[str, ...]
    write: Callable[..., list]


FORMATS: Registry[ExportFormat] = Registry(
    "export format",
    hint="add one as medimg_spark/export/<name>.py with a FORMAT and a register_lazy line in "
    "medimg_spark/export/__init__.py",
    error=UnknownFormatError,
)

_ALL = ("images", "processed", "volumes", "processed_volumes", "volume_labels")

FORMATS.register_lazy(
    "nifti", "medimg_spark.export.nifti:FORMAT", help="NIfTI-1 .nii.gz (RAS affine)", tables=_ALL
)
FORMATS.register_lazy(
    "nrrd", "medimg_spark.export.nrrd:FORMAT", help="NRRD .nrrd (space left-posterior-superior)", tables=_ALL
)
FORMATS.register_lazy(
    "dicom",
    "medimg_spark.export.dicom:FORMAT",
    help="DICOM derived secondary series of processed pixels (de-identified source header)",
    tables=("processed", "processed_volumes"),
)
FORMATS.register_lazy(
    "seg",
    "medimg_spark.export.seg:FORMAT",
    help="DICOM-SEG of processed masks and volume label maps (highdicom)",
    tables=("processed", "volume_labels"),
)
FORMATS.register_lazy(
    "png", "medimg_spark.export.png:FORMAT", help="8-bit PNG thumbnail (middle slice)", tables=_ALL
)
FORMATS.register_lazy(
    "jpeg", "medimg_spark.export.jpeg:FORMAT", help="8-bit JPEG thumbnail (middle slice)", tables=_ALL
)


def format_tables(name: str) -> tuple[str, ...]:
    """The tables format ``name`` exports (nothing is imported).

    Raises:
        UnknownFormatError: ``name`` is not registered.
    """
    return tuple(FORMATS.entry(name).meta["tables"])


__all__ = ["FORMATS", "ExportFormat", "UnknownFormatError", "format_tables"]
