"""Schemas of the Parquet tables written under ``--out``.

These are the contract between stages: a stage reads only the tables to its left
and relies only on the columns declared here.

``images.pixels`` holds the stored pixel values as raw little-endian bytes of an
array of ``dtype`` (a numpy dtype name such as ``uint16``) and shape
``rows x cols x channels``. :func:`medimg_spark.io.pixels.to_array` turns a row back
into a numpy array.
"""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

IMAGES_SCHEMA = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("file_sha256", StringType(), False),
        StructField("source_path", StringType(), False),
        StructField("source_format", StringType(), False),
        StructField("frame_index", IntegerType(), False),
        StructField("n_frames", IntegerType(), False),
        StructField("modality", StringType(), False),
        StructField("rows", IntegerType(), False),
        StructField("cols", IntegerType(), False),
        StructField("channels", IntegerType(), False),
        StructField("dtype", StringType(), False),
        StructField("pixels", BinaryType(), False),
        StructField("photometric", StringType(), True),
        StructField("bits_stored", IntegerType(), True),
        StructField("rescale_slope", DoubleType(), True),
        StructField("rescale_intercept", DoubleType(), True),
        StructField("window_center", DoubleType(), True),
        StructField("window_width", DoubleType(), True),
        StructField("pixel_spacing", ArrayType(DoubleType()), True),
        StructField("slice_thickness", DoubleType(), True),
        StructField("patient_id", StringType(), True),
        StructField("study_instance_uid", StringType(), True),
        StructField("series_instance_uid", StringType(), True),
        StructField("sop_instance_uid", StringType(), True),
        StructField("instance_number", IntegerType(), True),
        StructField("image_position", ArrayType(DoubleType()), True),
        StructField("label", StringType(), True),
        StructField("split", StringType(), True),
        StructField("ingest_run_id", StringType(), False),
    ]
)

INSTANCES_SCHEMA = StructType(
    [
        StructField("file_sha256", StringType(), False),
        StructField("source_path", StringType(), False),
        StructField("source_format", StringType(), False),
        StructField("size_bytes", LongType(), False),
        StructField("modality", StringType(), False),
        StructField("sop_class_uid", StringType(), True),
        StructField("transfer_syntax_uid", StringType(), True),
        StructField("patient_id", StringType(), True),
        StructField("study_instance_uid", StringType(), True),
        StructField("series_instance_uid", StringType(), True),
        StructField("sop_instance_uid", StringType(), True),
        StructField("has_pixels", BooleanType(), False),
        StructField("n_frames", IntegerType(), False),
        StructField("recovered", StringType(), True),
        StructField("header_json", StringType(), True),
        StructField("ingest_run_id", StringType(), False),
    ]
)

QUARANTINE_SCHEMA = StructType(
    [
        StructField("source_path", StringType(), False),
        StructField("file_sha256", StringType(), True),
        StructField("size_bytes", LongType(), True),
        StructField("frame_index", IntegerType(), True),
        StructField("stage", StringType(), False),
        StructField("step", StringType(), True),
        StructField("error_class", StringType(), False),
        StructField("error_message", StringType(), False),
        StructField("ingest_run_id", StringType(), False),
        StructField("quarantined_at", TimestampType(), True),
    ]
)
