"""The estimator registry: every classifier ``medimg train`` knows, scikit-learn and MLlib alike.

An entry's metadata says its ``kind`` (``"sklearn"``: fitted on the driver or per group;
``"mllib"``: a Spark ML Pipeline; ``"cnn"``: a JAX network trained on the frames table, needing the
``dl`` extra; ``"vote"``: a soft vote of saved models of any kind) and its builder is imported on first use, so listing the
models (``medimg train --help``, config validation) imports neither scikit-learn nor pyspark.

Builders:

* ``sklearn``: ``(class_weight, seed, **params) -> sklearn estimator`` (see :mod:`.estimators`).
* ``mllib``: ``(common, params, n_features, n_classes, seed) -> pyspark.ml classifier``, where
  ``common`` holds the feature/label column names and ``params`` the remaining user parameters
  (a builder pops the ones it consumes itself).

Adding a model is one ``ESTIMATORS.register_lazy`` line here (or a decorator in your own module,
imported from here) plus a test in ``tests/test_ml_models.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from medimg_spark.ml.errors import BinaryOnlyModelError, ModelConfigError
from medimg_spark.registry import Registry, UnknownNameError

ModelKind = Literal["sklearn", "mllib", "cnn", "vote"]


class UnknownModelError(UnknownNameError, ModelConfigError):
    """No estimator is registered under that name."""


ESTIMATORS: Registry[Any] = Registry(
    "model",
    hint="register one in medimg_spark/ml/models.py (kind sklearn, mllib, cnn or vote)",
    error=UnknownModelError,
)

_SK = "medimg_spark.ml.estimators"
ESTIMATORS.register_lazy(
    "sk_logreg", f"{_SK}:_sk_logreg", kind="sklearn", help="standardised logistic regression"
)
ESTIMATORS.register_lazy(
    "sk_softmax",
    f"{_SK}:_sk_softmax",
    kind="sklearn",
    help="standardised multinomial (softmax) logistic regression, K classes",
)
ESTIMATORS.register_lazy(
    "sk_linear_svm", f"{_SK}:_sk_linear_svm", kind="sklearn", help="standardised linear SVM"
)
ESTIMATORS.register_lazy(
    "sk_svc", f"{_SK}:_sk_svc", kind="sklearn", help="RBF SVC with Platt-scaled probabilities"
)
ESTIMATORS.register_lazy("sk_rf", f"{_SK}:_sk_rf", kind="sklearn", help="random forest")
ESTIMATORS.register_lazy("sk_hgb", f"{_SK}:_sk_hgb", kind="sklearn", help="histogram gradient boosting")
ESTIMATORS.register_lazy(
    "sk_mlp", f"{_SK}:_sk_mlp", kind="sklearn", help="class-balanced MLP (seed ensemble)"
)
ESTIMATORS.register_lazy(
    "sk_ensemble", f"{_SK}:_sk_ensemble", kind="sklearn", help="soft vote of sk_* members"
)


# --- MLlib classifiers -------------------------------------------------------------------------------


def _mllib_logreg(
    common: dict[str, Any], p: dict[str, Any], n_features: int, n_classes: int, seed: int
) -> Any:
    """Binomial logistic regression for two classes, multinomial (softmax) for K > 2."""
    from pyspark.ml.classification import LogisticRegression

    family = p.pop("family", "binomial" if n_classes == 2 else "multinomial")
    return LogisticRegression(**common, maxIter=200, family=family)


def _mllib_softmax(
    common: dict[str, Any], p: dict[str, Any], n_features: int, n_classes: int, seed: int
) -> Any:
    """Multinomial (softmax) logistic regression, whatever the number of classes."""
    from pyspark.ml.classification import LogisticRegression

    if "family" in p:
        raise ModelConfigError("mllib_softmax is always family=multinomial; drop params.family")
    return LogisticRegression(**common, maxIter=200, family="multinomial")


def _mllib_linear_svc(
    common: dict[str, Any], p: dict[str, Any], n_features: int, n_classes: int, seed: int
) -> Any:
    from pyspark.ml.classification import LinearSVC

    check_classes("mllib_linear_svc", n_classes)
    return LinearSVC(**common, maxIter=200)


def _mllib_naive_bayes(
    common: dict[str, Any], p: dict[str, Any], n_features: int, n_classes: int, seed: int
) -> Any:
    from pyspark.ml.classification import NaiveBayes

    return NaiveBayes(**common, modelType=p.pop("modelType", "gaussian"))


def _mllib_rf(common: dict[str, Any], p: dict[str, Any], n_features: int, n_classes: int, seed: int) -> Any:
    from pyspark.ml.classification import RandomForestClassifier

    return RandomForestClassifier(**common, numTrees=100, seed=seed)


def _mllib_gbt(common: dict[str, Any], p: dict[str, Any], n_features: int, n_classes: int, seed: int) -> Any:
    from pyspark.ml.classification import GBTClassifier

    check_classes("mllib_gbt", n_classes)
    return GBTClassifier(**common, maxIter=50, seed=seed)


def _mllib_mlp(common: dict[str, Any], p: dict[str, Any], n_features: int, n_classes: int, seed: int) -> Any:
    from pyspark.ml.classification import MultilayerPerceptronClassifier

    hidden = list(p.pop("hidden", [64]))
    return MultilayerPerceptronClassifier(
        **common, layers=[n_features, *hidden, n_classes], seed=seed, maxIter=200
    )


ESTIMATORS.register(
    "mllib_logreg", _mllib_logreg, kind="mllib", help="MLlib logistic regression (multinomial for K > 2)"
)
ESTIMATORS.register(
    "mllib_softmax", _mllib_softmax, kind="mllib", help="MLlib multinomial (softmax) logistic regression"
)
ESTIMATORS.register(
    "mllib_linear_svc",
    _mllib_linear_svc,
    kind="mllib",
    help="MLlib linear SVC (binary)",
    binary_only="mllib_logreg or mllib_softmax",
)
ESTIMATORS.register("mllib_naive_bayes", _mllib_naive_bayes, kind="mllib", help="MLlib naive Bayes")
ESTIMATORS.register("mllib_rf", _mllib_rf, kind="mllib", help="MLlib random forest")
ESTIMATORS.register(
    "mllib_gbt",
    _mllib_gbt,
    kind="mllib",
    help="MLlib gradient-boosted trees (binary)",
    binary_only="mllib_rf (trees) or mllib_softmax / mllib_logreg",
)
ESTIMATORS.register("mllib_mlp", _mllib_mlp, kind="mllib", help="MLlib multilayer perceptron")


# --- CNNs (JAX, the ``dl`` extra; imported on first use) and the soft vote --------------------------

ESTIMATORS.register_lazy(
    "cnn",
    "medimg_spark.ml.cnn_spark:train_cnn",
    kind="cnn",
    help="JAX VGG-style CNN on the frames (extra dl)",
)
ESTIMATORS.register_lazy(
    "cnn_resnet",
    "medimg_spark.ml.cnn_spark:train_cnn",
    kind="cnn",
    help="JAX small residual CNN on the frames (extra dl)",
)
ESTIMATORS.register_lazy(
    "vote", "medimg_spark.ml.vote:train_vote", kind="vote", help="soft vote of saved models of any kind"
)


def check_model_options(name: str, cfg: Any) -> None:
    """Validate the options a model reads beyond :class:`~medimg_spark.config_models.TrainConfig` (no Spark).

    ``cnn``/``cnn_resnet``: ``train.cnn`` merged with ``train.params`` and every ``train.grid``
    point; ``vote``: ``train.params`` as :class:`~medimg_spark.config_models.VoteParams`.

    Raises:
        ModelConfigError: the options are invalid (the message names the key).
    """
    kind = model_kind(name)
    if kind == "cnn":
        from medimg_spark.ml.cnn import check_config

        check_config(name, cfg)
    elif kind == "vote":
        from pydantic import ValidationError

        from medimg_spark.config_models import VoteParams

        try:
            VoteParams.model_validate(cfg.params)
        except ValidationError as exc:
            raise ModelConfigError(f"invalid train.params of the vote model: {exc}") from exc


def model_kind(name: str) -> ModelKind:
    """``"sklearn"``, ``"mllib"``, ``"cnn"`` or ``"vote"``.

    Raises:
        UnknownModelError: a ModelConfigError listing the registered models.
    """
    kind: ModelKind = ESTIMATORS.entry(name).meta["kind"]
    return kind


def model_names(kind: ModelKind | None = None) -> tuple[str, ...]:
    """Registered model names (of one ``kind``), in registration order."""
    return ESTIMATORS.names() if kind is None else ESTIMATORS.names(kind=kind)


def check_classes(name: str, n_classes: int) -> None:
    """Refuse a binary-only estimator (registered with ``binary_only=<alternative>``) on K > 2 classes.

    Called by training as soon as the train split's classes are known, before anything is fitted.

    Raises:
        BinaryOnlyModelError: ``name`` is binary only and ``n_classes`` is not 2; the message names
            the alternative.
        UnknownModelError: ``name`` is not registered.
    """
    alternative = ESTIMATORS.entry(name).meta.get("binary_only")
    if alternative and n_classes != 2:
        raise BinaryOnlyModelError(
            f"{name} is binary only and the train split holds {n_classes} classes; "
            f"use {alternative} for multi-class labels"
        )
