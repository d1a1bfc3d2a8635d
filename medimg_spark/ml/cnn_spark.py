"""The Spark side of the CNN estimators: frames streamed to the driver, training, executor inference.

* :func:`frames_table` / :func:`collect_frames`: the ``images`` (or ``processed``, one recipe)
  table's frames are decoded, resized and normalised **on the executors** (``mapInArrow``), packed
  one output row per Arrow batch, and streamed with ``toLocalIterator()`` into a preallocated
  ``(n, size, size)`` float32 array: the driver holds n × size² floats, never the raw pixels.
* :func:`train_cnn`: ``medimg train --model cnn|cnn_resnet`` (dispatched by :func:`medimg_spark.ml.train`).
* :class:`CnnClassifier`: the fitted network as a ``pyspark.ml`` Transformer (same output columns,
  Params and persistence as the scikit-learn/MLlib wrappers), the weights broadcast once per
  SparkContext and applied with ``mapInArrow``. Saved as ``weights.npz`` + ``card.json``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg_spark.config_models import CnnConfig, TrainConfig
from medimg_spark.ml.cnn import (
    CnnSpec,
    check_class_indices,
    fit_cnn,
    grid_points,
    predict_logits_numpy,
    predict_proba,
    prepare_frame,
    prepare_stack,
    resolve_cnn_config,
    softmax,
)
from medimg_spark.ml.errors import ModelConfigError, ModelDataError, ModelLoadError
from medimg_spark.ml.metrics import classification_metrics
from medimg_spark.ml.model import CNN_WEIGHTS_FILE, ModelCard, _Classifier, prediction_rows
from medimg_spark.storage import Storage, get_storage, join
from medimg_spark.summaries import TrainSummary

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "CnnClassifier",
    "FrameArrays",
    "TooManyImagesError",
    "collect_frames",
    "frames_table",
    "load_cnn",
    "train_cnn",
]

PIXEL_COLUMNS = ("pixels", "rows", "cols", "channels", "dtype")
PACKED_BYTES = 16 << 20
"""Largest packed row of prepared frames streamed to the driver (a row per ≤ 16 MB of float32)."""


class TooManyImagesError(ModelConfigError):
    """More training frames than ``train.cnn.max_train_images`` would be collected to the driver."""


@dataclass
class FrameArrays:
    """Prepared frames of one split on the driver, ordered by image id."""

    ids: np.ndarray
    labels: np.ndarray
    x: np.ndarray


# ----------------------------------------------------------------------------- data


def frames_table(spark: SparkSession, out_dir: str | Path, source: str, recipe: str | None) -> DataFrame:
    """The frames a CNN reads: ``out_dir/images``, or the rows of one recipe of ``out_dir/processed``.

    Raises:
        ModelDataError: the table is missing, or ``processed`` holds several recipes and ``recipe``
            is unset (or names none of them).
    """
    from pyspark.sql import functions as F

    path = join(out_dir, source)
    if not get_storage(spark).exists(path):
        step = "medimg ingest" if source == "images" else "medimg preprocess"
        raise ModelDataError(f"{path} does not exist; run {step} first (or set train.cnn.source)")
    df = spark.read.parquet(path)
    if "recipe_name" in df.columns:
        names = sorted(r[0] for r in df.select("recipe_name").distinct().collect())
        if recipe is None:
            if len(names) > 1:
                raise ModelDataError(
                    f"{path} holds the rows of recipes {names}; choose one with train.cnn.recipe"
                )
        elif recipe not in names:
            raise ModelDataError(
                f"{path} has no rows of recipe {recipe!r} (it holds {names}); fix train.cnn.recipe"
            )
        else:
            df = df.where(F.col("recipe_name") == recipe)
    missing = [c for c in ("image_id", *PIXEL_COLUMNS) if c not in df.columns]
    if missing:
        raise ModelDataError(f"{path} lacks the columns {missing}; a CNN reads an images/processed table")
    return df


def _prepare_batches(size: int, normalisation: str) -> Any:
    """``mapInArrow`` body: each input batch → rows of (image ids, packed float32 frames), ≤ 16 MB each."""
    per_row = max(1, PACKED_BYTES // (size * size * 4))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        from medimg_spark.io.pixels import decode
        from medimg_spark.worker import configure_worker

        configure_worker()
        for batch in batches:
            cols = {name: batch.column(name).to_pylist() for name in ("image_id", *PIXEL_COLUMNS)}
            for start in range(0, batch.num_rows, per_row):
                stop = min(start + per_row, batch.num_rows)
                buf = np.empty((stop - start, size, size), dtype=np.float32)
                for i in range(start, stop):
                    img = decode(
                        cols["pixels"][i],
                        int(cols["rows"][i]),
                        int(cols["cols"][i]),
                        int(cols["channels"][i]),
                        str(cols["dtype"][i]),
                    )
                    buf[i - start] = prepare_frame(img, size, normalisation)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array([cols["image_id"][start:stop]], type=pa.list_(pa.string())),
                        pa.array([buf.tobytes()], pa.binary()),
                    ],
                    names=["ids", "x"],
                )

    return run


def collect_frames(df: DataFrame, split: str | None, cnn: CnnConfig, limit: int | None = None) -> FrameArrays:
    """Prepared frames (and labels) of one split, streamed to a preallocated driver array.

    The ids and labels are collected first (to size the array and refuse an oversized split
    before any pixel moves), then the executors prepare the frames and the driver copies each
    packed batch into place (rows ordered by image id).

    Raises:
        TooManyImagesError: the split holds more than ``limit`` (default ``cnn.max_train_images``) rows.
        ModelDataError: duplicate image ids (e.g. a processed table with one recipe run twice).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, BinaryType, StringType, StructField, StructType

    sel = df if split is None else df.where(F.col("split") == split)
    cap = cnn.max_train_images if limit is None else limit
    label = F.col("label").cast("string") if "label" in sel.columns else F.lit(None).cast("string")
    meta = sel.select("image_id", label.alias("label")).limit(cap + 1).collect()
    if len(meta) > cap:
        raise TooManyImagesError(
            f"split {split!r} holds more than {cap} frames; a CNN collects n × input_size² floats to the "
            f"driver: raise train.cnn.max_train_images (and spark.driver.memory) or subsample the split"
        )
    ids = np.asarray([r["image_id"] for r in meta], dtype=object)
    order = np.argsort(ids.astype(str), kind="stable")
    ids, labels = ids[order], np.asarray([meta[i]["label"] for i in order], dtype=object)
    if len(set(ids.tolist())) != len(ids):
        raise ModelDataError(
            f"split {split!r} repeats image ids (a processed table with one recipe run twice?); "
            "select one run with train.cnn.recipe or rewrite the table"
        )
    size = cnn.input_size
    x = np.zeros((len(ids), size, size), dtype=np.float32)
    if len(ids) == 0:
        return FrameArrays(ids, labels, x)
    pos = {str(v): i for i, v in enumerate(ids)}
    schema = StructType([StructField("ids", ArrayType(StringType())), StructField("x", BinaryType())])
    packed = sel.select("image_id", *PIXEL_COLUMNS).mapInArrow(
        _prepare_batches(size, cnn.normalisation), schema
    )
    seen = 0
    for row in packed.toLocalIterator():
        frames = np.frombuffer(row["x"], dtype=np.float32).reshape(-1, size, size)
        for image_id, frame in zip(row["ids"], frames, strict=True):
            x[pos[image_id]] = frame
            seen += 1
    if seen != len(ids):
        raise ModelDataError(
            f"split {split!r}: {seen} frames arrived for {len(ids)} rows; the table changed while reading"
        )
    return FrameArrays(ids, labels, x)


# ----------------------------------------------------------------------------- the Transformer


class CnnClassifier(_Classifier):
    """A fitted JAX network applied on executors with ``mapInArrow`` (weights broadcast once per SparkContext).

    Reads the frame columns of an ``images``/``processed`` table (pixels, rows, cols, channels,
    dtype); ``featuresCol`` is unused. The executors run the numpy forward pass
    (:func:`medimg_spark.ml.cnn.predict_logits_numpy`), so ``transform`` needs no JAX anywhere;
    ``predict_proba`` (driver) takes a stack of frames (any size/dtype) and runs the jitted JAX pass.
    """

    def __init__(
        self, params: dict[str, np.ndarray], card: ModelCard, features_col: str = "features"
    ) -> None:
        super().__init__(card, features_col)
        if card.kind != "cnn" or card.temperature is None:
            raise ModelLoadError(f"model {card.model_name} is not a CNN card (kind {card.kind!r})")
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        self.config = CnnConfig.model_validate(card.params)
        self.spec = CnnSpec.from_config(self.config, len(card.classes))
        self._broadcast: Any = None
        self._broadcast_sc: Any = None

    @property
    def temperature(self) -> float:
        """The temperature fitted on val (1.0: uncalibrated)."""
        return float(self.card.temperature or 1.0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities of a stack of frames on the driver (prepared like the executors do)."""
        x = prepare_stack(X, self.spec.input_size, self.spec.normalisation)
        return predict_proba(self.weights, x, self.spec, self.temperature, self.config.predict_batch)

    def broadcast(self, spark_context: Any) -> Any:
        """The weights' broadcast variable (created on first use for this SparkContext)."""
        if self._broadcast is None or self._broadcast_sc is not spark_context:
            self._broadcast = spark_context.broadcast(self.weights)
            self._broadcast_sc = spark_context
        return self._broadcast

    def _transform(self, dataset: DataFrame) -> DataFrame:
        import pyarrow as pa

        missing = [c for c in PIXEL_COLUMNS if c not in dataset.columns]
        if missing:
            raise ModelDataError(
                f"input has no {missing} columns (columns: {dataset.columns}); a CNN reads the "
                "images or processed table, not features"
            )
        bc = self.broadcast(dataset.sparkSession.sparkContext)
        card_json = self.card.model_dump_json()
        base, out_schema, restore = self._executor_input(dataset)
        names = [f.name for f in out_schema.fields]

        def _predict(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from medimg_spark.io.pixels import decode

            card = ModelCard.model_validate_json(card_json)
            cfg = CnnConfig.model_validate(card.params)
            spec = CnnSpec.from_config(cfg, len(card.classes))
            params = bc.value
            pos = card.classes.index(card.positive_label) if card.positive_label in card.classes else None
            binary = len(card.classes) == 2 and pos is not None
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                cols = {c: batch.column(c).to_pylist() for c in PIXEL_COLUMNS}
                x = np.empty((batch.num_rows, spec.input_size, spec.input_size), dtype=np.float32)
                for i in range(batch.num_rows):
                    img = decode(
                        cols["pixels"][i],
                        int(cols["rows"][i]),
                        int(cols["cols"][i]),
                        int(cols["channels"][i]),
                        str(cols["dtype"][i]),
                    )
                    x[i] = prepare_frame(img, spec.input_size, spec.normalisation)
                logits = predict_logits_numpy(params, x, spec, cfg.predict_batch)  # no JAX on executors
                proba = softmax(logits, float(card.temperature or 1.0))
                idx = card.decide(proba)
                score = proba[:, pos] if binary and pos is not None else None
                yield pa.RecordBatch.from_arrays(
                    [
                        *batch.columns,
                        pa.array(list(proba), type=pa.list_(pa.float64())),
                        pa.array(score, type=pa.float64())
                        if score is not None
                        else pa.nulls(batch.num_rows, pa.float64()),
                        pa.array(np.asarray(card.classes, dtype=object)[idx].tolist(), type=pa.string()),
                    ],
                    names=names,
                )

        return restore(base.mapInArrow(_predict, out_schema))

    def own_predictions(self, spark: SparkSession, out_dir: str | Path, split: str | None) -> DataFrame:
        """Predictions of the frames of ``out_dir``'s table named in the card (images, or processed + recipe)."""
        from pyspark.sql import functions as F

        df = frames_table(spark, out_dir, self.config.source, self.config.recipe)
        if split is not None:
            df = df.where(F.col("split") == split)
        cols = [
            c if c in df.columns else F.lit(None).cast("string").alias(c)
            for c in ("image_id", "label", "split")
        ]
        return prediction_rows(self.transform(df.select(*cols, *PIXEL_COLUMNS)), self.card.model_name)

    @classmethod
    def _from_loaded(cls, model: _Classifier) -> _Classifier:
        if not isinstance(model, CnnClassifier):
            raise ModelLoadError(f"the saved model is {type(model).__name__}, not a CNN")
        return cls(model.weights, model.card)

    def save(self, path: str | Path, storage: Storage | None = None) -> str:  # type: ignore[override]
        """Write ``weights.npz`` (the parameter arrays by name) and ``card.json`` into the folder ``path``."""
        store = storage or get_storage()
        folder = os.fspath(path)
        store.mkdirs(folder)
        buf = io.BytesIO()
        np.savez(buf, **self.weights)  # type: ignore[arg-type]
        store.write_bytes(join(folder, CNN_WEIGHTS_FILE), buf.getvalue())
        self._write_card(store, folder)
        return folder


def load_cnn(folder: str, card: ModelCard, store: Storage, features_col: str = "features") -> CnnClassifier:
    """The :class:`CnnClassifier` of a model folder whose card says ``kind: cnn``.

    Raises:
        ModelLoadError: ``weights.npz`` is missing or does not match the card's architecture.
    """
    f = join(folder, CNN_WEIGHTS_FILE)
    if not store.exists(f):
        raise ModelLoadError(f"{folder} lacks {CNN_WEIGHTS_FILE}; retrain or copy the whole model folder")
    with np.load(io.BytesIO(store.read_bytes(f))) as z:
        params = {k: z[k] for k in z.files}
    model = CnnClassifier(params, card, features_col)
    from medimg_spark.ml.cnn import init_params

    want = {k: v.shape for k, v in init_params(model.spec, 0).items()}
    got = {k: v.shape for k, v in params.items()}
    if want != got:
        raise ModelLoadError(
            f"{f} does not hold the weights of the card's {model.spec.arch} network; re-save the model"
        )
    return model


# ----------------------------------------------------------------------------- training


def _frames_hash(ids: np.ndarray, labels: np.ndarray, x: np.ndarray) -> str:
    h = hashlib.sha256()
    for i, lab in zip(ids, labels, strict=True):
        h.update(f"{i}\0{lab}\0".encode())
    h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return h.hexdigest()


def train_cnn(
    spark: SparkSession, out_dir: str | Path, model_name: str, cfg: TrainConfig, model_dir: str
) -> TrainSummary:
    """Fit ``cnn``/``cnn_resnet`` on the train split of the frames table; early stopping, temperature and threshold on val.

    A ``train.grid`` over CNN keys is searched on val (``search_metric``), then the best point is kept.

    Raises:
        ModelConfigError: invalid CNN settings, or too many training frames.
        ModelDataError: missing table/split, unlabelled rows, a single class.
    """
    from medimg_spark.ml.train import (
        _classes_and_positive,
        _compact,
        _search_score,
        _threshold,
        check_task,
    )

    cnn = resolve_cnn_config(model_name, cfg)
    points = grid_points(cfg.grid)
    configs = [resolve_cnn_config(model_name, cfg, p) for p in points]
    prep = {(c.source, c.recipe, c.input_size, c.normalisation) for c in configs}
    if len(prep) > 1:
        raise ModelConfigError("train.grid may not vary source, recipe, input_size or normalisation of a CNN")
    df = frames_table(spark, out_dir, cnn.source, cnn.recipe)
    tr = collect_frames(df, cfg.train_split, cnn)
    if len(tr.ids) == 0:
        raise ModelDataError(
            f"no rows with split={cfg.train_split!r} in {join(out_dir, cnn.source)}; check the split names"
        )
    classes, pos = _classes_and_positive(tr.labels, cfg.positive_label, cfg.train_split)
    check_task(model_name, cfg, classes)  # an explicit threshold on K > 2 classes is refused
    y = check_class_indices(tr.labels, classes)
    va: FrameArrays | None = None
    if cfg.val_split is not None:
        va = collect_frames(df, cfg.val_split, cnn)
        if len(va.ids) == 0:
            va = None
        elif any(v is None for v in va.labels):
            raise ModelDataError(f"{cfg.val_split} rows without a label; label them or drop them")
    yv = check_class_indices(va.labels, classes) if va is not None else None
    if len(configs) > 1 and va is None:
        raise ModelConfigError("a grid search needs a val split; set val_split or remove grid")
    pos_index = classes.index(pos) if pos is not None else None
    search: list[dict[str, Any]] = []
    best_i, best_s, fits = 0, -np.inf, []
    for i, c in enumerate(configs):
        fit = fit_cnn(tr.x, y, va.x if va else None, yv, len(classes), c, pos_index)
        fits.append(fit)
        if len(configs) > 1 and va is not None and fit.val_logits is not None:
            from medimg_spark.ml.cnn import softmax

            s = _search_score(
                cfg.search_metric,
                va.labels.astype(str),
                softmax(fit.val_logits, fit.temperature),
                classes,
                pos,
            )
            search.append({"params": points[i], cfg.search_metric: s})
            if s > best_s:
                best_i, best_s = i, s
    fit, cnn = fits[best_i], configs[best_i]
    card = ModelCard(
        model_name=cfg.display_name(model_name),
        model=model_name,
        kind="cnn",
        estimator=f"jax_{cnn.arch}",
        params=cnn.model_dump(mode="json"),
        classes=classes,
        positive_label=pos,
        threshold_rule=cfg.threshold.rule if pos is not None else None,
        feature_names=[],
        train_data_sha256=_frames_hash(tr.ids, tr.labels, tr.x),
        n_train=len(y),
        n_val=0 if va is None else len(va.ids),
        class_weight=cnn.class_weight,
        search=search,
        augment=None if cnn.augment is None else cnn.augment.model_dump(),
        spark_version=spark.version,
        framework="jax",
        framework_version=fit.jax_version,
        backend=fit.backend,
        arch=cnn.arch,
        input_size=cnn.input_size,
        normalisation=cnn.normalisation,
        source=cnn.source,
        recipe=cnn.recipe,
        history=[dict(h) for h in fit.history],
        best_epoch=fit.best_epoch,
        temperature=fit.temperature,
    )
    model = CnnClassifier(fit.params, card)
    metrics: dict[str, Any] = {}
    if va is not None and yv is not None:
        proba_v = predict_proba(fit.params, va.x, fit.spec, fit.temperature, cnn.predict_batch)
        yv_s = va.labels.astype(str)
        card.threshold = _threshold(cfg, yv_s, proba_v, classes, pos)
        pred = np.asarray(classes, dtype=object)[card.decide(proba_v)]
        metrics = classification_metrics(yv_s, pred, classes, proba_v, pos)
        metrics["threshold"] = card.threshold
    else:
        card.threshold = _threshold(cfg, np.array([]), np.zeros((0, len(classes))), classes, pos)
    seconds = sum(f.seconds for f in fits)
    card.metrics = {"val": _compact(metrics), "train_seconds": round(seconds, 3)}
    model.save(model_dir, get_storage(spark))
    return {
        "model_name": card.model_name,
        "model_path": model_dir,
        "kind": "cnn",
        "classes": classes,
        "positive_label": pos,
        "threshold": card.threshold,
        "best_params": points[best_i],
        "search": search,
        "val": metrics,
        "n_train": card.n_train,
        "n_val": card.n_val,
        "train_seconds": round(seconds, 3),
    }
