"""Region-level recognition: superpixel regions, per-region features, MIL softmax, the recognize stage."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from medimg_spark.cli import EXIT_CONFIG, EXIT_OK, main
from medimg_spark.features import glcm_features
from medimg_spark.ml.recognize import (
    RecognizeConfig,
    aggregate_scores,
    fit_region_model,
    load_region_model,
    recognize_frame,
    region_feature_names,
    region_table,
    working_frame,
)

N_TRAIN, N_VAL = 140, 60
#: small and fast: 32 SLIC superpixels at 64 px, two re-labelling rounds
OPTIONS: dict[str, Any] = {"superpixels": {"n_segments": 32}, "mil_rounds": 2, "seed": 0}


@pytest.fixture(scope="module")
def frames(sample_npz: Path) -> dict[str, np.ndarray]:
    d = np.load(sample_npz)
    return {
        "train": d["train_images"][:N_TRAIN],
        "train_y": d["train_labels"][:N_TRAIN, 0].astype(str),
        "val": d["val_images"][:N_VAL],
        "val_y": d["val_labels"][:N_VAL, 0].astype(str),
    }


@pytest.fixture(scope="module")
def tables(frames: dict[str, np.ndarray]) -> dict[str, Any]:
    cfg = RecognizeConfig.model_validate(OPTIONS)
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        regs = [recognize_frame(x, cfg) for x in frames[split]]
        out[split] = region_table([f"{split}{i}" for i in range(len(regs))], frames[f"{split}_y"], regs)
    return out


@pytest.fixture(scope="module")
def lake(spark: Any, sample_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_TRAIN + N_VAL PneumoniaMNIST frames and one real CT frame (unlabelled), ingested."""
    from medimg_spark.io.ingest import ingest

    root = tmp_path_factory.mktemp("recognize")
    src = root / "in"
    src.mkdir()
    ref = np.load(sample_npz)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=ref["train_images"][:N_TRAIN],
        train_labels=ref["train_labels"][:N_TRAIN],
        val_images=ref["val_images"][:N_VAL],
        val_labels=ref["val_labels"][:N_VAL],
    )
    (src / "small.npz").write_bytes(buf.getvalue())
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    out = root / "lake"
    assert ingest(spark, [str(src)], str(out))["frames_written"] == N_TRAIN + N_VAL + 1
    return out


@pytest.fixture(scope="module")
def recognized(spark: Any, lake: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``medimg recognize`` run once from the CLI (its JSON summary)."""
    cfg = tmp_path_factory.mktemp("recognize_cfg") / "c.yaml"
    cfg.write_text(yaml.safe_dump({"recognize": OPTIONS}))
    buf = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(buf):
        code = main(["recognize", "--out", str(lake), "--name", "reg", "--config", str(cfg), "--json"])
    assert code == EXIT_OK
    text = buf.getvalue()
    return json.loads(text[text.index("{") :])  # type: ignore[no-any-return]


def test_region_table_bboxes_inside_frames_and_unique_ids(spark: Any, lake: Path, recognized: dict) -> None:
    from pyspark.sql import functions as F

    regions = spark.read.parquet(str(lake / "region_predictions")).where(F.col("model") == "reg")
    assert regions.columns == [
        "image_id",
        "label",
        "split",
        "region_id",
        "x0",
        "y0",
        "x1",
        "y1",
        "area",
        "probability",
        "prediction",
        "model",
    ]
    sizes = spark.read.parquet(str(lake / "images")).select("image_id", "rows", "cols")
    pdf = regions.join(sizes, "image_id").toPandas()
    assert len(pdf) == recognized["n_regions"] > 10 * (N_TRAIN + N_VAL)
    assert ((pdf.x0 >= 0) & (pdf.y0 >= 0) & (pdf.x0 < pdf.x1) & (pdf.y0 < pdf.y1)).all()
    assert ((pdf.x1 <= pdf.cols) & (pdf.y1 <= pdf.rows)).all()
    assert (pdf.area > 0).all()
    assert not pdf.duplicated(["image_id", "region_id"]).any()
    # the regions of a frame tile it: their areas add up to the frame (no superpixel dropped here)
    per_image = pdf.groupby("image_id").agg(
        area=("area", "sum"), rows=("rows", "first"), cols=("cols", "first")
    )
    assert np.allclose(per_image.area, per_image.rows * per_image["cols"], rtol=0.02)
    proba = np.vstack(pdf.probability.to_numpy())
    assert proba.shape[1] == 2 and np.allclose(proba.sum(axis=1), 1.0)
    assert set(pdf.prediction) <= {"0", "1"}
    assert pdf.image_id.nunique() == N_TRAIN + N_VAL + 1  # the unlabelled CT frame has regions too


def test_per_image_rows_are_read_by_evaluate(
    spark: Any, lake: Path, recognized: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyspark.sql import functions as F

    pred = spark.read.parquet(str(lake / "predictions")).where(F.col("model") == "reg")
    assert sorted(pred.columns) == sorted(
        ["image_id", "label", "split", "prediction", "probability", "score", "model"]
    )
    pdf = pred.toPandas()
    assert len(pdf) == pdf.image_id.nunique() == N_TRAIN + N_VAL + 1  # one row per image
    assert recognized["n_images"] == N_TRAIN + N_VAL + 1 and recognized["n_failed"] == 0
    ct = pdf[pdf.label.isna()]
    assert len(ct) == 1 and 0.0 <= float(ct.score.iloc[0]) <= 1.0
    capsys.readouterr()
    code = main(["evaluate", "--out", str(lake), "--model", str(lake / "models" / "reg"), "--split", "val"])
    assert code == EXIT_OK
    metrics = json.loads((lake / "metrics" / "eval_reg_val.json").read_text())
    assert metrics["n"] == N_VAL and metrics["model"] == "reg" and metrics["split"] == "val"
    assert metrics["roc_auc"] == pytest.approx(recognized["val"]["roc_auc"])
    assert metrics["roc_auc"] > 0.75  # region features carry the pneumonia signal on real frames
    card = json.loads((lake / "models" / "reg" / "card.json").read_text())
    assert card["kind"] == "regions" and card["region_labels"] == "mil"
    assert card["aggregate"] in ("max", "noisy_or", "top_k_mean") and set(card["aggregate_search"]) == {
        "max",
        "noisy_or",
        "top_k_mean",
    }
    assert card["threshold"] == metrics["threshold"] == recognized["threshold"]
    model = load_region_model(lake / "models" / "reg")
    assert model.card.feature_names == region_feature_names()


def test_predict_with_a_region_model_reproduces_the_stage(
    spark: Any, lake: Path, recognized: dict, tmp_path: Path
) -> None:
    """``medimg predict`` recomputes the regions of val on the executors: the same rows as the stage wrote."""
    from pyspark.sql import functions as F

    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    before = spark.read.parquet(str(lake / "predictions")).where(
        (F.col("model") == "reg") & (F.col("split") == "val")
    )
    before_pdf = before.toPandas().sort_values("image_id").reset_index(drop=True)
    code = main(["predict", "--out", str(copy), "--model", str(copy / "models" / "reg"), "--split", "val"])
    assert code == EXIT_OK
    after = spark.read.parquet(str(copy / "predictions")).where(F.col("model") == "reg")
    after_pdf = after.toPandas().sort_values("image_id").reset_index(drop=True)
    assert len(after_pdf) == N_VAL and list(after_pdf.image_id) == list(before_pdf.image_id)
    assert list(after_pdf.prediction) == list(before_pdf.prediction)
    np.testing.assert_allclose(
        np.vstack(after_pdf.probability), np.vstack(before_pdf.probability), rtol=1e-12
    )


def test_medimg_run_trains_the_pipeline_recognize_models(
    lake: Path, recognized: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "recognize": OPTIONS,
                "pipeline": {
                    "stages": ["recognize"],
                    "recognize": [{"name": "qs", "options": {"mil_rounds": 0}}],
                },
            }
        )
    )
    log = tmp_path / "log.jsonl"
    assert main(["run", "--config", str(cfg), "--out", str(copy), "--log-json", str(log)]) == EXIT_OK
    assert "recognize qs: " in capsys.readouterr().out
    card = json.loads((copy / "models" / "qs" / "card.json").read_text())
    assert card["config"]["mil_rounds"] == 0 and card["config"]["superpixels"]["n_segments"] == 32
    assert len(card["mil_history"]) == 1
    assert (copy / "predictions" / "model=qs").is_dir() and (copy / "predictions" / "model=reg").is_dir()
    assert (copy / "metrics" / "eval_qs_val.json").is_file()
    ends = [json.loads(line) for line in log.read_text().splitlines() if '"stage_end"' in line]
    assert [e["stage"] for e in ends] == ["recognize"] and ends[0]["n_images"] == N_TRAIN + N_VAL + 1


def test_mil_positive_images_have_a_positive_region(tables: dict[str, Any]) -> None:
    tr, va = tables["train"], tables["val"]
    model = fit_region_model(tr, va, {**OPTIONS, "top_fraction": 0.25})
    y = model.train_region_labels
    assert y is not None and len(y) == len(tr["X"])
    pos_images = 0
    for i, lab in enumerate(tr["image_labels"]):
        rows = tr["image"] == i
        if lab == "1":
            pos_images += 1
            assert (y[rows] == "1").any(), f"positive image {i} lost every positive region"
            assert (y[rows] == "1").sum() <= int(np.ceil(0.25 * rows.sum()))  # only its top regions
        else:
            assert (y[rows] == "0").all(), f"negative image {i} got a positive region"
    assert pos_images > 50
    assert model.card.mil_history[0]["round"] == 0
    assert model.card.mil_history[0]["positive_regions"] > model.card.mil_history[-1]["positive_regions"]
    # without re-labelling every region of a positive image stays positive
    plain = fit_region_model(tr, va, {**OPTIONS, "mil_rounds": 0})
    assert plain.train_region_labels is not None
    assert (plain.train_region_labels == "1").sum() == np.isin(
        tr["image"], np.flatnonzero(tr["image_labels"] == "1")
    ).sum()


def test_mask_labels_need_masks(tables: dict[str, Any]) -> None:
    from medimg_spark.ml.recognize import RegionDataError

    with pytest.raises(RegionDataError, match="region_labels: mask needs frames with masks"):
        fit_region_model(tables["train"], None, {**OPTIONS, "region_labels": "mask"})


def test_downsampling_bound_on_a_full_size_cr_frame() -> None:
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    assert ds.Modality == "CR"
    img = ds.pixel_array
    rows, cols = img.shape
    assert max(rows, cols) > 1000
    for method in ("slic", "quickshift"):
        cfg = RecognizeConfig.model_validate({"superpixels": {"method": method}})
        t0 = time.perf_counter()
        fr = recognize_frame(img, cfg)
        seconds = time.perf_counter() - t0
        assert max(fr.shape) == cfg.max_side and fr.labels.shape == fr.shape
        assert seconds < 3.0, f"{method}: {seconds:.2f} s for a {rows}x{cols} frame"  # ~0.5 s unloaded
        assert fr.full_shape == (rows, cols)
        x0, y0, x1, y1 = fr.bboxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= cols).all() and (y1 <= rows).all()
        assert ((x1 > x0) & (y1 > y0)).all()
        assert fr.areas.sum() == pytest.approx(rows * cols, rel=0.02)
        assert len(np.unique(fr.region_ids)) == len(fr.region_ids) > 5
    small = working_frame(img, RecognizeConfig(max_side=64))[0]
    assert max(small.shape) == 64


def test_small_frames_are_upsampled_and_boxes_map_back(frames: dict[str, np.ndarray]) -> None:
    img = frames["val"][0]
    fr = recognize_frame(img, RecognizeConfig())
    assert img.shape == (28, 28) and fr.shape == (64, 64)
    assert fr.bboxes[:, 2].max() <= 28 and fr.bboxes[:, 3].max() <= 28
    # a region's box in working pixels maps onto its full-resolution box
    k = int(np.argmax(fr.areas))
    rr, cc = np.nonzero(fr.labels == fr.region_ids[k])
    s = 28 / 64
    assert fr.bboxes[k, 0] == int(np.floor(cc.min() * s)) and fr.bboxes[k, 3] == min(
        28, int(np.ceil((rr.max() + 1) * s))
    )


def test_region_glcm_equals_the_feature_extractor_with_the_region_as_mask(
    frames: dict[str, np.ndarray],
) -> None:
    from medimg_spark.ml.recognize import _equalize

    cfg = RecognizeConfig()
    img = frames["train"][5]
    fr = recognize_frame(img, cfg)
    eq = _equalize(working_frame(img, cfg)[0])
    u8 = np.rint(eq * 255).astype(np.uint8)
    names = region_feature_names()
    cols = [i for i, n in enumerate(names) if n.startswith("glcm_")]
    assert len(names) == fr.features.shape[1]
    for k in range(0, len(fr.region_ids), 5):
        ref, _ = glcm_features(
            u8,
            fr.labels == fr.region_ids[k],
            distances=(1,),
            angles=(0, 90),
            levels=cfg.glcm_levels,
            props=("contrast", "homogeneity", "energy", "correlation"),
        )
        np.testing.assert_allclose(fr.features[k, cols], ref, atol=1e-12)


def test_determinism_with_a_seed(frames: dict[str, np.ndarray], tables: dict[str, Any]) -> None:
    img = frames["train"][7]
    for method in ("slic", "quickshift"):
        cfg = RecognizeConfig.model_validate({"superpixels": {"method": method}, "seed": 3})
        a, b = recognize_frame(img, cfg), recognize_frame(img, cfg)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.features, b.features)
    m1 = fit_region_model(tables["train"], tables["val"], OPTIONS)
    m2 = fit_region_model(tables["train"], tables["val"], OPTIONS)
    clf1, clf2 = m1.estimator[-1], m2.estimator[-1]
    np.testing.assert_array_equal(clf1.coef_, clf2.coef_)
    assert m1.card.threshold == m2.card.threshold and m1.card.train_data_sha256 == m2.card.train_data_sha256
    p1, _ = m1.predict_images(frames["val"][:10])
    p2, _ = m2.predict_images(frames["val"][:10])
    np.testing.assert_array_equal(p1, p2)


def test_aggregates() -> None:
    p = np.array([0.1, 0.8, 0.5])
    assert aggregate_scores(p, "max") == 0.8
    assert aggregate_scores(p, "noisy_or") == pytest.approx(1 - 0.9 * 0.2 * 0.5)
    assert aggregate_scores(p, "top_k_mean", top_k=2) == pytest.approx(0.65)
    assert aggregate_scores(np.zeros(0), "max") == 0.0


def test_bad_recognize_config_fails_before_spark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recognize:\n  superpixels: {method: watershed}\n")
    assert main(["recognize", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == EXIT_CONFIG
    assert "recognize.superpixels.method" in capsys.readouterr().err
    cfg.write_text("recognize:\n  region_labels: mask\n")
    assert main(["recognize", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == EXIT_CONFIG
    assert "source: processed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pipeline_recognize_options_win_and_are_validated() -> None:
    from medimg_spark.config import parse_config
    from medimg_spark.errors import ConfigError
    from medimg_spark.pipeline import recognize_options, validate_recipes

    cfg = parse_config(
        {
            "recognize": {"max_side": 96, "mil_rounds": 1},
            "pipeline": {
                "stages": ["recognize"],
                "recognize": [{"name": "qs", "options": {"mil_rounds": 4}}],
            },
        }
    )
    rcfg = recognize_options(cfg, cfg.pipeline.recognize[0])
    assert (rcfg.name, rcfg.max_side, rcfg.mil_rounds) == ("qs", 96, 4)
    bad = parse_config(
        {"pipeline": {"stages": ["recognize"], "recognize": [{"name": "x", "options": {"top_fracton": 0.3}}]}}
    )
    with pytest.raises(ConfigError, match=r"(?s)pipeline\.recognize\[x\]\.options: .*top_fracton"):
        validate_recipes(bad.pipeline, Path.cwd(), bad)


def test_the_core_runs_without_pyspark() -> None:
    from tests.test_layers import _run

    out = _run(
        """
        import json
        import numpy as np
        from medimg_spark.ml.recognize import RecognizeConfig, fit_region_model, recognize_frame, region_table

        rng = np.random.default_rng(0)
        imgs = [rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(8)]
        for i in range(4):  # positives: one bright blob
            imgs[i][10:20, 10:20] = 250
        cfg = RecognizeConfig(mil_rounds=1)
        regs = [recognize_frame(x, cfg) for x in imgs]
        t = region_table([str(i) for i in range(8)], ["1"] * 4 + ["0"] * 4, regs)
        m = fit_region_model(t, None, cfg)
        print(json.dumps({"classes": m.classes, "n": int(len(t["X"]))}))
        """
    )
    assert out["classes"] == ["0", "1"] and out["n"] > 8
