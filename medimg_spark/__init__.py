"""medimg-spark: distributed medical-image ETL and machine learning on Apache Spark."""

from __future__ import annotations

from medimg_spark.config import IngestConfig, MedimgConfig, load_config
from medimg_spark.errors import ConfigError, MedimgError
from medimg_spark.io.ingest import ingest
from medimg_spark.io.pixels import decode as decode_pixels
from medimg_spark.io.pixels import encode as encode_pixels
from medimg_spark.io.pixels import to_array
from medimg_spark.session import build_session

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "IngestConfig",
    "MedimgConfig",
    "MedimgError",
    "__version__",
    "build_session",
    "decode_pixels",
    "encode_pixels",
    "ingest",
    "load_config",
    "to_array",
]
