"""pyspark.ml stages on 200 real PneumoniaMNIST frames: a saved and reloaded Pipeline equals the CLI stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pyspark.testing import assertDataFrameEqual

from medimg_spark.cli import main
from medimg_spark.ml.stages import (
    FeatureExtractor,
    QualityScorer,
    RecipeTransformer,
    SklearnClassificationModel,
    SklearnClassifier,
    StageInputError,
    StageParamError,
)

FEATURE_SET = {
    "name": "small",
    "extractors": [
        {"kind": "intensity", "params": {"bins": 8}},
        {"kind": "glcm", "params": {"distances": [1], "angles": [0, 90], "levels": 16}},
        {"kind": "pixels", "params": {"size": 7}},
    ],
}
MODEL_PARAMS = {"C": 0.1}
RUN_COLUMNS = ("preprocess_run_id", "processed_at")  # differ between any two runs


@pytest.fixture(scope="module")
def run(spark, sample_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ingest 120 train + 80 val frames, then run preprocess → features → train → predict with the CLI."""
    from medimg_spark.io.ingest import ingest

    tmp = tmp_path_factory.mktemp("ml_stages")
    d = np.load(sample_npz)
    npz = tmp / "subset.npz"
    np.savez(
        npz,
        train_images=d["train_images"][:120],
        train_labels=d["train_labels"][:120],
        val_images=d["val_images"][:80],
        val_labels=d["val_labels"][:80],
    )
    out = tmp / "out"
    summary = ingest(spark, [str(npz)], str(out))
    assert summary["frames_written"] == 200, summary
    fs_yaml = tmp / "small.yaml"
    fs_yaml.write_text(yaml.safe_dump(FEATURE_SET))
    cfg = tmp / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"params": MODEL_PARAMS, "seed": 0}}))
    o = str(out)
    assert main(["preprocess", "--out", o, "--recipe", "classify"]) == 0
    assert main(["features", "--out", o, "--from", "processed", "--set", str(fs_yaml)]) == 0
    assert main(["train", "--out", o, "--model", "sk_logreg", "--config", str(cfg)]) == 0
    assert main(["predict", "--out", o, "--model", str(out / "models" / "sk_logreg")]) == 0
    return {"out": out, "tmp": tmp}


def _pipeline() -> object:
    from pyspark.ml import Pipeline

    return Pipeline(
        stages=[
            RecipeTransformer(recipe="classify"),
            QualityScorer(outputCol="quality"),
            FeatureExtractor(featureSet=json.dumps(FEATURE_SET)),  # inline JSON text
            SklearnClassifier(model="sk_logreg", modelParams=json.dumps(MODEL_PARAMS), seed=0),
        ]
    )


def test_saved_pipeline_reproduces_the_cli_stages(spark, run: dict[str, Path]) -> None:
    from pyspark.ml import PipelineModel
    from pyspark.sql import functions as F

    out, tmp = run["out"], run["tmp"]
    images = spark.read.parquet(str(out / "images"))
    fitted = _pipeline().fit(images)  # train rows fit the model; val rows choose the threshold, as the CLI
    saved = str(tmp / "pipeline_model")
    fitted.write().overwrite().save(saved)
    loaded = PipelineModel.load(saved)
    assert [type(s).__name__ for s in loaded.stages] == [
        "RecipeTransformer",
        "QualityScorer",
        "FeatureExtractor",
        "SklearnClassificationModel",
    ]
    clf = loaded.stages[-1]
    assert clf.card.model_dump(exclude={"created_at", "metrics", "feature_set"}) == fitted.stages[
        -1
    ].card.model_dump(exclude={"created_at", "metrics", "feature_set"})
    cli_card = json.loads((out / "models" / "sk_logreg" / "card.json").read_text())
    assert clf.card.threshold == pytest.approx(cli_card["threshold"], abs=0)
    assert clf.card.train_data_sha256 == cli_card["train_data_sha256"]

    val = images.where(F.col("split") == "val")
    result = loaded.transform(val).cache()
    try:
        # RecipeTransformer: the processed rows, all columns but the run-specific ones
        processed = spark.read.parquet(str(out / "processed"))
        keep = [c for c in processed.columns if c not in RUN_COLUMNS]
        assertDataFrameEqual(result.select(*keep), processed.where(F.col("split") == "val").select(*keep))
        # QualityScorer scores a processed frame alone (its own min-max scale); preprocess stores quality_after
        # in the fixed before/after scale of the recipe (issue 16: for classify, the output's nominal [0, 1])
        from medimg_spark.io.pixels import to_array
        from medimg_spark.quality import QUALITY_KEYS, nominal_scale, quality_metrics

        val_rows = processed.where(F.col("split") == "val").collect()
        scored = {
            r["image_id"]: r["q"] for r in result.select("image_id", F.col("quality").alias("q")).collect()
        }
        assert set(scored) == {r["image_id"] for r in val_rows}
        for r in val_rows:
            frame = to_array(r.asDict())
            alone, fixed = quality_metrics(frame), quality_metrics(frame, nominal_scale(frame))
            for k in QUALITY_KEYS:
                assert scored[r["image_id"]][k] == pytest.approx(alone[k], nan_ok=True), k
                assert r["quality_after"][k] == pytest.approx(fixed[k], nan_ok=True), k
        # FeatureExtractor: the features table's vectors and their ml_attr metadata
        features = spark.read.parquet(str(out / "features"))
        assertDataFrameEqual(
            result.select("image_id", "label", "split", "features"),
            features.where(F.col("split") == "val").select("image_id", "label", "split", "features"),
        )
        assert result.schema["features"].metadata == features.schema["features"].metadata
        assert result.schema["features"].metadata["ml_attr"]["num_attrs"] > 0
        # SklearnClassificationModel: medimg predict's predictions
        predictions = spark.read.parquet(str(out / "predictions")).where(F.col("model") == "sk_logreg")
        cols = ["image_id", "label", "split", "prediction", "probability", "score"]
        got = result.select(*cols)
        assertDataFrameEqual(got, predictions.where(F.col("split") == "val").select(*cols), rtol=0, atol=0)
        assert got.count() == 80
        assert {r["prediction"] for r in got.collect()} == {"0", "1"}
    finally:
        result.unpersist()


def test_classifier_model_files_are_checked_on_load(spark, run: dict[str, Path], tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    from medimg_spark.ml import ModelLoadError, load_model

    features = spark.read.parquet(str(run["out"] / "features"))
    model = SklearnClassifier(modelParams=MODEL_PARAMS, predictionCol="pred", scoreCol="s").fit(features)
    path = str(tmp_path / "clf")
    model.write().save(path)
    again = SklearnClassificationModel.load(path)
    assert again.uid == model.uid and again.getPredictionCol() == "pred" and again.getScoreCol() == "s"
    val = features.where(F.col("split") == "val")
    assertDataFrameEqual(model.transform(val), again.transform(val), rtol=0, atol=0)
    assert load_model(tmp_path / "clf" / "model").card.classes == ["0", "1"]  # the model store's folder
    joblib_file = tmp_path / "clf" / "model" / "model.joblib"
    joblib_file.write_bytes(joblib_file.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        SklearnClassificationModel.load(path)


def test_pipelines_holding_loaded_models_save_and_load(spark, run: dict[str, Path], tmp_path: Path) -> None:
    from pyspark.ml import PipelineModel

    from medimg_spark.ml import ModelLoadError, load_model, train

    out = run["out"]
    mllib = train(spark, out, "mllib_logreg", {"model_dir": str(tmp_path / "mllib")})["model_path"]
    features = spark.read.parquet(str(out / "features")).withColumnRenamed("features", "vec")
    for i, folder in enumerate([out / "models" / "sk_logreg", mllib]):  # the CLI's model, an MLlib one
        model = load_model(folder)
        model.setFeaturesCol("vec").setPredictionCol("label_hat")
        pm = PipelineModel(stages=[model])
        pm.write().save(str(tmp_path / f"pm{i}"))
        back = PipelineModel.load(str(tmp_path / f"pm{i}")).stages[0]
        assert type(back) is type(model) and back.card == model.card
        assert back.getFeaturesCol() == "vec" and back.getPredictionCol() == "label_hat"
        assertDataFrameEqual(back.transform(features), model.transform(features), rtol=0, atol=0)
    with pytest.raises(ModelLoadError, match="overwrite"):
        load_model(mllib).write().save(str(tmp_path / "pm0"))


def test_params_have_docs_defaults_and_typed_errors() -> None:
    stages = [RecipeTransformer(recipe="classify"), QualityScorer(), FeatureExtractor(), SklearnClassifier()]
    for stage in stages:
        text = stage.explainParams()
        for p in stage.params:
            assert p.doc and p.name in text, (stage, p.name)
    assert FeatureExtractor().getFeatureSet() == "texture" and FeatureExtractor().getOutputCol() == "features"
    assert SklearnClassifier().getOrDefault("model") == "sk_logreg"
    assert QualityScorer().getOutputCol() == "quality"
    cases = [
        (lambda: SklearnClassifier(model="sk_nope"), "Param model"),
        (lambda: SklearnClassifier().setParams(classWeight="heavy"), "Param classWeight"),
        (lambda: SklearnClassifier(thresholdRule="median"), "Param thresholdRule"),
        (lambda: SklearnClassifier(modelParams="{C: 1"), "Param modelParams"),
        (lambda: SklearnClassifier(nTrees=3), "no Param"),
        (lambda: RecipeTransformer(recipe="no_such_recipe"), "Param recipe"),
        (lambda: RecipeTransformer(recipe="name: x\nsteps: []\n"), "Param recipe"),
        (lambda: FeatureExtractor(featureSet="no_such_set"), "Param featureSet"),
        (
            lambda: FeatureExtractor(featureSet='{"name": "x", "extractors": [{"kind": "zz"}]}'),
            "Param featureSet",
        ),
    ]
    for make, needle in cases:
        with pytest.raises(StageParamError, match=needle):
            make()


def test_missing_input_columns_name_them(spark) -> None:
    df = spark.createDataFrame([("a", 1)], "image_id string, rows int")
    with pytest.raises(StageInputError, match="pixels"):
        QualityScorer().transform(df)
    with pytest.raises(StageInputError, match="modality"):
        RecipeTransformer(recipe="classify").transform(df)
