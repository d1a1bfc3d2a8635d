"""What an export writer receives and returns (no Spark here).

An :class:`ExportItem` is one row of a source table made ready for the writers: its pixels as a
:class:`~medimg_spark.volumes.model.Volume` (a 2-D frame is a volume of one slice, placed in LPS by
the frame's ``image_position``/``image_orientation``/``pixel_spacing``), its optional mask, display
hints and, for the DICOM writers, the DICOM JSON header of the source instance of every slice. A
writer turns it into :class:`ExportedFile` s (relative name + bytes); the stage stores them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medimg_spark.errors import MedimgError
from medimg_spark.volumes.model import Volume

#: Tables ``medimg export`` reads.
TABLES = ("images", "processed", "volumes", "processed_volumes", "volume_labels")
#: Tables whose rows are 2-D frames (the others hold volumes).
FRAME_TABLES = ("images", "processed")


class ExportError(MedimgError):
    """Base of the per-item export failures (quarantined with stage ``export``, never a job failure)."""


class NoSourceHeaderError(ExportError):
    """A DICOM export needs the source instance's header and the source is not DICOM (or not ingested)."""


class NoMaskError(ExportError):
    """A DICOM-SEG export of a processed frame whose recipe wrote no mask."""


class UnsupportedPixelsError(ExportError):
    """The pixels cannot be written in the chosen format (e.g. colour in DICOM-SEG, empty label map)."""


@dataclass(frozen=True)
class SliceSource:
    """The source of one slice: its frame id and, for DICOM sources, the instance header.

    Attributes:
        image_id: the ``images`` row of the slice (``None`` when unknown).
        header_json: the source instance's header as DICOM JSON (``instances.header_json``) or None.
        identified: the header holds original identifiers (ingested with ``--keep-phi``, or not
            de-identified by medimg-spark): it is de-identified in full before use.
        frame_index: the frame of a multi-frame source instance.
    """

    image_id: str | None
    header_json: str | None = None
    identified: bool = True
    frame_index: int = 0


@dataclass
class ExportItem:
    """One source row to export.

    Attributes:
        source_table: the table it comes from (one of :data:`TABLES`).
        source_id: its ``image_id`` or ``volume_id``.
        volume: pixels and LPS geometry; frames are one-slice volumes.
        mask: (rows, cols) uint8 mask of a processed frame, or None.
        label_map: the voxels are labels (``volume_labels``): written as segments / label maps.
        modality: the source modality.
        recipe: the recipe name (processed tables) for derivation descriptions.
        recipe_hash: the recipe's hash (processed frames) or None.
        rescale_slope: of the stored values (images/volumes); None means 1.
        rescale_intercept: of the stored values; None means 0.
        window_center: display window centre (in rescaled units) or None.
        window_width: display window width or None.
        slices: the source of each slice (``len == dim_z``), for the DICOM writers.
    """

    source_table: str
    source_id: str
    volume: Volume
    mask: np.ndarray | None = None
    label_map: bool = False
    modality: str = "OT"
    recipe: str | None = None
    recipe_hash: str | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    window_center: float | None = None
    window_width: float | None = None
    slices: list[SliceSource] = field(default_factory=list)

    @property
    def is_frame(self) -> bool:
        """A 2-D frame (``images``/``processed``) rather than a volume."""
        return self.source_table in FRAME_TABLES

    @property
    def processed(self) -> bool:
        """Pixels computed by the pipeline (a recipe or a volume op), not the stored source pixels."""
        return self.source_table in ("processed", "processed_volumes", "volume_labels")

    @property
    def variant(self) -> str | None:
        """What tells apart exports of one source id: the recipe (hash) of processed tables."""
        if self.source_table in ("processed", "processed_volumes", "volume_labels"):
            return self.recipe_hash or self.recipe
        return None

    @property
    def file_stem(self) -> str:
        """A PHI-free file name: the id when it is a hex digest (else its hash); with a variant, a hash of both."""
        if self.variant:
            return hashlib.sha256(f"{self.source_id}:{self.variant}".encode()).hexdigest()[:32]
        return safe_name(self.source_id)


@dataclass(frozen=True)
class ExportedFile:
    """One file a writer produced: ``rel`` (relative to the run's format folder) and its bytes."""

    rel: str
    data: bytes

    @property
    def sha256(self) -> str:
        """Hex sha256 of the bytes."""
        return hashlib.sha256(self.data).hexdigest()


_HEX_ID = re.compile(r"^[0-9a-f]{16,64}$")


def safe_name(source_id: str) -> str:
    """A file name carrying no PHI for ``source_id``: itself when a hex digest, else its sha256 (32 hex)."""
    if _HEX_ID.match(source_id):
        return source_id
    return hashlib.sha256(source_id.encode("utf-8")).hexdigest()[:32]


def frame_volume(
    pixels: np.ndarray,
    image_position: Any = None,
    image_orientation: Any = None,
    pixel_spacing: Any = None,
    slice_thickness: float | None = None,
    source_shape: tuple[int, int] | None = None,
) -> Volume:
    """A 2-D frame (rows, cols[, channels]) as a one-slice :class:`Volume` placed in LPS.

    Missing geometry (PNG, NPZ sources) gives origin 0, identity direction and 1 mm spacing. When
    a recipe resized the frame (``source_shape`` differs from the pixels' shape) the spacing is
    scaled so the frame keeps its field of view.

    Args:
        pixels: the frame.
        image_position: LPS centre of the first pixel (DICOM ImagePositionPatient) or None.
        image_orientation: row then column direction cosines (6 values) or None.
        pixel_spacing: (row spacing, column spacing) mm or None.
        slice_thickness: the z spacing (default 1 mm).
        source_shape: (rows, cols) the geometry refers to, when it may differ from the pixels'.
    """
    rows, cols = int(pixels.shape[0]), int(pixels.shape[1])
    row_sp, col_sp = (float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing else (1.0, 1.0)
    if source_shape is not None and tuple(source_shape) != (rows, cols) and rows and cols:
        row_sp *= source_shape[0] / rows
        col_sp *= source_shape[1] / cols
    if image_orientation is not None and len(image_orientation) == 6:
        row_dir = np.asarray(image_orientation[:3], dtype=np.float64)
        col_dir = np.asarray(image_orientation[3:], dtype=np.float64)
    else:
        row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    normal = np.cross(row_dir, col_dir)
    direction = np.stack([row_dir, col_dir, normal], axis=1)  # columns: x, y, z axes
    origin = tuple(float(v) for v in image_position[:3]) if image_position else (0.0, 0.0, 0.0)
    z = float(slice_thickness) if slice_thickness and slice_thickness > 0 else 1.0
    return Volume(
        voxels=pixels[np.newaxis, ...],
        spacing=(col_sp, row_sp, z),
        origin=origin,  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.reshape(-1)),
    )


class ExportOptions(BaseModel):
    """Options of the writers (``medimg export`` flags).

    Attributes:
        thumbnail_size: longest side of PNG/JPEG thumbnails in pixels (smaller images are not enlarged).
        jpeg_quality: JPEG quality 1-100.
        percentiles: the display range of thumbnails without a window (low, high percentile).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    thumbnail_size: int = Field(256, ge=16, le=4096, description="Longest thumbnail side (pixels).")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality.")
    percentiles: tuple[float, float] = Field((1.0, 99.0), description="Thumbnail range without a window.")


@dataclass
class ExportContext:
    """Everything a writer needs besides the item (picklable: shipped to the executors).

    Attributes:
        options: the writers' options.
        export_run_id: the run (part of nothing that identifies a patient).
        deid_config: the ``privacy`` section, for the DICOM writers.
        key: the pseudonymisation key, for the DICOM writers (None for the other formats).
        allow_burned_in: as ``medimg deid --allow-burned-in``.
    """

    options: ExportOptions = field(default_factory=ExportOptions)
    export_run_id: str = ""
    deid_config: Any = None
    key: bytes | None = None
    allow_burned_in: bool = False
    _deid: dict[bool, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_deid"] = {}
        return state

    def deidentifier(self, identified: bool) -> Any:
        """The privacy engine for a source header (cached per process).

        An ``identified`` header is de-identified with the ``privacy`` section as configured. A header
        medimg-spark de-identified already (at ingest) is filtered by the same engine with its UIDs and
        dates retained, so its pseudonyms stay those of the lake (no second pseudonymisation).

        Raises:
            NoSourceHeaderError: no key was given (the stage checks this before Spark starts).
        """
        if identified not in self._deid:
            from medimg_spark.privacy import DeidConfig, Deidentifier

            if self.key is None:
                raise NoSourceHeaderError(
                    "DICOM export needs the pseudonymisation key: pass --key-file or --ephemeral-key"
                )
            config = self.deid_config if self.deid_config is not None else DeidConfig()
            if not identified:
                config = config.model_copy(
                    update={
                        "retain_uids": True,
                        "retain_longitudinal_full_dates": True,
                        "retain_longitudinal_modified_dates": False,
                    }
                )
            self._deid[identified] = Deidentifier(config, self.key, allow_burned_in=self.allow_burned_in)
        return self._deid[identified]
