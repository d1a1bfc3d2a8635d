"""Hand-crafted image features, feature sets and the Spark stage that writes the ``features`` table.

The package is split by layer, and importing it imports none of them until a name is used (PEP 562):

* :mod:`.extract`: the numpy extractors of one frame (``glcm_features``, ``EXTRACTORS``, ...), no Spark;
* :mod:`.spec`: feature sets (:class:`FeatureSet`, :func:`load_feature_set`), validated YAML, no Spark;
* :mod:`.stage`: :func:`compute_features` and the other Spark helpers (``decode_row``, ``vector_metadata``).

``from medimg_spark.features import X`` keeps working for every name the former ``features.py`` had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg_spark._lazy import lazy_exports

_EXPORTS = {
    "Features": "medimg_spark.features.extract:Features",
    "FEATURE_SET_FILE": "medimg_spark.features.stage:FEATURE_SET_FILE",
    "FEATURE_SETS_DIR": "medimg_spark.features.stage:FEATURE_SETS_DIR",
    "FeatureRecipeError": "medimg_spark.features.stage:FeatureRecipeError",
    "FeatureSetNotFoundError": "medimg_spark.features.stage:FeatureSetNotFoundError",
    "feature_set_identity": "medimg_spark.features.stage:feature_set_identity",
    "list_feature_sets": "medimg_spark.features.stage:list_feature_sets",
    "locate_feature_set": "medimg_spark.features.stage:locate_feature_set",
    "read_feature_set_record": "medimg_spark.features.stage:read_feature_set_record",
    "select_recipe": "medimg_spark.features.stage:select_recipe",
    "GLCM_PROPS": "medimg_spark.features.extract:GLCM_PROPS",
    "FeatureError": "medimg_spark.features.extract:FeatureError",
    "FeatureSetError": "medimg_spark.features.extract:FeatureSetError",
    "to_gray": "medimg_spark.features.extract:to_gray",
    "to_unit": "medimg_spark.features.extract:to_unit",
    "quantize": "medimg_spark.features.extract:quantize",
    "intensity_features": "medimg_spark.features.extract:intensity_features",
    "glcm_features": "medimg_spark.features.extract:glcm_features",
    "lbp_features": "medimg_spark.features.extract:lbp_features",
    "hog_features": "medimg_spark.features.extract:hog_features",
    "region_features": "medimg_spark.features.extract:region_features",
    "pixel_features": "medimg_spark.features.extract:pixel_features",
    "EXTRACTORS": "medimg_spark.features.extract:EXTRACTORS",
    "IntensityParams": "medimg_spark.features.spec:IntensityParams",
    "GlcmParams": "medimg_spark.features.spec:GlcmParams",
    "LbpParams": "medimg_spark.features.spec:LbpParams",
    "HogParams": "medimg_spark.features.spec:HogParams",
    "RegionParams": "medimg_spark.features.spec:RegionParams",
    "PixelParams": "medimg_spark.features.spec:PixelParams",
    "IntensityExtractor": "medimg_spark.features.spec:IntensityExtractor",
    "GlcmExtractor": "medimg_spark.features.spec:GlcmExtractor",
    "LbpExtractor": "medimg_spark.features.spec:LbpExtractor",
    "HogExtractor": "medimg_spark.features.spec:HogExtractor",
    "RegionExtractor": "medimg_spark.features.spec:RegionExtractor",
    "PixelExtractor": "medimg_spark.features.spec:PixelExtractor",
    "ExtractorSpec": "medimg_spark.features.spec:ExtractorSpec",
    "FeatureSet": "medimg_spark.features.spec:FeatureSet",
    "parse_feature_set": "medimg_spark.features.spec:parse_feature_set",
    "load_feature_set": "medimg_spark.features.spec:load_feature_set",
    "vector_metadata": "medimg_spark.features.stage:vector_metadata",
    "feature_names_of": "medimg_spark.features.stage:feature_names_of",
    "decode_row": "medimg_spark.features.stage:decode_row",
    "compute_features": "medimg_spark.features.stage:compute_features",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medimg_spark.features.extract import (
        EXTRACTORS,
        GLCM_PROPS,
        FeatureError,
        Features,
        FeatureSetError,
        glcm_features,
        hog_features,
        intensity_features,
        lbp_features,
        pixel_features,
        quantize,
        region_features,
        to_gray,
        to_unit,
    )
    from medimg_spark.features.spec import (
        ExtractorSpec,
        FeatureSet,
        GlcmExtractor,
        GlcmParams,
        HogExtractor,
        HogParams,
        IntensityExtractor,
        IntensityParams,
        LbpExtractor,
        LbpParams,
        PixelExtractor,
        PixelParams,
        RegionExtractor,
        RegionParams,
        load_feature_set,
        parse_feature_set,
    )
    from medimg_spark.features.stage import (
        FEATURE_SET_FILE,
        FEATURE_SETS_DIR,
        FeatureRecipeError,
        FeatureSetNotFoundError,
        compute_features,
        decode_row,
        feature_names_of,
        feature_set_identity,
        list_feature_sets,
        locate_feature_set,
        read_feature_set_record,
        select_recipe,
        vector_metadata,
    )

__all__ = [
    "EXTRACTORS",
    "FEATURE_SETS_DIR",
    "FEATURE_SET_FILE",
    "GLCM_PROPS",
    "ExtractorSpec",
    "FeatureError",
    "FeatureRecipeError",
    "FeatureSet",
    "FeatureSetError",
    "FeatureSetNotFoundError",
    "Features",
    "GlcmExtractor",
    "GlcmParams",
    "HogExtractor",
    "HogParams",
    "IntensityExtractor",
    "IntensityParams",
    "LbpExtractor",
    "LbpParams",
    "PixelExtractor",
    "PixelParams",
    "RegionExtractor",
    "RegionParams",
    "compute_features",
    "decode_row",
    "feature_names_of",
    "feature_set_identity",
    "glcm_features",
    "hog_features",
    "intensity_features",
    "lbp_features",
    "list_feature_sets",
    "load_feature_set",
    "locate_feature_set",
    "parse_feature_set",
    "pixel_features",
    "quantize",
    "read_feature_set_record",
    "region_features",
    "select_recipe",
    "to_gray",
    "to_unit",
    "vector_metadata",
]
