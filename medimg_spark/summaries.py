"""Typed summaries of the stages: what ``medimg VERB --json`` prints and ``--log-json`` counts.

Each stage function returns one of these (plain dicts at run time, so the JSON keys are the
field names). Ingest's summary is :mod:`medimg_spark.io.ingest`'s; the quality stage's is
:class:`medimg_spark.quality_stage.QualityReport`.
"""

from __future__ import annotations

from typing import Any, TypedDict


class PreprocessSummary(TypedDict):
    """``medimg preprocess``: one recipe applied to ``DIR/images``."""

    run_id: str
    recipe_name: str
    recipe_hash: str
    frames_selected: int
    frames_skipped: int
    frames_processed: int
    frames_quarantined: int
    quarantined_by_error_class: dict[str, int]
    seconds: float


class FeaturesSummary(TypedDict):
    """``medimg features``: the ``DIR/features`` table written."""

    path: str
    feature_set: str
    set_id: str
    sha256: str
    source: str
    recipe: str | None
    recipe_hash: str | None
    n_features: int
    feature_names: list[str]
    n_images: int
    n_failed: int
    failures: list[dict[str, Any]]
    archived: str | None
    seconds: float


class TrainSummary(TypedDict):
    """``medimg train``: the saved model and its validation scores."""

    model_name: str
    model_path: str
    kind: str
    classes: list[str]
    positive_label: str | None
    threshold: float | None
    best_params: dict[str, Any]
    search: list[dict[str, Any]]
    val: dict[str, Any] | None
    n_train: int
    n_val: int
    train_seconds: float


class ClassMetrics(TypedDict):
    """One class of :attr:`EvaluateSummary.per_class` (``roc_auc_ovr``: one-vs-rest, None when undefined)."""

    precision: float
    recall: float
    f1: float
    support: int
    roc_auc_ovr: float | None


class EvaluateSummary(TypedDict, total=False):
    """``medimg evaluate``: classification metrics of a saved model on a split.

    Every task has the macro (unweighted mean over classes) precision/recall/F1 and ``per_class``.
    Binary problems add positive/sensitivity/specificity/precision (and roc_curve with scores);
    multi-class ones add recall_per_class, roc_auc_macro_ovr and one-vs-rest roc_curves per class.
    """

    n: int
    classes: list[str]
    accuracy: float
    balanced_accuracy: float
    confusion_matrix: list[list[int]]
    confusion_matrix_classes: list[str]
    support: dict[str, int]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    roc_auc_macro_ovr: float | None
    roc_curves: dict[str, dict[str, list[float | None]]]
    positive: str
    f1: float
    sensitivity: float
    specificity: float
    precision: float
    recall_per_class: dict[str, float]
    roc_auc: float | None
    roc_curve: dict[str, list[float | None]]
    model: str
    split: str
    threshold: float | None
    path: str


class LocalizeSummary(TypedDict, total=False):
    """``medimg localize``: per-frame regions (``n_regions``...) or dataset clusters (``k``...)."""

    path: str
    method: str
    seconds: float
    # per-frame methods (kmeans, dbscan, gmm, lungs)
    partition: str
    n_regions: int
    n_frames_with_regions: int
    n_quarantined: int
    quarantined_by_error_class: dict[str, int]
    options: dict[str, Any]
    # dataset methods (mllib_kmeans, mllib_gmm)
    k: int
    n_rows: int
    silhouette: float
    cluster_sizes: dict[int, int]


class ReportSummary(TypedDict):
    """``medimg report``: the HTML page written."""

    path: str
    bytes: int
    sections: dict[str, bool]
    sections_present: int
    sections_total: int
    images: int
    thumbnails: int
    warnings: list[str]
    seconds: float
