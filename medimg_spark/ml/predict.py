"""Apply a saved model to ``out_dir/features`` and write ``out_dir/predictions/``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_spark.ml.errors import ModelDataError
from medimg_spark.ml.model import _Classifier, load_model, prediction_rows
from medimg_spark.ml.train import read_features
from medimg_spark.storage import get_storage, join

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PREDICTIONS_DIR = "predictions"


def predictions_frame(
    spark: SparkSession,
    out_dir: str | Path,
    model: _Classifier,
    split: str | None = None,
    features_dir: str = "features",
) -> DataFrame:
    """Predictions (image_id, label, split, prediction, probability, score, model) as a lazy DataFrame.

    Feature models read the features of the set the model's card names (``feature_set_sha256``):
    the latest ``features`` table, or the one kept in ``feature_sets/`` when features were since
    recomputed with another set. A CNN reads its frames table (``images``, or ``processed`` and its
    recipe, as its card says) and a vote joins its members' predictions.

    Raises:
        FeatureSetNotFoundError: the model's feature set is no longer in the run folder.
        ModelDataError: the features table is missing or its width differs from the model's.
    """
    from pyspark.sql import functions as F

    if model.card.kind in ("cnn", "vote"):  # they read the images/processed table (or their members')
        return model.own_predictions(spark, out_dir, split)
    c = model.card
    df = read_features(
        spark,
        out_dir,
        features_dir,
        c.feature_set_sha256,
        c.feature_set_id,
        c.feature_set,
        len(c.feature_names),
    )
    if split is not None:
        df = df.where(F.col("split") == split)
    first = df.select("features").first()
    n_expected = len(model.card.feature_names)
    if first is not None and len(first[0]) != n_expected:
        raise ModelDataError(
            f"features in {join(out_dir, features_dir)} have {len(first[0])} values, model "
            f"{model.card.model_name} expects {n_expected}; recompute features with feature set "
            f"{model.card.feature_set!r}"
        )
    cols = ["image_id", "label", "split", "features"]
    out = model.transform(
        df.select(*[c if c in df.columns else F.lit(None).cast("string").alias(c) for c in cols])
    )
    return prediction_rows(out, model.card.model_name)


def predict(
    spark: SparkSession,
    out_dir: str | Path,
    model_path: str | Path,
    split: str | None = None,
) -> dict[str, Any]:
    """Predict every row (or one ``split``) of ``out_dir/features`` with the model saved at ``model_path``.

    Writes ``out_dir/predictions/`` partitioned by ``model`` (only this model's partition is
    replaced, so several models' predictions live side by side), with columns image_id, label,
    split, prediction, probability (array, class order of the card), score (positive-class
    probability for binary tasks) and model.

    Returns:
        Summary: path, model, n_rows, counts per predicted class, seconds, images_per_second.
    """
    from pyspark.sql import functions as F

    from medimg_spark.ml.recognize import is_region_model, predict_regions

    if is_region_model(model_path, get_storage(spark)):  # regions recomputed from the frames
        return predict_regions(spark, out_dir, model_path, split)
    t0 = time.time()
    model = load_model(model_path, storage=get_storage(spark))
    pred = predictions_frame(spark, out_dir, model, split)
    root = join(out_dir, PREDICTIONS_DIR)
    pred.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("model").parquet(
        root
    )
    dest = join(root, f"model={model.card.model_name}")
    written = spark.read.parquet(root).where(F.col("model") == model.card.model_name)
    counts = {r["prediction"]: int(r["count"]) for r in written.groupBy("prediction").count().collect()}
    n = sum(counts.values())
    secs = time.time() - t0
    return {
        "path": root,
        "partition": dest,
        "model": model.card.model_name,
        "split": split,
        "n_rows": n,
        "counts": counts,
        "seconds": round(secs, 3),
        "images_per_second": round(n / secs, 1) if secs > 0 else None,
    }
