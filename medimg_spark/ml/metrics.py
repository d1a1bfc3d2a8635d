"""Classification metrics on the driver (numpy + scikit-learn) and a text-table formatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from medimg_spark.config_models import ThresholdRule
from medimg_spark.ml.errors import ModelDataError


def choose_threshold(
    y_true: np.ndarray, score: np.ndarray, rule: ThresholdRule = "youden", fixed: float = 0.5
) -> float:
    """Pick a decision threshold on positive-class scores (predict positive when ``score >= t``).

    ``youden`` maximises sensitivity + specificity − 1 (the same as balanced accuracy for a
    binary task), ``accuracy`` and ``f1`` maximise those, ``fixed`` returns ``fixed``. Ties go
    to the threshold closest to the middle of the tied range.

    Raises:
        ModelDataError: ``y_true`` does not hold both classes (0 and 1).
    """
    if rule == "fixed":
        return float(fixed)
    y = np.asarray(y_true).astype(int)
    s = np.asarray(score, dtype=np.float64)
    if set(np.unique(y)) != {0, 1}:
        raise ModelDataError(
            "choosing a threshold needs both classes in the validation labels; check the split"
        )
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    thr = np.where(np.isinf(thr), np.max(s) + 1e-9, thr)
    if rule in ("youden", "balanced_accuracy"):
        obj = tpr - fpr
    elif rule == "accuracy":
        pos, neg = y.sum(), (1 - y).sum()
        obj = (tpr * pos + (1 - fpr) * neg) / (pos + neg)
    elif rule == "f1":
        pos = y.sum()
        tp = tpr * pos
        fp = fpr * (len(y) - pos)
        obj = np.divide(
            2 * tp, 2 * tp + fp + (pos - tp), out=np.zeros_like(tp), where=(2 * tp + fp + pos - tp) > 0
        )
    else:
        raise ModelDataError(
            f"unknown threshold rule {rule!r}; use youden, balanced_accuracy, accuracy, f1 or fixed"
        )
    best = np.flatnonzero(np.isclose(obj, obj.max()))
    i = int(best[len(best) // 2])
    # midpoint between this threshold and the next lower distinct score keeps the decision stable
    t = float(thr[i])
    lower = s[s < t]
    return float((t + lower.max()) / 2) if lower.size else t


def _thin(n: int, points: int) -> np.ndarray:
    """At most ``points`` indices of ``range(n)``, evenly spaced, first and last included."""
    idx: np.ndarray = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))
    return idx


def _roc_points(yb: np.ndarray, s: np.ndarray, roc_points: int) -> dict[str, list[float | None]]:
    fpr, tpr, thr = skm.roc_curve(yb, s)
    keep = _thin(len(fpr), roc_points)
    return {
        "fpr": [float(v) for v in fpr[keep]],
        "tpr": [float(v) for v in tpr[keep]],
        "threshold": [None if np.isinf(v) else float(v) for v in thr[keep]],
    }


def classification_metrics(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    classes: Sequence[str],
    proba: np.ndarray | None = None,
    positive: str | None = None,
    roc_points: int = 101,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, F1, macro and per-class metrics, confusion matrix and, with ``proba``, ROC.

    Keys of every task: ``n``, ``classes``, ``accuracy``, ``balanced_accuracy``, ``confusion_matrix``
    (rows: true class, columns: predicted, both in ``confusion_matrix_classes`` order = ``classes``),
    ``support``, ``macro_precision``, ``macro_recall``, ``macro_f1`` (unweighted means over
    ``classes``, as scikit-learn's ``classification_report`` "macro avg"), ``per_class``
    (``{class: {precision, recall, f1, support, roc_auc_ovr}}``; ``roc_auc_ovr`` is the one-vs-rest
    AUC of that class, None without ``proba`` or when the class is absent or alone).

    Binary tasks add ``positive``, ``f1`` (of the positive class), ``sensitivity``, ``specificity``,
    ``precision``, ``roc_auc`` and ``roc_curve``. K-class tasks (K > 2) add ``f1`` (= ``macro_f1``),
    ``recall_per_class``, ``roc_auc_macro_ovr`` (``roc_auc_score(multi_class="ovr", average="macro")``;
    ``roc_auc`` holds the same value) and ``roc_curves`` (one-vs-rest ROC points per class).

    Args:
        y_true: true labels (strings from ``classes``).
        y_pred: predicted labels.
        classes: all class labels, in the column order of ``proba``.
        proba: ``(n, len(classes))`` class probabilities or scores (rows are normalised to sum to 1
            for the K-class AUCs, as scikit-learn requires).
        positive: the positive class of a binary task (default: ``classes[-1]``); sensitivity,
            specificity, F1 and the ROC curve refer to it.
        roc_points: at most this many ROC points are kept per curve (evenly spaced by index).

    Raises:
        ModelDataError: labels outside ``classes`` or no rows.
    """
    yt = np.asarray([str(v) for v in y_true], dtype=object)
    yp = np.asarray([str(v) for v in y_pred], dtype=object)
    cls = [str(c) for c in classes]
    if yt.size == 0:
        raise ModelDataError("no labelled rows to evaluate; check the split name and that labels are present")
    unknown = sorted(set(yt) - set(cls)) + sorted(set(yp) - set(cls))
    if unknown:
        raise ModelDataError(f"labels {unknown[:5]} are not among the model's classes {cls}")
    cm = skm.confusion_matrix(yt, yp, labels=cls)
    prec, rec, f1s, sup = skm.precision_recall_fscore_support(
        yt, yp, labels=cls, average=None, zero_division=0
    )
    out: dict[str, Any] = {
        "n": int(yt.size),
        "classes": cls,
        "accuracy": float(skm.accuracy_score(yt, yp)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(yt, yp)),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_classes": cls,
        "support": {c: int((yt == c).sum()) for c in cls},
        "macro_precision": float(np.mean(prec)),
        "macro_recall": float(np.mean(rec)),
        "macro_f1": float(np.mean(f1s)),
    }
    per_class: dict[str, dict[str, Any]] = {
        c: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1s[i]),
            "support": int(sup[i]),
            "roc_auc_ovr": None,
        }
        for i, c in enumerate(cls)
    }
    binary = len(cls) == 2
    if binary:
        pos = positive if positive is not None else cls[-1]
        if pos not in cls:
            raise ModelDataError(f"positive class {pos!r} is not among {cls}")
        neg = cls[0] if pos == cls[1] else cls[1]
        tp = int(((yt == pos) & (yp == pos)).sum())
        fn = int(((yt == pos) & (yp != pos)).sum())
        tn = int(((yt == neg) & (yp == neg)).sum())
        fp = int(((yt == neg) & (yp == pos)).sum())
        out.update(
            positive=pos,
            f1=float(skm.f1_score(yt, yp, pos_label=pos, average="binary", zero_division=0)),
            sensitivity=tp / (tp + fn) if tp + fn else float("nan"),
            specificity=tn / (tn + fp) if tn + fp else float("nan"),
            precision=tp / (tp + fp) if tp + fp else float("nan"),
        )
    else:
        out["f1"] = out["macro_f1"]
        out["recall_per_class"] = {c: float(r) for c, r in zip(cls, rec, strict=True)}
    if proba is not None:
        p = np.asarray(proba, dtype=np.float64)
        if p.shape != (yt.size, len(cls)):
            raise ModelDataError(f"proba has shape {p.shape}, expected ({yt.size}, {len(cls)})")
        present = set(yt)
        rows = p if binary else p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        curves: dict[str, dict[str, list[float | None]]] = {}
        for i, c in enumerate(cls):
            yb = (yt == c).astype(int)
            if 0 < yb.sum() < yb.size:
                per_class[c]["roc_auc_ovr"] = float(skm.roc_auc_score(yb, rows[:, i]))
                if not binary:
                    curves[c] = _roc_points(yb, rows[:, i], roc_points)
        if binary and len(present) == 2:
            pos = out["positive"]
            s = p[:, cls.index(pos)]
            yb = (yt == pos).astype(int)
            out["roc_auc"] = float(skm.roc_auc_score(yb, s))
            out["roc_curve"] = _roc_points(yb, s, roc_points)
        elif not binary and len(present) == len(cls):
            out["roc_auc"] = float(
                skm.roc_auc_score(yt, rows, labels=cls, multi_class="ovr", average="macro")
            )
            out["roc_auc_macro_ovr"] = out["roc_auc"]
        else:
            out["roc_auc"] = None
            if not binary:
                out["roc_auc_macro_ovr"] = None
        if not binary:
            out["roc_curves"] = curves
    out["per_class"] = per_class
    return out


def format_metrics(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """Render a metrics dict from :func:`classification_metrics` as a plain-text table."""
    lines: list[str] = []
    if title:
        lines += [title, "=" * len(title)]
    keys = ["n", "accuracy", "balanced_accuracy", "roc_auc", "f1", "sensitivity", "specificity", "precision"]
    keys += ["macro_precision", "macro_recall", "macro_f1", "roc_auc_macro_ovr", "threshold"]
    width = max(len(k) for k in keys)
    for k in keys:
        if k in metrics and metrics[k] is not None:
            v = metrics[k]
            lines.append(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    cls = metrics.get("classes", [])
    cm = metrics.get("confusion_matrix")
    if cls and cm:
        cw = max(8, *(len(c) for c in cls))
        lines.append("")
        lines.append("confusion matrix (rows: true, columns: predicted)")
        lines.append(" " * cw + "  " + "  ".join(f"{c:>{cw}}" for c in cls))
        for c, row in zip(cls, cm, strict=True):
            lines.append(f"{c:>{cw}}  " + "  ".join(f"{v:>{cw}d}" for v in row))
    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        cw = max(8, *(len(str(c)) for c in per_class))
        heads = ("precision", "recall", "f1", "support", "roc_auc_ovr")
        lines.append("")
        lines.append("per class (roc_auc_ovr: one-vs-rest)")
        lines.append(" " * cw + "  " + "  ".join(f"{h:>11}" for h in heads))
        for c, m in per_class.items():
            cells = []
            for h in heads:
                v = m.get(h)
                cells.append(f"{v:>11.4f}" if isinstance(v, float) else f"{'-' if v is None else v:>11}")
            lines.append(f"{c:>{cw}}  " + "  ".join(cells))
    return "\n".join(lines)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns`` (floats with 4 decimals)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
