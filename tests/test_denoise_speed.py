"""The fast denoise core and noise estimation against their definitions and against f73b140's outputs.

The sliding-window DCT core (medimg_spark.ops.denoise._dct_stage) computes every 8x8 block's DCT as
matrix products on a polyphase layout. Here it is compared with the definition, written the slow
obvious way: ``scipy.fft.dctn`` of every block, hard threshold or Wiener gain, ``idctn``, weighted
average. The full ``denoise()`` on real frames is compared with properties of the f73b140 outputs
(measured once with that commit's module, floor 0 so every frame is denoised): the means and standard
deviations agree to float32 rounding, the PSNR against the input to 0.01 dB, the note exactly. The
noise estimation helpers are checked for exact equality with the numpy calls they replace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from pydicom.data import get_testdata_file

from medimg_spark.ops.denoise import (
    HARD_THRESHOLD,
    _gaussian_sigma,
    _median,
    _rank_bins,
    dct_denoise,
    denoise,
    estimate_noise,
)

DATA_STORE = Path(get_testdata_file("US1_UNCR.dcm")).parent


def _frame(name: str) -> np.ndarray:
    """A real frame: CT in HU (float32), the centre 512² of the CR, the first channel of 8-bit US."""
    ds = pydicom.dcmread(DATA_STORE / name)
    arr = ds.pixel_array
    if name.startswith("693"):
        return arr.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)
    if name.startswith("RG1"):
        r0, c0 = (arr.shape[0] - 512) // 2, (arr.shape[1] - 512) // 2
        return np.ascontiguousarray(arr[r0 : r0 + 512, c0 : c0 + 512])
    if arr.ndim == 3:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


# --- the core against its definition -----------------------------------------------------------------


def _reference_stage(noisy: np.ndarray, pilot: np.ndarray | None, sigma: float, n: int) -> np.ndarray:
    """One stage by the definition, in float64: every whole n x n block of the padded frame."""
    blocks = sliding_window_view(noisy.astype(np.float64), (n, n))  # (i, j, a, b)
    coef = scipy.fft.dctn(blocks, axes=(-2, -1), norm="ortho")
    if pilot is None:
        keep = np.abs(coef) > HARD_THRESHOLD * sigma
        keep[..., 0, 0] = True
        coef = coef * keep
        weight = 1.0 / keep.sum(axis=(-2, -1))
    else:
        ref = scipy.fft.dctn(
            sliding_window_view(pilot.astype(np.float64), (n, n)), axes=(-2, -1), norm="ortho"
        )
        gain = ref**2 / (ref**2 + sigma**2)
        gain[..., 0, 0] = 1.0
        coef = coef * gain
        weight = 1.0 / (gain**2).sum(axis=(-2, -1)) ** 2
    est = scipy.fft.idctn(coef, axes=(-2, -1), norm="ortho") * weight[..., None, None]
    num = np.zeros(noisy.shape)
    den = np.zeros(noisy.shape)
    rows, cols = weight.shape
    for a in range(n):
        for b in range(n):
            num[a : a + rows, b : b + cols] += est[..., a, b]
            den[a : a + rows, b : b + cols] += weight
    pad = n - 1
    return (num / den)[pad:-pad, pad:-pad]


def _reference(image: np.ndarray, sigma: float, stages: int, n: int) -> np.ndarray:
    pad = n - 1
    padded = np.pad(image, pad, mode="reflect")
    basic = _reference_stage(padded, None, sigma, n)
    if stages == 1:
        return basic
    return _reference_stage(padded, np.pad(basic.astype(np.float32), pad, mode="reflect"), sigma, n)


@pytest.mark.parametrize(("stages", "n"), [(1, 8), (2, 8), (1, 4), (2, 4)])
def test_fast_core_equals_the_per_block_definition(stages: int, n: int) -> None:
    """A 96x96 crop of real MR with Gaussian noise: equal within float32 rounding of the frame's range."""
    mr = _frame("MR2_UNCR.dcm").astype(np.float64)
    crop = mr[464:560, 464:560]
    crop = (crop - crop.min()) / np.ptp(crop)
    noisy = (crop + np.random.default_rng(17).normal(0, 0.05, crop.shape)).astype(np.float32)
    fast = dct_denoise(noisy, 0.05, stages=stages, n=n)
    ref = _reference(noisy, 0.05, stages, n)
    span = float(np.percentile(noisy, 99) - np.percentile(noisy, 1))
    assert fast.dtype == np.float32 and fast.shape == noisy.shape
    assert float(np.abs(fast - ref).max()) <= 1e-5 * span
    strips = dct_denoise(noisy, 0.05, stages=stages, n=n, strip_patches=300)  # several row strips
    assert float(np.abs(strips - fast).max()) <= 1e-5 * span


# --- the whole op against f73b140 ----------------------------------------------------------------------

# denoise(frame, floor=0.0) at f73b140: output mean, std, PSNR (dB) against the input over the input's
# p1..p99 range, and the note
F73B140 = {
    "693_UNCR.dcm": (
        -1035.562612,
        1160.118497,
        81.0492,
        "gaussian σ=0.741 → dct σ_eff=0.741, padding 21 % kept",
    ),
    "MR2_UNCR.dcm": (
        75.053516,
        105.141880,
        46.2751,
        "poisson_gaussian σ=4.7 → dct σ_eff=4.7, padding 21 % kept",
    ),
    "RG1_UNCR.dcm": (5751.003689, 2648.537823, 43.4078, "gaussian σ=99.7 → dct σ_eff=99.7"),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (
        17.261191,
        40.452496,
        60.8212,
        "gaussian σ=0.741 → dct σ_eff=0.741, padding 71 % kept",
    ),
}


@pytest.mark.parametrize("name", sorted(F73B140))
def test_denoise_on_real_frames_matches_f73b140(name: str) -> None:
    frame = _frame(name)
    out, note = denoise(frame, floor=0.0)
    mean, std, psnr, expected_note = F73B140[name]
    assert note == expected_note
    assert out.dtype == frame.dtype and out.shape == frame.shape
    x, y = frame.astype(np.float64), out.astype(np.float64)
    span = float(np.percentile(x, 99) - np.percentile(x, 1))
    assert float(y.mean()) == pytest.approx(mean, rel=1e-6, abs=1e-5 * span)
    assert float(y.std()) == pytest.approx(std, rel=1e-6)
    assert 10 * np.log10(span**2 / np.mean((y - x) ** 2)) == pytest.approx(psnr, abs=0.01)


# --- the estimation helpers are exact ------------------------------------------------------------------


def test_rank_bins_are_the_stable_argsort_split() -> None:
    rng = np.random.default_rng(3)
    ct = _frame("693_UNCR.dcm")
    cases = [
        ct[::2, ::2].ravel().astype(np.float64) / 4.0,  # HU quarter steps: long runs of ties
        rng.integers(0, 5, 3001).astype(np.float64),  # every boundary inside a run of ties
        rng.normal(size=2049),
        np.zeros(700),
    ]
    for values in cases:
        for nbins in (1, 2, 7, 16):
            order = np.argsort(values, kind="stable")
            expected = [np.sort(c) for c in np.array_split(order, nbins)]
            got = _rank_bins(values, nbins)
            assert len(got) == nbins
            for e, g in zip(expected, got, strict=True):
                np.testing.assert_array_equal(g, e)


def test_median_and_gaussian_sigma_are_exact() -> None:
    rng = np.random.default_rng(4)
    for size in (1, 2, 5, 64, 1001, 4096):
        x = rng.normal(size=size) * 1e3
        assert _median(x) == float(np.median(x))
    frame = _frame("MR2_UNCR.dcm")[::2, ::2].astype(np.float32)
    for plane in (frame, frame * 0.37 + 5, frame[:100, :130]):
        assert _gaussian_sigma(plane) == estimate_noise(plane, "gaussian").sigma


def test_core_runs_blas_on_one_thread() -> None:
    """A multi-threaded OpenBLAS spins on the core's small products (15x the CPU time measured on 2 cores)."""
    from threadpoolctl import threadpool_info

    from medimg_spark.ops.denoise import _one_blas_thread

    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    with _one_blas_thread():
        inside = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert inside and set(inside) == {1}
    assert after == before
