"""Classification, evaluation and localisation on the ``features`` table.

Entry points (wired to ``medimg train|predict|evaluate|localize``):

* :func:`train` ``(spark, out_dir, model_name, config) -> dict``
* :func:`predict` ``(spark, out_dir, model_path, split=None) -> dict``
* :func:`evaluate` ``(spark, out_dir, model_path, split) -> dict``
* :func:`localize` ``(spark, out_dir, method, config=None) -> dict``
"""

from __future__ import annotations

from medimg_spark.ml.augment import AugmentConfig, augment_image, augment_stack, augmented_features
from medimg_spark.ml.errors import ModelConfigError, ModelDataError, ModelError, ModelLoadError
from medimg_spark.ml.estimators import MLLIB_MODELS, SKLEARN_MODELS, build_sklearn
from medimg_spark.ml.evaluate import evaluate, write_metrics
from medimg_spark.ml.localize import LocalizeConfig, find_regions, foreground_mask, localize
from medimg_spark.ml.metrics import choose_threshold, classification_metrics, format_metrics, format_table
from medimg_spark.ml.model import MllibClassifier, ModelCard, SklearnClassifier, load_model
from medimg_spark.ml.predict import predict, predictions_frame
from medimg_spark.ml.train import (
    ThresholdConfig,
    TrainConfig,
    build_mllib_pipeline,
    fit_sklearn_arrays,
    parse_train_config,
    train,
)

# pyspark.ml stages (medimg_spark.ml.stages), imported on first use. The Estimator is reached as
# medimg_spark.ml.stages.SklearnClassifier: here that name is the fitted model wrapper of ml.model.
_STAGES = ("FeatureExtractor", "QualityScorer", "RecipeTransformer", "SklearnClassificationModel")


def __getattr__(name: str) -> object:
    if name in _STAGES:
        from medimg_spark.ml import stages

        return getattr(stages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MLLIB_MODELS",
    "SKLEARN_MODELS",
    "AugmentConfig",
    "FeatureExtractor",
    "LocalizeConfig",
    "MllibClassifier",
    "ModelCard",
    "ModelConfigError",
    "ModelDataError",
    "ModelError",
    "ModelLoadError",
    "QualityScorer",
    "RecipeTransformer",
    "SklearnClassificationModel",
    "SklearnClassifier",
    "ThresholdConfig",
    "TrainConfig",
    "augment_image",
    "augment_stack",
    "augmented_features",
    "build_mllib_pipeline",
    "build_sklearn",
    "choose_threshold",
    "classification_metrics",
    "evaluate",
    "find_regions",
    "fit_sklearn_arrays",
    "foreground_mask",
    "format_metrics",
    "format_table",
    "load_model",
    "localize",
    "parse_train_config",
    "predict",
    "predictions_frame",
    "train",
    "write_metrics",
]
