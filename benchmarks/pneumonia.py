"""PneumoniaMNIST benchmark: features → models → val metrics (and, with --test, the shipped model on test).

    python benchmarks/pneumonia.py --data data/sample/pneumoniamnist/pneumoniamnist_trainval.npz \\
        [--test pneumoniamnist_test.npz] --out /tmp/pneu [--config conf/pneumonia.yaml] [--baselines]

Runs on numpy arrays loaded from the MedMNIST npz files with the library's feature functions
and model code (no Spark needed). Every choice (hyper-parameters, decision threshold) is made
on ``val``; models are fitted on ``train`` (plus its augmented copies when the config says so).
The ``stress`` columns score val images after a seeded random geometric + photometric perturbation
(at the clean-val threshold): a val-only probe of robustness to acquisition shift.
With ``--test`` only the shipped configuration is evaluated on the test file, and its metrics
are written to ``OUT/metrics/eval_<model>_test.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medimg_spark.features import FeatureSet  # noqa: E402
from medimg_spark.ml import (  # noqa: E402
    AugmentConfig,
    augment_stack,
    classification_metrics,
    fit_sklearn_arrays,
    format_metrics,
    format_table,
    write_metrics,
)
from medimg_spark.ml.experiment import ExperimentConfig, ModelSpec, load_experiment  # noqa: E402

LABELS = np.array(["normal", "pneumonia"], dtype=object)  # MedMNIST label 0 / 1
# Robustness probe built from val only: one seeded random shift/rotation/zoom + gamma/contrast/brightness
# perturbation of every val image, scored at the threshold chosen on clean val.
STRESS = AugmentConfig(copies=1, hflip=False, photometric=True, seed=123)


def load_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and string labels of one split of a MedMNIST npz."""
    with np.load(path) as d:
        if f"{split}_images" not in d:
            raise SystemExit(f"{path} has no {split}_images array (arrays: {sorted(d.files)})")
        return d[f"{split}_images"], LABELS[d[f"{split}_labels"].reshape(-1).astype(int)]


def _features(fs: FeatureSet, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    return fs.extract_many(images)


def run_model(
    spec: ModelSpec,
    fs: FeatureSet,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cache: dict[str, Any],
    out: Path,
) -> tuple[Any, dict[str, Any]]:
    """Fit one model spec on train (+augmentation), tune/threshold on val; return the model and a table row."""
    cfg = spec.train
    if "val" not in cache:
        cache["val"] = _features(fs, val[0])
        cache["train"] = _features(fs, train[0])
        cache["stress"] = _features(fs, augment_stack(val[0], STRESS))[0]
    Xv, names = cache["val"]
    Xt, _ = cache["train"]
    yt = train[1]
    t_aug = 0.0
    if cfg.augment is not None:
        key = f"aug:{cfg.augment.model_dump_json()}"
        if key not in cache:
            t0 = time.time()
            aug = augment_stack(train[0], cfg.augment)
            cache[key] = (_features(fs, aug)[0], time.time() - t0)
        Xa, t_aug = cache[key]
        Xt = np.vstack([Xt, Xa])
        yt = np.concatenate([yt] + [train[1]] * cfg.augment.copies)
    cfg = cfg.model_copy(update={"name": spec.label})
    model, info = fit_sklearn_arrays(spec.model, cfg, Xt, yt, Xv, val[1], names, feature_set=fs.name)
    model.save(out / "models" / spec.label)
    t0 = time.time()
    Xp, _ = _features(fs, val[0])
    model.predict_proba(Xp)
    ips = len(Xp) / (time.time() - t0)
    m = info["val"]
    write_metrics(out, spec.label, "val", {**m, "model": spec.label, "split": "val"})
    ms = classification_metrics(
        val[1],
        model.predict(cache["stress"]),
        model.classes,
        model.predict_proba(cache["stress"]),
        model.card.positive_label,
    )
    row = {
        "model": spec.label,
        "val AUC": m["roc_auc"],
        "val ACC": m["accuracy"],
        "val bal. ACC": m["balanced_accuracy"],
        "sens": m["sensitivity"],
        "spec": m["specificity"],
        "threshold": m["threshold"],
        "stress AUC": ms["roc_auc"],
        "stress bal. ACC": ms["balanced_accuracy"],
        "train s": f"{info['train_seconds'] + t_aug:.1f}",
        "predict img/s": f"{ips:.0f}",
    }
    return model, row


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MedMNIST npz with train_* and val_* arrays")
    ap.add_argument("--test", type=Path, help="MedMNIST npz with test_images/test_labels")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=REPO / "conf" / "pneumonia.yaml")
    ap.add_argument("--baselines", action="store_true", help="also train the config's baseline models")
    ap.add_argument("--limit", type=int, help="use only the first N train images (smoke runs)")
    args = ap.parse_args(argv)

    exp: ExperimentConfig = load_experiment(args.config)
    fs = exp.features()
    train = load_split(args.data, "train")
    val = load_split(args.data, "val")
    if args.limit:
        train = (train[0][: args.limit], train[1][: args.limit])
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"train {len(train[1])} ({dict(zip(*np.unique(train[1], return_counts=True), strict=True))}), val {len(val[1])}"
    )

    cache: dict[str, Any] = {}
    rows = []
    shipped_model = None
    specs = [exp.shipped, *(exp.baselines if args.baselines else [])]
    for spec in specs:
        model, row = run_model(spec, fs, train, val, cache, args.out)
        if spec is exp.shipped:
            shipped_model = model
            row["model"] = f"{spec.label} (shipped)"
        rows.append(row)
        print(format_table([row], list(row)).splitlines()[-1], flush=True)
    cols = list(rows[0])
    table = format_table(rows, cols)
    print()
    print(table)
    (args.out / "benchmark.md").write_text(table + "\n")

    if args.test is not None and shipped_model is not None:
        ti, ty = load_split(args.test, "test")
        t0 = time.time()
        Xs, _ = _features(fs, ti)
        proba = shipped_model.predict_proba(Xs)
        pred = shipped_model.predict(Xs)
        secs = time.time() - t0
        m = classification_metrics(ty, pred, shipped_model.classes, proba, shipped_model.card.positive_label)
        m.update(
            model=exp.shipped.label,
            split="test",
            threshold=shipped_model.card.threshold,
            images_per_second=round(len(ty) / secs, 1),
        )
        res = write_metrics(args.out, exp.shipped.label, "test", m)
        print()
        print(format_metrics(res, f"{exp.shipped.label} on test ({len(ty)} images)"))
        print(json.dumps({"test_metrics": res["path"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
