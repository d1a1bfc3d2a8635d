"""Regression tests of the analysis stages (issue 13, item 5), on real frames.

* features per (image, recipe): ``processed`` with two recipes is refused unless one is chosen;
* feature sets side by side: a model still predicts after features are recomputed with another set;
* ``medimg run`` passes the localize options (per method too) and keeps every method's regions;
* DBSCAN / k-means / GMM on a real-size CR frame: downsampled (boxes in full resolution) or quarantined;
* the ``lungs`` method finds two lung fields on PneumoniaMNIST and on a full-size CR chest;
* a failed ``medimg run`` reports the stages that finished (stderr and run log) and exits non-zero.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from medimg_spark.cli import EXIT_CONFIG, EXIT_FAILURE, main
from medimg_spark.config_models import LocalizeConfig
from medimg_spark.ml.localize import LocalizeTooLargeError, downsample_factor, find_regions
from medimg_spark.ml.lungs import find_lungs, plausible_lung_boxes

N_TRAIN, N_VAL = 40, 20


def _run(tmp: Path, out: Path, name: str, body: str, capsys: Any, *extra: str) -> tuple[int, str, str]:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(body)
    code = main(["run", "--config", str(cfg), "--out", str(out), "--json", *extra])
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, sample_npz: Path) -> tuple[Path, dict[str, Any]]:
    """One ``medimg run``: 60 PneumoniaMNIST frames, two recipes, features of one, gmm (k: 3) and dbscan."""
    root = tmp_path_factory.mktemp("analysis")
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
    out = root / "out"
    cfg = root / "run.yaml"
    cfg.write_text(f"""
pipeline:
  inputs: ["{src}"]
  stages: [ingest, preprocess, features, localize]
  recipes: [{{recipe: classify}}, {{recipe: denoise}}]
  features: {{source: processed, set: pixels14, recipe: classify}}
  localize: [{{method: gmm, options: {{k: 3}}}}, dbscan]
localize: {{k: 2, source: processed}}
""")
    log = root / "run.jsonl"
    assert (
        main(["run", "--config", str(cfg), "--out", str(out), "--keep-phi", "--json", "--log-json", str(log)])
        == 0
    )
    return out, {"config": cfg, "log": log}


def test_features_are_per_image_and_recipe(
    spark: Any, lake: tuple[Path, dict[str, Any]], capsys: Any
) -> None:
    from medimg_spark.features import FeatureRecipeError, compute_features

    out, _ = lake
    processed = spark.read.parquet(str(out / "processed"))
    assert processed.count() == 2 * (N_TRAIN + N_VAL)  # both recipes' rows: the table features read
    feats = spark.read.parquet(str(out / "features"))
    assert feats.columns == ["image_id", "recipe", "label", "split", "features"]
    assert feats.count() == feats.select("image_id").distinct().count() == N_TRAIN + N_VAL
    assert {r["recipe"] for r in feats.select("recipe").distinct().collect()} == {"classify"}
    with pytest.raises(FeatureRecipeError, match=r"2 recipes: classify .*denoise .*--recipe"):
        compute_features(spark, out, "processed", "pixels14")
    with pytest.raises(FeatureRecipeError, match="'nosuch' is not in"):
        compute_features(spark, out, "processed", "pixels14", recipe="nosuch")
    # the CLI refuses it with exit 2 and the list of recipes
    assert main(["features", "--out", str(out), "--from", "processed", "--set", "pixels14"]) == EXIT_CONFIG
    assert "denoise" in capsys.readouterr().err
    # medimg run: two recipes and no features.recipe fail before Spark work
    code, _, err = _run(
        out.parent,
        out.parent / "never",
        "two",
        """
pipeline:
  inputs: ["in"]
  stages: [ingest, preprocess, features]
  recipes: [{recipe: classify}, {recipe: denoise}]
  features: {source: processed}
""",
        capsys,
        "--keep-phi",
    )
    assert code == EXIT_CONFIG and "pipeline.features.recipe" in err
    assert not (out.parent / "never").exists()


def test_run_passes_localize_options_and_keeps_every_method(
    spark: Any, lake: tuple[Path, dict[str, Any]]
) -> None:
    from pyspark.sql import functions as F

    out, info = lake
    regions = spark.read.parquet(str(out / "regions"))
    assert sorted(r["method"] for r in regions.select("method").distinct().collect()) == ["dbscan", "gmm"]
    per_frame = regions.where(F.col("method") == "gmm").groupBy("image_id", "recipe").count()
    assert {r["count"] for r in per_frame.collect()} == {3}  # pipeline.localize[0].options wins over k: 2
    assert per_frame.count() == 2 * (N_TRAIN + N_VAL)  # one frame per (image, recipe)
    assert (out / "regions" / "method=dbscan").is_dir() and (out / "regions" / "method=gmm").is_dir()
    events = [json.loads(x) for x in info["log"].read_text().splitlines()]
    starts = [e["method"] for e in events if e["event"] == "stage_start" and e["stage"] == "localize"]
    ks = [e["k"] for e in events if e["event"] == "stage_end" and e["stage"] == "localize"]
    assert list(zip(starts, ks, strict=True)) == [("gmm", 3), ("dbscan", 2)]


def test_feature_sets_live_side_by_side(spark: Any, lake: tuple[Path, dict[str, Any]]) -> None:
    from pyspark.sql import functions as F

    from medimg_spark.features import FeatureSetNotFoundError, compute_features, list_feature_sets
    from medimg_spark.ml import load_model, predict, train
    from medimg_spark.ml.train import read_features

    out, _ = lake
    first = json.loads((out / "features" / "_feature_set.json").read_text())
    trained = train(spark, out, "sk_logreg", {"params": {"C": 0.1}, "name": "px"})
    card = load_model(trained["model_path"]).card
    assert (card.feature_set, card.feature_set_id, card.feature_set_sha256) == (
        "pixels14",
        first["set_id"],
        first["sha256"],
    )
    before = predict(spark, out, trained["model_path"])
    cols = ["image_id", "prediction", "score"]
    pred0 = sorted(tuple(r) for r in spark.read.parquet(before["partition"]).select(*cols).collect())

    again = compute_features(spark, out, "processed", "shape", recipe="classify")
    assert again["archived"] == str(out / "feature_sets" / first["set_id"])
    assert [s["set_id"] for s in list_feature_sets(_store(spark), out)] == [again["set_id"], first["set_id"]]
    assert (
        read_features(spark, out).schema["features"].metadata["ml_attr"]["num_attrs"] == again["n_features"]
    )
    after = predict(spark, out, trained["model_path"])  # the card's set, now under feature_sets/
    pred1 = spark.read.parquet(after["path"]).where(F.col("model") == "px").select(*cols).collect()
    assert sorted(tuple(r) for r in pred1) == pred0

    # recomputing the first set brings it back to features/ (and drops the archived copy)
    compute_features(spark, out, "processed", "pixels14", recipe="classify")
    assert not (out / "feature_sets" / first["set_id"]).exists()
    shape_id = again["set_id"]
    import shutil

    shutil.rmtree(out / "features")
    (out / "features").mkdir()
    (out / "features" / "_feature_set.json").write_text(
        json.dumps({**first, "sha256": "0" * 64, "set_id": "other-00000000"})
    )
    with pytest.raises(FeatureSetNotFoundError, match=rf"{first['set_id']}.*sets of this run: .*{shape_id}"):
        predict(spark, out, trained["model_path"])
    compute_features(spark, out, "processed", "pixels14", recipe="classify")  # leave the lake usable


def _store(spark: Any) -> Any:
    from medimg_spark.storage import get_storage

    return get_storage(spark)


def test_failed_run_reports_the_finished_stages(lake: tuple[Path, dict[str, Any]], capsys: Any) -> None:
    out, _ = lake
    log = out.parent / "failed.jsonl"
    code, _, err = _run(
        out.parent,
        out,
        "fails",
        """
pipeline:
  stages: [features, train, evaluate]
  features: {source: processed, set: pixels14, recipe: classify}
  models: [{name: lr, model: sk_logreg}]
  evaluate_splits: [val, nosuch]
""",
        capsys,
        "--log-json",
        str(log),
    )
    assert code == EXIT_FAILURE
    assert "3 stage run(s) finished, 1 failed" in err  # features, train, evaluate val; evaluate nosuch
    assert "finished features set=pixels14 recipe=classify" in err and f"→ {out / 'features'}" in err
    assert "finished train model=lr" in err and f"→ {out / 'models' / 'lr'}" in err
    assert "failed   evaluate model=lr split=nosuch" in err and "ModelDataError" in err
    events = [json.loads(x) for x in log.read_text().splitlines()]
    (failed,) = [e for e in events if e["event"] == "pipeline_failed"]
    assert [f["stage"] for f in failed["finished"]] == ["features", "train", "evaluate"]
    assert [(f["stage"], f["detail"]["split"]) for f in failed["failed"]] == [("evaluate", "nosuch")]
    assert failed["finished"][1]["path"] == str(out / "models" / "lr")


# ----------------------------------------------------------------------------- real-size frames, lungs


@pytest.fixture(scope="module")
def cr_chest() -> np.ndarray:
    """A real full-size CR chest radiograph (1955 x 1841, MONOCHROME1) shown with air dark."""
    path = get_testdata_file("RG1_UNCR.dcm")
    assert path is not None
    ds = dcmread(path)
    assert (ds.Modality, ds.PhotometricInterpretation, ds.Rows, ds.Columns) == (
        "CR",
        "MONOCHROME1",
        1955,
        1841,
    )
    a = ds.pixel_array
    return (a.max() - a).astype(np.uint16)


def test_clustering_a_real_size_frame_is_downsampled(cr_chest: np.ndarray) -> None:
    cfg = LocalizeConfig(foreground="otsu_bright", max_points=20000)
    n_fg = 1_000_000  # of the order of this frame's foreground
    assert downsample_factor(cr_chest.shape, n_fg, cfg) == 8
    for method in ("dbscan", "kmeans", "gmm"):
        regs = find_regions(cr_chest, None, method, cfg)
        assert regs, method
        assert max(r["bbox_max_row"] for r in regs) > 1900 and max(r["bbox_max_col"] for r in regs) > 1700
        assert all(0 <= r["bbox_min_row"] <= r["bbox_max_row"] < 1955 for r in regs)
        assert sum(r["area"] for r in regs) > 500_000  # full-resolution pixels
    with pytest.raises(LocalizeTooLargeError, match="max_downsample=4"):
        find_regions(cr_chest, None, "dbscan", cfg.model_copy(update={"max_downsample": 4}))


def test_localize_quarantines_a_frame_it_cannot_shrink(
    spark: Any, cr_chest: np.ndarray, tmp_path: Path
) -> None:
    from medimg_spark.io.pixels import encode
    from medimg_spark.ml import localize
    from medimg_spark.schema import QUARANTINE_SCHEMA

    d = np.load(
        Path(__file__).resolve().parents[1]
        / "data"
        / "sample"
        / "pneumoniamnist"
        / "pneumoniamnist_trainval.npz"
    )
    recs = []
    for iid, frame, photometric in (
        ("cr", np.asarray(dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array), "MONOCHROME1"),
        ("pm", d["val_images"][81], "MONOCHROME2"),
    ):
        px, r, c, ch, dt = encode(frame)
        recs.append((iid, px, dt, r, c, ch, photometric))
    spark.createDataFrame(
        recs,
        "image_id string, pixels binary, dtype string, rows int, cols int, channels int, photometric string",
    ).write.parquet(str(tmp_path / "images"))
    res = localize(
        spark, tmp_path, "dbscan", {"source": "images", "foreground": "otsu_bright", "max_downsample": 4}
    )
    assert res["n_quarantined"] == 1 and res["quarantined_by_error_class"] == {"LocalizeTooLargeError": 1}
    assert res["n_frames_with_regions"] == 1
    (q,) = spark.read.schema(QUARANTINE_SCHEMA).parquet(str(tmp_path / "quarantine")).collect()
    assert (q["stage"], q["step"], q["error_class"]) == ("localize", "dbscan", "LocalizeTooLargeError")
    assert "image_id=cr" in q["error_message"]
    lungs = localize(spark, tmp_path, "lungs", {"source": "images"})  # MONOCHROME1 inverted first
    assert lungs["n_regions"] == 4 and lungs["n_quarantined"] == 0
    regions = spark.read.parquet(str(tmp_path / "regions"))
    assert sorted(r["method"] for r in regions.select("method").distinct().collect()) == ["dbscan", "lungs"]
    cr = [r.asDict() for r in regions.where("method = 'lungs' AND image_id = 'cr'").collect()]
    assert plausible_lung_boxes(cr, 1955, 1841)


def test_lungs_finds_two_lung_fields(sample_npz: Path, cr_chest: np.ndarray) -> None:
    d = np.load(sample_npz)
    frames = d["val_images"][:200]
    cfg = LocalizeConfig()
    lungs = np.mean([plausible_lung_boxes(find_lungs(f, cfg), 28, 28) for f in frames])
    halves = np.mean([plausible_lung_boxes(find_regions(f, None, "kmeans", cfg), 28, 28) for f in frames])
    assert lungs >= 0.8, lungs
    assert halves < 0.3, halves  # k-means on the Otsu foreground halves the frame, not the lungs
    regs = find_lungs(cr_chest, cfg)
    assert plausible_lung_boxes(regs, 1955, 1841)
    left, right = sorted(regs, key=lambda r: r["centroid_col"])
    assert left["bbox_max_col"] < 920 < right["bbox_min_col"]  # each lung in its half
    assert all(r["mean_intensity"] < cr_chest.mean() for r in regs)  # lungs are dark
    assert find_lungs(np.zeros((28, 28), np.uint8), cfg) == []
