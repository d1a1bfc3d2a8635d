"""JPEG thumbnail export (see :mod:`medimg_spark.export.thumbnail`)."""

from __future__ import annotations

from medimg_spark.export import ExportFormat
from medimg_spark.export.thumbnail import write_jpeg

FORMAT = ExportFormat(
    "jpeg", ".jpg", ("images", "processed", "volumes", "processed_volumes", "volume_labels"), write_jpeg
)
