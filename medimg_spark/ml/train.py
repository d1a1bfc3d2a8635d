"""Train a classifier on ``out_dir/features`` (train split), tune it and its threshold on the val split.

scikit-learn models (``sk_*``) are fitted on the driver from collected feature vectors; the
hyper-parameter grid is searched with :class:`~sklearn.model_selection.PredefinedSplit`
(train rows fit, val rows score). MLlib models (``mllib_*``) are fitted as a
:class:`pyspark.ml.Pipeline` (StringIndexer → scaler → classifier) and the grid is searched
with ``Pipeline.fitMultiple`` on the fixed train/val split. Either way the final model is
fitted on the train split only and, for binary labels, a decision threshold is chosen on val.
"""

from __future__ import annotations

import time
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from pydantic import ValidationError

from medimg_spark.config_models import SearchMetric, ThresholdConfig, TrainConfig
from medimg_spark.features import FEATURE_SET_FILE
from medimg_spark.ml.augment import augment_summary, augmented_features
from medimg_spark.ml.errors import ModelConfigError, ModelDataError, ThresholdOnMulticlassError
from medimg_spark.ml.estimators import MLLIB_MODELS, build_sklearn
from medimg_spark.ml.metrics import ThresholdRule, choose_threshold, classification_metrics
from medimg_spark.ml.model import (
    LABEL_INPUT,
    MllibClassifier,
    ModelCard,
    SklearnClassifier,
    data_hash,
    mllib_label_input,
)
from medimg_spark.ml.models import ESTIMATORS, check_classes, model_kind
from medimg_spark.storage import get_storage, join
from medimg_spark.summaries import TrainSummary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SearchMetric", "ThresholdConfig", "TrainConfig", "parse_train_config", "read_features", "train"]


def parse_train_config(data: TrainConfig | dict[str, Any] | str | Path | None) -> TrainConfig:
    """Validate a train config from a model, mapping or YAML path.

    Raises:
        ModelConfigError: the config is invalid or the file is unreadable.
    """
    if data is None:
        return TrainConfig()
    if isinstance(data, TrainConfig):
        return data
    if isinstance(data, str | Path):
        p = Path(data)
        if not p.exists():
            raise ModelConfigError(f"train config {p} does not exist; check the path")
        data = yaml.safe_load(p.read_text()) or {}
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelConfigError(f"invalid train config: {exc}") from exc


# ----------------------------------------------------------------------------- data


def read_features(
    spark: SparkSession,
    out_dir: str | Path,
    features_dir: str = "features",
    sha256: str | None = None,
    set_id: str | None = None,
    name: str | None = None,
    n_features: int | None = None,
) -> DataFrame:
    """The features table of a run (``out_dir``: local path or URI).

    By default ``out_dir/features_dir``: the latest feature set (or ``feature_sets/<set id>`` when
    ``features_dir`` names one). With a model card's ``sha256`` (and ``set_id``/``name``/
    ``n_features``), the set that model was trained on, wherever it now is
    (:func:`medimg_spark.features.locate_feature_set`).

    Raises:
        ModelDataError: the table is missing.
        FeatureSetNotFoundError: the set named by ``sha256`` is gone.
    """
    from medimg_spark.features import locate_feature_set

    store = get_storage(spark)
    path = locate_feature_set(store, out_dir, features_dir, sha256, set_id, name, n_features)
    if not store.exists(path):
        raise ModelDataError(f"{path} does not exist; run compute_features (medimg features) first")
    return spark.read.parquet(path)


def collect_split(df: DataFrame, split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image_ids, X, labels)`` of one split (all rows when ``split`` is None), collected to the driver.

    Rows are ordered by ``image_id`` so that training (augmentation draws, CV folds) does not depend
    on how the table happens to be split into files.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    sel = df if split is None else df.where(F.col("split") == split)
    pdf = (
        sel.select(
            "image_id",
            F.col("label").cast("string").alias("label"),
            vector_to_array(F.col("features")).alias("v"),
        )
        .orderBy("image_id")
        .toPandas()
    )
    if len(pdf) == 0:
        return np.array([], dtype=object), np.zeros((0, 0)), np.array([], dtype=object)
    X = np.vstack([np.asarray(v, dtype=np.float64) for v in pdf["v"]])
    return pdf["image_id"].to_numpy(dtype=object), X, pdf["label"].to_numpy(dtype=object)


def _feature_names(df: DataFrame) -> list[str]:
    from medimg_spark.features import feature_names_of

    names = feature_names_of(df)
    if names:
        return names
    first = df.select("features").first()
    n = 0 if first is None else len(first[0])
    return [f"f{i}" for i in range(n)]


def _classes_and_positive(y: np.ndarray, positive: str | None, split: str) -> tuple[list[str], str | None]:
    labels = [v for v in y if v is not None]
    if len(labels) != len(y):
        raise ModelDataError(f"{len(y) - len(labels)} {split} rows have no label; label them or drop them")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ModelDataError(
            f"the {split} split holds only classes {classes}; a classifier needs at least two"
        )
    if len(classes) != 2:
        return classes, None
    pos = positive if positive is not None else classes[-1]
    if pos not in classes:
        raise ModelConfigError(f"positive_label {pos!r} is not among the training classes {classes}")
    return classes, pos


def check_task(model_name: str, cfg: TrainConfig, classes: list[str]) -> None:
    """Refuse, before anything is fitted, what a K-class task (K > 2) cannot honour.

    A binary-only estimator (``mllib_gbt``, ``mllib_linear_svc``) is refused naming the alternative,
    and so is a ``threshold`` section set explicitly in the train config: a K-class model predicts the
    most probable class, and a rule that silently did nothing would be a wrong promise. The default
    threshold (not written in the config) is not refused.

    Raises:
        BinaryOnlyModelError: a binary-only model on K > 2 classes.
        ThresholdOnMulticlassError: an explicit ``threshold`` on K > 2 classes.
    """
    check_classes(model_name, len(classes))
    if len(classes) > 2 and "threshold" in cfg.model_fields_set:
        raise ThresholdOnMulticlassError(
            f"train.threshold (rule {cfg.threshold.rule!r}) is set, but the {cfg.train_split} split holds "
            f"{len(classes)} classes {classes[:6]}: a decision threshold applies to binary tasks only, a "
            "K-class model predicts the most probable class; remove the threshold section (or its "
            "thresholdRule/thresholdValue Params)"
        )


def _grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ModelConfigError(f"grid entry {k!r} must be a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in product(*(grid[k] for k in keys))]


def _search_score(
    metric: str, y: np.ndarray, proba: np.ndarray, classes: list[str], pos: str | None
) -> float:
    if metric == "roc_auc":
        m = classification_metrics(
            y, np.asarray(classes, dtype=object)[np.argmax(proba, 1)], classes, proba, pos
        )
        return float(m["roc_auc"]) if m.get("roc_auc") is not None else float("nan")
    pred = np.asarray(classes, dtype=object)[np.argmax(proba, 1)]
    if pos is not None and metric in ("balanced_accuracy", "f1", "accuracy"):
        rule: ThresholdRule = "youden" if metric == "balanced_accuracy" else metric  # type: ignore[assignment]
        s = proba[:, classes.index(pos)]
        t = choose_threshold((y == pos).astype(int), s, rule)
        neg = classes[0] if pos == classes[1] else classes[1]
        pred = np.where(s >= t, pos, neg)
    return float(classification_metrics(y, pred, classes, None, pos)[metric])


def _threshold(
    cfg: TrainConfig, yv: np.ndarray, proba_v: np.ndarray, classes: list[str], pos: str | None
) -> float | None:
    if pos is None:
        return None
    if cfg.val_split is None or yv.size == 0:
        return cfg.threshold.value if cfg.threshold.rule == "fixed" else 0.5
    return choose_threshold(
        (yv == pos).astype(int), proba_v[:, classes.index(pos)], cfg.threshold.rule, cfg.threshold.value
    )


# ----------------------------------------------------------------------------- entry point


def train(
    spark: SparkSession,
    out_dir: str | Path,
    model_name: str,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
) -> TrainSummary:
    """Fit ``model_name`` on the train split of ``out_dir/features`` and save it.

    Args:
        spark: active session.
        out_dir: run folder holding ``features/`` (and ``images/`` when augmenting).
        model_name: one of :data:`~medimg_spark.ml.estimators.SKLEARN_MODELS` (``sk_*``) or
            :data:`~medimg_spark.ml.estimators.MLLIB_MODELS` (``mllib_*``); ``cnn`` / ``cnn_resnet``
            train on the ``images`` (or ``processed``) frames instead (:mod:`.cnn_spark`), ``vote``
            averages saved models (:mod:`.vote`).
        config: :class:`TrainConfig`, mapping or YAML path.

    Returns:
        Summary: model_name, model_path, kind, classes, positive_label, threshold, best_params,
        search (one entry per grid point), val metrics, n_train, n_val, train_seconds.

    Raises:
        ModelConfigError: unknown model or invalid config.
        ModelDataError: missing table, empty or single-class train split.
    """
    cfg = parse_train_config(config)
    if model_name not in ESTIMATORS:
        raise ModelConfigError(f"unknown model {model_name!r}; choose from {list(ESTIMATORS.names())}")
    model_dir = cfg.model_dir or join(out_dir, "models", cfg.display_name(model_name))
    kind = model_kind(model_name)
    if kind in ("cnn", "vote"):  # they read the frames table / their members' tables, not features
        fit: Any = ESTIMATORS.get(model_name)
        summary: TrainSummary = fit(spark, out_dir, model_name, cfg, model_dir)
        return summary
    df = read_features(spark, out_dir, cfg.features_dir)
    if kind == "sklearn":
        return _train_sklearn(spark, df, out_dir, model_name, cfg, model_dir)
    return _train_mllib(spark, df, out_dir, model_name, cfg, model_dir)


def fit_sklearn_arrays(
    model_name: str,
    cfg: TrainConfig,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    feature_names: list[str],
    ids_train: np.ndarray | None = None,
    feature_set: str | None = None,
) -> tuple[SklearnClassifier, dict[str, Any]]:
    """Driver-side core of the scikit-learn path, usable without Spark.

    Searches ``cfg.grid`` with a :class:`~sklearn.model_selection.PredefinedSplit` (fit on train,
    score on val), refits the best parameters on train only, picks the threshold on val.
    """
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    t0 = time.time()
    y_train = np.asarray(y_train, dtype=object).astype(str)
    classes, pos = _classes_and_positive(y_train, cfg.positive_label, cfg.train_split)
    check_task(model_name, cfg, classes)
    has_val = X_val is not None and y_val is not None and len(y_val) > 0
    yv = (
        np.asarray(y_val, dtype=object).astype(str)
        if has_val and y_val is not None
        else np.array([], dtype=str)
    )
    if has_val:
        unknown = sorted(set(yv) - set(classes))
        if unknown:
            raise ModelDataError(f"val labels {unknown} do not occur in the train split; fix the split")
    cw = None if cfg.class_weight == "none" else "balanced"
    search: list[dict[str, Any]] = []
    points = _grid(cfg.grid)
    best_params: dict[str, Any] = {}
    if len(points) > 1:
        if not has_val or X_val is None:
            raise ModelConfigError("a grid search needs a val split; set val_split or remove grid")
        base = build_sklearn(model_name, cfg.params, cw, cfg.seed, feature_names)
        X_all = np.vstack([X_train, X_val])
        y_all = np.concatenate([y_train, yv])
        fold = np.r_[np.full(len(y_train), -1), np.zeros(len(yv), dtype=int)]
        scoring = {
            "roc_auc": "roc_auc" if len(classes) == 2 else "roc_auc_ovr",
            "balanced_accuracy": "balanced_accuracy",
            "accuracy": "accuracy",
            "f1": "f1_macro",
        }[cfg.search_metric]
        grid = {_grid_key(base, k): v for k, v in cfg.grid.items()}
        gs = GridSearchCV(
            base, grid, scoring=scoring, cv=PredefinedSplit(fold), refit=False, n_jobs=1, error_score="raise"
        )
        try:
            gs.fit(X_all, y_all)
        except ValueError as exc:
            raise ModelConfigError(
                f"grid search over {sorted(cfg.grid)} failed for {model_name}: {exc}"
            ) from exc
        res = gs.cv_results_
        for i, p in enumerate(res["params"]):
            search.append({"params": _ungrid(p), cfg.search_metric: float(res["mean_test_score"][i])})
        best_params = _ungrid(gs.best_params_)
    params = {**cfg.params, **best_params}
    est = build_sklearn(model_name, params, cw, cfg.seed, feature_names)
    try:
        est.fit(X_train, y_train)
    except ValueError as exc:
        raise ModelConfigError(f"fitting {model_name} with {params} failed: {exc}") from exc
    train_seconds = time.time() - t0
    card = ModelCard(
        model_name=cfg.display_name(model_name),
        model=model_name,
        kind="sklearn",
        estimator=type(est).__name__,
        params=params,
        classes=classes,
        positive_label=pos,
        threshold=None,
        threshold_rule=cfg.threshold.rule if pos is not None else None,
        feature_names=list(feature_names),
        feature_set=feature_set,
        train_data_sha256=data_hash(
            ids_train if ids_train is not None else np.arange(len(y_train)), X_train, y_train
        ),
        n_train=len(y_train),
        n_val=len(yv),
        class_weight=cfg.class_weight,
        search=search,
        augment=augment_summary(cfg.augment),
    )
    model = SklearnClassifier(est, card)
    metrics: dict[str, Any] = {}
    if has_val and X_val is not None:
        proba_v = model.predict_proba(X_val)
        card.threshold = _threshold(cfg, yv, proba_v, classes, pos)
        metrics = classification_metrics(yv, model.predict(X_val), classes, proba_v, pos)
        metrics["threshold"] = card.threshold
    else:
        card.threshold = _threshold(cfg, yv, np.zeros((0, len(classes))), classes, pos)
    card.metrics = {"val": _compact(metrics), "train_seconds": round(train_seconds, 3)}
    return model, {
        "best_params": best_params,
        "search": search,
        "val": metrics,
        "train_seconds": train_seconds,
    }


def _grid_key(est: Any, key: str) -> str:
    """Map a plain parameter name to the pipeline path used by our builders."""
    names = set(est.get_params(deep=True))
    if key in names:
        return key
    nested = sorted((n for n in names if n.endswith("__" + key)), key=len)
    if not nested:
        raise ModelConfigError(f"grid parameter {key!r} is not a parameter of {type(est).__name__}")
    return nested[0]


def _ungrid(p: dict[str, Any]) -> dict[str, Any]:
    return {k.split("__")[-1]: v for k, v in p.items()}


def _compact(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k not in ("roc_curve", "roc_curves")}


def _train_sklearn(
    spark: SparkSession,
    df: DataFrame,
    out_dir: str | Path,
    model_name: str,
    cfg: TrainConfig,
    model_dir: str,
) -> TrainSummary:
    names = _feature_names(df)
    ids, X, y = collect_split(df, cfg.train_split)
    if len(y) == 0:
        raise ModelDataError(
            f"no rows with split={cfg.train_split!r} in the features table; check the split names"
        )
    if cfg.augment is not None:
        aug = augmented_features(
            spark, out_dir, cfg.train_split, cfg.augment, cfg.feature_set, cfg.features_dir
        )
        aids, aX, ay = collect_split(aug, None)
        if aX.shape[1:] != X.shape[1:]:
            raise ModelDataError(
                f"augmented features have {aX.shape[1]} values, the table {X.shape[1]}; "
                "set feature_set to the one used by compute_features"
            )
        ids, X, y = np.concatenate([ids, aids]), np.vstack([X, aX]), np.concatenate([y, ay])
    Xv = yv = None
    if cfg.val_split is not None:
        _, Xv, yv = collect_split(df, cfg.val_split)
        if len(yv) == 0:
            Xv = yv = None
    fs_name = _recorded_feature_set(spark, out_dir, cfg)
    model, info = fit_sklearn_arrays(model_name, cfg, X, y, Xv, yv, names, ids, fs_name)
    model.card.spark_version = spark.version
    model.card.feature_set_id, model.card.feature_set_sha256 = _recorded_set_identity(spark, out_dir, cfg)
    model.save(model_dir, get_storage(spark))
    return _summary(model, model_dir, info)


def _recorded_set_identity(
    spark: SparkSession, out_dir: str | Path, cfg: TrainConfig
) -> tuple[str | None, str | None]:
    """``(set id, sha256)`` recorded with the features table trained on (None for older tables)."""
    from medimg_spark.features import read_feature_set_record

    rec = read_feature_set_record(get_storage(spark), join(out_dir, cfg.features_dir)) or {}
    return rec.get("set_id"), rec.get("sha256")


def _recorded_feature_set(spark: SparkSession, out_dir: str | Path, cfg: TrainConfig) -> str | None:
    if cfg.feature_set:
        return cfg.feature_set
    store = get_storage(spark)
    rec = join(out_dir, cfg.features_dir, FEATURE_SET_FILE)
    if store.exists(rec):
        return str(store.read_json(rec)["feature_set"].get("name"))
    return None


def _summary(
    model: SklearnClassifier | MllibClassifier, model_dir: str, info: dict[str, Any]
) -> TrainSummary:
    c = model.card
    return {
        "model_name": c.model_name,
        "model_path": model_dir,
        "kind": c.kind,
        "classes": c.classes,
        "positive_label": c.positive_label,
        "threshold": c.threshold,
        "best_params": info["best_params"],
        "search": info["search"],
        "val": info["val"],
        "n_train": c.n_train,
        "n_val": c.n_val,
        "train_seconds": round(float(info["train_seconds"]), 3),
    }


# ----------------------------------------------------------------------------- MLlib


WEIGHT_COL = "__weight"
LABEL_IDX = "__label_idx"
SCALED = "__scaled"


def build_mllib_pipeline(
    model_name: str, params: dict[str, Any], n_features: int, n_classes: int, weighted: bool, seed: int
) -> Any:
    """An unfitted MLlib Pipeline: StringIndexer → scaler → classifier.

    Raises:
        ModelConfigError: unknown model, invalid parameter name, or a binary-only model on multi-class labels.
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import MinMaxScaler, StandardScaler, StringIndexer

    p = dict(params)
    common: dict[str, Any] = {"featuresCol": SCALED, "labelCol": LABEL_IDX}
    if model_kind(model_name) != "mllib":
        raise ModelConfigError(f"unknown MLlib model {model_name!r}; choose from {list(MLLIB_MODELS)}")
    clf: Any = ESTIMATORS.get(model_name)(common, p, n_features, n_classes, seed)
    if weighted and clf.hasParam("weightCol"):
        clf.setWeightCol(WEIGHT_COL)
    for k, v in p.items():
        if not clf.hasParam(k):
            raise ModelConfigError(
                f"{model_name} has no parameter {k!r}; see pyspark.ml.classification.{type(clf).__name__}"
            )
        clf.set(clf.getParam(k), v)
    multinomial_nb = model_name == "mllib_naive_bayes" and clf.getModelType() != "gaussian"
    scaler: Any = (
        MinMaxScaler(inputCol="features", outputCol=SCALED)
        if multinomial_nb
        else StandardScaler(inputCol="features", outputCol=SCALED, withMean=True, withStd=True)
    )
    indexer = StringIndexer(inputCol=LABEL_INPUT, outputCol=LABEL_IDX, stringOrderType="alphabetAsc")
    return Pipeline(stages=[indexer, scaler, clf])


def _mllib_param_maps(pipeline: Any, grid: dict[str, list[Any]], model_name: str) -> list[dict[Any, Any]]:
    clf = pipeline.getStages()[-1]
    maps: list[dict[Any, Any]] = []
    for point in _grid(grid):
        pm: dict[Any, Any] = {}
        for k, v in point.items():
            if k == "hidden" and model_name == "mllib_mlp":
                layers = clf.getLayers()
                pm[clf.getParam("layers")] = [layers[0], *list(v), layers[-1]]
                continue
            if not clf.hasParam(k):
                raise ModelConfigError(f"grid parameter {k!r} is not a parameter of {type(clf).__name__}")
            pm[clf.getParam(k)] = v
        maps.append(pm)
    return maps


def _train_mllib(
    spark: SparkSession,
    df: DataFrame,
    out_dir: str | Path,
    model_name: str,
    cfg: TrainConfig,
    model_dir: str,
) -> TrainSummary:
    from pyspark.sql import functions as F

    t0 = time.time()
    names = _feature_names(df)
    train_df = df.where(F.col("split") == cfg.train_split).select(
        "image_id", F.col("label").cast("string"), "features"
    )
    if cfg.augment is not None:
        aug = augmented_features(
            spark, out_dir, cfg.train_split, cfg.augment, cfg.feature_set, cfg.features_dir
        )
        train_df = train_df.unionByName(aug.select("image_id", "label", "features"))
    counts = {r["label"]: int(r["count"]) for r in train_df.groupBy("label").count().collect()}
    if not counts:
        raise ModelDataError(
            f"no rows with split={cfg.train_split!r} in the features table; check the split names"
        )
    y_labels = np.asarray([k for k, v in counts.items() for _ in range(min(v, 1))], dtype=object)
    if None in counts:
        raise ModelDataError(f"{counts[None]} {cfg.train_split} rows have no label; label them or drop them")
    classes, pos = _classes_and_positive(y_labels, cfg.positive_label, cfg.train_split)
    check_task(model_name, cfg, classes)  # before anything is cached or fitted
    n = sum(counts.values())
    weighted = cfg.class_weight == "balanced"
    wexpr = F.lit(1.0)
    if weighted:
        for c, k in counts.items():
            wexpr = F.when(F.col("label") == c, F.lit(n / (len(classes) * k))).otherwise(wexpr)
    train_df = mllib_label_input(train_df, classes).withColumn(WEIGHT_COL, wexpr).cache()
    val_df = None
    if cfg.val_split is not None:
        val_df = df.where(F.col("split") == cfg.val_split).select(
            "image_id", F.col("label").cast("string"), "features"
        )
        val_labels = {r["label"] for r in val_df.select("label").distinct().collect()}
        if not val_labels:
            val_df = None
        elif val_labels - set(classes):
            raise ModelDataError(
                f"val labels {sorted(val_labels - set(classes))} do not occur in the train split"
            )
    try:
        pipeline = build_mllib_pipeline(model_name, cfg.params, len(names), len(classes), weighted, cfg.seed)
        maps = _mllib_param_maps(pipeline, cfg.grid, model_name)
        card = ModelCard(
            model_name=cfg.display_name(model_name),
            model=model_name,
            kind="mllib",
            estimator=type(pipeline.getStages()[-1]).__name__,
            params=dict(cfg.params),
            classes=classes,
            positive_label=pos,
            threshold_rule=cfg.threshold.rule if pos is not None else None,
            feature_names=names,
            feature_set=_recorded_feature_set(spark, out_dir, cfg),
            feature_set_id=_recorded_set_identity(spark, out_dir, cfg)[0],
            feature_set_sha256=_recorded_set_identity(spark, out_dir, cfg)[1],
            train_data_sha256=_spark_data_hash(train_df),
            n_train=n,
            class_weight=cfg.class_weight,
            augment=augment_summary(cfg.augment),
            spark_version=spark.version,
        )
        search: list[dict[str, Any]] = []
        best_params: dict[str, Any] = {}
        if len(maps) > 1:
            if val_df is None:
                raise ModelConfigError("a grid search needs a val split; set val_split or remove grid")
            fitted: dict[int, Any] = dict(pipeline.fitMultiple(train_df, maps))
            best_i, best_s = 0, -np.inf
            for i, pm in enumerate(maps):
                cand = MllibClassifier(fitted[i], card)
                _, yv, proba_v = _collect_predictions(cand.transform(val_df))
                s = _search_score(cfg.search_metric, yv, proba_v, classes, pos)
                point = {p.name: v for p, v in pm.items()}
                search.append({"params": point, cfg.search_metric: s})
                if s > best_s:
                    best_i, best_s = i, s
            pm_best = maps[best_i]
            best_params = {p.name: v for p, v in pm_best.items()}
            pipeline_model = fitted[best_i]
        else:
            pipeline_model = pipeline.fit(train_df, maps[0]) if maps[0] else pipeline.fit(train_df)
        card.params = {**card.params, **best_params}
        card.search = search
        model = MllibClassifier(pipeline_model, card)
        metrics: dict[str, Any] = {}
        if val_df is not None:
            _, yv, proba_v = _collect_predictions(model.transform(val_df))
            card.n_val = len(yv)
            card.threshold = _threshold(cfg, yv, proba_v, classes, pos)
            pred = np.asarray(classes, dtype=object)[card.decide(proba_v)]
            metrics = classification_metrics(yv, pred, classes, proba_v, pos)
            metrics["threshold"] = card.threshold
        else:
            card.threshold = _threshold(cfg, np.array([]), np.zeros((0, len(classes))), classes, pos)
        train_seconds = time.time() - t0
        card.metrics = {"val": _compact(metrics), "train_seconds": round(train_seconds, 3)}
        model.save(model_dir, get_storage(spark))
    finally:
        train_df.unpersist()
    return _summary(
        model,
        model_dir,
        {"best_params": best_params, "search": search, "val": metrics, "train_seconds": train_seconds},
    )


def _collect_predictions(pred_df: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pdf = pred_df.select("image_id", "label", "probability").toPandas().sort_values("image_id")
    proba = (
        np.vstack([np.asarray(p, dtype=np.float64) for p in pdf["probability"]])
        if len(pdf)
        else np.zeros((0, 0))
    )
    return pdf["image_id"].to_numpy(dtype=object), pdf["label"].to_numpy(dtype=object).astype(str), proba


def _spark_data_hash(df: DataFrame) -> str:
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    pdf = df.select("image_id", "label", vector_to_array(F.col("features")).alias("v")).toPandas()
    X = np.vstack([np.asarray(v, dtype=np.float64) for v in pdf["v"]]) if len(pdf) else np.zeros((0, 0))
    return data_hash(pdf["image_id"].to_numpy(dtype=object), X, pdf["label"].to_numpy(dtype=object))
