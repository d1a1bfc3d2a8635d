"""Trained classifiers as Spark Transformers, their model cards, and persistence.

A saved model is a folder holding ``card.json`` plus either ``model.joblib`` (scikit-learn,
``kind: sklearn``), ``pipeline/`` (a saved :class:`pyspark.ml.PipelineModel`, ``kind: mllib``),
``weights.npz`` (a JAX CNN, ``kind: cnn``, :mod:`medimg_spark.ml.cnn_spark`) or nothing more (a soft
vote of other saved models, ``kind: vote``, :mod:`medimg_spark.ml.vote`). :func:`load_model` returns
a :class:`SklearnClassifier`, :class:`MllibClassifier`, ``CnnClassifier`` or ``VoteClassifier``;
all add the same prediction columns:

* ``probability`` — array<double> of class probabilities (order: ``card.classes``),
* ``score`` — probability of the positive class (binary tasks; null otherwise),
* ``prediction`` — the predicted class label (string), after the card's decision threshold.

The column names are Params (``featuresCol``, ``probabilityCol``, ``scoreCol``, ``predictionCol``),
so both classes are ordinary ``pyspark.ml`` stages: ``model.write().save(path)`` writes the
``DefaultParams`` metadata plus the model folder under ``path/model`` (through
:mod:`medimg_spark.storage`, so any Hadoop URI works) and a :class:`~pyspark.ml.PipelineModel`
holding one saves and loads. ``model.save(folder)`` still writes the plain model folder read by
:func:`load_model`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd  # runtime import: pandas_udf reads the type hints
import sklearn
from pydantic import BaseModel, ConfigDict, Field
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasPredictionCol, HasProbabilityCol
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from medimg_spark.ml.errors import ModelDataError, ModelLoadError
from medimg_spark.ml.estimators import positive_scores
from medimg_spark.storage import Storage, get_storage, join

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame

CARD_FILE = "card.json"
SKLEARN_FILE = "model.joblib"
MLLIB_DIR = "pipeline"
CNN_WEIGHTS_FILE = "weights.npz"
PREDICTION_COLUMNS = ("probability", "score", "prediction")
"""The default output column names (probabilityCol, scoreCol, predictionCol)."""
MODEL_SUBDIR = "model"
"""Where ``write().save(path)`` puts the model folder (card.json + model file) under ``path``."""


class ModelCard(BaseModel):
    """What a saved model was trained on and how it decides."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model: str | None = Field(None, description="registry name, e.g. sk_svc or mllib_logreg")
    kind: str = Field(pattern="^(sklearn|mllib|cnn|vote)$")
    estimator: str
    params: dict[str, Any] = {}
    classes: list[str]
    positive_label: str | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    feature_names: list[str]
    feature_set: str | None = None
    feature_set_id: str | None = Field(
        None, description="<name>-<sha256[:8]> of the features table trained on"
    )
    feature_set_sha256: str | None = Field(
        None, description="what the features table was computed with, hashed (predict reads that set)"
    )
    train_data_sha256: str
    n_train: int
    n_val: int = 0
    class_weight: str | None = None
    metrics: dict[str, Any] = {}
    search: list[dict[str, Any]] = []
    augment: dict[str, Any] | None = None
    sklearn_version: str = sklearn.__version__
    spark_version: str | None = None
    python_version: str = platform.python_version()
    numpy_version: str = np.__version__
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # kind "cnn" (see medimg_spark.ml.cnn_spark) and "vote" (medimg_spark.ml.vote)
    framework: str | None = Field(None, description="deep-learning framework of a CNN ('jax')")
    framework_version: str | None = None
    backend: str | None = Field(None, description="JAX backend the CNN was trained on (cpu/gpu)")
    arch: str | None = None
    input_size: int | None = None
    normalisation: str | None = None
    source: str | None = Field(None, description="table a CNN reads: images or processed")
    recipe: str | None = Field(None, description="processed recipe_name a CNN reads")
    history: list[dict[str, Any]] = Field([], description="per-epoch train loss / val metrics of a CNN")
    best_epoch: int | None = None
    temperature: float | None = Field(None, description="softmax temperature fitted on val (calibration)")
    members: list[dict[str, Any]] = Field(
        [], description="vote members: model_path, weight, model_name, kind"
    )

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class indices from an ``(n, n_classes)`` probability matrix using the card's threshold."""
        p = np.asarray(proba, dtype=np.float64)
        if len(self.classes) == 2 and self.threshold is not None and self.positive_label is not None:
            pos = self.classes.index(self.positive_label)
            return np.where(p[:, pos] >= self.threshold, pos, 1 - pos)
        return np.argmax(p, axis=1)


def data_hash(ids: np.ndarray, X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the training rows (sorted by image id): ids, feature bytes and labels."""
    order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
    h = hashlib.sha256()
    for i in order:
        h.update(str(ids[i]).encode())
        h.update(b"\0")
        h.update(str(y[i]).encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(np.asarray(X, dtype="<f8")[order]).tobytes())
    return h.hexdigest()


def _features_as_matrix(values: Any, n_features: int) -> np.ndarray:
    rows = list(values)
    if not rows:
        return np.zeros((0, n_features))
    X = np.vstack([np.asarray(r, dtype=np.float64) for r in rows])
    if X.shape[1] != n_features:
        raise ModelDataError(
            f"feature vectors have {X.shape[1]} values but the model expects {n_features}; "
            "compute features with the model's feature set"
        )
    return X


def _check_features(df: DataFrame, col: str) -> None:
    if col not in df.columns:
        raise ModelDataError(
            f"input has no {col!r} column (columns: {df.columns}); run compute_features first"
        )


class HasScoreCol(Params):
    """Mixin for the ``scoreCol`` Param (positive-class probability of a binary task)."""

    scoreCol: Param[str] = Param(
        Params._dummy(),
        "scoreCol",
        "output column: probability of the card's positive class (binary tasks; null otherwise)",
        typeConverter=TypeConverters.toString,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(scoreCol="score")

    def getScoreCol(self) -> str:
        """The value of ``scoreCol``."""
        return self.getOrDefault(self.scoreCol)


class _Classifier(
    Transformer,
    HasFeaturesCol,
    HasProbabilityCol,
    HasScoreCol,
    HasPredictionCol,
    MLReadable["_Classifier"],
    MLWritable,
):
    """Shared parts of the sklearn and MLlib wrappers: the card, the column Params and persistence."""

    card: ModelCard

    def __init__(self, card: ModelCard, features_col: str = "features") -> None:
        super().__init__()
        self.card = card
        self._set(featuresCol=features_col)

    @property
    def features_col(self) -> str:
        """The vector column read (the ``featuresCol`` Param)."""
        return self.getFeaturesCol()

    def setFeaturesCol(self, value: str) -> _Classifier:
        """Set ``featuresCol``."""
        return self._set(featuresCol=value)

    def setProbabilityCol(self, value: str) -> _Classifier:
        """Set ``probabilityCol``."""
        return self._set(probabilityCol=value)

    def setScoreCol(self, value: str) -> _Classifier:
        """Set ``scoreCol``."""
        return self._set(scoreCol=value)

    def setPredictionCol(self, value: str) -> _Classifier:
        """Set ``predictionCol``."""
        return self._set(predictionCol=value)

    def output_columns(self) -> tuple[str, str, str]:
        """``(probabilityCol, scoreCol, predictionCol)``."""
        return self.getProbabilityCol(), self.getScoreCol(), self.getPredictionCol()

    def _kept_columns(self, dataset: DataFrame) -> list[str]:
        out = set(self.output_columns())
        return [c for c in dataset.columns if c not in out]

    def _executor_input(self, dataset: DataFrame) -> tuple[DataFrame, Any, Callable[[DataFrame], DataFrame]]:
        """What a ``mapInPandas``/``mapInArrow`` prediction runs on, and how its output comes back.

        Spark 4.3's Arrow Python runners fail on Parquet scans holding vector (UDT) columns, so the
        kept columns travel with vectors as arrays. Returns ``(base, out_schema, restore)``: ``base``
        (the kept columns), the output schema (base + probability, score, prediction) and a function
        turning the mapped output back into vectors under the input's column metadata.
        """
        from pyspark.ml.functions import array_to_vector, vector_to_array
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

        prob_col, score_col, pred_col = self.output_columns()
        keep = self._kept_columns(dataset)
        vec_cols = {f.name: f.metadata for f in dataset.schema.fields if isinstance(f.dataType, VectorUDT)}
        base = dataset.select(
            *(vector_to_array(F.col(c)).alias(c) if c in vec_cols else F.col(c) for c in keep)
        )
        out_schema = StructType(
            [
                *base.schema.fields,
                StructField(prob_col, ArrayType(DoubleType()), True),
                StructField(score_col, DoubleType(), True),
                StructField(pred_col, StringType(), True),
            ]
        )

        def restore(out: DataFrame) -> DataFrame:
            return out.select(
                *(
                    array_to_vector(F.col(c)).alias(c, metadata=vec_cols[c]) if c in vec_cols else F.col(c)
                    for c in keep
                ),
                prob_col,
                score_col,
                pred_col,
            )

        return base, out_schema, restore

    @classmethod
    def _from_loaded(cls, model: _Classifier) -> _Classifier:
        """An instance of ``cls`` holding what :func:`load_model` returned (each concrete wrapper checks the kind)."""
        raise ModelLoadError(
            f"{cls.__name__} cannot hold a loaded {type(model).__name__}; read it with "
            "SklearnClassifier.read() or MllibClassifier.read()"
        )

    def write(self) -> MLWriter:
        """A writer of ``DefaultParams`` metadata plus the model folder (``path/model``)."""
        return _ClassifierWriter(self)

    @classmethod
    def read(cls) -> MLReader[_Classifier]:
        """A reader of what :meth:`write` saved (or of a plain model folder written by :meth:`save`)."""
        return _ClassifierReader(cls)

    @property
    def classes(self) -> list[str]:
        """Class labels in probability-column order."""
        return list(self.card.classes)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of a feature matrix on the driver."""
        raise ModelLoadError(f"{type(self).__name__} cannot predict on the driver")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class labels (strings) of a feature matrix on the driver, after the threshold."""
        idx = self.card.decide(self.predict_proba(X))
        return np.asarray(self.classes, dtype=object)[idx]

    def save(self, path: str | Path, storage: Storage | None = None) -> str:  # type: ignore[override]
        """Write the model and ``card.json`` to the folder ``path`` (local path or URI; files overwritten).

        This is the model-store folder :func:`load_model` reads; ``write().save(path)`` writes the
        ``pyspark.ml`` layout (metadata + this folder under ``path/model``) instead.

        Args:
            path: the model folder.
            storage: how to reach ``path`` (default: the active SparkSession's, see
                :func:`medimg_spark.storage.get_storage`).

        Returns:
            ``path`` as a string.
        """
        raise ModelLoadError(f"{type(self).__name__} cannot be saved")

    def own_predictions(self, spark: Any, out_dir: str | Path, split: str | None) -> DataFrame:
        """Predictions of a model that reads its own table (CNN: images/processed; vote: its members').

        Raises:
            ModelLoadError: this model reads the features table (use :func:`~medimg_spark.ml.predict.predictions_frame`).
        """
        raise ModelLoadError(f"{type(self).__name__} reads the features table; use predictions_frame")

    def _write_card(self, store: Storage, folder: str) -> None:
        store.write_text(join(folder, CARD_FILE), self.card.model_dump_json(indent=2))


class SklearnClassifier(_Classifier):
    """A fitted scikit-learn classifier applied on executors through a pandas UDF.

    The estimator is broadcast once per SparkContext and reused by every ``transform``.
    """

    def __init__(self, estimator: Any, card: ModelCard, features_col: str = "features") -> None:
        super().__init__(card, features_col)
        self.estimator = estimator
        self._broadcast: Any = None
        self._broadcast_sc: Any = None
        est_classes = [str(c) for c in getattr(estimator, "classes_", [])]
        if est_classes and est_classes != self.card.classes:
            raise ModelLoadError(
                f"estimator classes {est_classes} differ from the card's {self.card.classes}"
            )

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities on the driver (``predict_proba`` or a softmax of the decision function)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.card.feature_names):
            raise ModelDataError(
                f"X has shape {X.shape}, the model expects (n, {len(self.card.feature_names)}) features"
            )
        return positive_scores(self.estimator, X)

    def broadcast(self, spark_context: Any) -> Any:
        """The estimator's broadcast variable (created on first use for this SparkContext)."""
        if self._broadcast is None or self._broadcast_sc is not spark_context:
            self._broadcast = spark_context.broadcast(self.estimator)
            self._broadcast_sc = spark_context
        return self._broadcast

    def _transform(self, dataset: DataFrame) -> DataFrame:
        # mapInPandas rather than a scalar pandas UDF: Spark 4.3's ArrowEvalPython fails on
        # Parquet scans holding vector (UDT) columns (see _executor_input).
        _check_features(dataset, self.features_col)
        bc = self.broadcast(dataset.sparkSession.sparkContext)
        card_json = self.card.model_dump_json()
        n_features = len(self.card.feature_names)
        fcol = self.features_col
        prob_col, score_col, pred_col = self.output_columns()
        base, out_schema, restore = self._executor_input(dataset)

        def _predict(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            card = ModelCard.model_validate_json(card_json)
            for pdf in batches:
                if len(pdf) == 0:
                    yield pdf.assign(**{prob_col: [], score_col: [], pred_col: []})
                    continue
                X = _features_as_matrix(pdf[fcol], n_features)
                proba = positive_scores(bc.value, X)
                idx = card.decide(proba)
                score = (
                    proba[:, card.classes.index(card.positive_label)]
                    if len(card.classes) == 2 and card.positive_label is not None
                    else np.full(len(X), np.nan)
                )
                yield pdf.assign(
                    **{
                        prob_col: list(proba),
                        score_col: score,
                        pred_col: np.asarray(card.classes, dtype=object)[idx],
                    }
                )

        return restore(base.mapInPandas(_predict, out_schema))

    @classmethod
    def _from_loaded(cls, model: _Classifier) -> _Classifier:
        if not isinstance(model, SklearnClassifier):
            raise ModelLoadError(f"the saved model is {type(model).__name__}, not a scikit-learn model")
        return cls(model.estimator, model.card)

    def save(self, path: str | Path, storage: Storage | None = None) -> str:  # type: ignore[override]
        """Write ``model.joblib`` and ``card.json`` into the folder ``path`` (local path or URI).

        joblib writes a local temporary file, which is then uploaded through ``storage``.
        """
        store = storage or get_storage()
        folder = os.fspath(path)
        store.mkdirs(folder)
        with store.staged_file(join(folder, SKLEARN_FILE)) as local:
            joblib.dump(self.estimator, local)
        self._write_card(store, folder)
        return folder


class MllibClassifier(_Classifier):
    """A fitted MLlib :class:`~pyspark.ml.PipelineModel` (StringIndexer → scaler → classifier)."""

    def __init__(self, pipeline: PipelineModel, card: ModelCard, features_col: str = "features") -> None:
        super().__init__(card, features_col)
        self.pipeline = pipeline

    @property
    def classifier(self) -> Any:
        """The fitted MLlib classification model (last pipeline stage)."""
        return self.pipeline.stages[-1]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities on the driver, one vector at a time through the JVM model (slow; for checks)."""
        from pyspark.ml.linalg import Vectors

        X = np.asarray(X, dtype=np.float64)
        scaler = self.pipeline.stages[1]
        clf = self.classifier
        out = []
        for row in X:
            v = Vectors.dense(row)
            scaled = _apply_scaler(scaler, v)
            out.append(_mllib_row_proba(clf, scaled, len(self.classes)))
        return np.vstack(out) if out else np.zeros((0, len(self.classes)))

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from pyspark.ml.functions import vector_to_array
        from pyspark.sql import functions as F

        _check_features(dataset, self.features_col)
        classes = self.classes
        label_in = mllib_label_input(dataset, classes)
        pipeline = self.pipeline
        scaler: Any = pipeline.stages[1]
        if scaler.hasParam("inputCol") and scaler.getInputCol() != self.features_col:
            # the fitted pipeline reads "features"; featuresCol names another column
            from pyspark.ml import PipelineModel

            moved = scaler.copy({scaler.getParam("inputCol"): self.features_col})
            pipeline = PipelineModel([pipeline.stages[0], moved, *pipeline.stages[2:]])
        res = pipeline.transform(label_in)
        clf = self.classifier
        if clf.hasParam("probabilityCol") and _is_probabilistic(clf):
            proba = vector_to_array(F.col(clf.getProbabilityCol()))
        else:
            raw = vector_to_array(F.col(clf.getRawPredictionCol()))
            proba = F.transform(raw, lambda r: F.lit(1.0) / (F.lit(1.0) + F.exp(-r)))
            proba = F.array(F.lit(1.0) - F.element_at(proba, 2), F.element_at(proba, 2))
        res = res.withColumn("__proba", proba)
        positive = self.card.positive_label
        threshold = self.card.threshold
        labels = F.array(*(F.lit(c) for c in classes))
        if len(classes) == 2 and positive is not None and threshold is not None:
            pos = classes.index(positive)
            score = F.element_at("__proba", pos + 1)
            prediction = F.when(score >= F.lit(float(threshold)), F.lit(positive)).otherwise(
                F.lit(classes[1 - pos])
            )
        else:
            score = F.lit(None).cast("double")
            prediction = F.element_at(labels, F.array_position("__proba", F.array_max("__proba")).cast("int"))
        prob_col, score_col, pred_col = self.output_columns()
        return res.select(
            *self._kept_columns(dataset),
            F.col("__proba").alias(prob_col),
            score.alias(score_col),
            prediction.alias(pred_col),
        )

    @classmethod
    def _from_loaded(cls, model: _Classifier) -> _Classifier:
        if not isinstance(model, MllibClassifier):
            raise ModelLoadError(f"the saved model is {type(model).__name__}, not an MLlib model")
        return cls(model.pipeline, model.card)

    def save(self, path: str | Path, storage: Storage | None = None) -> str:  # type: ignore[override]
        """Write ``pipeline/`` (MLlib persistence) and ``card.json`` into the folder ``path`` (local path or URI)."""
        store = storage or get_storage()
        folder = os.fspath(path)
        store.mkdirs(folder)
        self.pipeline.write().overwrite().save(join(folder, MLLIB_DIR))
        self._write_card(store, folder)
        return folder


class _ClassifierWriter(MLWriter):
    """``path/metadata`` (DefaultParams JSON, with the SHA-256 of every model file) + ``path/model/``."""

    def __init__(self, instance: _Classifier) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        """Write the model folder through :mod:`medimg_spark.storage`, then the metadata."""
        store = get_storage(self.sparkSession)
        if store.exists(path) and not self.shouldOverwrite:
            raise ModelLoadError(f"{path} already exists; use write().overwrite().save(path) to replace it")
        folder = join(path, MODEL_SUBDIR)
        self.instance.save(folder, store)
        digests = {
            name: hashlib.sha256(store.read_bytes(join(folder, name))).hexdigest()
            for name in (CARD_FILE, SKLEARN_FILE, CNN_WEIGHTS_FILE)
            if store.exists(join(folder, name))
        }
        DefaultParamsWriter.saveMetadata(
            self.instance, path, self.sparkSession, extraMetadata={"modelFiles": digests}
        )


class _ClassifierReader(MLReader[_Classifier]):
    """Reads what :class:`_ClassifierWriter` wrote; checks the model files against their recorded SHA-256."""

    def __init__(self, cls: type[_Classifier]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> _Classifier:
        """Load ``path`` (a ``write().save`` folder, or a plain model folder holding ``card.json``).

        Raises:
            ModelLoadError: the folder is incomplete, a file differs from its recorded hash, or the
                saved model is of another kind than ``cls``.
        """
        store = get_storage(self.sparkSession)
        if not store.exists(join(path, "metadata")):
            if store.exists(join(path, CARD_FILE)):
                return self.cls._from_loaded(load_model(path, storage=store))
            raise ModelLoadError(f"{path} has neither metadata/ nor {CARD_FILE}; pass a saved model folder")
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        folder = join(path, MODEL_SUBDIR)
        for name, digest in (metadata.get("modelFiles") or {}).items():
            f = join(folder, name)
            if not store.exists(f):
                raise ModelLoadError(f"{path} lacks {MODEL_SUBDIR}/{name}; copy the whole saved folder")
            if hashlib.sha256(store.read_bytes(f)).hexdigest() != digest:
                raise ModelLoadError(
                    f"{f} differs from the file that was saved (SHA-256 mismatch); re-save the model"
                )
        instance = self.cls._from_loaded(load_model(folder, storage=store))
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


def prediction_rows(out: DataFrame, model_name: str) -> DataFrame:
    """The ``predictions`` table's columns (image_id, label, split, prediction, probability, score, model)
    of a classifier's ``transform`` output."""
    from pyspark.sql import functions as F

    return out.select(
        "image_id",
        F.col("label").cast("string").alias("label"),
        "split",
        "prediction",
        "probability",
        "score",
        F.lit(model_name).alias("model"),
    )


LABEL_INPUT = "__label_in"


def mllib_label_input(df: DataFrame, classes: list[str], label_col: str = "label") -> DataFrame:
    """Add the StringIndexer input column: the label when it is a known class, else ``classes[0]``.

    The indexed label only matters for training, so unlabelled rows can still be predicted.
    """
    from pyspark.sql import functions as F

    if label_col in df.columns:
        lab = F.col(label_col).cast("string")
        return df.withColumn(LABEL_INPUT, F.when(lab.isin(classes), lab).otherwise(F.lit(classes[0])))
    return df.withColumn(LABEL_INPUT, F.lit(classes[0]))


def _is_probabilistic(clf: Any) -> bool:
    from pyspark.ml.classification import LinearSVCModel

    return not isinstance(clf, LinearSVCModel)


def _apply_scaler(scaler: Any, v: Any) -> Any:
    from pyspark.ml.feature import MinMaxScalerModel, StandardScalerModel
    from pyspark.ml.linalg import Vectors

    x = v.toArray()
    if isinstance(scaler, StandardScalerModel):
        mean = scaler.mean.toArray() if scaler.getWithMean() else 0.0
        std = scaler.std.toArray()
        inv = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0) if scaler.getWithStd() else 1.0
        return Vectors.dense((x - mean) * inv)
    if isinstance(scaler, MinMaxScalerModel):
        lo, hi = scaler.originalMin.toArray(), scaler.originalMax.toArray()
        rng = hi - lo
        lo_t, hi_t = scaler.getMin(), scaler.getMax()
        scaled = np.where(rng > 0, (x - lo) / np.where(rng > 0, rng, 1.0), 0.5)
        return Vectors.dense(scaled * (hi_t - lo_t) + lo_t)
    return v


def _mllib_row_proba(clf: Any, v: Any, n_classes: int) -> np.ndarray:
    if _is_probabilistic(clf):
        return np.asarray(clf.predictProbability(v).toArray(), dtype=np.float64)
    raw = np.asarray(clf.predictRaw(v).toArray(), dtype=np.float64)
    p1 = 1.0 / (1.0 + np.exp(-raw[1]))
    return np.array([1.0 - p1, p1])


def load_model(
    path: str | Path, features_col: str = "features", storage: Storage | None = None
) -> _Classifier:
    """Load a model folder written by :func:`medimg_spark.ml.train` or ``.save``.

    Returns a :class:`SklearnClassifier`, :class:`MllibClassifier`, ``CnnClassifier``
    (:mod:`medimg_spark.ml.cnn_spark`, kind ``cnn``) or ``VoteClassifier`` (:mod:`medimg_spark.ml.vote`).

    Args:
        path: the model folder (local path or URI).
        features_col: the vector column the model reads.
        storage: how to reach ``path`` (default: the active SparkSession's, see
            :func:`medimg_spark.storage.get_storage`).

    Raises:
        ModelLoadError: the folder, card or model file is missing or unreadable.
    """
    store = storage or get_storage()
    folder = os.fspath(path)
    card_path = join(folder, CARD_FILE)
    if not store.exists(card_path):
        raise ModelLoadError(f"{folder} has no {CARD_FILE}; pass the folder written by train()")
    try:
        card = ModelCard.model_validate(json.loads(store.read_text(card_path)))
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{card_path} is not a valid model card: {exc}") from exc
    if card.kind == "cnn":
        from medimg_spark.ml.cnn_spark import load_cnn

        return load_cnn(folder, card, store, features_col)
    if card.kind == "vote":
        from medimg_spark.ml.vote import load_vote

        return load_vote(folder, card, store, features_col)
    if card.kind == "sklearn":
        f = join(folder, SKLEARN_FILE)
        if not store.exists(f):
            raise ModelLoadError(f"{folder} lacks {SKLEARN_FILE}; retrain or copy the whole model folder")
        if card.sklearn_version != sklearn.__version__:
            import warnings

            warnings.warn(
                f"model {card.model_name} was saved with scikit-learn {card.sklearn_version}, "
                f"running {sklearn.__version__}; predictions may differ",
                stacklevel=2,
            )
        with store.local_copy(f) as local:
            estimator = joblib.load(local)
        return SklearnClassifier(estimator, card, features_col)
    from pyspark.ml import PipelineModel

    d = join(folder, MLLIB_DIR)
    if not store.exists(d):
        raise ModelLoadError(f"{folder} lacks {MLLIB_DIR}/; retrain or copy the whole model folder")
    return MllibClassifier(PipelineModel.load(d), card, features_col)
