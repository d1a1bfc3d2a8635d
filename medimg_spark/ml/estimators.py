"""Registries of scikit-learn and Spark MLlib classifiers known to :func:`medimg_spark.ml.train`.

scikit-learn models are named ``sk_<kind>`` and MLlib models ``mllib_<kind>``; both are registered
in :data:`medimg_spark.ml.models.ESTIMATORS`, from which :data:`SKLEARN_MODELS` and :data:`MLLIB_MODELS`
are derived. Every builder takes the estimator's
keyword parameters (validated against the estimator) plus the class-weighting choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.class_weight import compute_sample_weight

from medimg_spark.ml.errors import ModelConfigError
from medimg_spark.ml.models import ESTIMATORS


class SelectFeatures(TransformerMixin, BaseEstimator):
    """Keep the columns whose feature name starts with one of ``prefixes`` (all when empty).

    ``feature_names`` are the names of the input columns, fixed at construction so the fitted
    model is independent of the order columns arrive in at prediction time.
    """

    def __init__(self, feature_names: Sequence[str] = (), prefixes: Sequence[str] = ()) -> None:
        self.feature_names = feature_names
        self.prefixes = prefixes

    def _index(self) -> np.ndarray:
        names = list(self.feature_names)
        if not self.prefixes:
            return np.arange(len(names))
        idx = [i for i, n in enumerate(names) if any(n.startswith(p) for p in self.prefixes)]
        if not idx:
            raise ModelConfigError(
                f"no feature name starts with any of {list(self.prefixes)}; "
                f"names look like {names[:3]}; fix the member's 'features' prefixes"
            )
        return np.asarray(idx)

    def fit(self, X: np.ndarray, y: Any = None) -> SelectFeatures:
        """Check the width of ``X`` and remember the selected columns."""
        if self.feature_names and np.asarray(X).shape[1] != len(self.feature_names):
            raise ModelConfigError(
                f"X has {np.asarray(X).shape[1]} columns but {len(self.feature_names)} feature names were given"
            )
        self.index_ = self._index() if self.feature_names else np.arange(np.asarray(X).shape[1])
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The selected columns of ``X``."""
        return np.asarray(X)[:, self.index_]


class BalancedMLP(ClassifierMixin, BaseEstimator):
    """A standardised :class:`~sklearn.neural_network.MLPClassifier` fitted with class-balanced sample weights.

    With ``n_models > 1`` it averages the probabilities of MLPs started from different seeds.
    """

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (256,),
        alpha: float = 1e-2,
        learning_rate_init: float = 1e-3,
        max_iter: int = 300,
        early_stopping: bool = True,
        class_weight: str | None = "balanced",
        n_models: int = 1,
        random_state: int = 0,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.class_weight = class_weight
        self.n_models = n_models
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> BalancedMLP:
        """Fit ``n_models`` scaled MLPs."""
        sw = compute_sample_weight("balanced", y) if self.class_weight == "balanced" else None
        self.models_ = []
        for k in range(self.n_models):
            pipe = Pipeline(
                [
                    ("scale", StandardScaler()),
                    (
                        "mlp",
                        MLPClassifier(
                            hidden_layer_sizes=tuple(self.hidden_layer_sizes),
                            alpha=self.alpha,
                            learning_rate_init=self.learning_rate_init,
                            max_iter=self.max_iter,
                            early_stopping=self.early_stopping,
                            random_state=self.random_state + k,
                        ),
                    ),
                ]
            )
            pipe.fit(X, y, mlp__sample_weight=sw)
            self.models_.append(pipe)
        self.classes_ = self.models_[0].classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Mean class probabilities of the fitted MLPs."""
        return np.mean([m.predict_proba(X) for m in self.models_], axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class SoftVote(ClassifierMixin, BaseEstimator):
    """Soft-voting ensemble: weighted mean of member probabilities (members may use feature subsets)."""

    def __init__(self, members: Sequence[BaseEstimator] = (), weights: Sequence[float] | None = None) -> None:
        self.members = members
        self.weights = weights

    def fit(self, X: np.ndarray, y: np.ndarray) -> SoftVote:
        """Fit a clone of every member on ``(X, y)``."""
        if not self.members:
            raise ModelConfigError("an ensemble needs at least one member; list them under params.members")
        self.members_ = [clone(m).fit(X, y) for m in self.members]
        self.classes_ = self.members_[0].classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Weighted mean of member probabilities."""
        w = np.ones(len(self.members_)) if self.weights is None else np.asarray(self.weights, dtype=float)
        probs = np.stack([m.predict_proba(X) for m in self.members_])
        return np.tensordot(w / w.sum(), probs, axes=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _scaled(est: BaseEstimator) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", est)])


def _cw(class_weight: str | None) -> str | None:
    return "balanced" if class_weight == "balanced" else None


def _sk_logreg(cw: str | None, seed: int, **p: Any) -> BaseEstimator:
    p.setdefault("max_iter", 5000)
    return _scaled(LogisticRegression(class_weight=_cw(cw), random_state=seed, **p))


def _sk_softmax(cw: str | None, seed: int, **p: Any) -> BaseEstimator:
    """Standardised multinomial (softmax) logistic regression.

    scikit-learn's ``lbfgs`` solver minimises the multinomial cross-entropy over all K classes at once
    (one weight vector per class, probabilities by softmax); two classes reduce to the logistic model.
    """
    if p.get("solver", "lbfgs") not in ("lbfgs", "newton-cg", "newton-cholesky", "sag", "saga"):
        raise ModelConfigError(
            f"sk_softmax needs a multinomial solver (lbfgs, newton-cg, newton-cholesky, sag, saga), "
            f"got solver={p['solver']!r}; use sk_logreg for liblinear"
        )
    p.setdefault("max_iter", 5000)
    return _scaled(LogisticRegression(class_weight=_cw(cw), random_state=seed, **p))


def _sk_linear_svm(cw: str | None, seed: int, **p: Any) -> BaseEstimator:
    p.setdefault("max_iter", 20000)
    return _scaled(LinearSVC(class_weight=_cw(cw), random_state=seed, **p))


def _sk_svc(cw: str | None, seed: int, calibration_folds: int = 5, **p: Any) -> BaseEstimator:
    """RBF SVC with Platt-scaled probabilities (sigmoid calibration on ``calibration_folds`` folds)."""
    p.setdefault("gamma", "scale")
    svc = SVC(class_weight=_cw(cw), random_state=seed, **p)
    return _scaled(CalibratedClassifierCV(svc, method="sigmoid", cv=calibration_folds, ensemble=False))


def _sk_rf(cw: str | None, seed: int, **p: Any) -> BaseEstimator:
    p.setdefault("n_estimators", 300)
    p.setdefault("n_jobs", 1)
    return RandomForestClassifier(
        class_weight="balanced_subsample" if cw == "balanced" else None, random_state=seed, **p
    )


def _sk_hgb(cw: str | None, seed: int, **p: Any) -> BaseEstimator:
    return HistGradientBoostingClassifier(class_weight=_cw(cw), random_state=seed, **p)


def _sk_mlp(cw: str | None, seed: int, **p: Any) -> BaseEstimator:
    if "hidden_layer_sizes" in p:
        p["hidden_layer_sizes"] = tuple(p["hidden_layer_sizes"])
    return BalancedMLP(class_weight=_cw(cw), random_state=seed, **p)


def _sk_ensemble(
    cw: str | None,
    seed: int,
    members: Sequence[dict[str, Any]] = (),
    weights: Sequence[float] | None = None,
    feature_names: Sequence[str] = (),
) -> BaseEstimator:
    built = []
    for i, spec in enumerate(members):
        if not isinstance(spec, dict) or "model" not in spec:
            raise ModelConfigError(
                f"ensemble member {i} must be a mapping with 'model' (e.g. sk_svc), optional 'params' "
                "and optional 'features' (list of feature-name prefixes)"
            )
        extra = set(spec) - {"model", "params", "features"}
        if extra:
            raise ModelConfigError(
                f"ensemble member {i} has unknown keys {sorted(extra)}; use model/params/features"
            )
        est = build_sklearn(str(spec["model"]), dict(spec.get("params") or {}), cw, seed)
        sel = SelectFeatures(feature_names=tuple(feature_names), prefixes=tuple(spec.get("features") or ()))
        built.append(Pipeline([("select", sel), ("model", est)]))
    if weights is not None and len(weights) != len(built):
        raise ModelConfigError(f"ensemble has {len(built)} members but {len(weights)} weights")
    return SoftVote(members=built, weights=weights)


SKLEARN_MODELS: dict[str, Callable[..., BaseEstimator]] = {
    name: ESTIMATORS.get(name) for name in ESTIMATORS.names(kind="sklearn")
}
"""scikit-learn model name → builder (the ``sklearn`` entries of :data:`~medimg_spark.ml.models.ESTIMATORS`)."""

MLLIB_MODELS: tuple[str, ...] = ESTIMATORS.names(kind="mllib")
"""MLlib model names (the ``mllib`` entries of :data:`~medimg_spark.ml.models.ESTIMATORS`)."""


def build_sklearn(
    model_name: str,
    params: dict[str, Any],
    class_weight: str | None = "balanced",
    seed: int = 0,
    feature_names: Sequence[str] = (),
) -> BaseEstimator:
    """Build an unfitted scikit-learn estimator from the registry.

    Raises:
        ModelConfigError: unknown model name or invalid parameters.
    """
    if model_name not in SKLEARN_MODELS:
        raise ModelConfigError(
            f"unknown scikit-learn model {model_name!r}; choose from {sorted(SKLEARN_MODELS)}"
        )
    p = dict(params)
    if model_name == "sk_ensemble":
        p["feature_names"] = feature_names
    try:
        return SKLEARN_MODELS[model_name](class_weight, seed, **p)
    except TypeError as exc:
        raise ModelConfigError(f"invalid parameters {sorted(params)} for {model_name}: {exc}") from exc


def positive_scores(est: Any, X: np.ndarray) -> np.ndarray:
    """``(n, n_classes)`` class scores: ``predict_proba`` when available, else a softmax of the decision function."""
    if hasattr(est, "predict_proba"):
        try:
            return np.asarray(est.predict_proba(X), dtype=np.float64)
        except AttributeError:
            pass
    d = np.asarray(est.decision_function(X), dtype=np.float64)
    if d.ndim == 1:
        p1 = 1.0 / (1.0 + np.exp(-d))
        return np.column_stack([1.0 - p1, p1])
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
