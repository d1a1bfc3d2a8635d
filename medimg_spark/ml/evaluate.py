"""Evaluate a saved model on one split and write ``out_dir/metrics/eval_<model>_<split>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from medimg_spark.ml.errors import ModelDataError
from medimg_spark.ml.metrics import classification_metrics, format_metrics
from medimg_spark.ml.model import load_model
from medimg_spark.ml.predict import predictions_frame
from medimg_spark.storage import Storage, get_storage, join
from medimg_spark.summaries import EvaluateSummary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

METRICS_DIR = "metrics"


def evaluate(
    spark: SparkSession,
    out_dir: str | Path,
    model_path: str | Path,
    split: str,
) -> EvaluateSummary:
    """Predict the labelled rows of ``split`` and compute classification metrics.

    Returns:
        The metrics dict (accuracy, balanced_accuracy, roc_auc, f1, sensitivity, specificity,
        confusion_matrix, roc_curve, threshold, model, split, path), also written as JSON.

    Raises:
        ModelDataError: the split has no labelled rows.
    """
    store = get_storage(spark)
    from medimg_spark.ml.recognize import evaluate_region_model, is_region_model

    if is_region_model(model_path, store):  # region models: their rows in predictions/ (medimg recognize)
        return cast("EvaluateSummary", evaluate_region_model(spark, out_dir, model_path, split))
    model = load_model(model_path, storage=store)
    pdf = predictions_frame(spark, out_dir, model, split).where("label IS NOT NULL").toPandas()
    if len(pdf) == 0:
        raise ModelDataError(
            f"split {split!r} of {out_dir} has no labelled rows to evaluate; check the split name"
        )
    proba = np.vstack([np.asarray(p, dtype=np.float64) for p in pdf["probability"]])
    metrics = classification_metrics(
        pdf["label"].to_numpy(dtype=object),
        pdf["prediction"].to_numpy(dtype=object),
        model.classes,
        proba,
        model.card.positive_label,
    )
    metrics.update(model=model.card.model_name, split=split, threshold=model.card.threshold)
    return write_metrics(out_dir, model.card.model_name, split, metrics, store)


def write_metrics(
    out_dir: str | Path,
    model_name: str,
    split: str,
    metrics: dict[str, Any],
    storage: Storage | None = None,
) -> EvaluateSummary:
    """Write ``metrics`` to ``out_dir/metrics/eval_<model>_<split>.json`` (and a .txt table); returns it with ``path``.

    Args:
        out_dir: the run's output folder (local path or URI).
        storage: how to reach it (default: the active SparkSession's, see
            :func:`medimg_spark.storage.get_storage`).
    """
    store = storage or get_storage()
    stem = join(out_dir, METRICS_DIR, f"eval_{model_name}_{split}")
    path = f"{stem}.json"
    out = cast("EvaluateSummary", {**metrics, "path": path})
    store.write_text(path, json.dumps(out, indent=2, default=_json_default))
    store.write_text(f"{stem}.txt", format_metrics(out, f"{model_name} on {split}") + "\n")
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot serialise {type(v).__name__}")
