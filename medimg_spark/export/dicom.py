"""DICOM derived secondary series of processed pixels (``processed``, ``processed_volumes``).

Each slice becomes one instance built from its source instance's header (``instances.header_json``,
DICOM JSON) with the processed pixels and the slice's LPS geometry, then **de-identified by the
project's privacy engine** (:class:`~medimg_spark.privacy.Deidentifier`: the configured ``privacy``
section and key; pixel rules and the burned-in text check apply to the new pixels). Then:

- the (pseudonymised) patient, study and frame of reference are kept; the series and SOP instances
  get new UIDs, derived deterministically from the pseudonymised source UIDs and the recipe (a
  rerun writes the same UIDs; no original UID can be recovered from them);
- ImageType ``DERIVED\\SECONDARY``, a DerivationDescription naming the table and recipe, and a
  SourceImageSequence referencing the (pseudonymised) source SOP instance (and frame);
- pixel data, rows, columns and bits from the processed pixels: integers that fit 16 bits are stored
  as they are; wider integers and floats are mapped linearly onto uint16 and RescaleSlope/
  RescaleIntercept give the processed values back (stored × slope + intercept).

A source that was multi-frame or enhanced (functional groups) becomes single-frame Secondary
Capture instances (the functional groups are dropped; plane position/orientation are written as
the classic attributes). A header that medimg-spark de-identified at ingest keeps its pseudonyms
(see :meth:`~medimg_spark.export.model.ExportContext.deidentifier`).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from medimg_spark.export import ExportFormat
from medimg_spark.export.model import (
    ExportContext,
    ExportedFile,
    ExportItem,
    NoSourceHeaderError,
    SliceSource,
    UnsupportedPixelsError,
)
from medimg_spark.io.geometry import derived_uid
from medimg_spark.volumes.model import Volume

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Series number of exported derived series (tool-generated, no meaning beyond "not an original").
SERIES_NUMBER = 9001

#: Attributes dropped from the source header before the new pixels go in: multi-frame, LUT and
#: value-range attributes that no longer describe the pixels.
_DROP = (
    "NumberOfFrames",
    "FrameIncrementPointer",
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    "DimensionIndexSequence",
    "DimensionOrganizationSequence",
    "GridFrameOffsetVector",
    "DoseGridScaling",
    "VOILUTSequence",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "PlanarConfiguration",
    "IconImageSequence",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "RescaleType",
    "RescaleSlope",
    "RescaleIntercept",
)


def source_dataset(source: SliceSource) -> Any:
    """The source instance's header as a pydicom Dataset (file meta split off, bulk data left out).

    Raises:
        NoSourceHeaderError: the slice's source has no DICOM header (not a DICOM file).
    """
    from pydicom.dataset import Dataset, FileMetaDataset

    if not source.header_json:
        raise NoSourceHeaderError(
            "the source is not a DICOM instance (no header in instances.header_json); export it as "
            "nifti, nrrd, png or jpeg instead"
        )
    raw: dict[str, Any] = json.loads(source.header_json)
    body = {
        tag: value
        for tag, value in raw.items()
        if not tag.upper().startswith("0002") and "BulkDataURI" not in value and "InlineBinary" not in value
    }
    meta = {tag: value for tag, value in raw.items() if tag.upper().startswith("0002") and "Value" in value}
    ds = Dataset.from_json(body)
    ds.file_meta = FileMetaDataset(Dataset.from_json(meta)) if meta else FileMetaDataset()
    return ds


def slice_geometry(volume: Volume, k: int) -> tuple[list[float], list[float], list[float], float]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) of slice ``k``."""
    d = volume.direction_matrix()
    sx, sy, sz = (float(v) for v in volume.spacing)
    position = np.asarray(volume.origin, dtype=np.float64) + d[:, 2] * sz * k
    orientation = [*map(float, d[:, 0]), *map(float, d[:, 1])]
    return [float(v) for v in position], orientation, [sy, sx], sz


def _ds(value: float) -> str:
    """A decimal string (VR DS, at most 16 characters) for ``value``."""
    from pydicom.valuerep import format_number_as_ds

    return str(format_number_as_ds(float(value)))


def stored_pixels(pixels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored, slope, intercept)``: integers DICOM stores and stored × slope + intercept = ``pixels``.

    Raises:
        UnsupportedPixelsError: complex or object pixels.
    """
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8), 1.0, 0.0
    if pixels.dtype.kind not in "uif":
        raise UnsupportedPixelsError(f"DICOM cannot store {pixels.dtype.name} pixels; convert them first")
    if pixels.dtype in (np.uint8, np.uint16, np.int16):
        return pixels, 1.0, 0.0
    if pixels.dtype.kind in "ui" and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        if low >= 0 and high <= 0xFFFF:
            return pixels.astype(np.uint16), 1.0, 0.0
        if low >= -0x8000 and high <= 0x7FFF:
            return pixels.astype(np.int16), 1.0, 0.0
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(pixels.shape, dtype=np.uint16), 1.0, 0.0
    low_f, high_f = float(finite.min()), float(finite.max())
    # DS holds 16 characters: round the slope/intercept first, then quantise with exactly those values
    intercept = float(_ds(low_f))
    slope = float(_ds((high_f - intercept) / 65535.0)) if high_f > intercept else 1.0
    if slope <= 0:
        slope = 1.0
    stored = np.clip(np.round((np.nan_to_num(values, nan=intercept) - intercept) / slope), 0, 65535)
    return stored.astype(np.uint16), slope, intercept


def set_pixels(ds: Any, pixels: np.ndarray) -> tuple[float, float]:
    """Put ``pixels`` (rows, cols[, 3]) into ``ds`` with a matching image pixel module; returns (slope, intercept)."""
    for keyword in _DROP:
        if keyword in ds:
            delattr(ds, keyword)
    if pixels.ndim == 3 and pixels.shape[2] != 3:
        raise UnsupportedPixelsError(
            f"DICOM export writes grey or RGB pixels, not {pixels.shape[2]} channels"
        )
    colour = pixels.ndim == 3
    if colour and pixels.dtype != np.uint8:
        raise UnsupportedPixelsError(f"RGB pixels must be uint8 for DICOM export, not {pixels.dtype.name}")
    stored, slope, intercept = stored_pixels(pixels) if not colour else (pixels, 1.0, 0.0)
    stored = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<"))
    bits = stored.dtype.itemsize * 8
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    if not colour:
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
    return slope, intercept


def set_geometry(ds: Any, volume: Volume, k: int) -> None:
    """The classic image plane attributes of slice ``k`` of ``volume``."""
    position, orientation, spacing, thickness = slice_geometry(volume, k)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.PixelSpacing = [_ds(v) for v in spacing]
    ds.SliceThickness = _ds(thickness)


def deidentify(ds: Any, source: SliceSource, context: ExportContext) -> Any:
    """``ds`` through the privacy engine; pseudonyms of a header de-identified at ingest are kept.

    Raises:
        DeidFileError: e.g. BurnedInAnnotationError (the item is quarantined).
    """
    result = context.deidentifier(source.identified).deidentify(ds)
    out = result.dataset
    if not source.identified:  # the header's patient id/name are pseudonyms already: keep them
        for keyword in ("PatientID", "PatientName"):
            if keyword in ds:
                setattr(out, keyword, ds.get(keyword))
    return out


def series_uid(item: ExportItem, pseudo_series: str, kind: str) -> str:
    """The new series UID: from the pseudonymised source series, the table, the recipe and the item kind."""
    group = item.recipe_hash or item.recipe or ""
    key = pseudo_series if item.is_frame else f"{pseudo_series}/{item.source_id}"
    return derived_uid("medimg-export", kind, item.source_table, group, key)


def multi_frame(ds: Any) -> bool:
    """The source instance is multi-frame or enhanced (functional groups)."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return frames > 1 or "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def derivation_description(item: ExportItem) -> str:
    """What produced the pixels (no identifiers): table and recipe."""
    what = f"medimg-spark export of {item.source_table}"
    if item.recipe:
        what += f", recipe {item.recipe}"
    if item.recipe_hash:
        what += f" ({item.recipe_hash[:12]})"
    return what


def encode(ds: Any) -> bytes:
    """A DICOM Part 10 file of ``ds`` (explicit VR little endian)."""
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian

    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def derived_instance(item: ExportItem, k: int, context: ExportContext, series: str | None) -> tuple[Any, str]:
    """Slice ``k`` of ``item`` as a de-identified derived instance; returns (dataset, its series UID).

    ``series`` is the series UID of the slices before (None for the first slice: derived here).
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    from medimg_spark.privacy.engine import quiet_pydicom

    source = item.slices[k]
    src = source_dataset(source)
    was_multi_frame = multi_frame(src)
    with quiet_pydicom():
        set_pixels(src, np.asarray(item.volume.voxels[k]))
        set_geometry(src, item.volume, k)
        out = deidentify(src, source, context)
    pseudo_sop = str(out.get("SOPInstanceUID", "") or "")
    pseudo_series = str(out.get("SeriesInstanceUID", "") or "")
    source_class = str(out.get("SOPClassUID", "") or "")
    if not pseudo_sop or not source_class:
        raise NoSourceHeaderError(
            "the source header has no SOPInstanceUID/SOPClassUID: it cannot be referenced; export it "
            "as nifti or nrrd instead"
        )
    new_series = series or series_uid(item, pseudo_series or pseudo_sop, "dicom")
    new_sop = derived_uid("medimg-export-sop", new_series, pseudo_sop, source.frame_index, k)
    ref = Dataset()
    ref.ReferencedSOPClassUID = source_class
    ref.ReferencedSOPInstanceUID = pseudo_sop
    if was_multi_frame:
        ref.ReferencedFrameNumber = source.frame_index + 1
        out.SOPClassUID = SECONDARY_CAPTURE
        out.ConversionType = "WSD"
    out.SourceImageSequence = Sequence([ref])
    out.SeriesInstanceUID = new_series
    out.SOPInstanceUID = new_sop
    out.ImageType = ["DERIVED", "SECONDARY"]
    out.DerivationDescription = derivation_description(item)
    out.SeriesDescription = f"medimg {item.recipe or item.source_table}"[:64]
    out.SeriesNumber = SERIES_NUMBER
    out.InstanceNumber = k + 1
    out.file_meta.MediaStorageSOPClassUID = UID(str(out.SOPClassUID))
    out.file_meta.MediaStorageSOPInstanceUID = UID(new_sop)
    return out, new_series


def write(item: ExportItem, context: ExportContext) -> list[ExportedFile]:
    """``<id>/<k>.dcm`` per slice: one derived instance per slice, all in one new series."""
    if len(item.slices) != item.volume.voxels.shape[0]:
        raise NoSourceHeaderError(
            f"{len(item.slices)} source slice(s) for {item.volume.voxels.shape[0]} slice(s): the volume's "
            "image_ids do not match its frames; rebuild the volume"
        )
    files: list[ExportedFile] = []
    series: str | None = None
    for k in range(item.volume.voxels.shape[0]):
        ds, series = derived_instance(item, k, context, series)
        files.append(ExportedFile(f"{item.file_stem}/{k:04d}.dcm", encode(ds)))
    return files


FORMAT = ExportFormat("dicom", ".dcm", ("processed", "processed_volumes"), write)
