"""``pyspark.ml`` stages of the project: recipe, quality, features and the scikit-learn classifier.

Each stage has real :class:`~pyspark.ml.param.Param` s (with docs and defaults) and persists with
``write().save``/``load``, so a :class:`~pyspark.ml.Pipeline` of them fits, saves and loads like any
MLlib pipeline::

    Pipeline(stages=[
        RecipeTransformer(recipe="classify"),        # images rows -> processed rows
        QualityScorer(outputCol="quality"),          # no-reference metrics of the processed frame
        FeatureExtractor(featureSet="texture"),      # -> "features" vector with ml_attr names
        SklearnClassifier(model="sk_logreg"),        # Estimator -> SklearnClassificationModel
    ]).fit(images_df)

The outputs equal the CLI stages' tables for the same inputs: :class:`RecipeTransformer` gives the
``medimg preprocess`` ``processed`` rows (all but the run-specific ``preprocess_run_id`` and
``processed_at``), :class:`QualityScorer` the ``quality_before`` values ``preprocess`` stores for images rows (each frame in its
own scale; ``quality_after`` is in the recipe's fixed before/after scale), :class:`FeatureExtractor` the ``medimg features``
vectors and :class:`SklearnClassificationModel` the ``medimg predict`` columns of a model that
``medimg train`` fits with the same model, params, seed and rows.

A bad Param value raises :class:`StageParamError` (a :class:`~medimg_spark.errors.ConfigError`) naming
the Param when it is set, before any Spark work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, get_args

import numpy as np
from pydantic import ValidationError
from pyspark.ml import Estimator, Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasOutputCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasSeed,
)
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from medimg_spark.errors import ConfigError, MedimgError
from medimg_spark.ml.estimators import SKLEARN_MODELS
from medimg_spark.ml.metrics import ThresholdRule
from medimg_spark.ml.model import HasScoreCol, ModelCard
from medimg_spark.ml.model import SklearnClassifier as _FittedSklearn

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from medimg_spark.features import FeatureSet
    from medimg_spark.ops import Recipe

__all__ = [
    "FeatureExtractor",
    "QualityScorer",
    "RecipeTransformer",
    "SklearnClassificationModel",
    "SklearnClassifier",
    "StageInputError",
    "StageParamError",
]


class StageParamError(ConfigError):
    """A stage Param has an invalid value; the message names the Param and the fix."""


class StageInputError(MedimgError):
    """The DataFrame given to a stage lacks a column the stage reads."""


FRAME_COLUMNS: tuple[str, ...] = ("pixels", "rows", "cols", "channels", "dtype")
"""The columns holding one frame in the ``images`` and ``processed`` tables."""

_RECIPE_REQUIRED = ("image_id", "modality", *FRAME_COLUMNS)
FAILURE_COLUMNS: tuple[str, ...] = ("ok", "step", "error_class", "error_message")
"""Extra columns of :class:`RecipeTransformer` output with ``keepFailed=True``."""


def _require(dataset: DataFrame, columns: tuple[str, ...], stage: str) -> None:
    missing = [c for c in columns if c not in dataset.columns]
    if missing:
        raise StageInputError(
            f"{stage} needs columns {missing} (input has {dataset.columns}); "
            "give it rows of the images or processed table"
        )


def _is_inline(spec: str) -> bool:
    s = spec.lstrip()
    return "\n" in spec or s.startswith("{") or s.startswith("name:")


def _inline_mapping(spec: str, what: str, param: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(spec)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise StageParamError(f"Param {param}: inline {what} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StageParamError(
            f"Param {param}: inline {what} must be a mapping with name and steps/extractors"
        )
    return data


@lru_cache(maxsize=32)
def load_recipe_spec(spec: str) -> Recipe:
    """A recipe from a shipped name, a YAML path or inline YAML/JSON text.

    Raises:
        StageParamError: the recipe cannot be found or is invalid (names the ``recipe`` Param).
    """
    from medimg_spark.ops import load_recipe, parse_recipe

    try:
        if _is_inline(spec):
            return parse_recipe(_inline_mapping(spec, "recipe", "recipe"), "<inline recipe>")
        return load_recipe(spec)
    except ConfigError as exc:
        if isinstance(exc, StageParamError):
            raise
        raise StageParamError(f"Param recipe: {exc}") from None


@lru_cache(maxsize=32)
def load_feature_set_spec(spec: str) -> FeatureSet:
    """A feature set from a shipped name, a YAML path or inline YAML/JSON text.

    Raises:
        StageParamError: the feature set cannot be found or is invalid (names the ``featureSet`` Param).
    """
    from medimg_spark.features import load_feature_set

    try:
        if _is_inline(spec):
            return load_feature_set(_inline_mapping(spec, "feature set", "featureSet"))
        return load_feature_set(spec)
    except ConfigError as exc:
        if isinstance(exc, StageParamError):
            raise
        raise StageParamError(f"Param featureSet: {exc}") from None


def _recipe_converter(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StageParamError(
            f"Param recipe: expected a shipped recipe name, a YAML path or inline YAML/JSON text, got {value!r}"
        )
    load_recipe_spec(value)
    return value


def _feature_set_converter(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StageParamError(
            f"Param featureSet: expected a feature-set name, a YAML path or inline YAML/JSON text, got {value!r}"
        )
    load_feature_set_spec(value)
    return value


def _choice_converter(param: str, choices: tuple[str, ...]) -> Any:
    def convert(value: Any) -> str:
        if value not in choices:
            raise StageParamError(f"Param {param}: {value!r} is not one of {list(choices)}; pick one of them")
        return str(value)

    return convert


def _json_mapping_converter(param: str) -> Any:
    def convert(value: Any) -> str:
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        if not isinstance(value, str):
            raise StageParamError(f"Param {param}: expected a JSON object (text or dict), got {value!r}")
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise StageParamError(
                f"Param {param}: not valid JSON ({exc}); pass e.g. '{{\"C\": 0.1}}'"
            ) from None
        if not isinstance(data, dict):
            raise StageParamError(f"Param {param}: expected a JSON object, got {type(data).__name__}")
        return value

    return convert


# ----------------------------------------------------------------------------- recipe


def _recipe_partition(
    batches: Iterator[pa.RecordBatch], recipe_json: str, run_id: str, schema_json: str
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: :func:`medimg_spark.preprocess.process_row` on every row."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    from medimg_spark.ops import Recipe
    from medimg_spark.preprocess import process_row
    from medimg_spark.worker import configure_worker

    configure_worker()  # one OpenCV thread per task, the allocator keeps frame-sized blocks
    recipe = Recipe.model_validate_json(recipe_json)
    schema = to_arrow_schema(StructType.fromJson(json.loads(schema_json)))
    for batch in batches:
        rows = [process_row(r, recipe, run_id) for r in batch.to_pylist()]
        columns = [pa.array([r.get(n) for r in rows], type=schema.field(n).type) for n in schema.names]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


class RecipeTransformer(Transformer, DefaultParamsReadable["RecipeTransformer"], DefaultParamsWritable):
    """Apply a preprocessing recipe to ``images`` rows, giving ``processed`` rows (``medimg preprocess``).

    Reads the ``images`` columns (image_id, modality, pixels, rows, cols, channels, dtype required;
    the header columns a recipe may use are read when present) and returns the columns of
    :data:`medimg_spark.preprocess.PROCESSED_SCHEMA` (other input columns are not passed on). Frames
    the recipe fails on are dropped (``medimg preprocess`` quarantines them), or kept with
    ``keepFailed=True`` as rows with null pixels plus ``ok``/``step``/``error_class``/``error_message``.
    ``preprocess_run_id`` (``runId``, a new id per ``transform`` when empty) and ``processed_at`` are
    specific to a run.
    """

    recipe: Param[str] = Param(
        Params._dummy(),
        "recipe",
        "the recipe: a shipped name (e.g. classify), a YAML path, or inline YAML/JSON text",
        typeConverter=_recipe_converter,
    )
    runId: Param[str] = Param(
        Params._dummy(),
        "runId",
        "preprocess_run_id written on every row ('' = a new preprocess-<time>-<hex> id per transform)",
        typeConverter=TypeConverters.toString,
    )
    keepFailed: Param[bool] = Param(
        Params._dummy(),
        "keepFailed",
        "keep frames the recipe fails on (null pixels, with ok/step/error_class/error_message columns)",
        typeConverter=TypeConverters.toBoolean,
    )

    def __init__(self, *, recipe: str | None = None, runId: str = "", keepFailed: bool = False) -> None:
        super().__init__()
        self._setDefault(runId="", keepFailed=False)
        kwargs = {"recipe": recipe, "runId": runId, "keepFailed": keepFailed}
        self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def setRecipe(self, value: str) -> RecipeTransformer:
        """Set ``recipe``."""
        return self._set(recipe=value)

    def getRecipe(self) -> str:
        """The value of ``recipe``."""
        return self.getOrDefault(self.recipe)

    def setRunId(self, value: str) -> RecipeTransformer:
        """Set ``runId``."""
        return self._set(runId=value)

    def getRunId(self) -> str:
        """The value of ``runId``."""
        return self.getOrDefault(self.runId)

    def setKeepFailed(self, value: bool) -> RecipeTransformer:
        """Set ``keepFailed``."""
        return self._set(keepFailed=value)

    def getKeepFailed(self) -> bool:
        """The value of ``keepFailed``."""
        return self.getOrDefault(self.keepFailed)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        from medimg_spark.preprocess import PROCESSED_SCHEMA, RECIPE_INPUT_COLUMNS, new_run_id
        from medimg_spark.schema import IMAGES_SCHEMA

        if not self.isDefined(self.recipe):
            raise StageParamError(
                "Param recipe is not set; pass RecipeTransformer(recipe='classify') or a path"
            )
        _require(dataset, _RECIPE_REQUIRED, "RecipeTransformer")
        recipe = load_recipe_spec(self.getRecipe())
        run_id = self.getRunId() or new_run_id()
        types = {f.name: f.dataType for f in IMAGES_SCHEMA.fields}
        sel = [
            F.col(c) if c in dataset.columns else F.lit(None).cast(types[c]).alias(c)
            for c in RECIPE_INPUT_COLUMNS
        ]
        from medimg_spark.preprocess import WORK_SCHEMA as work_schema

        recipe_json, schema_json = recipe.model_dump_json(), work_schema.json()
        work = dataset.select(*sel).mapInArrow(
            lambda it: _recipe_partition(it, recipe_json, run_id, schema_json), work_schema
        )
        now = F.current_timestamp()
        cols = [
            (now if f.name == "processed_at" else F.col(f.name)).cast(f.dataType).alias(f.name)
            for f in PROCESSED_SCHEMA.fields
        ]
        if self.getKeepFailed():
            return work.select(*cols, *FAILURE_COLUMNS)
        return work.where(F.col("ok")).select(*cols)


# ----------------------------------------------------------------------------- quality


def _quality_of_frame(frame: Any) -> tuple[float, ...] | None:
    from medimg_spark.io.pixels import to_array
    from medimg_spark.quality import QUALITY_KEYS, quality_metrics

    if frame is None or frame["pixels"] is None:
        return None
    m = quality_metrics(to_array(frame))
    return tuple(float(m[k]) for k in QUALITY_KEYS)


class QualityScorer(Transformer, HasOutputCol, DefaultParamsReadable["QualityScorer"], DefaultParamsWritable):
    """No-reference quality metrics (:func:`medimg_spark.quality.quality_metrics`) of each row's frame.

    Reads the frame columns (pixels, rows, cols, channels, dtype) and adds ``outputCol``, a struct
    of :data:`medimg_spark.preprocess.QUALITY_STRUCT` (NaN where a metric is undefined, null for a
    row without pixels). It scores each frame alone, in its own min-max scale: on ``images`` rows it
    equals the ``quality_before`` that ``medimg preprocess`` stores; ``quality_after`` is in the recipe's
    fixed before/after scale (:func:`medimg_spark.quality.paired_metrics`), so on ``processed`` rows the
    two agree only for recipes whose output scale is the frame's own min-max. Reference metrics (PSNR/SSIM) need
    a second frame per row and are not computed here (:func:`medimg_spark.quality.reference_metrics`).
    """

    def __init__(self, *, outputCol: str = "quality") -> None:
        super().__init__()
        self._setDefault(outputCol="quality")
        self._set(outputCol=outputCol)

    def setOutputCol(self, value: str) -> QualityScorer:
        """Set ``outputCol``."""
        return self._set(outputCol=value)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        from medimg_spark.preprocess import QUALITY_STRUCT

        _require(dataset, FRAME_COLUMNS, "QualityScorer")
        score = F.udf(_quality_of_frame, QUALITY_STRUCT, useArrow=False)
        return dataset.withColumn(self.getOutputCol(), score(F.struct(*FRAME_COLUMNS)))


# ----------------------------------------------------------------------------- features


@lru_cache(maxsize=8)
def _feature_set_from_json(fs_json: str) -> FeatureSet:
    from medimg_spark.features import FeatureSet

    return FeatureSet.model_validate_json(fs_json)


def _features_of_frame(fs_json: str, use_mask: bool) -> Any:
    def run(frame: Any) -> tuple[list[float] | None, str | None]:
        from medimg_spark.features import decode_row

        try:
            img, msk = decode_row(frame.asDict(), use_mask)
            v, _ = _feature_set_from_json(fs_json).extract(img, msk)
            return [float(x) for x in v], None
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    return run


class FeatureExtractor(
    Transformer, HasOutputCol, DefaultParamsReadable["FeatureExtractor"], DefaultParamsWritable
):
    """A feature set's vector per frame (``medimg features``), with ML attribute names in its metadata.

    Reads the frame columns (pixels, rows, cols, channels, dtype; ``mask`` too when ``useMask`` and
    the column exists, as ``medimg features --from processed`` does) and adds ``outputCol``, a
    :class:`~pyspark.ml.linalg.Vector` column whose ``ml_attr`` metadata names every slot. The names
    are taken from the first row (shape-dependent extractors), so ``transform`` runs one row
    eagerly. Frames the feature set fails on are dropped like ``medimg features`` drops them, or
    kept with a null vector and the message in ``errorCol`` when that is set.
    """

    featureSet: Param[str] = Param(
        Params._dummy(),
        "featureSet",
        "the feature set: a name under conf/features (e.g. texture), a YAML path, or inline YAML/JSON text",
        typeConverter=_feature_set_converter,
    )
    useMask: Param[bool] = Param(
        Params._dummy(),
        "useMask",
        "pass the 'mask' column (when present) to the extractors",
        typeConverter=TypeConverters.toBoolean,
    )
    errorCol: Param[str] = Param(
        Params._dummy(),
        "errorCol",
        "column for the failure message of frames the feature set fails on ('' = drop those rows)",
        typeConverter=TypeConverters.toString,
    )

    def __init__(
        self,
        *,
        featureSet: str = "texture",
        useMask: bool = True,
        outputCol: str = "features",
        errorCol: str = "",
    ) -> None:
        super().__init__()
        self._setDefault(featureSet="texture", useMask=True, outputCol="features", errorCol="")
        self._set(featureSet=featureSet, useMask=useMask, outputCol=outputCol, errorCol=errorCol)

    def setFeatureSet(self, value: str) -> FeatureExtractor:
        """Set ``featureSet``."""
        return self._set(featureSet=value)

    def getFeatureSet(self) -> str:
        """The value of ``featureSet``."""
        return self.getOrDefault(self.featureSet)

    def setUseMask(self, value: bool) -> FeatureExtractor:
        """Set ``useMask``."""
        return self._set(useMask=value)

    def getUseMask(self) -> bool:
        """The value of ``useMask``."""
        return self.getOrDefault(self.useMask)

    def setOutputCol(self, value: str) -> FeatureExtractor:
        """Set ``outputCol``."""
        return self._set(outputCol=value)

    def setErrorCol(self, value: str) -> FeatureExtractor:
        """Set ``errorCol``."""
        return self._set(errorCol=value)

    def getErrorCol(self) -> str:
        """The value of ``errorCol``."""
        return self.getOrDefault(self.errorCol)

    def feature_names(self, dataset: DataFrame) -> list[str]:
        """The slot names for this dataset's frames (from its first row; empty for no rows).

        Raises:
            FeatureError: the feature set fails on the first frame.
        """
        from medimg_spark.features import FeatureError, decode_row

        fs = load_feature_set_spec(self.getFeatureSet())
        use_mask = self.getUseMask() and "mask" in dataset.columns
        cols = [*FRAME_COLUMNS, "mask"] if use_mask else list(FRAME_COLUMNS)
        first = dataset.select(*cols).limit(1).collect()
        if not first:
            return []
        try:
            img, msk = decode_row(first[0].asDict(), use_mask)
            return fs.extract(img, msk)[1]
        except MedimgError:
            raise
        except Exception as exc:
            raise FeatureError(f"feature set {fs.name!r} failed on the first frame: {exc}") from exc

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

        from medimg_spark.features import vector_metadata

        _require(dataset, FRAME_COLUMNS, "FeatureExtractor")
        fs = load_feature_set_spec(self.getFeatureSet())
        names = self.feature_names(dataset)
        use_mask = self.getUseMask() and "mask" in dataset.columns
        cols = [*FRAME_COLUMNS, "mask"] if use_mask else list(FRAME_COLUMNS)
        rtype = StructType(
            [StructField("values", ArrayType(DoubleType()), True), StructField("error", StringType(), True)]
        )
        extract = F.udf(_features_of_frame(fs.model_dump_json(), use_mask), rtype, useArrow=False)
        tmp = "__medimg_features"
        out_col, err_col = self.getOutputCol(), self.getErrorCol()
        res = dataset.withColumn(tmp, extract(F.struct(*cols)))
        good = F.col(f"{tmp}.error").isNull() & (F.size(f"{tmp}.values") == len(names))
        vec = F.when(good, array_to_vector(F.col(f"{tmp}.values")))
        keep = [F.col(c) for c in dataset.columns if c not in (out_col, err_col)]
        if err_col:
            error = F.when(good, F.lit(None).cast("string")).otherwise(
                F.coalesce(F.col(f"{tmp}.error"), F.lit(f"feature count differs from {len(names)}"))
            )
            return res.select(
                *keep, vec.alias(out_col, metadata=vector_metadata(names)), error.alias(err_col)
            )
        return res.where(good).select(*keep, vec.alias(out_col, metadata=vector_metadata(names)))


# ----------------------------------------------------------------------------- classifier


class SklearnClassificationModel(_FittedSklearn):
    """The fitted scikit-learn classifier of :class:`SklearnClassifier` (broadcast once per SparkContext).

    Adds ``probabilityCol`` (array<double>, class order of ``card.classes``), ``scoreCol`` (positive
    class probability) and ``predictionCol`` (label after the card's threshold), as ``medimg predict``.
    ``write().save(path)`` writes the DefaultParams metadata and ``path/model/`` (``card.json`` +
    ``model.joblib``, the folder :func:`medimg_spark.ml.load_model` reads) through
    :mod:`medimg_spark.storage`; loading checks both files against their recorded SHA-256.
    """


_CLASS_WEIGHTS = ("balanced", "none")
_THRESHOLD_RULES: tuple[str, ...] = get_args(ThresholdRule)


class SklearnClassifier(
    Estimator["SklearnClassificationModel"],
    HasFeaturesCol,
    HasLabelCol,
    HasProbabilityCol,
    HasScoreCol,
    HasPredictionCol,
    HasSeed,
    DefaultParamsReadable["SklearnClassifier"],
    DefaultParamsWritable,
):
    """Fit a scikit-learn classifier from the estimator table exactly as ``medimg train`` does.

    The rows with ``splitCol == trainSplit`` are collected (ordered by ``idCol``) and fitted on the
    driver; when ``valSplit`` rows exist the grid is searched and the decision threshold chosen on
    them (``thresholdRule``), as :func:`medimg_spark.ml.train` does on the features table. The
    fitted :class:`SklearnClassificationModel` then predicts on executors.
    """

    model: Param[str] = Param(
        Params._dummy(),
        "model",
        f"scikit-learn model name from the estimator table: {', '.join(sorted(SKLEARN_MODELS))}",
        typeConverter=_choice_converter("model", tuple(sorted(SKLEARN_MODELS))),
    )
    modelParams: Param[str] = Param(
        Params._dummy(),
        "modelParams",
        "JSON object of the estimator's parameters, e.g. {\"C\": 0.1} (the train config's 'params')",
        typeConverter=_json_mapping_converter("modelParams"),
    )
    grid: Param[str] = Param(
        Params._dummy(),
        "grid",
        "JSON object {param: [values]} searched on the val split (the train config's 'grid')",
        typeConverter=_json_mapping_converter("grid"),
    )
    classWeight: Param[str] = Param(
        Params._dummy(),
        "classWeight",
        "class weighting: balanced or none",
        typeConverter=_choice_converter("classWeight", _CLASS_WEIGHTS),
    )
    thresholdRule: Param[str] = Param(
        Params._dummy(),
        "thresholdRule",
        f"how the binary decision threshold is chosen on the val split: {', '.join(_THRESHOLD_RULES)}",
        typeConverter=_choice_converter("thresholdRule", _THRESHOLD_RULES),
    )
    thresholdValue: Param[float] = Param(
        Params._dummy(),
        "thresholdValue",
        "the threshold when thresholdRule is 'fixed'",
        typeConverter=TypeConverters.toFloat,
    )
    positiveLabel: Param[str] = Param(
        Params._dummy(),
        "positiveLabel",
        "positive class of a binary task ('' = the last class in sorted order)",
        typeConverter=TypeConverters.toString,
    )
    idCol: Param[str] = Param(
        Params._dummy(),
        "idCol",
        "row id column (orders the training rows)",
        typeConverter=TypeConverters.toString,
    )
    splitCol: Param[str] = Param(
        Params._dummy(), "splitCol", "column naming each row's split", typeConverter=TypeConverters.toString
    )
    trainSplit: Param[str] = Param(
        Params._dummy(), "trainSplit", "split the model is fitted on", typeConverter=TypeConverters.toString
    )
    valSplit: Param[str] = Param(
        Params._dummy(),
        "valSplit",
        "split used for the grid search and threshold ('' = none)",
        typeConverter=TypeConverters.toString,
    )
    modelName: Param[str] = Param(
        Params._dummy(),
        "modelName",
        "name recorded in the model card ('' = the model's registry name)",
        typeConverter=TypeConverters.toString,
    )

    _DEFAULTS: ClassVar[dict[str, Any]] = {
        "model": "sk_logreg",
        "modelParams": "{}",
        "grid": "{}",
        "classWeight": "balanced",
        "thresholdRule": "youden",
        "thresholdValue": 0.5,
        "positiveLabel": "",
        "seed": 0,
        "featuresCol": "features",
        "labelCol": "label",
        "probabilityCol": "probability",
        "scoreCol": "score",
        "predictionCol": "prediction",
        "idCol": "image_id",
        "splitCol": "split",
        "trainSplit": "train",
        "valSplit": "val",
        "modelName": "",
    }

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self._setDefault(**self._DEFAULTS)
        unknown = sorted(set(params) - set(self._DEFAULTS))
        if unknown:
            raise StageParamError(
                f"SklearnClassifier has no Param {unknown}; Params: {sorted(self._DEFAULTS)}"
            )
        self._set(**params)

    def setParams(self, **params: Any) -> SklearnClassifier:
        """Set several Params by name."""
        unknown = sorted(set(params) - set(self._DEFAULTS))
        if unknown:
            raise StageParamError(
                f"SklearnClassifier has no Param {unknown}; Params: {sorted(self._DEFAULTS)}"
            )
        return self._set(**params)

    def train_config(self) -> Any:
        """The :class:`~medimg_spark.ml.train.TrainConfig` these Params stand for.

        Raises:
            StageParamError: the Params do not form a valid train config.
        """
        from medimg_spark.ml.train import ThresholdConfig, TrainConfig

        g = self.getOrDefault
        val = g(self.valSplit)
        # the threshold counts as set only when a threshold Param was (a K-class task refuses it then)
        explicit = self.isSet(self.thresholdRule) or self.isSet(self.thresholdValue)
        threshold = ThresholdConfig(rule=g(self.thresholdRule), value=g(self.thresholdValue))
        try:
            return TrainConfig(
                train_split=g(self.trainSplit),
                val_split=val or None,
                class_weight=g(self.classWeight),
                params=json.loads(g(self.modelParams)),
                grid=json.loads(g(self.grid)),
                **({"threshold": threshold} if explicit else {}),
                positive_label=g(self.positiveLabel) or None,
                seed=g(self.seed),
                name=g(self.modelName) or None,
            )
        except ValidationError as exc:
            raise StageParamError(
                f"SklearnClassifier Params do not form a valid train config: {exc}"
            ) from None

    def _fit(self, dataset: DataFrame) -> SklearnClassificationModel:
        from pyspark.sql import functions as F

        from medimg_spark.features import feature_names_of
        from medimg_spark.ml.errors import ModelDataError
        from medimg_spark.ml.train import collect_split, fit_sklearn_arrays

        g = self.getOrDefault
        fcol = g(self.featuresCol)
        cols = (g(self.idCol), g(self.labelCol), g(self.splitCol), fcol)
        _require(dataset, cols, "SklearnClassifier")
        cfg = self.train_config()
        model_name = g(self.model)
        df = dataset.select(
            F.col(cols[0]).alias("image_id"),
            F.col(cols[1]).alias("label"),
            F.col(cols[2]).alias("split"),
            F.col(fcol).alias("features"),
        ).cache()
        try:
            names = feature_names_of(dataset, fcol)
            ids, X, y = collect_split(df, cfg.train_split)
            if len(y) == 0:
                raise ModelDataError(
                    f"no rows with {cols[2]}={cfg.train_split!r}; set trainSplit to a split the data holds"
                )
            if not names:
                names = [f"f{i}" for i in range(X.shape[1])]
            Xv: np.ndarray | None = None
            yv: np.ndarray | None = None
            if cfg.val_split is not None:
                _, Xv, yv = collect_split(df, cfg.val_split)
                if len(yv) == 0:
                    Xv = yv = None
        finally:
            df.unpersist()
        fitted, _ = fit_sklearn_arrays(model_name, cfg, X, y, Xv, yv, names, ids)
        fitted.card.spark_version = dataset.sparkSession.version
        return self._model(fitted.estimator, fitted.card)

    def _model(self, estimator: Any, card: ModelCard) -> SklearnClassificationModel:
        m = SklearnClassificationModel(estimator, card)
        g = self.getOrDefault
        m._set(
            featuresCol=g(self.featuresCol),
            probabilityCol=g(self.probabilityCol),
            scoreCol=g(self.scoreCol),
            predictionCol=g(self.predictionCol),
        )
        return m
