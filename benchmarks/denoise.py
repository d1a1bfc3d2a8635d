"""Denoising benchmark: real frames + synthetic noise → each filter of the op layer → PSNR/SSIM vs clean.

Frames: pydicom's CT_small.dcm and MR_small.dcm, and 64 PneumoniaMNIST validation chest X-rays (28x28).
Each clean frame is min-max scaled to float32 [0, 1]; noise is added at three levels:

* gaussian: additive N(0, sigma^2), sigma = 0.02, 0.05, 0.10
* poisson: photon counting, ``poisson(x * peak) / peak`` with peak = 200, 50, 15 counts (lower = noisier)
* speckle: multiplicative ``x * (1 + N(0, sigma^2))``, sigma = 0.10, 0.20, 0.40

then clipped to [0, 1]. Filters run with fixed parameters (no per-level tuning); PSNR (dB) and SSIM use
``data_range = 1`` (:func:`medimg_spark.quality.reference_metrics`). Tables report the mean over frames.

Run: ``python benchmarks/denoise.py`` (about a minute on one core). Writes
``benchmarks/results/denoise.md`` and ``benchmarks/results/denoise.json``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medimg_spark import ops  # noqa: E402
from medimg_spark.quality import reference_metrics  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
NPZ = REPO / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
N_CXR = 64
SEED = 20261121

NOISE: dict[str, tuple[float, float, float]] = {
    "gaussian": (0.02, 0.05, 0.10),
    "poisson": (200.0, 50.0, 15.0),
    "speckle": (0.10, 0.20, 0.40),
}

FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean 3x3": lambda x: ops.mean_filter(x, 3),
    "median 3x3": lambda x: ops.median_filter(x, 3),
    "gaussian σ=1": lambda x: ops.gaussian_filter(x, 1.0),
    "bilateral d=5": lambda x: ops.bilateral_filter(x, 5, 0.1, 2.0),
    "nl-means (auto h)": lambda x: ops.nl_means_filter(x),
}


def load_frames() -> dict[str, list[np.ndarray]]:
    """Clean frames per dataset, float32 in [0, 1]."""
    import pydicom
    from pydicom.data import get_testdata_file

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ops.rescale(ct.pixel_array, float(ct.RescaleSlope), float(ct.RescaleIntercept))
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    cxr = np.load(NPZ)["val_images"][:N_CXR]
    return {
        "CT (CT_small, 128x128)": [ops.minmax(hu)],
        "MR (MR_small, 64x64)": [ops.minmax(mr)],
        f"CXR (PneumoniaMNIST val, {N_CXR} x 28x28)": [ops.to_float(f, "dtype") for f in cxr],
    }


def add_noise(clean: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """``clean`` (float [0, 1]) with noise of ``kind`` at ``level``, clipped to [0, 1], float32."""
    if kind == "gaussian":
        noisy = clean + rng.normal(0.0, level, clean.shape)
    elif kind == "poisson":
        noisy = rng.poisson(clean.astype(np.float64) * level) / level
    else:
        noisy = clean * (1.0 + rng.normal(0.0, level, clean.shape))
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def run() -> dict[str, Any]:
    """Run the benchmark and return every number (means over frames)."""
    rng = np.random.default_rng(SEED)
    datasets = load_frames()
    results: dict[str, Any] = {}
    seconds = dict.fromkeys(FILTERS, 0.0)
    for ds_name, frames in datasets.items():
        rows = []
        for kind, levels in NOISE.items():
            for level in levels:
                scores: dict[str, list[tuple[float, float]]] = {"noisy": []}
                for clean in frames:
                    noisy = add_noise(clean, kind, level, rng)
                    m = reference_metrics(clean, noisy, data_range=1.0)
                    scores["noisy"].append((m["psnr"], m["ssim"]))
                    for f_name, fn in FILTERS.items():
                        t0 = time.perf_counter()
                        out = fn(noisy)
                        seconds[f_name] += time.perf_counter() - t0
                        m = reference_metrics(clean, out, data_range=1.0)
                        scores.setdefault(f_name, []).append((m["psnr"], m["ssim"]))
                rows.append(
                    {
                        "noise": kind,
                        "level": level,
                        "scores": {
                            k: {
                                "psnr": float(np.mean([p for p, _ in v])),
                                "ssim": float(np.mean([s for _, s in v])),
                            }
                            for k, v in scores.items()
                        },
                    }
                )
        results[ds_name] = rows
    return {
        "seed": SEED,
        "noise_levels": {k: list(v) for k, v in NOISE.items()},
        "filters": list(FILTERS),
        "filter_seconds_total": {k: round(v, 3) for k, v in seconds.items()},
        "datasets": results,
    }


def level_label(kind: str, level: float) -> str:
    return f"peak {level:g}" if kind == "poisson" else f"σ {level:g}"


def to_markdown(report: dict[str, Any], elapsed: float) -> str:
    """Markdown tables: one per dataset, rows = noise/level, cells = PSNR dB / SSIM (best filter in bold)."""
    cols = ["noisy", *report["filters"]]
    lines = [
        "# Denoising benchmark",
        "",
        "Generated by `python benchmarks/denoise.py` "
        f"(seed {report['seed']}, {elapsed:.0f} s on {platform.machine()}, Python {platform.python_version()}).",
        "",
        "Clean frames are min-max scaled to [0, 1]; noise is added and clipped to [0, 1]; each filter of "
        "`medimg_spark.ops` runs with fixed parameters. Cells: **PSNR (dB) / SSIM** against the clean frame, "
        "mean over frames, `data_range = 1`. Bold = best PSNR in the row. Poisson: `poisson(x·peak)/peak`; "
        "speckle: `x·(1 + N(0, σ²))`.",
        "",
    ]
    for ds_name, rows in report["datasets"].items():
        lines += [
            f"## {ds_name}",
            "",
            "| noise | level | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        for row in rows:
            best = max(report["filters"], key=lambda f: row["scores"][f]["psnr"])
            cells = []
            for c in cols:
                s = row["scores"][c]
                cell = f"{s['psnr']:.2f} / {s['ssim']:.3f}"
                cells.append(f"**{cell}**" if c == best else cell)
            lines.append(
                f"| {row['noise']} | {level_label(row['noise'], row['level'])} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    gains = {f: [] for f in report["filters"]}
    for rows in report["datasets"].values():
        for row in rows:
            for f in report["filters"]:
                gains[f].append(row["scores"][f]["psnr"] - row["scores"]["noisy"]["psnr"])
    lines += [
        "## Summary",
        "",
        "| filter | mean ΔPSNR (dB) over all rows | rows improved | filter time total (s) |",
        "|---|---|---|---|",
    ]
    for f, g in gains.items():
        lines.append(
            f"| {f} | {np.mean(g):+.2f} | {sum(x > 0 for x in g)}/{len(g)} | {report['filter_seconds_total'][f]:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    report = run()
    elapsed = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "denoise.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = to_markdown(report, elapsed)
    (RESULTS / "denoise.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
