"""Lung-field localisation on PneumoniaMNIST val: how often the ``lungs`` method gives two plausible lung boxes.

A frame passes when :func:`medimg_spark.ml.lungs.plausible_lung_boxes` holds: two regions, one
centroid each side of the midline, neither box reaching more than 10 % of the width into the other
half, each box 10-45 % of the frame. The per-frame ``kmeans`` method (k = 2 on the Otsu foreground)
is scored the same way as the baseline, and the full-size CR chest of pydicom-data (RG1_UNCR.dcm) is
checked too. No Spark: the per-frame functions the ``localize`` stage runs on each executor.

    python benchmarks/lungs.py --data data/sample/pneumoniamnist/pneumoniamnist_trainval.npz [--split val]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import numpy as np

from medimg_spark.config_models import LocalizeConfig
from medimg_spark.ml.localize import find_regions
from medimg_spark.ml.lungs import plausible_lung_boxes


def why(regions: list[dict[str, Any]], rows: int, cols: int) -> str:
    """The first plausibility rule a frame's boxes break ('ok' when none)."""
    if len(regions) != 2:
        return f"{len(regions)} region(s)"
    left, right = sorted(regions, key=lambda r: r["centroid_col"])
    if not left["centroid_col"] < cols / 2 < right["centroid_col"]:
        return "both on one side"
    if left["bbox_max_col"] + 1 > 0.6 * cols or right["bbox_min_col"] < 0.4 * cols:
        return "box crosses the midline"
    for r in (left, right):
        frac = (r["bbox_max_row"] - r["bbox_min_row"] + 1) * (r["bbox_max_col"] - r["bbox_min_col"] + 1)
        frac /= rows * cols
        if frac < 0.10:
            return "box < 10 %"
        if frac > 0.45:
            return "box > 45 %"
    return "ok"


def main() -> None:
    """Score ``lungs`` and ``kmeans`` on one split and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="pneumoniamnist .npz")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    d = np.load(args.data)
    frames, labels = d[f"{args.split}_images"], d[f"{args.split}_labels"][:, 0]
    cfg = LocalizeConfig()
    print(f"PneumoniaMNIST {args.split}: {len(frames)} frames (label 1 = pneumonia)\n")
    print("| method | plausible (all) | normal | pneumonia | ms/frame | failures |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method in ("lungs", "kmeans"):
        t0 = time.perf_counter()
        regs = [find_regions(f, None, method, cfg) for f in frames]
        ms = 1000 * (time.perf_counter() - t0) / len(frames)
        ok = np.array([plausible_lung_boxes(r, *f.shape[:2]) for r, f in zip(regs, frames, strict=True)])
        reasons = Counter(why(r, *f.shape[:2]) for r, f in zip(regs, frames, strict=True))
        del reasons["ok"]
        fails = ", ".join(f"{k}: {v}" for k, v in reasons.most_common())
        print(
            f"| {method} | {ok.mean():.3f} ({ok.sum()}/{ok.size}) | {ok[labels == 0].mean():.3f} | "
            f"{ok[labels == 1].mean():.3f} | {ms:.2f} | {fails} |"
        )
    try:
        from pydicom import dcmread
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCR.dcm")
    except Exception:  # pydicom-data not installed
        path = None
    if path is not None:
        a = dcmread(path).pixel_array
        t0 = time.perf_counter()
        regs = find_regions(a.max() - a, None, "lungs", cfg)  # MONOCHROME1: air dark first
        secs = time.perf_counter() - t0
        boxes = [(r["bbox_min_row"], r["bbox_min_col"], r["bbox_max_row"], r["bbox_max_col"]) for r in regs]
        print(
            f"\nRG1_UNCR.dcm (CR chest {a.shape[0]}x{a.shape[1]}): plausible={plausible_lung_boxes(regs, *a.shape)}, "
            f"boxes {boxes}, {secs:.2f} s"
        )


if __name__ == "__main__":
    main()
