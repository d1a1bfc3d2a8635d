"""Readers (one per format) and the Spark ingest that writes images/instances/quarantine."""

from __future__ import annotations

from medimg_spark.io.detect import detect_format
from medimg_spark.io.files import FileContext, image_id, process_file
from medimg_spark.io.model import Frame, ParsedFile
from medimg_spark.io.pixels import decode, encode, to_array

__all__ = [
    "FileContext",
    "Frame",
    "ParsedFile",
    "decode",
    "detect_format",
    "encode",
    "image_id",
    "process_file",
    "to_array",
]
