"""Do-no-harm check of every shipped recipe on real frames of its modality (full-reference protocol).

For each recipe R (medimg_spark.degrade.full_reference: ref = P(clean), baseline = P(degraded),
output = R(degraded), P = R's unit steps): with no degradation the output's PSNR and SSIM are not lowered
(within the clean frame's own noise, the protocol's native tolerance), and at the moderate level of the
modality's noise they are improved. Frames are central crops of real-size frames, to keep each test short.
A degenerate input (constant frame) is flagged before any work, never turned into an image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark import degrade as D
from medimg_spark.ops import EmptyFrameError, RecipeStepError, apply_recipe, load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORE = os.path.dirname(get_testdata_file("US1_UNCR.dcm"))

Frame = tuple[np.ndarray, dict[str, Any]]


def centre(a: np.ndarray, side: int) -> np.ndarray:
    r0, c0 = max(0, (a.shape[0] - side) // 2), max(0, (a.shape[1] - side) // 2)
    return np.ascontiguousarray(a[r0 : r0 + side, c0 : c0 + side])


def ct_frame() -> Frame:
    ds = pydicom.dcmread(os.path.join(STORE, "693_UNCR.dcm"))
    meta = {"rescale_slope": 1.0, "rescale_intercept": -1024.0, "pixel_spacing": [0.4785, 0.4785]}
    return centre(ds.pixel_array, 256), meta


def mr_frame() -> Frame:
    return centre(
        pydicom.dcmread(os.path.join(STORE, "MR-SIEMENS-DICOM-WithOverlays.dcm")).pixel_array, 320
    ), {}


def cr_frame() -> Frame:
    ds = pydicom.dcmread(os.path.join(STORE, "RG3_UNCR.dcm"))
    return centre(ds.pixel_array, 384), {"photometric": "MONOCHROME1"}


def us_frame() -> Frame:
    ds = pydicom.dcmread(os.path.join(STORE, "JPGLosslessP14SV1_1s_1f_8b.dcm"))
    return np.ascontiguousarray(ds.pixel_array[150:550, 250:650]), {}


def cxr_frames(n: int = 8) -> list[Frame]:
    npz = np.load(os.path.join(REPO, "data", "sample", "pneumoniamnist", "pneumoniamnist_trainval.npz"))
    return [(f, {"photometric": "MONOCHROME2"}) for f in npz["val_images"][:n]]


CASES: dict[str, tuple[Callable[[], list[Frame]], str]] = {
    "ct_lung": (lambda: [ct_frame()], "ct_low_dose"),
    "mri": (lambda: [mr_frame()], "rician"),
    "chest_xray": (lambda: [cr_frame()], "xray_quantum"),
    "denoise": (lambda: [us_frame()], "speckle"),
    "classify": (cxr_frames, "xray_quantum"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_recipe_does_no_harm_and_improves_noisy_frames(name: str) -> None:
    recipe = load_recipe(name)
    assert D.quality_ops(recipe), f"{name} has no quality step to check"
    frames, degradation = CASES[name]
    for i, (clean, meta) in enumerate(frames()):
        untouched = D.full_reference(recipe, clean, clean.copy(), meta)
        assert untouched.not_lowered(), (name, i, "none", untouched)
        rng = np.random.default_rng(1600 + i)
        noisy = D.degrade(clean, degradation, "moderate", rng, meta)
        score = D.full_reference(recipe, clean, noisy, meta)
        assert score.improved() and score.not_lowered(), (name, i, degradation, score)


@pytest.mark.parametrize("name", list(CASES))
def test_recipe_flags_a_degenerate_frame(name: str) -> None:
    clean, meta = CASES[name][0]()[0]
    flat = np.full_like(clean, clean.flat[0])
    with pytest.raises(RecipeStepError) as info:
        apply_recipe(load_recipe(name), flat, meta)
    assert info.value.step == "0:flag_empty" and isinstance(info.value.cause, EmptyFrameError)
