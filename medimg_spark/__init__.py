"""medimg-spark: distributed medical-image ETL and machine learning on Apache Spark.

The public names below are imported on first use (PEP 562), so ``import medimg_spark.ops`` (numpy
only) does not import pyspark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg_spark._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "medimg_spark.errors:ConfigError",
    "IngestConfig": "medimg_spark.config:IngestConfig",
    "MedimgConfig": "medimg_spark.config:MedimgConfig",
    "MedimgError": "medimg_spark.errors:MedimgError",
    "build_session": "medimg_spark.session:build_session",
    "decode_pixels": "medimg_spark.io.pixels:decode",
    "encode_pixels": "medimg_spark.io.pixels:encode",
    "ingest": "medimg_spark.io.ingest:ingest",
    "load_config": "medimg_spark.config:load_config",
    "to_array": "medimg_spark.io.pixels:to_array",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medimg_spark.config import IngestConfig, MedimgConfig, load_config
    from medimg_spark.errors import ConfigError, MedimgError
    from medimg_spark.io.ingest import ingest
    from medimg_spark.io.pixels import decode as decode_pixels
    from medimg_spark.io.pixels import encode as encode_pixels
    from medimg_spark.io.pixels import to_array
    from medimg_spark.session import build_session

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
