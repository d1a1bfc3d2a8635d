"""Degradations (medimg_spark.degrade): each one's statistics on a real frame, and the full-reference protocol."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark import degrade as D
from medimg_spark.ops import apply_recipe, parse_recipe

STORE = os.path.dirname(get_testdata_file("US1_UNCR.dcm"))


def dicom(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(os.path.join(STORE, name))


def centre(a: np.ndarray, side: int) -> np.ndarray:
    r0, c0 = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
    return np.ascontiguousarray(a[r0 : r0 + side, c0 : c0 + side])


@pytest.fixture(scope="module")
def mr() -> np.ndarray:  # uint16, 484x484, background exactly 0
    return dicom("MR-SIEMENS-DICOM-WithOverlays.dcm").pixel_array


@pytest.fixture(scope="module")
def cr() -> np.ndarray:  # uint16 10-bit CR, central 384x384
    return centre(dicom("RG3_UNCR.dcm").pixel_array, 384)


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, dict[str, object]]:
    ds = dicom("693_UNCR.dcm")
    meta = {"rescale_slope": 1.0, "rescale_intercept": -1024.0, "pixel_spacing": [0.4785, 0.4785]}
    return ds.pixel_array, meta


def binned(clean: np.ndarray, resid: np.ndarray, edges: list[float]) -> list[tuple[float, float]]:
    """(mean clean value, residual variance) per clean-value bin."""
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (clean >= lo) & (clean < hi)
        assert sel.sum() > 500, (lo, hi, sel.sum())
        out.append((float(clean[sel].mean()), float(resid[sel].var())))
    return out


@pytest.mark.parametrize("name", list(D.DEGRADATIONS))
def test_none_is_an_exact_copy_and_every_level_keeps_dtype_and_shape(name: str, cr: np.ndarray) -> None:
    frame = cr[:96, :96]
    same = D.degrade(frame, name, "none", np.random.default_rng(0))
    assert same.dtype == frame.dtype and np.array_equal(same, frame) and same is not frame
    for level in D.DEGRADATIONS[name].levels:
        out = D.degrade(frame, name, level, np.random.default_rng(1))
        assert out.dtype == frame.dtype and out.shape == frame.shape
        assert not np.array_equal(out, frame), level
    again = D.degrade(frame, name, "moderate", np.random.default_rng(1))
    assert np.array_equal(again, D.degrade(frame, name, "moderate", np.random.default_rng(1)))  # seeded


def test_rician_background_bias_and_bright_unbiased(mr: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    out = D.rician(mr, 0.05, rng).astype(np.float64)
    sigma = 0.05 * D.robust_max(mr)
    bg = mr == 0
    assert bg.mean() > 0.2
    # the magnitude of pure complex noise is Rayleigh: mean σ·sqrt(π/2) (the Rician bias), not 0
    assert out[bg].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)
    bright = mr > 10 * sigma  # high SNR: Rician → Gaussian, bias ≈ σ²/(2x) (< 1 % of σ here)
    resid = out[bright] - mr[bright]
    assert abs(resid.mean()) < 0.1 * sigma and resid.std() == pytest.approx(sigma, rel=0.05)


def test_xray_poisson_variance_grows_with_intensity(cr: np.ndarray) -> None:
    out = D.xray_quantum(cr, counts=300.0, rng=np.random.default_rng(5))
    clean = cr.astype(np.float64)
    lo = clean.min()
    scale = 300.0 / (D.robust_max(clean) - lo)
    bins = binned(clean, out - clean, list(np.percentile(clean, [5, 25, 50, 75, 95])))
    for mean, var in bins:  # Poisson in quanta: var(x) = (x - lo) / scale (+ 1/12 rounding)
        assert var == pytest.approx((mean - lo) / scale + 1 / 12, rel=0.15)
    assert bins[-1][1] > 1.5 * bins[0][1]
    blurred = D.xray_quantum(cr, counts=1e9, rng=np.random.default_rng(5), blur_sigma=1.5)

    def curvature(a: np.ndarray) -> float:  # detector MTF: the second differences shrink
        return float(np.abs(np.diff(a.astype(np.float64), 2, axis=1)).mean())

    assert curvature(blurred) < 0.5 * curvature(clean)


def test_speckle_std_is_proportional_to_intensity() -> None:
    us = dicom("JPGLosslessP14SV1_1s_1f_8b.dcm").pixel_array[200:600, 300:800]
    looks = 4.0
    out = D.speckle(us, looks, np.random.default_rng(7)).astype(np.float64)
    clean = us.astype(np.float64)
    g = np.random.default_rng(0).gamma(looks, 1 / looks, 1_000_000)
    cv = float(np.sqrt(g).std() / D.speckle_factor_mean(looks))  # std of the factor (its mean is 1)
    edges = [20, 50, 90, 140, 200]
    for mean, var in binned(clean, out - clean, edges):
        assert math.sqrt(var) / mean == pytest.approx(cv, rel=0.15)
    unsat = clean < 150
    assert (out[unsat] - clean[unsat]).mean() == pytest.approx(0.0, abs=1.0)  # mean kept


def test_ct_low_dose_sinogram_noise_scales_with_dose(ct: tuple[np.ndarray, dict[str, object]]) -> None:
    stored, _ = ct
    frame = np.array(stored[128:320, 128:320])  # inside the body
    frame[:8, :8] = -2000  # a padding corner outside the scan field keeps its value
    stds = []
    for i0 in (4e5, 1e5):
        out = D.ct_low_dose(frame, i0, np.random.default_rng(11), intercept=-1024.0, pixel_mm=0.4785)
        assert out.dtype == frame.dtype and np.array_equal(out[:8, :8], frame[:8, :8])
        diff = (out.astype(np.float64) - frame)[8:, 8:]
        assert abs(diff.mean()) < 0.1 * diff.std()
        stds.append(diff.std())
    assert stds[1] / stds[0] == pytest.approx(2.0, rel=0.1)  # σ ∝ 1/sqrt(I0)
    # signal dependent: the same dose through water-equivalent tissue vs through air
    air = np.full((128, 128), 0, np.int16)  # -1024 HU
    water = np.full((128, 128), 1024, np.int16)  # 0 HU
    s_air = (D.ct_low_dose(air, 1e5, np.random.default_rng(2), intercept=-1024.0) - air.astype(float)).std()
    s_water = (
        D.ct_low_dose(water, 1e5, np.random.default_rng(2), intercept=-1024.0) - water.astype(float)
    ).std()
    assert s_water > 1.3 * s_air > 0


def test_low_contrast_compresses_and_requantises() -> None:
    us = dicom("JPGLosslessP14SV1_1s_1f_8b.dcm").pixel_array[200:600, 300:800]
    out = D.low_contrast(us, 0.4)
    assert out.dtype == np.uint8
    assert out.astype(float).std() == pytest.approx(0.4 * us.astype(float).std(), rel=0.05)
    assert len(np.unique(out)) < 0.5 * len(np.unique(us))
    assert np.array_equal(D.low_contrast(us, 1.0), us)


def test_bad_arguments_are_refused(cr: np.ndarray) -> None:
    with pytest.raises(D.DegradeError, match="2-D grey frame"):
        D.degrade(np.zeros((8, 8, 3), np.uint8), "speckle", "low", np.random.default_rng(0))
    with pytest.raises(D.DegradeError, match="unknown level 'extreme'"):
        D.degrade(cr, "speckle", "extreme", np.random.default_rng(0))
    with pytest.raises(D.DegradeError, match=r"unknown degradation 'blur'.*rician"):
        D.degrade(cr, "blur", "low", np.random.default_rng(0))


def test_anscombe_round_trip_and_unit_variance() -> None:
    lam = np.array([5.0, 20.0, 100.0])
    counts = np.random.default_rng(0).poisson(lam[:, None], (3, 200_000))
    assert np.allclose(D.anscombe(counts).std(axis=1), 1.0, atol=0.04)
    # the exact unbiased inverse maps E[anscombe(counts)] back to λ (a plain algebraic inverse is biased)
    assert np.allclose(D.inverse_anscombe(D.anscombe(counts).mean(axis=1)), lam, rtol=0.01)


def test_full_reference_protocol_splits_unit_and_quality_steps(mr: np.ndarray) -> None:
    recipe = parse_recipe(
        {
            "name": "p",
            "steps": [
                {"op": "flag_empty"},
                {"op": "gaussian", "sigma": 1.5},
                {"op": "minmax"},
                {"op": "otsu"},
            ],
        }
    )
    unit = D.reference_recipe(recipe)
    assert [s.op for s in unit.steps] == ["flag_empty", "minmax", "otsu"]
    assert D.quality_ops(recipe) == ["gaussian"]
    noisy = D.degrade(mr, "rician", "high", np.random.default_rng(1))
    score = D.full_reference(recipe, mr, noisy)
    ref = apply_recipe(unit, mr)[0]
    assert score.data_range == pytest.approx(float(ref.max() - ref.min()))  # the span of ref's units: 1.0
    # the Rician background bias stays (no linear filter removes it): a small PSNR gain, a large SSIM gain
    assert score.improved() and score.not_lowered() and score.psnr_gain > 0.1 and score.ssim_gain > 0.2
    # at "none" the baseline is the reference itself: only the native tolerance can be met
    clean_score = D.full_reference(recipe, mr, mr.copy())
    assert math.isinf(clean_score.baseline_psnr) and clean_score.baseline_ssim == pytest.approx(1.0)
    assert clean_score.tolerance_psnr < math.inf and clean_score.native_sigma > 0
    assert not clean_score.strictly_not_lowered()  # any change of a clean frame lowers PSNR from inf
    assert clean_score.psnr_floor == pytest.approx(clean_score.tolerance_psnr)
    blur_all = parse_recipe({"name": "b", "steps": [{"op": "flag_empty"}, {"op": "gaussian", "sigma": 6.0}]})
    assert not D.full_reference(blur_all, mr, mr.copy()).not_lowered()  # heavy blur of a clean frame is harm
    identity = parse_recipe({"name": "i", "steps": [{"op": "flag_empty"}]})
    same = D.full_reference(identity, mr, noisy)
    assert same.output_psnr == same.baseline_psnr and same.not_lowered() and not same.improved()
    with pytest.raises(D.DegradeError, match="no unit step"):
        D.reference_recipe(parse_recipe({"name": "g", "steps": [{"op": "gaussian"}]}))
