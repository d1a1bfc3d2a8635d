"""PneumoniaMNIST, region level: ``medimg recognize`` (superpixels → per-region features → MIL softmax).

    python benchmarks/pneumonia_regions.py --data data/sample/pneumoniamnist/pneumoniamnist_trainval.npz \\
        --out /tmp/pneu_regions [--specs slic,quickshift] [--limit N] [--master local[2]]

Ingests the MedMNIST npz (train + val) into ``OUT/images`` and, per spec, runs the library's
:func:`medimg_spark.ml.recognize.recognize` stage: region features on the executors, the region softmax
fitted on the driver from the train regions by multiple-instance learning (image labels only; no masks
exist for PneumoniaMNIST), aggregate and threshold chosen on val, ``region_predictions/`` and per-image
``predictions/`` written. Val metrics are the stage's own (``OUT/metrics/eval_<spec>_val.json``). The
``stress`` columns score the val images after the seeded perturbation of ``benchmarks/pneumonia.py``
(``STRESS``) at the clean-val threshold. The ablation rows refit the first spec's region table on the
driver (same region features) with other MIL settings and fixed aggregates, scored on val.

Writes ``benchmarks/results/pneumonia_regions.md`` (``--results`` to change) after every spec.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from pneumonia import STRESS, _deidentifier, load_split, trimmed_input  # noqa: E402

from medimg_spark.io.ingest import ingest, prepare_lake  # noqa: E402
from medimg_spark.ml import augment_stack, classification_metrics, format_table  # noqa: E402
from medimg_spark.ml.recognize import (  # noqa: E402
    REGION_FEATURES_DIR,
    RecognizeConfig,
    RegionModel,
    fit_region_model,
    load_region_model,
    recognize,
    region_table_from_pandas,
)
from medimg_spark.session import build_session  # noqa: E402

#: The specs measured: name → recognize options (everything else: the RecognizeConfig defaults).
SPECS: dict[str, dict[str, Any]] = {
    "regions_slic": {"superpixels": {"method": "slic", "n_segments": 32}},
    "regions_quickshift": {"superpixels": {"method": "quickshift", "kernel_size": 3.0, "max_dist": 6.0}},
    "regions_slic112": {"min_side": 112, "superpixels": {"method": "slic", "n_segments": 64}},
}

#: Ablations refitted from the first spec's region features: name → options replacing the spec's.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no MIL re-labelling (every region carries its image label)": {"mil_rounds": 0},
    "MIL top_fraction 0.25": {"top_fraction": 0.25},
}

REFERENCE = [
    ("pneumonia_ensemble (shipped, whole image, benchmarks/results/pneumonia.md)", 0.9957, 0.9733, 0.9748),
    ("union of selected quickshift superpixels, one vector per image (issue 13)", 0.834, None, None),
]


def _row(
    name: str, m: dict[str, Any], ms: dict[str, Any] | None, model: RegionModel, extra: dict[str, Any]
) -> dict:
    return {
        "model": name,
        "val AUC": m["roc_auc"],
        "val ACC": m["accuracy"],
        "val bal. ACC": m["balanced_accuracy"],
        "sens": m["sensitivity"],
        "spec": m["specificity"],
        "threshold": model.card.threshold,
        "aggregate": model.card.aggregate,
        "stress AUC": ms["roc_auc"] if ms else "",
        "stress bal. ACC": ms["balanced_accuracy"] if ms else "",
        **extra,
    }


def _stress(model: RegionModel, stress_images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    proba, pred = model.predict_images(list(stress_images))
    return classification_metrics(labels, pred, model.classes, proba, model.card.positive_label)


def _write(results: Path, rows: list[dict], ablations: list[dict], notes: list[str]) -> None:
    lines = [
        "# PneumoniaMNIST, region level (`medimg recognize`, issue 13 item 3)",
        "",
        "Runner: `python benchmarks/pneumonia_regions.py --data "
        "data/sample/pneumoniamnist/pneumoniamnist_trainval.npz --out DIR`. Train 4708 / val 524 images, "
        "28x28. Every choice (aggregate, threshold, MIL settings) on **val**; test not scored. Region labels: "
        "multiple-instance learning from image labels (PneumoniaMNIST has no masks). Stress: the val images "
        "perturbed as in `benchmarks/pneumonia.py` (`STRESS`), scored at the clean-val threshold.",
        "",
        "## Reference (whole-image models)",
        "",
        "| model | val AUC | val ACC | val bal. ACC |",
        "|---|---|---|---|",
        *[
            f"| {n} | {a:.4f} | {'' if c is None else f'{c:.4f}'} | {'' if b is None else f'{b:.4f}'} |"
            for n, a, c, b in REFERENCE
        ],
        "",
        "## Region-level models (Spark stage, full train/val)",
        "",
    ]
    if rows:
        lines.append(format_table(rows, list(rows[0])))
    if ablations:
        lines += ["", "## Ablations (refitted on the driver from the first spec's region features; val)", ""]
        lines.append(format_table(ablations, list(ablations[0])))
    lines += ["", "## Notes", "", *notes, ""]
    results.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MedMNIST npz with train_* and val_* arrays")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--specs", default=",".join(SPECS), help="comma-separated spec names: " + ", ".join(SPECS)
    )
    ap.add_argument("--limit", type=int, help="use only the first N train images (smoke runs)")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "pneumonia_regions.md")
    args = ap.parse_args(argv)

    specs = [s for s in args.specs.split(",") if s]
    unknown = [s for s in specs if s not in SPECS]
    if unknown:
        raise SystemExit(f"unknown spec(s) {unknown}; choose from {list(SPECS)}")
    val_images, val_labels = load_split(args.data, "val")
    stress_images = augment_stack(val_images, STRESS)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    spark = build_session("medimg-pneumonia-regions", master=args.master)
    prepare_lake(str(out))
    data = trimmed_input(args.data, args.limit, out / "input")
    if not (out / "images").exists():
        t0 = time.time()
        s = ingest(spark, [str(data)], str(out), deidentify=_deidentifier())
        print(f"ingest: {s['frames_written']} frames in {time.time() - t0:.1f} s", flush=True)

    rows: list[dict] = []
    ablations: list[dict] = []
    notes: list[str] = []
    for i, spec in enumerate(specs):
        cfg = RecognizeConfig.model_validate({**SPECS[spec], "name": spec})
        t0 = time.time()
        summary = recognize(spark, out, cfg)
        secs = time.time() - t0
        model = load_region_model(out / "models" / spec)
        import json

        m = json.loads((out / "metrics" / f"eval_{spec}_val.json").read_text())
        t0 = time.time()
        ms = _stress(model, stress_images, val_labels)
        stress_s = time.time() - t0
        rows.append(
            _row(
                spec,
                m,
                ms,
                model,
                {
                    "regions/img": summary["regions_per_image"],
                    "stage s": f"{secs:.0f}",
                    "img/s (stress, driver)": f"{len(val_labels) / stress_s:.0f}",
                },
            )
        )
        notes.append(
            f"* `{spec}`: options `{json.dumps(SPECS[spec])}`; aggregate search on val (AUC) "
            f"`{model.card.aggregate_search}`; MIL history `{model.card.mil_history}`; region labels "
            f"`{model.card.region_label_counts}` over {model.card.n_train_regions} train regions."
        )
        print(format_table([rows[-1]], list(rows[-1])), flush=True)
        _write(args.results, rows, ablations, notes)
        if i == 0 and not args.no_ablations:
            ablations = _ablate(spark, out, spec, cfg, val_labels)
            _write(args.results, rows, ablations, notes)
    return 0


def _ablate(spark: Any, out: Path, spec: str, cfg: RecognizeConfig, val_labels: np.ndarray) -> list[dict]:
    from pyspark.sql import functions as F

    rf = spark.read.parquet(str(out / REGION_FEATURES_DIR)).where(F.col("model") == spec)
    pdf = rf.where((F.col("region_id") >= 0) & F.col("label").isNotNull()).toPandas()
    train = region_table_from_pandas(pdf[pdf["split"] == cfg.train_split])
    val = region_table_from_pandas(pdf[pdf["split"] == cfg.val_split])
    rows = []
    for name, opts in ABLATIONS.items():
        t0 = time.time()
        model = fit_region_model(train, val, cfg.model_copy(update=opts), name=name)
        proba = model.image_proba(model.region_proba(val["X"]), val["image"], len(val["image_ids"]))
        pred = model.decide(proba)
        m = classification_metrics(val["image_labels"], pred, model.classes, proba, model.card.positive_label)
        rows.append(_row(name, m, None, model, {"fit s": f"{time.time() - t0:.0f}"}))
        print(format_table([rows[-1]], list(rows[-1])), flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
