"""PneumoniaMNIST benchmark: ingest → features → train → evaluate with the Spark stages, per model.

    python benchmarks/pneumonia.py --data data/sample/pneumoniamnist/pneumoniamnist_trainval.npz \\
        [--test pneumoniamnist_test.npz] --out /tmp/pneu [--config conf/pneumonia.yaml] [--baselines]

Runs the project's own stages in ``local[*]`` (``--master`` to change): ``ingest`` of the MedMNIST
npz into ``OUT/images``, ``compute_features`` with the configuration's feature set, then per model
(the shipped model's ``members`` first, e.g. the CNN and the SVC ensemble its ``vote`` averages)
``train`` (fitted on ``train`` plus its augmented copies when the config says so; every choice —
hyper-parameters, decision threshold — made on ``val``), ``evaluate`` on val and ``predict``
(images/s). The ``stress`` columns score val images after a seeded random geometric + photometric
perturbation (at the clean-val threshold): a val-only probe of robustness to acquisition shift.
With ``--test`` (a MedMNIST npz holding only ``test_images``/``test_labels``) the test file is
ingested after training, features are recomputed, and the shipped model is evaluated on it:
``OUT/metrics/eval_<model>_test.json``. The configuration's preprocess recipe is not applied:
the shipped features normalise each image themselves (z-scored pixels, texture statistics).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medimg_spark.features import compute_features  # noqa: E402
from medimg_spark.io.ingest import ingest, prepare_lake  # noqa: E402
from medimg_spark.ml import (  # noqa: E402
    AugmentConfig,
    augment_stack,
    classification_metrics,
    evaluate,
    format_metrics,
    format_table,
    load_model,
    predict,
    train,
)
from medimg_spark.ml.experiment import ExperimentConfig, ModelSpec, load_experiment  # noqa: E402
from medimg_spark.session import build_session  # noqa: E402

# Robustness probe built from val only: one seeded random shift/rotation/zoom + gamma/contrast/brightness
# perturbation of every val image, scored at the threshold chosen on clean val.
STRESS = AugmentConfig(copies=1, hflip=False, photometric=True, seed=123)


def load_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels (as the strings ingest writes: "0", "1") of one split of a MedMNIST npz."""
    with np.load(path) as d:
        if f"{split}_images" not in d:
            raise SystemExit(f"{path} has no {split}_images array (arrays: {sorted(d.files)})")
        labels = d[f"{split}_labels"].reshape(-1).astype(int).astype(str).astype(object)
        return d[f"{split}_images"], labels


def trimmed_input(data: Path, limit: int | None, dest: Path) -> Path:
    """The npz to ingest: ``data`` itself, or a copy keeping the first ``limit`` train images."""
    if not limit:
        return data
    with np.load(data) as d:
        arrays = {k: (d[k][:limit] if k.startswith("train_") else d[k]) for k in d.files}
    dest.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path = dest / f"{data.stem}_train{limit}.npz"
    path.write_bytes(buf.getvalue())
    return path


def stress_proba(model: Any, stress_images: np.ndarray, stress_features: np.ndarray) -> np.ndarray:
    """Class probabilities of the stressed val frames: a CNN reads the frames, a feature model the features,
    a vote averages its members' (weighted) probabilities."""
    if model.card.kind == "vote":
        total = sum(w for _, w in model.members)
        return (
            sum(  # type: ignore[no-any-return]
                w * stress_proba(m, stress_images, stress_features) for m, w in model.members
            )
            / total
        )
    if model.card.kind == "cnn":
        return np.asarray(model.predict_proba(stress_images))
    return np.asarray(model.predict_proba(stress_features))


def run_model(
    spark: Any,
    spec: ModelSpec,
    val: tuple[np.ndarray, np.ndarray],
    stress: tuple[np.ndarray, np.ndarray],
    out: Path,
    cnn_epochs: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train one model spec with the Spark stages, evaluate and predict on val; return its dir and table row.

    ``stress`` holds the perturbed val frames and their features; ``cnn_epochs`` overrides a CNN's
    epochs (smoke runs).
    """
    model_dir = out / "models" / spec.label
    update: dict[str, Any] = {"name": spec.label, "model_dir": str(model_dir)}
    if cnn_epochs is not None and spec.train.cnn is not None:
        update["cnn"] = spec.train.cnn.model_copy(update={"epochs": cnn_epochs})
    cfg = spec.train.model_copy(update=update)
    t0 = time.time()
    train(spark, out, spec.model, cfg)
    train_s = time.time() - t0
    m = evaluate(spark, out, model_dir, "val")
    t0 = time.time()
    predict(spark, out, model_dir, split="val")
    ips = len(val[1]) / (time.time() - t0)
    model = load_model(model_dir)
    proba = stress_proba(model, *stress)
    pred = np.asarray(model.classes, dtype=object)[model.card.decide(proba)]
    ms = classification_metrics(val[1], pred, model.classes, proba, model.card.positive_label)
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
        "train s": f"{train_s:.1f}",
        "predict img/s": f"{ips:.0f}",
    }
    return model_dir, row


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MedMNIST npz with train_* and val_* arrays")
    ap.add_argument("--test", type=Path, help="MedMNIST npz with test_images/test_labels")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=REPO / "conf" / "pneumonia.yaml")
    ap.add_argument("--baselines", action="store_true", help="also train the config's baseline models")
    ap.add_argument("--limit", type=int, help="use only the first N train images (smoke runs)")
    ap.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    ap.add_argument("--cnn-epochs", type=int, help="override the CNN members' epochs (smoke runs)")
    args = ap.parse_args(argv)

    exp: ExperimentConfig = load_experiment(args.config)
    fs = exp.features()
    val = load_split(args.data, "val")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    spark = build_session("medimg-pneumonia-benchmark", master=args.master)
    prepare_lake(str(out))  # the trimmed input is written inside the lake, so mark it a lake first
    data = trimmed_input(args.data, args.limit, out / "input")
    t0 = time.time()
    summary = ingest(spark, [str(data)], str(out), deidentify=_deidentifier())
    print(f"ingest: {summary['frames_written']} frames in {time.time() - t0:.1f} s", flush=True)
    t0 = time.time()
    feats = compute_features(spark, out, source="images", feature_set=fs)
    print(
        f"features: {feats['n_features']} per image, {feats['n_images']} images in {time.time() - t0:.1f} s"
    )
    stress_images = augment_stack(val[0], STRESS)
    stress = (stress_images, fs.extract_many(stress_images)[0])

    rows = []
    shipped_dir = None
    specs = [*exp.shipped_runs(), *(exp.baselines if args.baselines else [])]
    for spec in specs:
        model_dir, row = run_model(spark, spec, val, stress, out, args.cnn_epochs)
        if spec is exp.shipped:
            shipped_dir = model_dir
            row["model"] = f"{spec.label} (shipped)"
        elif spec in exp.members:
            row["model"] = f"{spec.label} (member)"
        rows.append(row)
        print(format_table([row], list(row)).splitlines()[-1], flush=True)
    table = format_table(rows, list(rows[0]))
    print()
    print(table)
    (out / "benchmark.md").write_text(table + "\n")

    if args.test is not None and shipped_dir is not None:
        ingest(spark, [str(args.test.resolve())], str(out), deidentify=_deidentifier())
        compute_features(spark, out, source="images", feature_set=fs)
        t0 = time.time()
        res = evaluate(spark, out, shipped_dir, "test")
        print()
        print(
            format_metrics(res, f"{exp.shipped.label} on test ({res['n']} images, {time.time() - t0:.1f} s)")
        )
        print(json.dumps({"test_metrics": res["path"]}))
    return 0


def _deidentifier() -> Any:
    """De-identification at ingest with an ephemeral key (MedMNIST files carry no DICOM headers anyway)."""
    from medimg_spark.privacy import DeidConfig, Deidentifier, load_key
    from medimg_spark.privacy.hook import IngestDeidentifier

    return IngestDeidentifier(Deidentifier(DeidConfig(), load_key(ephemeral=True)))


if __name__ == "__main__":
    raise SystemExit(main())
