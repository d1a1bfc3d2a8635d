"""The JAX CNN estimators and the soft vote on 340 real PneumoniaMNIST frames (a few epochs of a small net)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from pyspark.testing import assertDataFrameEqual

from medimg_spark.cli import main

pytest.importorskip("jax")
pytest.importorskip("optax")

N_TRAIN, N_VAL = 240, 100
#: small and quick: two stages, four epochs (the shipped defaults are wider and longer)
CNN = {"widths": [8, 16], "epochs": 4, "batch_size": 32, "patience": 4, "lr": 3e-3}
FEATURE_SET = {"name": "tiny", "extractors": [{"kind": "intensity", "params": {"bins": 8}}]}
ROOT = Path(__file__).resolve().parents[1]


def _subset(sample_npz: Path) -> dict[str, np.ndarray]:
    d = np.load(sample_npz)
    return {
        "train_images": d["train_images"][:N_TRAIN],
        "train_labels": d["train_labels"][:N_TRAIN],
        "val_images": d["val_images"][:N_VAL],
        "val_labels": d["val_labels"][:N_VAL],
    }


@pytest.fixture(scope="module")
def run(spark, sample_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ingest the subset, then ``medimg train --model cnn`` through the CLI."""
    from medimg_spark.io.ingest import ingest

    tmp = tmp_path_factory.mktemp("ml_cnn")
    npz = tmp / "subset.npz"
    np.savez(npz, **_subset(sample_npz))
    out = tmp / "out"
    assert ingest(spark, [str(npz)], str(out))["frames_written"] == N_TRAIN + N_VAL
    cfg = tmp / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"cnn": CNN, "seed": 0}}))
    assert main(["train", "--out", str(out), "--model", "cnn", "--config", str(cfg)]) == 0
    return {"out": out, "tmp": tmp, "model": out / "models" / "cnn"}


def test_training_loss_falls_and_the_same_seed_gives_identical_weights(spark, run: dict[str, Path]) -> None:
    """A refit of the frames the CLI streamed, in this process, equals the CLI's model bit for bit."""
    from medimg_spark.config_models import TrainConfig
    from medimg_spark.ml import load_model
    from medimg_spark.ml.cnn import (
        check_class_indices,
        fit_cnn,
        init_params,
        predict_proba,
        resolve_cnn_config,
    )
    from medimg_spark.ml.cnn_spark import collect_frames, frames_table

    cfg = resolve_cnn_config("cnn", TrainConfig(cnn=CNN, seed=0))
    df = frames_table(spark, str(run["out"]), "images", None)
    tr, va = collect_frames(df, "train", cfg), collect_frames(df, "val", cfg)
    assert tr.x.shape == (N_TRAIN, 28, 28) and tr.x.dtype == np.float32 and list(tr.ids) == sorted(tr.ids)
    np.testing.assert_allclose(tr.x.mean(axis=(1, 2)), 0, atol=1e-5)  # z-scored per frame
    y, yv = check_class_indices(tr.labels, ["0", "1"]), check_class_indices(va.labels, ["0", "1"])
    a = fit_cnn(tr.x, y, va.x, yv, 2, cfg, pos_index=1)
    losses = [h["train_loss"] for h in a.history]
    assert len(losses) == CNN["epochs"] and losses[-1] < losses[0], losses
    assert a.history[a.best_epoch - 1]["val_roc_auc"] > 0.85, a.history
    cli = load_model(run["model"])
    assert sorted(a.params) == sorted(cli.weights)
    assert all(np.array_equal(a.params[k], cli.weights[k]) for k in a.params)
    assert a.temperature == cli.card.temperature and 0.05 <= a.temperature <= 20
    assert [h["train_loss"] for h in cli.card.history] == losses
    proba = predict_proba(a.params, va.x, a.spec, a.temperature)
    assert np.allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(
        cli.predict_proba(va.x), proba, rtol=0, atol=1e-5
    )  # prepared frames: ~unchanged
    assert not np.array_equal(init_params(a.spec, 1)["s0.c0.w"], init_params(a.spec, 0)["s0.c0.w"])


def test_cli_train_writes_weights_and_a_card(run: dict[str, Path]) -> None:
    card = json.loads((run["model"] / "card.json").read_text())
    assert (run["model"] / "weights.npz").is_file()
    assert card["kind"] == "cnn" and card["framework"] == "jax" and card["backend"] in ("cpu", "gpu", "tpu")
    assert card["arch"] == "cnn" and card["input_size"] == 28 and card["normalisation"] == "zscore"
    assert card["classes"] == ["0", "1"] and card["positive_label"] == "1"
    assert card["n_train"] == N_TRAIN and card["n_val"] == N_VAL
    assert len(card["history"]) == CNN["epochs"] and 1 <= card["best_epoch"] <= CNN["epochs"]
    assert card["temperature"] > 0 and 0 < card["threshold"] < 1
    assert card["params"]["widths"] == CNN["widths"]
    assert card["metrics"]["val"]["roc_auc"] > 0.85


def test_executor_inference_equals_local_inference(spark, run: dict[str, Path]) -> None:
    from pyspark.sql import functions as F

    from medimg_spark.io.pixels import to_array
    from medimg_spark.ml import load_model

    model = load_model(run["model"])
    images = spark.read.parquet(str(run["out"] / "images")).where(F.col("split") == "val")
    got = (
        model.transform(images)
        .select(
            "image_id", "pixels", "rows", "cols", "channels", "dtype", "probability", "score", "prediction"
        )
        .toPandas()
        .sort_values("image_id")
    )
    assert len(got) == N_VAL
    local = model.predict_proba(np.stack([to_array(r) for _, r in got.iterrows()]))
    remote = np.vstack(got["probability"].to_list())
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["score"].to_numpy(), local[:, 1], rtol=0, atol=1e-5)
    assert list(got["prediction"]) == list(model.predict(np.stack([to_array(r) for _, r in got.iterrows()])))

    # medimg predict / evaluate read the images table for a CNN
    o = str(run["out"])
    assert main(["predict", "--out", o, "--model", str(run["model"]), "--split", "val"]) == 0
    preds = spark.read.parquet(str(run["out"] / "predictions")).where(F.col("model") == "cnn").toPandas()
    preds = preds.sort_values("image_id")
    np.testing.assert_allclose(np.vstack(preds["probability"].to_list()), remote, rtol=0, atol=1e-6)
    assert main(["evaluate", "--out", o, "--model", str(run["model"]), "--split", "val"]) == 0
    metrics = json.loads((run["out"] / "metrics" / "eval_cnn_val.json").read_text())
    card = json.loads((run["model"] / "card.json").read_text())
    assert metrics["n"] == N_VAL and metrics["roc_auc"] == pytest.approx(
        card["metrics"]["val"]["roc_auc"], abs=1e-4
    )


def test_write_save_and_load_round_trip(spark, run: dict[str, Path], tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    from medimg_spark.ml import ModelLoadError, load_model
    from medimg_spark.ml.cnn_spark import CnnClassifier

    model = load_model(run["model"])
    model.setPredictionCol("pred")
    saved = str(tmp_path / "saved")
    model.write().overwrite().save(saved)
    back = CnnClassifier.read().load(saved)
    assert isinstance(back, CnnClassifier) and back.getPredictionCol() == "pred"
    assert back.card == model.card
    assert all(np.array_equal(back.weights[k], model.weights[k]) for k in model.weights)
    val = (
        spark.read.parquet(str(run["out"] / "images"))
        .where(F.col("split") == "val")
        .select("image_id", "pixels", "rows", "cols", "channels", "dtype")
    )
    cols = ["image_id", "probability", "score", "pred"]
    assertDataFrameEqual(
        back.transform(val).select(*cols), model.transform(val).select(*cols), rtol=0, atol=0
    )
    plain = load_model(Path(saved) / "model")
    assert isinstance(plain, CnnClassifier) and plain.card == model.card
    weights = Path(saved) / "model" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        CnnClassifier.read().load(saved)
    with pytest.raises(ModelLoadError, match="not a CNN"):
        CnnClassifier._from_loaded(object())  # type: ignore[arg-type]


def test_vote_of_a_cnn_and_a_logistic_regression(spark, run: dict[str, Path]) -> None:
    from pyspark.sql import functions as F

    from medimg_spark.ml import load_model, predictions_frame

    out, tmp = run["out"], run["tmp"]
    o = str(out)
    fs = tmp / "tiny.yaml"
    fs.write_text(yaml.safe_dump(FEATURE_SET))
    assert main(["features", "--out", o, "--set", str(fs)]) == 0
    assert main(["train", "--out", o, "--model", "sk_logreg"]) == 0
    cfg = tmp / "vote.yaml"
    members = [{"name": "cnn", "weight": 2.0}, {"model_path": str(out / "models" / "sk_logreg")}]
    cfg.write_text(yaml.safe_dump({"train": {"params": {"members": members}}}))
    assert main(["train", "--out", o, "--model", "vote", "--config", str(cfg)]) == 0
    card = json.loads((out / "models" / "vote" / "card.json").read_text())
    assert card["kind"] == "vote" and [m["kind"] for m in card["members"]] == ["cnn", "sklearn"]
    assert card["n_val"] == N_VAL and 0 < card["threshold"] < 1
    assert main(["predict", "--out", o, "--model", str(out / "models" / "vote"), "--split", "val"]) == 0
    assert main(["evaluate", "--out", o, "--model", str(out / "models" / "vote"), "--split", "val"]) == 0
    voted = spark.read.parquet(str(out / "predictions")).where(F.col("model") == "vote").toPandas()
    voted = voted.sort_values("image_id").reset_index()
    by = {
        m: predictions_frame(spark, out, load_model(out / "models" / m), "val")
        .toPandas()
        .sort_values("image_id")
        for m in ("cnn", "sk_logreg")
    }
    assert len(voted) == N_VAL
    assert list(voted["image_id"]) == list(by["cnn"]["image_id"]) == list(by["sk_logreg"]["image_id"])
    want = (
        2 * np.vstack(by["cnn"]["probability"].to_list())
        + np.vstack(by["sk_logreg"]["probability"].to_list())
    ) / 3
    np.testing.assert_allclose(np.vstack(voted["probability"].to_list()), want, rtol=0, atol=1e-12)
    thr = card["threshold"]
    assert list(voted["prediction"]) == ["1" if s >= thr else "0" for s in want[:, 1]]
    metrics = json.loads((out / "metrics" / "eval_vote_val.json").read_text())
    assert metrics["n"] == N_VAL and metrics["roc_auc"] == pytest.approx(
        card["metrics"]["val"]["roc_auc"], abs=1e-9
    )
    # transform of one DataFrame holding both inputs (frames + features) gives the same probabilities
    vote = load_model(out / "models" / "vote")
    both = (
        spark.read.parquet(str(out / "images"))
        .where(F.col("split") == "val")
        .join(spark.read.parquet(str(out / "features")).select("image_id", "features"), "image_id")
    )
    got = vote.transform(both).select("image_id", "probability").toPandas().sort_values("image_id")
    np.testing.assert_allclose(np.vstack(got["probability"].to_list()), want, rtol=0, atol=1e-9)


def test_too_many_frames_are_refused_before_any_pixel_moves(spark, run: dict[str, Path]) -> None:
    from medimg_spark.config_models import CnnConfig
    from medimg_spark.ml.cnn_spark import TooManyImagesError, collect_frames, frames_table

    df = frames_table(spark, str(run["out"]), "images", None)
    with pytest.raises(TooManyImagesError, match="max_train_images"):
        collect_frames(df, "train", CnnConfig(max_train_images=N_TRAIN - 1))


def test_a_processed_source_is_read_for_one_recipe(spark, run: dict[str, Path]) -> None:
    from pyspark.sql import functions as F

    from medimg_spark.ml import ModelDataError
    from medimg_spark.ml.cnn_spark import frames_table

    images = spark.read.parquet(str(run["out"] / "images")).where(F.col("split") == "val")
    two = images.withColumn("recipe_name", F.lit("a")).unionByName(
        images.withColumn("recipe_name", F.lit("b"))
    )
    lake = run["tmp"] / "two_recipes"
    two.write.parquet(str(lake / "processed"))
    with pytest.raises(ModelDataError, match=r"recipes \['a', 'b'\]; choose one with train.cnn.recipe"):
        frames_table(spark, str(lake), "processed", None)
    with pytest.raises(ModelDataError, match="no rows of recipe 'c'"):
        frames_table(spark, str(lake), "processed", "c")
    assert frames_table(spark, str(lake), "processed", "b").count() == N_VAL


@pytest.mark.parametrize(
    "train",
    [
        {"cnn": {"epochz": 3}},  # unknown key of train.cnn
        {"params": {"bogus": 1}},  # train.params of a CNN are CNN keys
        {"grid": {"lr": [0.1, -1.0]}},  # a grid point out of range
        {"cnn": {"arch": "resnet"}},  # contradicts --model cnn
    ],
)
def test_bad_cnn_settings_fail_with_exit_2_before_spark(tmp_path: Path, train: dict, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"train": train}))
    assert main(["train", "--out", str(tmp_path / "nowhere"), "--model", "cnn", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert ("cnn" in err or "params" in err or "grid" in err) and not (tmp_path / "nowhere").exists()


def test_the_ml_package_works_without_jax_and_the_cnn_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class _NoJax(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("jax", "jaxlib", "optax"):
                    raise ImportError(f"{name} is blocked")
                return None

        sys.meta_path.insert(0, _NoJax())
        import numpy as np
        import medimg_spark.ml
        from medimg_spark.ml import ESTIMATORS, TrainConfig, train
        import medimg_spark.ml.cnn_spark, medimg_spark.ml.vote, medimg_spark.ml.predict
        from medimg_spark.ml.cnn import CnnDependencyError, fit_cnn, prepare_frame, resolve_cnn_config
        from medimg_spark.ml.models import check_model_options

        check_model_options("cnn", TrainConfig(cnn={"epochs": 2}))
        frame = prepare_frame(np.arange(64, dtype=np.uint8).reshape(8, 8), 16)
        try:
            fit_cnn(np.zeros((4, 28, 28), np.float32), np.array([0, 1, 0, 1]), None, None, 2,
                    resolve_cnn_config("cnn", TrainConfig()))
            err = ""
        except CnnDependencyError as exc:
            err = str(exc)
        print(json.dumps({"jax": "jax" in sys.modules, "cnn": "cnn" in ESTIMATORS.names(),
                          "shape": list(frame.shape), "err": err}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["jax"] is False and out["cnn"] is True and out["shape"] == [16, 16]
    assert "pip install 'medimg-spark[dl]'" in out["err"]


def test_the_pipeline_trains_and_evaluates_a_cnn(run: dict[str, Path]) -> None:
    out, tmp = run["out"], run["tmp"]
    bad = tmp / "bad_pipeline.yaml"
    model = {"name": "cnn_pipe", "model": "cnn", "train": {"cnn": {**CNN, "epochz": 1}}}
    bad.write_text(yaml.safe_dump({"pipeline": {"stages": ["train", "evaluate"], "models": [model]}}))
    assert main(["run", "--config", str(bad), "--out", str(out)]) == 2
    good = tmp / "pipeline.yaml"
    model["train"] = {"cnn": CNN, "seed": 0}
    good.write_text(yaml.safe_dump({"pipeline": {"stages": ["train", "evaluate"], "models": [model]}}))
    assert main(["run", "--config", str(good), "--out", str(out)]) == 0
    card = json.loads((out / "models" / "cnn_pipe" / "card.json").read_text())
    first = json.loads((run["model"] / "card.json").read_text())
    assert card["kind"] == "cnn" and card["train_data_sha256"] == first["train_data_sha256"]
    assert card["history"] == [
        {**h, "seconds": card["history"][i]["seconds"]} for i, h in enumerate(first["history"])
    ]
    metrics = json.loads((out / "metrics" / "eval_cnn_pipe_val.json").read_text())
    assert metrics["roc_auc"] == pytest.approx(first["metrics"]["val"]["roc_auc"], abs=1e-9)
