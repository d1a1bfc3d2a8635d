"""Metrics and threshold selection against scikit-learn on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from medimg_spark.ml import (
    ModelDataError,
    choose_threshold,
    classification_metrics,
    format_metrics,
    format_table,
)


@pytest.fixture(scope="module")
def binary() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    score = np.clip(0.35 * y + rng.normal(0.35, 0.2, 200), 0, 1)
    return y, score, np.column_stack([1 - score, score])


def test_binary_metrics_match_sklearn(binary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, score, proba = binary
    classes = ["normal", "pneumonia"]
    yt = np.array(classes, dtype=object)[y]
    pred_i = (score >= 0.5).astype(int)
    yp = np.array(classes, dtype=object)[pred_i]
    m = classification_metrics(yt, yp, classes, proba)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred_i))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred_i))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred_i))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred_i, pos_label=1))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred_i, pos_label=0))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred_i))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred_i).tolist()
    fpr, _, _ = skm.roc_curve(y, score)
    assert m["roc_curve"]["fpr"][0] == 0.0 and m["roc_curve"]["tpr"][-1] == 1.0
    assert len(m["roc_curve"]["fpr"]) == min(101, len(fpr))
    assert np.trapezoid(m["roc_curve"]["tpr"], m["roc_curve"]["fpr"]) == pytest.approx(m["roc_auc"], abs=0.02)


def test_positive_label_switches_sensitivity(binary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, score, proba = binary
    classes = ["a", "b"]
    yt = np.array(classes, dtype=object)[y]
    yp = np.array(classes, dtype=object)[(score >= 0.5).astype(int)]
    mb = classification_metrics(yt, yp, classes, proba, positive="b")
    ma = classification_metrics(yt, yp, classes, proba, positive="a")
    assert ma["sensitivity"] == pytest.approx(mb["specificity"])
    assert ma["roc_auc"] == pytest.approx(mb["roc_auc"])
    assert ma["f1"] == pytest.approx(skm.f1_score(yt, yp, pos_label="a"))


def test_multiclass_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = proba.argmax(1)
    classes = ["x", "y", "z"]
    names = np.array(classes, dtype=object)
    m = classification_metrics(names[y], names[pred], classes, proba)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert m["recall_per_class"]["y"] == pytest.approx(skm.recall_score(y, pred, average=None)[1])
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_youden_threshold_maximises_balanced_accuracy(
    binary: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    y, score, _ = binary
    t = choose_threshold(y, score, "youden")
    best = max(skm.balanced_accuracy_score(y, (score >= s).astype(int)) for s in np.unique(score))
    assert skm.balanced_accuracy_score(y, (score >= t).astype(int)) == pytest.approx(best)
    ta = choose_threshold(y, score, "accuracy")
    best_acc = max(skm.accuracy_score(y, (score >= s).astype(int)) for s in np.unique(score))
    assert skm.accuracy_score(y, (score >= ta).astype(int)) == pytest.approx(best_acc)
    assert choose_threshold(y, score, "fixed", 0.3) == 0.3
    with pytest.raises(ModelDataError, match="both classes"):
        choose_threshold(np.ones(5), score[:5])


def test_errors_and_formatting(binary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, score, proba = binary
    classes = ["0", "1"]
    with pytest.raises(ModelDataError, match="not among"):
        classification_metrics(["0", "2"], ["0", "1"], classes)
    with pytest.raises(ModelDataError, match="no labelled rows"):
        classification_metrics([], [], classes)
    m = classification_metrics(y.astype(str), (score >= 0.5).astype(int).astype(str), classes, proba)
    text = format_metrics(m, "model on val")
    assert f"{m['roc_auc']:.4f}" in text and "confusion matrix" in text
    assert text.splitlines()[0] == "model on val"
    table = format_table([{"model": "a", "auc": 0.91234}], ["model", "auc"])
    assert table.splitlines()[2] == "| a | 0.9123 |"
