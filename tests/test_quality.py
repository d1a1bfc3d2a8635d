"""Quality metrics against hand-computable cases and scikit-image."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from skimage import filters, measure, metrics

from medimg_spark.quality import METRIC_DIRECTION, QUALITY_KEYS, quality_metrics, reference_metrics

SAMPLE_NPZ = (
    Path(__file__).resolve().parents[1] / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
)


def ct() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array


def test_keys_fixed_order_and_directions() -> None:
    q = quality_metrics(ct())
    assert tuple(q) == QUALITY_KEYS
    assert all(isinstance(v, float) for v in q.values())
    assert set(METRIC_DIRECTION) == set(QUALITY_KEYS)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_constant_frame(dtype: str) -> None:
    q = quality_metrics(np.full((32, 32), 7, dtype))
    for k in ("mean", "std", "dynamic_range", "entropy", "rms_contrast", "sharpness", "noise_sigma"):
        assert q[k] == 0.0, k
    assert math.isnan(q["snr"]) and math.isnan(q["cnr"])
    assert q["blur_effect"] == 1.0


def test_tiny_and_nonfinite_frames_do_not_crash() -> None:
    q = quality_metrics(np.zeros((1, 1), np.float32))
    assert math.isnan(q["noise_sigma"]) and math.isnan(q["blur_effect"]) and q["std"] == 0
    img = ct().astype(np.float32)
    img[:4, :4] = np.nan
    img[5, 5] = np.inf
    q = quality_metrics(img)
    assert all(math.isfinite(v) for v in q.values())


def test_hand_computable_two_level_image() -> None:
    img = np.zeros((64, 64), np.uint8)
    img[:, 32:] = 200  # half 0, half 1 after scaling
    q = quality_metrics(img)
    assert q["mean"] == pytest.approx(0.5) and q["std"] == pytest.approx(0.5)
    assert q["entropy"] == pytest.approx(1.0)
    assert q["rms_contrast"] == pytest.approx(1.0)
    assert q["dynamic_range"] == pytest.approx(1.0)
    lap = cv2.Laplacian(img / 200.0, cv2.CV_64F, ksize=1)
    assert q["sharpness"] == pytest.approx(lap.var())
    assert math.isnan(q["cnr"])  # background is constant: undefined, not infinite


def test_uniform_histogram_entropy_is_8_bits() -> None:
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert quality_metrics(img)["entropy"] == pytest.approx(8.0)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_known_noise_sigma_within_10_percent(sigma: float) -> None:
    rng = np.random.default_rng(3)
    flat = 0.5 + rng.normal(0, sigma, (256, 256))
    flat[0, 0], flat[0, 1] = 0.0, 1.0  # pin the min-max scaling to [0, 1] so sigma keeps its units
    assert quality_metrics(flat)["noise_sigma"] == pytest.approx(sigma, rel=0.1)
    # on a real frame (scaled to [0, 1]) the estimate recovers added noise within 10 % as well
    d = np.load(SAMPLE_NPZ)["val_images"][0].astype(np.float64) / 255
    big = cv2.resize(d, (224, 224), interpolation=cv2.INTER_CUBIC)
    noisy = big + rng.normal(0, sigma, big.shape)
    est = quality_metrics(noisy)["noise_sigma"] * (noisy.max() - noisy.min())
    assert est == pytest.approx(sigma, rel=0.1)


def test_snr_cnr_from_otsu_regions() -> None:
    rng = np.random.default_rng(0)
    img = np.where(np.arange(64)[None, :] < 32, 0.2, 0.8) + rng.normal(0, 0.02, (64, 64))
    q = quality_metrics(img)
    u = (img - img.min()) / np.ptp(img)
    t = filters.threshold_otsu(u)
    fg, bg = u[u > t], u[u <= t]
    assert abs(fg.size - 64 * 32) <= 4  # Otsu splits at the step
    assert q["snr"] == pytest.approx(fg.mean() / bg.std(), rel=1e-6)
    assert q["cnr"] == pytest.approx(abs(fg.mean() - bg.mean()) / bg.std(), rel=1e-6)


def test_blur_effect_equals_skimage_and_tracks_blur() -> None:
    img = ct()
    u = (img - float(img.min())) / float(np.ptp(img))
    q = quality_metrics(img)
    assert q["blur_effect"] == pytest.approx(measure.blur_effect(u, h_size=11))
    blurred = quality_metrics(cv2.GaussianBlur(img.astype(np.float32), (0, 0), 2.0))
    assert blurred["blur_effect"] > q["blur_effect"] and blurred["sharpness"] < q["sharpness"]


def test_metrics_comparable_across_dtypes() -> None:
    img = ct()
    a = quality_metrics(img)
    b = quality_metrics(img.astype(np.float32) * 0.5 - 1024)  # affine change + dtype change
    for k in QUALITY_KEYS:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-9), k


def test_rgb_uses_luma() -> None:
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert quality_metrics(rgb) == pytest.approx(quality_metrics(gray), nan_ok=True)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_psnr_ssim_equal_skimage(dtype: str) -> None:
    rng = np.random.default_rng(1)
    clean = np.load(SAMPLE_NPZ)["val_images"][3]
    if dtype == "uint16":
        clean = clean.astype(np.uint16) * 257
    elif dtype == "float32":
        clean = clean.astype(np.float32) / 255
    top = 1.0 if dtype == "float32" else float(np.iinfo(clean.dtype).max)
    noisy = np.clip(clean + rng.normal(0, 0.05 * top, clean.shape), 0, top).astype(clean.dtype)
    r = reference_metrics(clean, noisy)
    dr = top if dtype != "float32" else float(np.ptp(clean))
    assert r["psnr"] == pytest.approx(metrics.peak_signal_noise_ratio(clean, noisy, data_range=dr))
    assert r["ssim"] == pytest.approx(metrics.structural_similarity(clean, noisy, data_range=dr))
    assert reference_metrics(clean, noisy, data_range=2.0)["psnr"] == pytest.approx(
        metrics.peak_signal_noise_ratio(clean, noisy, data_range=2.0)
    )


def test_reference_metrics_rgb_identity_and_shape_mismatch() -> None:
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array
    r = reference_metrics(rgb, rgb)
    assert r["ssim"] == pytest.approx(1.0) and math.isinf(r["psnr"])
    noisy = np.clip(rgb.astype(int) + 10, 0, 255).astype(np.uint8)
    assert reference_metrics(rgb, noisy)["ssim"] == pytest.approx(
        metrics.structural_similarity(rgb, noisy, channel_axis=-1, data_range=255)
    )
    with pytest.raises(ValueError, match="shape"):
        reference_metrics(rgb, rgb[:10])
