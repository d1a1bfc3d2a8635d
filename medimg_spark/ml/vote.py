"""``vote``: a soft vote of saved models of any kind (scikit-learn, MLlib, CNN) on their calibrated probabilities.

``medimg train --model vote`` with ``train.params: {members: [{name: cnn}, {name: sk_svc, weight: 2}]}``
(``name``: a model under ``out_dir/models``; ``model_path``: any saved folder). Each member predicts
from its own table (features, images or processed), the predictions are joined by ``image_id`` and
their probabilities averaged with the weights; the decision threshold is chosen on val. The saved
folder holds only ``card.json``, whose ``members`` name the members' folders.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from medimg_spark.config_models import TrainConfig, VoteParams
from medimg_spark.ml.errors import ModelConfigError, ModelDataError, ModelLoadError
from medimg_spark.ml.metrics import classification_metrics
from medimg_spark.ml.model import ModelCard, _Classifier, load_model
from medimg_spark.storage import Storage, get_storage, join
from medimg_spark.summaries import TrainSummary

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["VoteClassifier", "load_vote", "train_vote"]


class VoteClassifier(_Classifier):
    """Weighted mean of the members' probability columns, then the card's threshold.

    :meth:`transform` applies every member to the same DataFrame (which must hold each member's
    input: ``features`` and/or the frame columns); :meth:`own_predictions` joins the members'
    predictions of their own tables by ``image_id`` (what ``medimg predict``/``evaluate`` use).
    """

    def __init__(
        self, members: list[tuple[_Classifier, float]], card: ModelCard, features_col: str = "features"
    ) -> None:
        super().__init__(card, features_col)
        if len(members) < 2:
            raise ModelConfigError("a vote needs at least two members")
        for m, _ in members:
            if m.classes != card.classes:
                raise ModelConfigError(
                    f"vote member {m.card.model_name} has classes {m.classes}, the vote {card.classes}; "
                    "vote only models trained on the same labels"
                )
        self.members = members

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Not available: the members read different inputs (use transform or own_predictions)."""
        raise ModelDataError(
            "a vote's members read different tables (features, frames); use transform or medimg predict"
        )

    def _combine(self, df: DataFrame, prob_cols: list[str]) -> DataFrame:
        """``df`` with the weighted-mean probability, score and prediction columns (named by the Params)."""
        from pyspark.sql import functions as F

        total = sum(w for _, w in self.members)
        k = len(self.classes)

        def mean_at(i: Column) -> Column:
            acc: Column = F.lit(0.0)
            for (_, w), c in zip(self.members, prob_cols, strict=True):
                acc = acc + F.lit(w / total) * F.element_at(F.col(c), i + 1)
            return acc

        prob_col, score_col, pred_col = self.output_columns()
        out = df.withColumn(prob_col, F.transform(F.sequence(F.lit(0), F.lit(k - 1)), mean_at))
        classes = self.classes
        pos, thr = self.card.positive_label, self.card.threshold
        if k == 2 and pos is not None and thr is not None:
            p = classes.index(pos)
            score = F.element_at(prob_col, p + 1)
            pred = F.when(score >= F.lit(float(thr)), F.lit(pos)).otherwise(F.lit(classes[1 - p]))
        else:
            score = F.lit(None).cast("double")
            labels = F.array(*(F.lit(c) for c in classes))
            pred = F.element_at(labels, F.array_position(prob_col, F.array_max(prob_col)).cast("int"))
        return out.withColumn(score_col, score).withColumn(pred_col, pred)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        keep = self._kept_columns(dataset)
        df = dataset.select(*keep)
        tmp: list[str] = []
        for i, (m, _) in enumerate(self.members):
            cols = (f"__vote_p{i}", f"__vote_s{i}", f"__vote_y{i}")
            member = m.copy()
            member.setProbabilityCol(cols[0]).setScoreCol(cols[1]).setPredictionCol(cols[2])
            df = member.transform(df).drop(cols[1], cols[2])
            tmp.append(cols[0])
        out = self._combine(df, tmp)
        return out.select(*keep, *self.output_columns())

    def own_predictions(self, spark: SparkSession, out_dir: str | Path, split: str | None) -> DataFrame:
        """The members' predictions of their own tables, joined by ``image_id`` (inner) and averaged."""
        from pyspark.sql import functions as F

        from medimg_spark.ml.predict import predictions_frame

        joined: DataFrame | None = None
        cols: list[str] = []
        for i, (m, _) in enumerate(self.members):
            p = predictions_frame(spark, out_dir, m, split).select(
                "image_id", "label", "split", F.col("probability").alias(f"__vote_p{i}")
            )
            if joined is None:
                joined = p
            else:
                joined = joined.join(p.select("image_id", f"__vote_p{i}"), "image_id", "inner")
            cols.append(f"__vote_p{i}")
        assert joined is not None
        prob_col, score_col, pred_col = self.output_columns()
        return self._combine(joined, cols).select(
            "image_id",
            "label",
            "split",
            F.col(pred_col).alias("prediction"),
            F.col(prob_col).alias("probability"),
            F.col(score_col).alias("score"),
            F.lit(self.card.model_name).alias("model"),
        )

    @classmethod
    def _from_loaded(cls, model: _Classifier) -> _Classifier:
        if not isinstance(model, VoteClassifier):
            raise ModelLoadError(f"the saved model is {type(model).__name__}, not a vote")
        return cls(model.members, model.card)

    def save(self, path: str | Path, storage: Storage | None = None) -> str:  # type: ignore[override]
        """Write ``card.json`` (the members are referenced by their folders, not copied)."""
        store = storage or get_storage()
        folder = str(path)
        store.mkdirs(folder)
        self._write_card(store, folder)
        return folder


def load_vote(folder: str, card: ModelCard, store: Storage, features_col: str = "features") -> VoteClassifier:
    """The :class:`VoteClassifier` of a folder whose card says ``kind: vote`` (its members loaded from their folders).

    Raises:
        ModelLoadError: a member folder is missing or unreadable.
    """
    members: list[tuple[_Classifier, float]] = []
    for m in card.members:
        path = str(m.get("model_path"))
        try:
            members.append((load_model(path, storage=store), float(m.get("weight", 1.0))))
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"vote {card.model_name} ({folder}): member {path} cannot be loaded: {exc}"
            ) from exc
    return VoteClassifier(members, card, features_col)


def train_vote(
    spark: SparkSession, out_dir: str | Path, model_name: str, cfg: TrainConfig, model_dir: str
) -> TrainSummary:
    """Build the vote of ``cfg.params.members``, choose its threshold on val and save its card.

    Raises:
        ModelConfigError: invalid members (unknown keys, < 2, different classes).
        ModelLoadError: a member folder cannot be loaded.
        ModelDataError: the members share no labelled val rows.
    """
    from medimg_spark.ml.train import _compact, _threshold

    t0 = time.time()
    try:
        vp = VoteParams.model_validate(cfg.params)
    except ValidationError as exc:
        raise ModelConfigError(f"invalid train.params of the vote model: {exc}") from exc
    store = get_storage(spark)
    members: list[tuple[_Classifier, float]] = []
    recorded: list[dict[str, Any]] = []
    for m in vp.members:
        path = m.model_path or join(out_dir, "models", str(m.name))
        model = load_model(path, storage=store)
        members.append((model, m.weight))
        recorded.append(
            {
                "model_path": path,
                "weight": m.weight,
                "model_name": model.card.model_name,
                "kind": model.card.kind,
            }
        )
    first = members[0][0].card
    h = hashlib.sha256("".join(mm.card.train_data_sha256 for mm, _ in members).encode()).hexdigest()
    card = ModelCard(
        model_name=cfg.display_name(model_name),
        model=model_name,
        kind="vote",
        estimator="SoftVote",
        params=vp.model_dump(mode="json"),
        classes=list(first.classes),
        positive_label=first.positive_label,
        threshold=None,
        threshold_rule=cfg.threshold.rule if first.positive_label is not None else None,
        feature_names=[],
        train_data_sha256=h,
        n_train=max(mm.card.n_train for mm, _ in members),
        spark_version=spark.version,
        members=recorded,
    )
    vote = VoteClassifier(members, card)
    classes, pos = card.classes, card.positive_label
    metrics: dict[str, Any] = {}
    if cfg.val_split is not None:
        pdf = vote.own_predictions(spark, out_dir, cfg.val_split).where("label IS NOT NULL").toPandas()
        if len(pdf) == 0:
            raise ModelDataError(
                f"the vote's members share no labelled {cfg.val_split!r} rows; check that they predict the same images"
            )
        pdf = pdf.sort_values("image_id")
        yv = pdf["label"].to_numpy(dtype=object).astype(str)
        proba = np.vstack([np.asarray(p, dtype=np.float64) for p in pdf["probability"]])
        card.n_val = len(yv)
        card.threshold = _threshold(cfg, yv, proba, classes, pos)
        pred = np.asarray(classes, dtype=object)[card.decide(proba)]
        metrics = classification_metrics(yv, pred, classes, proba, pos)
        metrics["threshold"] = card.threshold
    else:
        card.threshold = _threshold(cfg, np.array([]), np.zeros((0, len(classes))), classes, pos)
    seconds = time.time() - t0
    card.metrics = {"val": _compact(metrics), "train_seconds": round(seconds, 3)}
    vote.save(model_dir, store)
    return {
        "model_name": card.model_name,
        "model_path": model_dir,
        "kind": "vote",
        "classes": classes,
        "positive_label": pos,
        "threshold": card.threshold,
        "best_params": {},
        "search": [],
        "val": metrics,
        "n_train": card.n_train,
        "n_val": card.n_val,
        "train_seconds": round(seconds, 3),
    }
