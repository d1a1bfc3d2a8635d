"""DEN's core check: medimg_spark.ops.denoise against BM3D on real frames, one run, same frames.

Real frames (pydicom-data CT 693_UNCR 512², MR2_UNCR 1024², CR RG3_UNCR 1760², US GREYSCALE_IMAGE
768x1024 from deid-data) are centre-cropped to ``--size`` and min-max scaled to [0, 1]; each gets one noise
model at three levels:

* gaussian: ``x + N(0, s²)``; BM3D and the core get the true ``s``;
* poisson: ``poisson(x · peak) / peak``; both run in the generalised-Anscombe domain of the true
  ``σ²(x) = x / peak`` (the package's own transform, so only the Gaussian core differs);
* speckle: ``x · (1 + N(0, s²))``; both run in the asinh domain of the true ``σ²(x) = s² x² + ε``.

The package's full ``denoise()`` (estimated noise, floor 0) is reported too. Frame ``ctld`` is the real
case of CT: 693_UNCR in HU, full 512², with ``medimg_spark.degrade.ct_low_dose`` at the benchmark's levels
(correlated, signal-dependent noise; the padding circle untouched); its "core" is the blind ``denoise()``
(floor 0) and BM3D gets the true σ of the noise inside the scan field (as in benchmarks/denoise.py). BM3D (``bm3d`` on PyPI,
licence "Free for non-commercial use": benchmark only, never a package dependency) runs both stages.
Times are process CPU seconds, so a loaded machine does not skew the ratio.

Run: ``python benchmarks/denoise_core.py [--size 512] [--models gaussian,poisson,speckle]``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

dn = importlib.import_module(
    "medimg_spark.ops.denoise"
)  # the module (medimg_spark.ops.denoise is also a function)

LEVELS = {"gaussian": (0.01, 0.03, 0.06), "poisson": (1000.0, 200.0, 50.0), "speckle": (0.05, 0.1, 0.2)}
CT_LOW_DOSE_I0 = (5.0e6, 9.0e5, 2.2e5)
FRAMES = {"ct": "693_UNCR.dcm", "mr": "MR2_UNCR.dcm", "cr": "RG3_UNCR.dcm", "us": "GREYSCALE_IMAGE.dcm"}


def load(name: str, size: int) -> np.ndarray:
    import deid_data
    import pydicom
    from pydicom.data import get_testdata_file

    if name == "us":
        path = Path(deid_data.__file__).parent / "data" / "ultrasounds" / FRAMES[name]
    else:
        path = Path(get_testdata_file("US1_UNCR.dcm")).parent / FRAMES[name]
    arr = pydicom.dcmread(path).pixel_array.astype(np.float64)
    if arr.ndim == 3:
        arr = arr[..., 0]
    r0, c0 = max((arr.shape[0] - size) // 2, 0), max((arr.shape[1] - size) // 2, 0)
    arr = arr[r0 : r0 + size, c0 : c0 + size]
    return (arr - arr.min()) / (arr.max() - arr.min())


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((x - ref) ** 2)))


def main() -> None:
    import bm3d
    from skimage.metrics import structural_similarity

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--models", default="gaussian,poisson,speckle")
    ap.add_argument("--frames", default="ct,mr,cr,us")
    args = ap.parse_args()
    rng = np.random.default_rng(16)
    print(
        "| frame | noise | level | noisy PSNR | core PSNR / SSIM | denoise() PSNR | BM3D PSNR / SSIM "
        "| Δ core−BM3D | core s | BM3D s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.frames.split(","):
        if name == "ctld":
            ct_low_dose_rows()
            continue
        x = load(name, args.size)
        for model in args.models.split(","):
            for level in LEVELS[model]:
                if model == "gaussian":
                    y = x + rng.normal(0, level, x.shape)
                    est = dn.NoiseEstimate("gaussian", level, 0, level**2, 0, 0.5, 0, 1, 0)
                elif model == "poisson":
                    y = rng.poisson(x * level) / level
                    est = dn.NoiseEstimate("poisson_gaussian", 0, 1 / level, 0, 0, 0.5, 0, 1, 0)
                else:
                    y = x * (1 + rng.normal(0, level, x.shape))
                    est = dn.NoiseEstimate("multiplicative", 0, 0, 1e-6, level**2, 0.5, 0, 1, 0)
                stable = dn._stabilise(y, est)
                unit = 1.0  # every transform makes the noise unit-variance
                t = time.process_time()
                core = dn._unstabilise(dn.multiscale_dct_denoise(stable, unit).astype(np.float64), est)
                t_core = time.process_time() - t
                t = time.process_time()
                ref = dn._unstabilise(np.asarray(bm3d.bm3d(stable, unit), dtype=np.float64), est)
                t_bm3d = time.process_time() - t
                full, _ = dn.denoise(y.astype(np.float32), floor=0.0)
                s_core = structural_similarity(core, x, data_range=1.0)
                s_ref = structural_similarity(ref, x, data_range=1.0)
                print(
                    f"| {name} {x.shape[0]}x{x.shape[1]} | {model} | {level:g} | {psnr(y, x):.2f} "
                    f"| {psnr(core, x):.2f} / {s_core:.4f} | {psnr(full.astype(np.float64), x):.2f} "
                    f"| {psnr(ref, x):.2f} / {s_ref:.4f} | {psnr(core, x) - psnr(ref, x):+.2f} "
                    f"| {t_core:.2f} | {t_bm3d:.2f} | {t_bm3d / max(t_core, 1e-9):.0f}x |",
                    flush=True,
                )


def ct_low_dose_rows() -> None:
    """Rows of the real CT case (see the module doc), in HU; PSNR over the frame's full HU range."""
    import bm3d
    import pydicom
    from pydicom.data import get_testdata_file
    from skimage.metrics import structural_similarity

    from medimg_spark.degrade import ct_low_dose, ct_padding

    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    clean = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lo, span = float(clean.min()), float(np.ptp(clean))
    inside = ~ct_padding(clean)

    def p(a: np.ndarray) -> float:
        return psnr((a - lo) / span, (clean - lo) / span)

    def s(a: np.ndarray) -> float:
        return float(structural_similarity(a, clean, data_range=span))

    for i0 in CT_LOW_DOSE_I0:
        y = ct_low_dose(clean.astype(np.float32), i0, np.random.default_rng(16)).astype(np.float64)
        t = time.process_time()
        core = dn.denoise(y.astype(np.float32), floor=0.0)[0].astype(np.float64)
        t_core = time.process_time() - t
        sigma = float((y - clean)[inside].std())
        t = time.process_time()
        ref = np.asarray(bm3d.bm3d((y - lo) / span, sigma / span), dtype=np.float64) * span + lo
        t_bm3d = time.process_time() - t
        print(
            f"| ct 512x512 HU | ct_low_dose | {i0:g} | {p(y):.2f} | {p(core):.2f} / {s(core):.4f} | (same) "
            f"| {p(ref):.2f} / {s(ref):.4f} | {p(core) - p(ref):+.2f} | {t_core:.2f} | {t_bm3d:.2f} "
            f"| {t_bm3d / max(t_core, 1e-9):.0f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
