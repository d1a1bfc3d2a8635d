"""K classes end to end on real DICOM frames: modality recognition (CT, MR, US, CR) from pydicom's test files.

One module-scoped run: a ``<modality>/<file>`` tree of pydicom test files, ingested with
``label_from_parent_dir`` and a split rule by file, features, ``sk_softmax`` and ``mllib_logreg``
trained and evaluated; the macro and per-class metrics are checked against scikit-learn's
``classification_report`` and ``roc_auc_score(multi_class="ovr")`` on the same predictions, and the
report page against its per-class ROC curves and confusion table. The long version over the whole
DICOM corpus is ``benchmarks/kclass_modality.py``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from sklearn import metrics as skm

from medimg_spark.cli import EXIT_CONFIG, main
from medimg_spark.config import IngestConfig, SplitRule, parse_config
from medimg_spark.errors import ConfigError
from medimg_spark.io.files import FileContext, process_file
from medimg_spark.io.splits import hash_split, split_from_path, split_of_file
from medimg_spark.ml import (
    BinaryOnlyModelError,
    ThresholdOnMulticlassError,
    TrainConfig,
    classification_metrics,
    evaluate,
    fit_sklearn_arrays,
    format_metrics,
    load_model,
    predictions_frame,
    train,
)

#: pydicom test files by modality: distinct images (no two re-encodings of one image), few frames each.
FILES: dict[str, list[str]] = {
    "CT": [
        "CT_small.dcm",
        *[f"dicomdirtests/77654033/CT2/{n}" for n in ("17106", "17136", "17166", "17196")],
        *[f"dicomdirtests/98892001/CT2N/{n}" for n in ("6293", "6924")],
        *[f"dicomdirtests/98892001/CT5N/{n}" for n in ("2062", "2392", "2693", "3023", "3353")],
    ],
    "MR": [
        "MR_small.dcm",
        *[f"dicomdirtests/98892003/MR1/{n}" for n in ("15820", "4919", "5641")],
        *[f"dicomdirtests/98892003/MR2/{n}" for n in ("15970", "4950", "4981", "5011", "6273")],
        *[f"dicomdirtests/98892003/MR700/{n}" for n in ("4467", "4528", "4558")],
    ],
    "US": [
        "ExplVR_BigEnd.dcm",
        "examples_rgb_color.dcm",
        "examples_palette.dcm",
        "examples_ybr_color.dcm",
        "examples_jpeg2k.dcm",
    ],
    "CR": [
        *[f"dicomdirtests/77654033/CR{i}/{n}" for i, n in ((1, "6154"), (2, "6247"), (3, "6278"))],
        "RG1_J2KI.dcm",  # pydicom-data: 1955 x 1841 and 1760 x 1760 radiographs
        "RG3_J2KI.dcm",
    ],
}
CLASSES = sorted(FILES)
RULE = SplitRule(by="file", fractions={"train": 0.5, "val": 0.5}, seed=0)
FEATURES = {
    "name": "kclass_small",
    "extractors": [
        {"kind": "intensity", "params": {"bins": 16}},
        {
            "kind": "hog",
            "params": {"orientations": 9, "pixels_per_cell": 7, "cells_per_block": 2, "size": 28},
        },
        {"kind": "pixels", "params": {"size": 8}},
    ],
}


def _testdata(name: str) -> Path:
    """A file of pydicom's ``test_files`` folder, else of pydicom-data (through ``get_testdata_file``)."""
    local = Path(get_testdata_file("CT_small.dcm")).parent / name  # type: ignore[arg-type]
    found = local if local.is_file() else get_testdata_file(name)
    assert found is not None, f"{name} is in neither pydicom's test files nor pydicom-data"
    return Path(found)


def build_tree(root: Path) -> Path:
    """``root/<modality>/<file>``: copies (ingest skips symlinks) of the real files of :data:`FILES`."""
    for modality, names in FILES.items():
        (root / modality).mkdir(parents=True, exist_ok=True)
        for name in names:
            src = _testdata(name)
            assert src.is_file(), src
            shutil.copyfile(src, root / modality / name.replace("/", "_"))
    return root


@pytest.fixture(scope="module")
def run(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from medimg_spark.features import compute_features
    from medimg_spark.io.ingest import ingest

    tmp = tmp_path_factory.mktemp("kclass")
    tree = build_tree(tmp / "tree")
    out = tmp / "out"
    cfg = IngestConfig(label_from_parent_dir=True, split=RULE)
    summary = ingest(spark, [str(tree)], str(out), cfg)
    compute_features(spark, str(out), "images", FEATURES)
    models = {name: train(spark, out, name, {}) for name in ("sk_softmax", "mllib_logreg")}
    evals = {name: evaluate(spark, out, res["model_path"], "val") for name, res in models.items()}
    preds = {}
    for name, res in models.items():
        pdf = (
            predictions_frame(spark, out, load_model(res["model_path"]), "val")
            .select("image_id", "label", "prediction", "probability")
            .toPandas()
        )
        preds[name] = pdf
    images = spark.read.parquet(str(out / "images")).select("file_sha256", "source_path", "label", "split")
    return {
        "out": out,
        "ingest": summary,
        "models": models,
        "evals": evals,
        "preds": preds,
        "files": images.distinct().toPandas(),
    }


def test_labels_from_folders_and_split_by_file(run: dict[str, Any]) -> None:
    files = run["files"]
    n_files = sum(len(v) for v in FILES.values())
    assert run["ingest"]["files_ingested"] == n_files
    assert sorted(files["label"].unique()) == CLASSES
    # every frame of a file sits in one split, the one the rule gives the file's SHA-256
    per_file = files.groupby("file_sha256")["split"].nunique()
    assert (per_file == 1).all() and len(per_file) == n_files
    for sha, split in files.groupby("file_sha256")["split"].first().items():
        assert split == hash_split(RULE, f"file:{sha}")
    # both splits hold every class (the module's training needs it)
    by_split = files.groupby("split")["label"].unique()
    assert set(by_split.index) == {"train", "val"}
    assert all(sorted(v) == CLASSES for v in by_split)


@pytest.mark.parametrize("name", ["sk_softmax", "mllib_logreg"])
def test_kclass_metrics_match_sklearn(run: dict[str, Any], name: str) -> None:
    res, ev, pdf = run["models"][name], run["evals"][name], run["preds"][name]
    assert res["classes"] == CLASSES and res["threshold"] is None and res["positive_label"] is None
    y, pred = pdf["label"].to_numpy(dtype=str), pdf["prediction"].to_numpy(dtype=str)
    proba = np.vstack(pdf["probability"].to_list())
    report = skm.classification_report(y, pred, labels=CLASSES, output_dict=True, zero_division=0)
    assert ev["n"] == len(y) == int(report["macro avg"]["support"])
    assert ev["macro_precision"] == pytest.approx(report["macro avg"]["precision"])
    assert ev["macro_recall"] == pytest.approx(report["macro avg"]["recall"])
    assert ev["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert ev["f1"] == pytest.approx(ev["macro_f1"])
    assert ev["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert ev["roc_auc_macro_ovr"] == pytest.approx(
        skm.roc_auc_score(y, proba, labels=CLASSES, multi_class="ovr", average="macro")
    )
    assert ev["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=CLASSES).tolist()
    assert ev["confusion_matrix_classes"] == CLASSES == ev["classes"]
    assert list(ev["per_class"]) == CLASSES
    for c in CLASSES:
        m = ev["per_class"][c]
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m[key] == pytest.approx(report[c][sk_key]), (c, key)
        assert m["support"] == int(report[c]["support"])
        assert m["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y == c, proba[:, CLASSES.index(c)]))
        curve = ev["roc_curves"][c]
        assert curve["fpr"][0] == 0.0 and curve["tpr"][-1] == 1.0
    # real modality recognition: clearly better than chance (0.25) on frames of unseen files
    assert ev["accuracy"] > 0.5 and ev["roc_auc_macro_ovr"] > 0.7, ev
    text = format_metrics(ev, name)
    assert "macro_f1" in text and "per class" in text and all(c in text for c in CLASSES)


def test_report_has_per_class_roc_and_confusion_table(spark: Any, run: dict[str, Any]) -> None:
    from medimg_spark.report import build_report

    summary = build_report(spark, str(run["out"]))
    html = Path(summary["path"]).read_text(encoding="utf-8")
    for name in ("sk_softmax", "mllib_logreg"):
        assert f'alt="per-class ROC curves {name} val"' in html
        assert f'alt="confusion matrix {name} val"' in html
    caption = re.search(r"per-class ROC curves \(one vs rest\): ([^<]+)</figcaption>", html)
    assert caption is not None and caption.group(1).split(", ") == CLASSES
    # the confusion table's header row names the classes in order, and so does the per-class table
    head = "".join(f"<th>{c}</th>" for c in CLASSES)
    assert f"<th>true \\ predicted</th>{head}" in html
    assert '<table class="per-class">' in html and "<th>roc_auc_ovr</th>" in html


def test_gbt_on_k_classes_fails_before_spark_fits(spark: Any, run: dict[str, Any]) -> None:
    sc = spark.sparkContext
    sc.setJobGroup("kclass-gbt", "mllib_gbt on K classes")
    try:
        with pytest.raises(BinaryOnlyModelError, match=r"mllib_gbt is binary only.*4 classes.*mllib_rf"):
            train(spark, run["out"], "mllib_gbt", {"model_dir": str(run["out"] / "models" / "gbt")})
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    jobs = sc.statusTracker().getJobIdsForGroup("kclass-gbt")
    # only the label count ran (a GBT fit runs dozens of jobs); nothing was saved
    assert len(jobs) <= 3, jobs
    assert not (run["out"] / "models" / "gbt").exists()


def test_cnn_with_explicit_threshold_refused_on_k_classes(spark: Any, run: dict[str, Any]) -> None:
    pytest.importorskip("jax")
    # the CNN trains from the frames (its own path in train()), and refuses the same way before fitting
    with pytest.raises(ThresholdOnMulticlassError, match=r"4 classes"):
        train(
            spark,
            run["out"],
            "cnn",
            {"threshold": {"rule": "youden"}, "model_dir": str(run["out"] / "models" / "cnn_k")},
        )
    assert not (run["out"] / "models" / "cnn_k").exists()


def test_explicit_threshold_refused_on_k_classes_default_is_not() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(CLASSES), 10)
    X = rng.normal(size=(len(y), 3)) + np.repeat(np.eye(4)[:, :3], 10, axis=0) * 3
    with pytest.raises(ThresholdOnMulticlassError, match=r"threshold.*'f1'.*4 classes"):
        fit_sklearn_arrays("sk_softmax", TrainConfig(threshold={"rule": "f1"}), X, y, X, y, ["a", "b", "c"])
    with pytest.raises(ThresholdOnMulticlassError):
        fit_sklearn_arrays(
            "sk_softmax", TrainConfig.model_validate({"threshold": {}}), X, y, X, y, ["a", "b", "c"]
        )
    model, info = fit_sklearn_arrays("sk_softmax", TrainConfig(), X, y, X, y, ["a", "b", "c"])
    assert model.card.threshold is None and info["val"]["accuracy"] > 0.6
    # the SklearnClassifier stage: only a threshold Param that was set counts as explicit
    from medimg_spark.ml.stages import SklearnClassifier as Stage

    assert "threshold" not in Stage().train_config().model_fields_set
    assert Stage(thresholdRule="f1").train_config().threshold.rule == "f1"
    assert "threshold" in Stage(thresholdValue=0.3).train_config().model_fields_set
    # a binary task keeps its threshold rule
    yb = np.where(y == "CT", "CT", "other")
    model, _ = fit_sklearn_arrays(
        "sk_softmax", TrainConfig(threshold={"rule": "f1"}), X, yb, X, yb, ["a", "b", "c"]
    )
    assert model.card.threshold is not None and model.card.threshold_rule == "f1"


def test_split_rule_is_deterministic_and_validated(tmp_path: Path) -> None:
    rule = SplitRule(fractions={"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    keys = [f"file:{i:064x}" for i in range(3000)]
    got = [hash_split(rule, k) for k in keys]
    assert got == [hash_split(rule, k) for k in keys]
    shares = {s: got.count(s) / len(got) for s in rule.fractions}
    assert shares == pytest.approx(rule.fractions, abs=0.03)
    assert got != [hash_split(SplitRule(fractions=rule.fractions, seed=4), k) for k in keys]
    named = SplitRule(by="from_path")
    assert split_from_path(named, "/d/Train/CT/val.dcm") == "train"  # the nearest folder, not the file
    assert split_from_path(named, "/d/test/val/CT/a.dcm") == "val"
    assert split_from_path(named, "/d/CT/a.dcm") is None
    series = SplitRule(by="series")
    meta = {"series_instance_uid": "1.2.3"}
    assert split_of_file(series, "/a/x.dcm", "aa", meta) == split_of_file(series, "/b/y.dcm", "bb", meta)
    assert split_of_file(series, "/a/x.dcm", "aa", {}) == hash_split(series, "file:aa")
    for bad, msg in (
        ({"fractions": {"train": 0.7, "val": 0.2}}, "sum to 0.9"),
        ({"fractions": {"train": 1.2, "val": -0.2}}, r"\(0, 1\]"),
        ({"by": "patient"}, "by"),
    ):
        with pytest.raises(ConfigError, match=msg):
            parse_config({"ingest": {"split": bad}})
    with pytest.raises(ConfigError, match="each class, into one split"):
        parse_config({"ingest": {"label_from_parent_dir": True, "split": {"by": "parent"}}})
    # the CLI refuses the flag combination before Spark starts (exit 2, no output written)
    code = main(
        [
            "ingest",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--label-from-parent-dir",
            "--split-by",
            "parent",
        ]
    )
    assert code == EXIT_CONFIG and not (tmp_path / "out").exists()


def test_frames_of_a_multiframe_file_share_one_split() -> None:
    path = _testdata("examples_ybr_color.dcm")
    ctx = FileContext(run_id="r", label_from_parent_dir=True, split_rule=SplitRule(by="file", seed=1))
    rows = [r for r in process_file(str(path), path.read_bytes(), ctx) if r["_kind"] == "image"]
    assert len(rows) == 30
    assert {r["split"] for r in rows} == {hash_split(ctx.split_rule, f"file:{rows[0]['file_sha256']}")}
    assert {r["label"] for r in rows} == {"test_files"}
    # a split from --labels wins over the rule
    ctx.labels_by_sha = {rows[0]["file_sha256"]: ("US", "holdout")}
    rows = [r for r in process_file(str(path), path.read_bytes(), ctx) if r["_kind"] == "image"]
    assert {(r["label"], r["split"]) for r in rows} == {("US", "holdout")}


def test_binary_metrics_keep_their_keys() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.clip(0.4 * y + rng.normal(0.3, 0.2, 80), 0, 1)
    names = np.array(["a", "b"], dtype=object)
    m = classification_metrics(
        names[y], names[(s >= 0.5).astype(int)], ["a", "b"], np.column_stack([1 - s, s])
    )
    for key in ("positive", "f1", "sensitivity", "specificity", "precision", "roc_auc", "roc_curve"):
        assert key in m
    assert "roc_auc_macro_ovr" not in m and "recall_per_class" not in m and "roc_curves" not in m
    assert m["per_class"]["b"]["recall"] == pytest.approx(m["sensitivity"])
    assert m["per_class"]["b"]["roc_auc_ovr"] == pytest.approx(m["roc_auc"])
