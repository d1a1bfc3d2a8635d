"""The noise-aware denoiser (medimg_spark.ops.denoise) on real-size medical frames, without Spark.

Frames come from the installed pydicom-data and deid-data corpora (CT 512², MR 484², CR 1760², US
768x1024), cropped to 256² where the property does not depend on the frame size. Noise of a known kind and
level is added to the real frame, which is the reference. BM3D is not compared here: it takes seconds per
frame even on crops; the comparison is the benchmark's (benchmarks/denoise.py).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from skimage.metrics import structural_similarity

from medimg_spark.ops import RecipeConfigError, UnsupportedImageError, nl_means_filter
from medimg_spark.ops.denoise import (
    DEFAULT_FLOOR,
    Denoise,
    NoiseEstimate,
    dct_denoise,
    denoise,
    estimate_noise,
    noise_colour,
    padding_mask,
)
from medimg_spark.ops.recipe import apply_recipe, parse_recipe

DATA_STORE = Path(get_testdata_file("US1_UNCR.dcm")).parent
DEID_DATA = Path(__import__("deid_data").__file__).parent / "data"


@cache
def real(name: str) -> np.ndarray:
    """The first frame of a real DICOM file, in its stored dtype (first channel of RGB ultrasound)."""
    path = {
        "ct": DATA_STORE / "693_UNCR.dcm",
        "mr": DATA_STORE / "MR-SIEMENS-DICOM-WithOverlays.dcm",
        "mr_large": DATA_STORE / "MR2_UNCR.dcm",
        "cr": DATA_STORE / "RG3_UNCR.dcm",
        "us": DEID_DATA / "ultrasounds" / "GREYSCALE_IMAGE.dcm",
        "us_rgb": DATA_STORE / "US1_UNCR.dcm",
    }[name]
    arr = pydicom.dcmread(path).pixel_array
    if name == "us" and arr.ndim == 3:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def crop(arr: np.ndarray, size: int = 256) -> np.ndarray:
    r0 = max((arr.shape[0] - size) // 2, 0)
    c0 = max((arr.shape[1] - size) // 2, 0)
    return np.ascontiguousarray(arr[r0 : r0 + size, c0 : c0 + size])


def unit(arr: np.ndarray) -> np.ndarray:
    """The frame min-max scaled to float64 [0, 1] (the clean reference)."""
    a = arr.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((x.astype(np.float64) - ref) ** 2)))


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    return float(structural_similarity(x.astype(np.float64), ref.astype(np.float64), data_range=data_range))


def degrade(kind: str, clean: np.ndarray, level: float, seed: int = 16) -> np.ndarray:
    """Modality-matched noise on a [0, 1] frame: gaussian, rician (MR magnitude), poisson (peak counts),
    speckle (multiplicative)."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        out = clean + rng.normal(0, level, clean.shape)
    elif kind == "rician":
        out = np.hypot(clean + rng.normal(0, level, clean.shape), rng.normal(0, level, clean.shape))
    elif kind == "poisson":
        out = rng.poisson(clean * level) / level
    else:
        out = clean * (1 + rng.normal(0, level, clean.shape))
    return out.astype(np.float32)


# --- noise estimation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "level", "model"),
    [
        ("ct", "gaussian", 0.03, "gaussian"),
        ("cr", "gaussian", 0.05, "gaussian"),
        ("cr", "poisson", 100.0, "poisson_gaussian"),
        ("us", "speckle", 0.2, "multiplicative"),
        ("ct", "speckle", 0.3, "multiplicative"),
    ],
)
def test_estimate_noise_recovers_known_noise(name: str, kind: str, level: float, model: str) -> None:
    clean = unit(crop(real(name), 384))
    est = estimate_noise(degrade(kind, clean, level))
    assert isinstance(est, NoiseEstimate)
    assert est.model == model
    if kind == "gaussian":
        truth = level
    elif kind == "poisson":
        truth = float(np.sqrt(est.median / level))
    else:
        truth = level * est.median
    assert est.sigma == pytest.approx(truth, rel=0.15)
    assert est.relative_sigma == pytest.approx(est.sigma / (est.high - est.low))
    assert float(np.sqrt(est.variance_at(est.median))) == pytest.approx(est.sigma)


def test_estimate_noise_ignores_clipped_background_and_units() -> None:
    """CT in HU: the constant padding outside the scan circle is excluded; σ scales with the units."""
    ct = real("ct").astype(np.float32)
    assert (ct == ct.min()).mean() > 0.1  # a large clipped background
    noisy = ct + np.random.default_rng(1).normal(0, 20.0, ct.shape).astype(np.float32)
    noisy[ct == ct.min()] = ct.min()  # the background stays clipped
    est = estimate_noise(noisy)
    assert est.model == "gaussian"
    assert est.sigma == pytest.approx(20.0, rel=0.15)
    assert estimate_noise(noisy * 10).sigma == pytest.approx(10 * est.sigma, rel=1e-6)


def test_ct_padding_is_kept_and_does_not_ring() -> None:
    """Real CT in HU with simulated low-dose noise (padding untouched, as on a scanner): the padding circle
    is detected exactly, kept bit for bit, and its step edge no longer wrecks the scan field."""
    from medimg_spark.degrade import ct_low_dose, ct_padding

    clean = real("ct").astype(np.float32) - 1024.0  # HU (slope 1, intercept -1024)
    noisy = ct_low_dose(clean, 9.0e5, np.random.default_rng(3)).astype(np.float32)
    pad = padding_mask(noisy)
    assert pad is not None
    assert np.array_equal(pad, ct_padding(clean))
    out, note = denoise(noisy, floor=0.0)
    assert "padding 21 % kept" in note
    assert np.array_equal(out[pad], noisy[pad])
    inside = ~pad
    span = float(clean.max() - clean.min())
    gain = psnr(out[inside] / span, clean[inside] / span) - psnr(noisy[inside] / span, clean[inside] / span)
    assert gain > 8.0  # measured 9.5..11.3 dB (BM3D with the true white σ: 8.1 dB)
    assert "correlated noise ×1." in note  # reconstructed CT noise is not white (see noise_colour)
    # scattered pixels at the minimum (clipped noise in dark tissue) are not padding
    speckled = crop(real("mr")).astype(np.int32) + 1
    assert padding_mask(speckled) is None
    speckled[np.random.default_rng(4).random(speckled.shape) < 0.05] = 0
    assert padding_mask(speckled) is None


@pytest.mark.parametrize("name", ["mr", "cr", "us"])
def test_white_noise_gets_no_correlated_noise_factor(name: str) -> None:
    x = unit(real(name))[:512, :512]
    noisy = x + np.random.default_rng(5).normal(0, 0.03, x.shape)
    assert noise_colour(noisy / 0.03) == 1.0


def test_estimate_noise_of_constant_and_non_finite_frames() -> None:
    assert estimate_noise(np.full((64, 64), 7, np.uint16)).sigma == 0.0
    assert estimate_noise(np.full((32, 32), np.nan, np.float32)).sigma == 0.0


# --- the Gaussian core --------------------------------------------------------------------------------


def test_dct_core_is_a_perfect_reconstruction_and_strip_independent() -> None:
    frame = unit(crop(real("mr"), 96)).astype(np.float32)
    assert np.abs(dct_denoise(frame, 1e-7) - frame).max() < 1e-5
    noisy = degrade("gaussian", frame.astype(np.float64), 0.05)
    whole = dct_denoise(noisy, 0.05)
    strips = dct_denoise(noisy, 0.05, strip_patches=700)  # 7 rows per strip
    np.testing.assert_allclose(strips, whole, atol=1e-5)
    assert psnr(whole, frame) > psnr(noisy, frame) + 6


# --- do no harm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct", "mr", "mr_large", "cr", "us"])
def test_undegraded_real_frames_are_left_alone(name: str) -> None:
    frame = real(name)
    out, note = denoise(frame)
    assert out.dtype == frame.dtype and out.shape == frame.shape
    if note.startswith("skipped"):
        assert out is frame or np.array_equal(out, frame)
    else:
        rng = float(frame.max()) - float(frame.min())
        assert ssim(out, frame, data_range=rng) >= 0.99, note


def test_frame_whose_noise_estimate_is_structure_is_left_alone() -> None:
    """deid-data's ctbrain1 (an RGB rendering, mostly saturated): the 'noise' is a large part of the range."""
    frame = np.ascontiguousarray(pydicom.dcmread(DEID_DATA / "humans" / "ctbrain1.dcm").pixel_array)
    out, note = denoise(frame, floor=0.0)
    assert out is frame
    assert note.startswith("skipped: σ=") and "structure rather than noise" in note


# --- improvement on each modality ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "level"),
    [
        ("ct", "gaussian", 0.04),
        ("mr", "rician", 0.04),
        ("cr", "poisson", 200.0),
        ("us", "speckle", 0.2),
    ],
)
def test_denoise_improves_psnr_and_ssim_and_beats_nl_means(name: str, kind: str, level: float) -> None:
    clean = unit(crop(real(name)))
    noisy = degrade(kind, clean, level)
    out, note = denoise(noisy)
    assert out.dtype == np.float32 and not note.startswith("skipped"), note
    assert psnr(out, clean) > psnr(noisy, clean) + 3, note
    assert ssim(out, clean) > ssim(noisy, clean) + 0.02, note
    baseline = nl_means_filter(noisy)
    assert psnr(out, clean) > psnr(baseline, clean), note
    assert ssim(out, clean) > ssim(baseline, clean), note


def test_nlm_method_improves_too() -> None:
    clean = unit(crop(real("ct")))
    noisy = degrade("gaussian", clean, 0.04)
    out, note = denoise(noisy, method="nlm")
    assert "nlm" in note
    assert psnr(out, clean) > psnr(noisy, clean) + 3


def test_floor_and_strength_control_the_amount() -> None:
    clean = unit(crop(real("cr")))
    noisy = degrade("gaussian", clean, 0.01)
    kept, note = denoise(noisy, floor=0.05)
    assert note.startswith("skipped: σ=") and "below floor" in note
    assert kept is noisy
    weak, _ = denoise(noisy, floor=0.0, strength=0.3)
    full, _ = denoise(noisy, floor=0.0)
    assert np.abs(weak - noisy).mean() < np.abs(full - noisy).mean()
    capped, note = denoise(noisy, floor=0.0, max_sigma=0.001)
    assert "σ_eff=" in note and np.abs(capped - noisy).mean() < np.abs(full - noisy).mean()
    with pytest.raises(ValueError, match="floor, strength and max_sigma must be >= 0"):
        denoise(noisy, floor=-1.0)


# --- dtypes, channels, special frames -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_dtype_and_shape_preserved(dtype: str) -> None:
    clean = unit(crop(real("ct"), 128))
    noisy = np.clip(degrade("gaussian", clean, 0.05), 0, 1)
    scale = {"uint8": 255, "uint16": 60000, "int16": 30000, "float32": 1}[dtype]
    frame = (noisy * scale).astype(dtype) if dtype != "float32" else noisy
    out, note = denoise(frame)
    assert out.dtype == frame.dtype and out.shape == frame.shape
    assert not note.startswith("skipped"), note
    assert psnr(out.astype(np.float64) / scale, clean) > psnr(frame.astype(np.float64) / scale, clean) + 3


def test_three_channel_frame_denoised_jointly() -> None:
    rgb = crop(real("us_rgb"), 192)
    clean = rgb.astype(np.float64) / 255
    noisy = np.clip(clean + np.random.default_rng(2).normal(0, 0.05, clean.shape), 0, 1)
    frame = np.rint(noisy * 255).astype(np.uint8)
    out, note = denoise(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8, note
    assert psnr(out / 255, clean) > psnr(frame / 255, clean) + 3


def test_constant_small_and_non_finite_frames() -> None:
    const = np.full((64, 64), 1000, np.uint16)
    out, note = denoise(const)
    assert out is const and note == "skipped: constant frame"
    tiny = np.arange(30, dtype=np.float32).reshape(5, 6)
    assert denoise(tiny)[1] == "skipped: frame smaller than 8x8"
    assert denoise(np.full((16, 16), np.nan, np.float32))[1] == "skipped: no finite pixels"
    clean = unit(crop(real("ct"), 128))
    noisy = degrade("gaussian", clean, 0.05)
    noisy[10:14, 20:30] = np.nan
    noisy[100, 5] = np.inf
    out, note = denoise(noisy)
    assert not note.startswith("skipped")
    assert np.isnan(out[10:14, 20:30]).all() and out[100, 5] == np.inf
    finite = np.isfinite(noisy)
    assert np.isfinite(out[finite]).all()
    assert psnr(out[finite], clean[finite]) > psnr(noisy[finite], clean[finite]) + 3


def test_unsupported_dtype_is_rejected() -> None:
    with pytest.raises(UnsupportedImageError, match="apply as_supported first"):
        denoise(np.zeros((16, 16), np.float64))


# --- recipe step ---------------------------------------------------------------------------------------


def test_recipe_step_validates_runs_and_explains() -> None:
    recipe = parse_recipe(
        {"name": "dn", "steps": [{"op": "denoise", "model": "gaussian", "floor": 0.01, "strength": 1.0}]}
    )
    step = recipe.steps[0]
    assert isinstance(step, Denoise) and step.method == "dct"
    assert Denoise(op="denoise").floor == DEFAULT_FLOOR
    clean = unit(crop(real("ct"), 128))
    noisy = degrade("gaussian", clean, 0.05)
    out, mask = apply_recipe(recipe, noisy)
    assert mask is None and psnr(out, clean) > psnr(noisy, clean) + 3
    same, m2, note = step.explain(noisy, None, None)
    np.testing.assert_array_equal(same, out)
    assert m2 is None and note is not None
    assert note.startswith("gaussian σ=") and "→ dct σ_eff=" in note
    _, _, skipped = step.explain(unit(crop(real("cr"), 128)).astype(np.float32), None, None)
    assert skipped is not None and skipped.startswith("skipped: σ=")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "bm3d"}, "parameter 'method'"),
        ({"model": "rician"}, "parameter 'model'"),
        ({"floor": -0.1}, "parameter 'floor'"),
        ({"strength": 0}, "parameter 'strength'"),
        ({"sigma": 0.1}, "unknown parameter; valid parameters of 'denoise'"),
    ],
)
def test_recipe_step_rejects_bad_parameters(params: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeConfigError, match=message):
        parse_recipe({"name": "dn", "steps": [{"op": "denoise", **params}]})


def test_heavy_speckle_keeps_the_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    """2-look speckle: the asinh/log inverse alone is biased low (~8 %); the restored mean removes it."""
    import importlib

    dn = importlib.import_module("medimg_spark.ops.denoise")  # the package re-exports the function
    clean = unit(crop(real("us"))) + 0.05
    noisy = (clean * np.random.default_rng(7).gamma(2.0, 0.5, clean.shape)).astype(np.float32)
    out, note = denoise(noisy, floor=0.0)
    assert note.startswith("multiplicative"), note
    assert abs(float(out.mean()) / float(noisy.mean()) - 1) < 0.01
    monkeypatch.setattr(dn, "MEAN_CORRECTION", False)
    biased, _ = denoise(noisy, floor=0.0)
    assert float(biased.mean()) < 0.97 * float(noisy.mean())
    assert psnr(out, clean) > psnr(biased, clean) + 0.5 > psnr(noisy, clean) + 3


def test_28x28_frames_use_the_small_frame_core() -> None:
    """PneumoniaMNIST thumbnails: the 8x8 + 4x4 core with extra Wiener passes beats the plain 8x8 core."""
    root = Path(__file__).resolve().parents[1]
    frames = np.load(root / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz")[
        "val_images"
    ][:6]
    rng = np.random.default_rng(28)
    gains = []
    for f in frames:
        clean = f.astype(np.float64) / 255.0
        noisy = (rng.poisson(clean * 300) / 300).astype(np.float32)
        out, note = denoise(noisy, floor=0.0)
        est = estimate_noise(noisy)
        plain = dct_denoise(noisy, est.sigma)
        assert psnr(out, clean) > psnr(noisy, clean) + 1.5, note
        gains.append(psnr(out, clean) - psnr(plain, clean))
    assert float(np.mean(gains)) > 0.1, gains  # measured +0.15 dB on these frames
