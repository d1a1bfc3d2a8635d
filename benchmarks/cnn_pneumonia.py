"""The CNN alone on PneumoniaMNIST (train → val), without Spark: a quick way to tune ``train.cnn``.

    python benchmarks/cnn_pneumonia.py --data data/sample/pneumoniamnist/pneumoniamnist_trainval.npz \\
        [--model cnn|cnn_resnet] [--config c.yaml] [--set epochs=20 --set tta=true] [--json OUT.json]

Uses the same core as ``medimg train --model cnn`` (:mod:`medimg_spark.ml.cnn`: frame preparation,
training with early stopping, temperature and threshold on val) on the npz arrays directly, and
prints val ROC AUC / accuracy at the val-chosen threshold (``train.threshold``) and at 0.5, plus the
``stress`` probe of ``benchmarks/pneumonia.py`` (val frames after one seeded geometric + photometric
perturbation, scored at the clean-val threshold). Every choice is made on val; no test data is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medimg_spark.config_models import AugmentConfig, TrainConfig  # noqa: E402
from medimg_spark.ml.augment import augment_stack  # noqa: E402
from medimg_spark.ml.cnn import fit_cnn, predict_proba, prepare_stack, resolve_cnn_config  # noqa: E402
from medimg_spark.ml.metrics import choose_threshold, classification_metrics  # noqa: E402

STRESS = AugmentConfig(copies=1, hflip=False, photometric=True, seed=123)  # as benchmarks/pneumonia.py


def _metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    labels = np.asarray(["0", "1"], dtype=object)
    pred = labels[(proba[:, 1] >= threshold).astype(int)]
    m = classification_metrics(labels[y], pred, ["0", "1"], proba, "1")
    return {k: m[k] for k in ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")}


def main(argv: list[str] | None = None) -> int:
    """Train on ``train``, report val and stress metrics; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="MedMNIST npz with train_* and val_* arrays")
    ap.add_argument("--model", default="cnn", choices=["cnn", "cnn_resnet"])
    ap.add_argument("--config", type=Path, help="YAML whose train: section (with train.cnn) is used")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a train.cnn key"
    )
    ap.add_argument("--limit", type=int, help="use only the first N train images")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    train_section: dict[str, Any] = {}
    if args.config:
        train_section = (yaml.safe_load(args.config.read_text()) or {}).get("train", {}) or {}
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    tcfg = TrainConfig.model_validate(train_section)
    cfg = resolve_cnn_config(args.model, tcfg, overrides)
    with np.load(args.data) as d:
        xtr, ytr = d["train_images"][: args.limit], d["train_labels"].reshape(-1)[: args.limit].astype(int)
        xva, yva = d["val_images"], d["val_labels"].reshape(-1).astype(int)
    t0 = time.time()
    x, xv = (
        prepare_stack(xtr, cfg.input_size, cfg.normalisation),
        prepare_stack(xva, cfg.input_size, cfg.normalisation),
    )
    xs = prepare_stack(augment_stack(xva, STRESS), cfg.input_size, cfg.normalisation)
    fit = fit_cnn(x, ytr, xv, yva, 2, cfg, pos_index=1, log=lambda s: print(s, flush=True))
    pv = predict_proba(fit.params, xv, fit.spec, fit.temperature)
    ps = predict_proba(fit.params, xs, fit.spec, fit.temperature)
    thr = choose_threshold(yva, pv[:, 1], tcfg.threshold.rule, tcfg.threshold.value)
    result = {
        "model": args.model,
        "config": cfg.model_dump(mode="json"),
        "n_train": len(ytr),
        "n_val": len(yva),
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "temperature": fit.temperature,
        "threshold": thr,
        "val": _metrics(yva, pv, thr),
        "val_at_0.5": _metrics(yva, pv, 0.5),
        "stress": _metrics(yva, ps, thr),
        "seconds": round(time.time() - t0, 1),
        "backend": fit.backend,
        "history": fit.history,
    }
    summary = {k: v for k, v in result.items() if k not in ("history", "config")}
    print(json.dumps(summary, indent=2, default=float))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
