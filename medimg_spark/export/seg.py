"""DICOM-SEG export (highdicom) of processed masks and volume label maps.

The source instance of every slice is rebuilt from its header and de-identified by the privacy
engine (as in :mod:`medimg_spark.export.dicom`), so the SEG's patient and study attributes, which
highdicom copies from its source images, are the pseudonymised ones and its references name the
(pseudonymised) source SOP instances. A processed frame's mask is one segment (``mask``); a label
map holds one segment per label value present (``label <n>``). The plane positions, orientation
and pixel spacing are written from the item's LPS geometry. Series and SOP UIDs are derived
deterministically from the pseudonymised source UIDs.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from medimg_spark.export import ExportFormat
from medimg_spark.export.dicom import deidentify, series_uid, set_geometry, slice_geometry, source_dataset
from medimg_spark.export.model import (
    ExportContext,
    ExportedFile,
    ExportItem,
    NoMaskError,
    NoSourceHeaderError,
    UnsupportedPixelsError,
)
from medimg_spark.io.geometry import derived_uid

#: At most this many segments (distinct labels) per SEG instance.
MAX_SEGMENTS = 1000


def labels_of(item: ExportItem) -> np.ndarray:
    """The (slices, rows, cols) integer label array of the item.

    Raises:
        NoMaskError: a processed frame without a mask.
        UnsupportedPixelsError: colour or non-integer labels, negative labels, too many segments.
    """
    if item.label_map:
        labels = np.asarray(item.volume.voxels)
    elif item.mask is not None:
        labels = (np.asarray(item.mask) > 0).astype(np.uint8)[np.newaxis]
    else:
        raise NoMaskError(
            "the processed frame has no mask (its recipe does not segment); export a recipe with a "
            "segmenting op (e.g. otsu) or choose another format"
        )
    if labels.ndim != 3 or labels.dtype.kind not in "uib":
        raise UnsupportedPixelsError(
            f"DICOM-SEG needs integer labels of shape (slices, rows, cols), got {labels.dtype.name} "
            f"{labels.shape}"
        )
    if labels.size and int(labels.min()) < 0:
        raise UnsupportedPixelsError("negative label values; labels must be 0 (background) or positive")
    return labels


def _source_images(item: ExportItem, context: ExportContext, rows: int, cols: int) -> list[Any]:
    """The de-identified source dataset of every slice (duplicates of one instance kept once)."""
    from medimg_spark.privacy.engine import quiet_pydicom

    if len(item.slices) != item.volume.voxels.shape[0]:
        raise NoSourceHeaderError(
            f"{len(item.slices)} source slice(s) for {item.volume.voxels.shape[0]} slice(s): the volume's "
            "image_ids do not match its frames; rebuild the volume"
        )
    out: list[Any] = []
    seen: set[str] = set()
    for k, source in enumerate(item.slices):
        ds = source_dataset(source)
        for keyword in (
            "PerFrameFunctionalGroupsSequence",
            "SharedFunctionalGroupsSequence",
            "NumberOfFrames",
        ):
            if keyword in ds:
                delattr(ds, keyword)
        ds.Rows, ds.Columns = rows, cols
        set_geometry(ds, item.volume, k)
        with quiet_pydicom():
            clean = deidentify(ds, source, context)
        sop = str(clean.get("SOPInstanceUID", "") or "")
        if not sop or "SOPClassUID" not in clean:
            raise NoSourceHeaderError(
                "a source header has no SOPInstanceUID/SOPClassUID: it cannot be referenced; export "
                "nifti or nrrd instead"
            )
        if sop not in seen:
            seen.add(sop)
            out.append(clean)
    return out


def seg_dataset(item: ExportItem, context: ExportContext) -> Any:
    """The item as a highdicom ``Segmentation``.

    Raises:
        NoMaskError, UnsupportedPixelsError, NoSourceHeaderError: the item cannot be a SEG.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import medimg_spark

    labels = labels_of(item)
    values = [int(v) for v in np.unique(labels) if v > 0]
    if len(values) > MAX_SEGMENTS:
        raise UnsupportedPixelsError(
            f"{len(values)} labels, over {MAX_SEGMENTS} segments per SEG; keep the largest regions first"
        )
    if not values:
        raise UnsupportedPixelsError("the mask/label map is empty (no label > 0): nothing to segment")
    rows, cols = int(labels.shape[1]), int(labels.shape[2])
    sources = _source_images(item, context, rows, cols)
    if not item.label_map:
        values = [1]
    # segments are numbered 1..n in label order: relabel so highdicom's label-map input matches them
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    for number, value in enumerate(values, start=1):
        lut[value] = number
    pixel_array = lut[labels]
    version = getattr(medimg_spark, "__version__", "0")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medimg-spark {item.recipe or item.source_table}"[:64],
        family=codes.DCM.ImageProcessing,
        version=str(version)[:64],
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=("mask" if not item.label_map else f"label {value}"),
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(values, start=1)
    ]
    from highdicom._standard_utils import is_multiframe_image

    if is_multiframe_image(sources[0]):
        raise UnsupportedPixelsError(
            "DICOM-SEG over frames of a multi-frame (enhanced) source instance is not supported; export "
            "the mask as nifti or nrrd"
        )
    geometry: dict[str, Any] = {}
    if "FrameOfReferenceUID" in sources[0]:  # else highdicom takes the plane from the one source image
        _, orientation, spacing, thickness = slice_geometry(item.volume, 0)
        geometry = {
            "pixel_measures": hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=thickness),
            "plane_orientation": hd.PlaneOrientationSequence("PATIENT", orientation),
            "plane_positions": [
                hd.PlanePositionSequence("PATIENT", slice_geometry(item.volume, k)[0])
                for k in range(labels.shape[0])
            ],
        }
    elif labels.shape[0] > 1:
        raise UnsupportedPixelsError(
            "the source images have no FrameOfReferenceUID: a DICOM-SEG of several slices cannot be "
            "placed; export the label map as nifti or nrrd"
        )
    pseudo_series = str(sources[0].get("SeriesInstanceUID", "") or sources[0].SOPInstanceUID)
    series = series_uid(item, pseudo_series, "seg")
    sop = derived_uid("medimg-export-seg", series, item.source_id, *[s.SOPInstanceUID for s in sources])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series,
        series_number=9002,
        sop_instance_uid=sop,
        instance_number=1,
        manufacturer="medimg-spark",
        manufacturer_model_name="medimg export",
        software_versions=str(version)[:64],
        device_serial_number="0",
        content_description=f"medimg {item.recipe or item.source_table}"[:64],
        omit_empty_frames=True,
        **geometry,
    )
    return seg


def write(item: ExportItem, context: ExportContext) -> list[ExportedFile]:
    """``<id>.dcm``: one DICOM-SEG instance."""
    seg = seg_dataset(item, context)
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return [ExportedFile(f"{item.file_stem}.dcm", buf.getvalue())]


FORMAT = ExportFormat("seg", ".dcm", ("processed", "volume_labels"), write)
