"""Source-table rows → :class:`~medimg_spark.export.model.ExportItem` (no Spark: runs in the executors).

The stage selects, per table, the row columns named here and, for the DICOM formats, the source
headers of every slice (``header_json`` plus the ingest run id that wrote it).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from medimg_spark.export.model import ExportItem, SliceSource, frame_volume
from medimg_spark.volumes.model import volume_from_row

#: ``images`` geometry/display columns every frame export reads.
IMAGE_COLUMNS = (
    "image_id",
    "source_path",
    "file_sha256",
    "frame_index",
    "modality",
    "rows",
    "cols",
    "channels",
    "dtype",
    "pixels",
    "rescale_slope",
    "rescale_intercept",
    "window_center",
    "window_width",
    "pixel_spacing",
    "slice_thickness",
    "image_position",
    "image_orientation",
)
#: ``PatientIdentityRemoved`` and ``DeidentificationMethod`` in DICOM JSON.
_REMOVED, _METHOD = "00120062", "00120063"


def deidentified_by_medimg(header_json: str | None) -> bool:
    """The header says medimg-spark's privacy engine de-identified it (PatientIdentityRemoved YES + method)."""
    from medimg_spark.privacy.engine import DEID_METHOD

    if not header_json:
        return False
    try:
        header = json.loads(header_json)
        removed = header.get(_REMOVED, {}).get("Value", [])
        method = header.get(_METHOD, {}).get("Value", [])
    except (ValueError, AttributeError):
        return False
    return "YES" in [str(v).strip().upper() for v in removed] and DEID_METHOD in [str(v) for v in method]


def slice_source(
    image_id: str | None,
    header_json: str | None,
    ingest_run_id: str | None,
    frame_index: int | None,
    identified_runs: Collection[str],
) -> SliceSource:
    """One slice's source; ``identified`` unless medimg de-identified the header in a run not marked IDENTIFIED."""
    identified = (ingest_run_id in identified_runs) or not deidentified_by_medimg(header_json)
    return SliceSource(image_id, header_json, identified, int(frame_index or 0))


def _frame_pixels(row: Mapping[str, Any]) -> np.ndarray:
    from medimg_spark.io.pixels import to_array

    return to_array(row)


def frame_item(row: Mapping[str, Any], table: str, identified_runs: Collection[str] = ()) -> ExportItem:
    """An ``images`` or ``processed`` row (processed joined with its ``images`` geometry as ``src_*``)."""
    pixels = _frame_pixels(row)
    processed = table == "processed"
    source_shape = (int(row["src_rows"]), int(row["src_cols"])) if processed and row.get("src_rows") else None
    volume = frame_volume(
        pixels,
        row.get("image_position"),
        row.get("image_orientation"),
        row.get("pixel_spacing"),
        row.get("slice_thickness"),
        source_shape,
    )
    mask = None
    if processed and row.get("mask") is not None:
        mask = np.frombuffer(bytes(row["mask"]), dtype=np.uint8).reshape(pixels.shape[:2])
    slices = [
        slice_source(
            row.get("image_id"),
            row.get("header_json"),
            row.get("header_run_id"),
            row.get("frame_index"),
            identified_runs,
        )
    ]
    return ExportItem(
        source_table=table,
        source_id=str(row["image_id"]),
        volume=volume,
        mask=mask,
        modality=str(row.get("modality") or "OT"),
        recipe=row.get("recipe_name"),
        recipe_hash=row.get("recipe_hash"),
        rescale_slope=row.get("rescale_slope"),
        rescale_intercept=row.get("rescale_intercept"),
        window_center=row.get("window_center"),
        window_width=row.get("window_width"),
        slices=slices,
    )


def volume_item(row: Mapping[str, Any], table: str, identified_runs: Collection[str] = ()) -> ExportItem:
    """A ``volumes``/``processed_volumes``/``volume_labels`` row (VOLUMES_SCHEMA, plus ``slices`` when joined).

    ``slices`` (optional): ``[{pos, image_id, frame_index, header_json, header_run_id}]`` in any order.
    """
    volume = volume_from_row(row)
    gathered = sorted(row.get("slices") or [], key=lambda s: int(s["pos"]))
    by_pos = {int(s["pos"]): s for s in gathered}
    slices = []
    for k, image_id in enumerate(row.get("image_ids") or []):
        s = by_pos.get(k)
        slices.append(
            slice_source(
                image_id,
                s["header_json"] if s else None,
                s["header_run_id"] if s else None,
                s["frame_index"] if s else 0,
                identified_runs,
            )
        )
    return ExportItem(
        source_table=table,
        source_id=str(row["volume_id"]),
        volume=volume,
        label_map=table == "volume_labels",
        modality=str(row.get("modality") or "OT"),
        recipe=row.get("recipe_name"),
        rescale_slope=row.get("rescale_slope"),
        rescale_intercept=row.get("rescale_intercept"),
        window_center=row.get("window_center"),
        window_width=row.get("window_width"),
        slices=slices,
    )


def item_from_row(row: Mapping[str, Any], table: str, identified_runs: Collection[str] = ()) -> ExportItem:
    """The :class:`ExportItem` of a row of ``table``."""
    if table in ("images", "processed"):
        return frame_item(row, table, identified_runs)
    return volume_item(row, table, identified_runs)
