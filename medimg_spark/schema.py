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
        StructField("image_orientation", ArrayType(DoubleType()), True),
        StructField("frame_of_reference_uid", StringType(), True),
    ]
)
"""Geometry convention (all formats): ``image_position`` is the centre of the frame's first
(top-left) pixel and ``image_orientation`` the row then column direction cosines (6 values), both
in the DICOM patient coordinate system **LPS** (x to the patient's left, y posterior, z superior),
as DICOM ImagePositionPatient/ImageOrientationPatient. NIfTI/NRRD/MetaImage geometry is converted
(NIfTI's RAS: x and y negated). ``pixel_spacing`` is (row spacing, column spacing) in mm as DICOM
PixelSpacing: the distance between rows, then between columns."""

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

VOLUMES_SCHEMA = StructType(
    [
        StructField("volume_id", StringType(), False),
        StructField("source_table", StringType(), False),
        StructField("recipe_name", StringType(), True),
        StructField("modality", StringType(), False),
        StructField("source_format", StringType(), False),
        StructField("study_instance_uid", StringType(), True),
        StructField("series_instance_uid", StringType(), True),
        StructField("frame_of_reference_uid", StringType(), True),
        StructField("dim_x", IntegerType(), False),
        StructField("dim_y", IntegerType(), False),
        StructField("dim_z", IntegerType(), False),
        StructField("channels", IntegerType(), False),
        StructField("dtype", StringType(), False),
        StructField("voxels", BinaryType(), False),
        StructField("spacing", ArrayType(DoubleType()), False),
        StructField("origin", ArrayType(DoubleType()), False),
        StructField("direction", ArrayType(DoubleType()), False),
        StructField("image_ids", ArrayType(StringType()), False),
        StructField("slice_positions", ArrayType(DoubleType()), False),
        StructField("rescale_slope", DoubleType(), True),
        StructField("rescale_intercept", DoubleType(), True),
        StructField("window_center", DoubleType(), True),
        StructField("window_width", DoubleType(), True),
        StructField("label", StringType(), True),
        StructField("split", StringType(), True),
        StructField("missing_slices", IntegerType(), False),
        StructField("duplicate_slices", IntegerType(), False),
        StructField("irregular_spacing", BooleanType(), False),
        StructField("max_spacing_deviation", DoubleType(), True),
        StructField("mixed_geometry", BooleanType(), False),
        StructField("status", StringType(), False),
        StructField("flags", ArrayType(StringType()), False),
        StructField("volumes_run_id", StringType(), False),
        StructField("created_at", TimestampType(), True),
    ]
)
"""Schema of ``out/volumes`` (and ``out/processed_volumes``): one row per assembled 3-D volume.

``voxels`` are the raw little-endian bytes of a C-order array of ``dtype`` and shape
``(dim_z, dim_y, dim_x)`` (``(dim_z, dim_y, dim_x, channels)`` when ``channels > 1``): slice ``k``
is the frame ``image_ids[k]``, its rows along y and its columns along x. ``spacing`` (x, y, z) mm,
``origin`` (the centre of voxel (0, 0, 0)) and ``direction`` (9 values, row-major 3x3 whose columns
are the x, y and z axis unit vectors) are in LPS, exactly SimpleITK's ``GetSpacing``/``GetOrigin``/
``GetDirection``. ``slice_positions`` are the slices' distances along the slice normal. The checks:
``missing_slices`` (gaps of about k spacings count k-1), ``duplicate_slices`` (slices at the same
position), ``irregular_spacing``/``max_spacing_deviation`` (relative), ``mixed_geometry`` (the series
held frames of another orientation or size and was split); ``status`` is ``ok`` or ``flagged`` and
``flags`` names each failed check. :func:`medimg_spark.volumes.model.volume_from_row` decodes a row."""
