"""Classification, evaluation and localisation on the ``features`` table.

Entry points (wired to ``medimg train|predict|evaluate|localize``):

* :func:`train` ``(spark, out_dir, model_name, config) -> dict``
* :func:`predict` ``(spark, out_dir, model_path, split=None) -> dict``
* :func:`evaluate` ``(spark, out_dir, model_path, split) -> dict``
* :func:`localize` ``(spark, out_dir, method, config=None) -> dict``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg_spark._lazy import lazy_exports

# public name -> 'module:attribute', imported on first use (PEP 562): importing the package stays cheap
_EXPORTS = {
    "ESTIMATORS": "medimg_spark.ml.models:ESTIMATORS",
    "AugmentConfig": "medimg_spark.ml.augment:AugmentConfig",
    "augment_image": "medimg_spark.ml.augment:augment_image",
    "augment_stack": "medimg_spark.ml.augment:augment_stack",
    "augmented_features": "medimg_spark.ml.augment:augmented_features",
    "BinaryOnlyModelError": "medimg_spark.ml.errors:BinaryOnlyModelError",
    "ModelConfigError": "medimg_spark.ml.errors:ModelConfigError",
    "ModelDataError": "medimg_spark.ml.errors:ModelDataError",
    "ModelError": "medimg_spark.ml.errors:ModelError",
    "ModelLoadError": "medimg_spark.ml.errors:ModelLoadError",
    "ThresholdOnMulticlassError": "medimg_spark.ml.errors:ThresholdOnMulticlassError",
    "MLLIB_MODELS": "medimg_spark.ml.estimators:MLLIB_MODELS",
    "SKLEARN_MODELS": "medimg_spark.ml.estimators:SKLEARN_MODELS",
    "build_sklearn": "medimg_spark.ml.estimators:build_sklearn",
    "CnnConfig": "medimg_spark.config_models:CnnConfig",
    "CnnDependencyError": "medimg_spark.ml.cnn:CnnDependencyError",
    "CnnClassifier": "medimg_spark.ml.cnn_spark:CnnClassifier",
    "VoteClassifier": "medimg_spark.ml.vote:VoteClassifier",
    "evaluate": "medimg_spark.ml.evaluate:evaluate",
    "write_metrics": "medimg_spark.ml.evaluate:write_metrics",
    "LocalizeConfig": "medimg_spark.ml.localize:LocalizeConfig",
    "find_regions": "medimg_spark.ml.localize:find_regions",
    "foreground_mask": "medimg_spark.ml.localize:foreground_mask",
    "localize": "medimg_spark.ml.localize:localize",
    "choose_threshold": "medimg_spark.ml.metrics:choose_threshold",
    "classification_metrics": "medimg_spark.ml.metrics:classification_metrics",
    "format_metrics": "medimg_spark.ml.metrics:format_metrics",
    "format_table": "medimg_spark.ml.metrics:format_table",
    "MllibClassifier": "medimg_spark.ml.model:MllibClassifier",
    "ModelCard": "medimg_spark.ml.model:ModelCard",
    "SklearnClassifier": "medimg_spark.ml.model:SklearnClassifier",
    "load_model": "medimg_spark.ml.model:load_model",
    "predict": "medimg_spark.ml.predict:predict",
    "predictions_frame": "medimg_spark.ml.predict:predictions_frame",
    "ThresholdConfig": "medimg_spark.ml.train:ThresholdConfig",
    "TrainConfig": "medimg_spark.ml.train:TrainConfig",
    "build_mllib_pipeline": "medimg_spark.ml.train:build_mllib_pipeline",
    "fit_sklearn_arrays": "medimg_spark.ml.train:fit_sklearn_arrays",
    "parse_train_config": "medimg_spark.ml.train:parse_train_config",
    "train": "medimg_spark.ml.train:train",
    # pyspark.ml stages. The Estimator is reached as medimg_spark.ml.stages.SklearnClassifier: here that
    # name is the fitted model wrapper of ml.model.
    "FeatureExtractor": "medimg_spark.ml.stages:FeatureExtractor",
    "QualityScorer": "medimg_spark.ml.stages:QualityScorer",
    "RecipeTransformer": "medimg_spark.ml.stages:RecipeTransformer",
    "SklearnClassificationModel": "medimg_spark.ml.stages:SklearnClassificationModel",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from medimg_spark.config_models import CnnConfig
    from medimg_spark.ml.augment import AugmentConfig, augment_image, augment_stack, augmented_features
    from medimg_spark.ml.cnn import CnnDependencyError
    from medimg_spark.ml.cnn_spark import CnnClassifier
    from medimg_spark.ml.errors import (
        BinaryOnlyModelError,
        ModelConfigError,
        ModelDataError,
        ModelError,
        ModelLoadError,
        ThresholdOnMulticlassError,
    )
    from medimg_spark.ml.estimators import MLLIB_MODELS, SKLEARN_MODELS, build_sklearn
    from medimg_spark.ml.evaluate import evaluate, write_metrics
    from medimg_spark.ml.localize import LocalizeConfig, find_regions, foreground_mask, localize
    from medimg_spark.ml.metrics import choose_threshold, classification_metrics, format_metrics, format_table
    from medimg_spark.ml.model import MllibClassifier, ModelCard, SklearnClassifier, load_model
    from medimg_spark.ml.models import ESTIMATORS
    from medimg_spark.ml.predict import predict, predictions_frame
    from medimg_spark.ml.stages import (
        FeatureExtractor,
        QualityScorer,
        RecipeTransformer,
        SklearnClassificationModel,
    )
    from medimg_spark.ml.train import (
        ThresholdConfig,
        TrainConfig,
        build_mllib_pipeline,
        fit_sklearn_arrays,
        parse_train_config,
        train,
    )
    from medimg_spark.ml.vote import VoteClassifier

__all__ = [
    "ESTIMATORS",
    "MLLIB_MODELS",
    "SKLEARN_MODELS",
    "AugmentConfig",
    "BinaryOnlyModelError",
    "CnnClassifier",
    "CnnConfig",
    "CnnDependencyError",
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
    "ThresholdOnMulticlassError",
    "TrainConfig",
    "VoteClassifier",
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
