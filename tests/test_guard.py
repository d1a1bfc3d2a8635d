"""Issue 16, do no harm: recipe trace, degenerate-output quarantine, guarded enhancement, fixed-scale metrics.

Real frames: pydicom's data store (real-size CT/MR/US), deid-data's CT, PneumoniaMNIST; no mocks.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from skimage import metrics as skmetrics

from medimg_spark import ops
from medimg_spark.ops import RecipeFileError, apply_recipe, load_recipe, parse_recipe
from medimg_spark.ops._common import DegenerateOutputError, check_output
from medimg_spark.ops._step import Step
from medimg_spark.ops.enhance import GuardReference, guard_noise, robust_dynamic_range
from medimg_spark.quality import nominal_scale, paired_metrics, quality_metrics, reference_metrics

STORE = Path(os.path.dirname(get_testdata_file("US1_UNCR.dcm")))


def _deid_dir() -> Path:
    import deid_data

    return Path(deid_data.__file__).parent / "data"


def dcm(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if arr.ndim == 3 and arr.shape[-1] != 3:
        arr = arr[0]
    meta: dict[str, Any] = {}
    if "RescaleSlope" in ds:
        meta = {"rescale_slope": float(ds.RescaleSlope), "rescale_intercept": float(ds.RescaleIntercept)}
    return arr, meta


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, dict[str, Any]]:
    return dcm(STORE / "693_UNCR.dcm")  # 512x512 int16, HU via slope/intercept


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    return dcm(STORE / "MR-SIEMENS-DICOM-WithOverlays.dcm")[0]  # 484x484 uint16


@pytest.fixture(scope="module")
def us() -> np.ndarray:
    return dcm(STORE / "JPGLosslessP14SV1_1s_1f_8b.dcm")[0]  # 768x1024 uint8


@pytest.fixture(scope="module")
def cxr(sample_npz: Path) -> np.ndarray:
    return np.load(sample_npz)["val_images"][:6]


def guarded(op: str, **params: Any) -> Any:
    return parse_recipe({"name": "g", "steps": [{"op": op, **params}]})


# --- trace ----------------------------------------------------------------------------------------------


def test_base_step_explain_runs_the_step_without_a_note(ct: tuple[np.ndarray, dict[str, Any]]) -> None:
    img, meta = ct
    step = parse_recipe({"name": "m", "steps": [{"op": "median", "ksize": 3}]}).steps[0]
    out, mask, note = step.explain(img, None, meta)
    assert note is None and mask is None
    assert np.array_equal(out, step.run(img, None, meta)[0]) and np.array_equal(
        out, ops.median_filter(img, 3)
    )
    assert Step.explain is type(step).explain  # the base implementation


def test_apply_recipe_trace_records_index_op_and_note(mr: np.ndarray) -> None:
    r = parse_recipe(
        {
            "name": "t",
            "steps": [
                {"op": "median", "ksize": 3},
                {"op": "clahe", "clip_limit": 2.0, "guard": {"max_noise_gain": 1.5}},
                {"op": "unsharp_mask", "amount": 1.0, "guard": {"max_noise_gain": 1.01}},
            ],
        }
    )
    trace: list[str] = []
    out, _ = apply_recipe(r, mr, None, trace)
    assert len(trace) == 2  # the median has nothing to say
    assert trace[0].startswith("1:clahe: applied (noise ×") and "CNR" in trace[0]
    assert trace[1].startswith("2:unsharp_mask: skipped (params: noise ×")
    assert all("; " not in t for t in trace)  # "; " joins the notes in processed.recipe_trace
    # the same frames without a trace list, and through Recipe.__call__
    assert np.array_equal(apply_recipe(r, mr)[0], out)
    again: list[str] = []
    assert np.array_equal(r(mr, None, again)[0], out) and again == trace


# --- degenerate outputs ---------------------------------------------------------------------------------


def test_ct_lung_with_wrong_rescale_is_degenerate(ct: tuple[np.ndarray, dict[str, Any]]) -> None:
    img, meta = ct
    r = load_recipe("ct_lung")
    out, _ = apply_recipe(r, img, meta)  # the real rescale: a proper lung-window frame
    assert float(out.max()) > float(out.min())
    # intercept with the wrong sign: every pixel above the window → constant → CLAHE → the solid black frame
    wrong = {"rescale_slope": 1.0, "rescale_intercept": 3000.0}
    hu = ops.rescale(img, 1.0, 3000.0)
    assert float(np.nanmin(hu)) > 150  # above the lung window's top
    with pytest.raises(DegenerateOutputError, match="constant") as info:
        apply_recipe(r, img, wrong)
    assert info.value.reason == "constant"


def test_ct_without_rescale_through_lung_window_is_saturated() -> None:
    # pydicom's CT_small (a demo frame) stores HU + 1024: without its rescale the lung window saturates 99 %
    # of it; with a wrong slope every pixel is above the window (constant)
    img, meta = dcm(Path(get_testdata_file("CT_small.dcm")))
    r = load_recipe("ct_lung")
    with pytest.raises(DegenerateOutputError, match="saturated at its maximum") as info:
        apply_recipe(r, img, {})
    assert info.value.reason == "saturated"
    with pytest.raises(DegenerateOutputError, match="constant"):
        apply_recipe(r, img, {"rescale_slope": 10.0, "rescale_intercept": -1024.0})
    apply_recipe(r, img, meta)  # with its header it passes


@pytest.mark.parametrize(
    ("recipe", "path"),
    [
        ("ct_lung", "693_UNCR.dcm"),
        ("ct_lung", "explicit_VR-UN.dcm"),
        ("ct_lung", "eCT_Supplemental.dcm"),
        ("mri", "MR-SIEMENS-DICOM-WithOverlays.dcm"),
        ("denoise", "JPGLosslessP14SV1_1s_1f_8b.dcm"),
    ],
)
def test_real_frames_pass_the_output_check(recipe: str, path: str) -> None:
    img, meta = dcm(STORE / path)
    out, _ = apply_recipe(load_recipe(recipe), img, meta)
    check_output(img, out)  # what apply_recipe ran; no exception
    assert np.isfinite(out).all()


def test_classify_and_chest_xray_pass_on_pneumoniamnist(cxr: np.ndarray) -> None:
    for name in ("classify", "chest_xray"):
        r = load_recipe(name)
        for img in cxr:
            apply_recipe(r, img, {"photometric": "MONOCHROME2"})


def test_check_output_reasons_on_real_frames(mr: np.ndarray) -> None:
    f = mr.astype(np.float32)
    check_output(f, f)
    with pytest.raises(DegenerateOutputError, match="no finite pixel"):
        check_output(f, np.full_like(f, np.nan))
    mostly = f.copy()
    mostly[: int(0.6 * f.shape[0])] = np.inf
    with pytest.raises(DegenerateOutputError, match="60% of the recipe output's pixels are NaN/inf") as info:
        check_output(f, mostly)
    assert info.value.reason == "nonfinite"
    check_output(mostly, mostly)  # the input was as bad: not the recipe's doing
    with pytest.raises(DegenerateOutputError, match="constant"):
        check_output(f, np.zeros_like(f))
    # 90 % in the bottom bin but not at one exact value: no end is saturated, the entropy collapses
    p90 = float(np.percentile(f, 90))
    collapsed = np.where(f > p90, 1.0, 0.0) + 1e-6 * f / f.max()
    with pytest.raises(DegenerateOutputError, match="entropy") as info:
        check_output(f, collapsed.astype(np.float32))
    assert info.value.reason == "entropy"
    # a constant input is flag_empty's business, not the check's
    check_output(np.full((8, 8), 3.0), np.zeros((8, 8)))


def test_check_output_keeps_inputs_that_were_already_mostly_at_one_end(us: np.ndarray) -> None:
    # ultrasound: the black surround outside the sector is most of the frame; a window that keeps it black is
    # not a loss of information
    assert float(np.mean(us == us.min())) > 0.5
    out = ops.window(us.astype(np.float32), 128, 256)
    check_output(us, out)


# --- guarded enhancement --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "params", "plain"),
    [
        ("clahe", {"clip_limit": 2.0}, lambda x: ops.clahe(x, 2.0, (8, 8))),
        ("equalize", {}, ops.equalize),
        ("unsharp_mask", {"sigma": 1.0, "amount": 1.0}, lambda x: ops.unsharp_mask(x, 1.0, 1.0)),
        ("contrast_stretch", {}, ops.contrast_stretch),
        ("gamma", {"gamma": 0.7}, lambda x: ops.gamma(x, 0.7)),
    ],
)
def test_without_guard_an_op_behaves_as_today(
    op: str, params: dict[str, Any], plain: Any, mr: np.ndarray
) -> None:
    r = guarded(op, **params)
    trace: list[str] = []
    out, _ = apply_recipe(r, mr, None, trace)
    assert trace == [] and np.array_equal(out, plain(mr))
    assert "guard" not in r.canonical_json() and "when" not in r.canonical_json()


def test_guard_skips_clahe_that_amplifies_ultrasound_noise(us: np.ndarray) -> None:
    r = guarded("clahe", clip_limit=2.0, guard={"max_noise_gain": 1.15, "max_cnr_loss": 0.1})
    trace: list[str] = []
    out, _ = apply_recipe(r, us, None, trace)
    assert np.array_equal(out, us)  # skipped: output = input, unchanged
    assert trace[0].startswith("0:clahe: skipped (params: noise ×")
    m = GuardReference(us).measure(ops.clahe(us, 2.0, (8, 8)), keeps_units=False)
    assert m.noise_gain > 1.15 and m.cnr_loss > 0.1  # the plain op really is worse on both counts


def test_guard_takes_the_first_fallback_that_passes(mr: np.ndarray) -> None:
    guard = {"max_noise_gain": 1.3, "fallbacks": [{"amount": 0.5}, {"amount": 0.25}]}
    r = guarded("unsharp_mask", sigma=1.0, amount=1.0, guard=guard)
    trace: list[str] = []
    out, _ = apply_recipe(r, mr, None, trace)
    assert np.array_equal(out, ops.unsharp_mask(mr, 1.0, 0.5))
    assert trace[0].startswith("0:unsharp_mask: fallback 1 amount=0.5 (noise ×")
    assert "after params: noise ×" in trace[0]
    ref = GuardReference(mr)
    assert ref.measure(ops.unsharp_mask(mr, 1.0, 1.0), keeps_units=True).noise_gain > 1.3
    assert ref.measure(out, keeps_units=True).noise_gain <= 1.3


def test_guard_applies_mild_clahe_on_mr_and_the_bounds_hold(mr: np.ndarray) -> None:
    r = guarded("clahe", clip_limit=2.0, guard={"max_noise_gain": 1.15, "max_cnr_loss": 0.1})
    trace: list[str] = []
    out, _ = apply_recipe(r, mr, None, trace)
    assert np.array_equal(out, ops.clahe(mr, 2.0, (8, 8)))
    assert trace[0].startswith("0:clahe: applied (")
    m = GuardReference(mr).measure(out, keeps_units=False)
    assert m.noise_gain <= 1.15 and m.cnr_loss <= 0.1


def test_guard_noise_measures_added_noise_on_a_real_frame(ct: tuple[np.ndarray, dict[str, Any]]) -> None:
    img = ct[0].astype(np.float32)
    rng = np.random.default_rng(16)
    base = guard_noise(img)
    noisy = img + rng.normal(0, 4 * base, img.shape).astype(np.float32)
    expected = math.hypot(base, 4 * base)
    assert guard_noise(noisy) == pytest.approx(expected, rel=0.15)
    # σ relative to the robust range: a linear stretch has no noise gain
    m = GuardReference(img).measure(img * 3.0 + 100.0, keeps_units=False)
    assert m.noise_gain == pytest.approx(1.0, rel=1e-6) and m.cnr_ratio == pytest.approx(1.0, rel=1e-6)
    # a half-flat frame (padding) still has a noise estimate, unlike the plain MAD rule
    padded = np.zeros((512, 1024), np.float32)
    padded[:, 512:] = noisy
    assert ops.noise_sigma_mad(padded) < 0.6 * guard_noise(padded)


def test_when_gate_skips_well_exposed_frames(cxr: np.ndarray) -> None:
    img = cxr[1]
    low = (img // 4 + 96).astype(np.uint8)  # a compressed range: a quarter of the display range
    assert robust_dynamic_range(img) > 0.5 > robust_dynamic_range(low)
    r = guarded("contrast_stretch", when={"max_dynamic_range": 0.5})
    t1: list[str] = []
    assert np.array_equal(apply_recipe(r, img, None, t1)[0], img)
    assert t1[0].startswith("0:contrast_stretch: skipped (dynamic range ")
    t2: list[str] = []
    assert np.array_equal(apply_recipe(r, low, None, t2)[0], ops.contrast_stretch(low))
    assert t2[0].startswith("0:contrast_stretch: applied (dynamic range ")


def test_guard_validation_names_the_problem(tmp_path: Path) -> None:
    def bad(step: dict[str, Any]) -> str:
        path = tmp_path / "r.yaml"
        path.write_text(
            yaml.safe_dump({"name": "b", "steps": [{"op": "flag_empty"}, step]}), encoding="utf-8"
        )
        with pytest.raises(RecipeFileError) as info:
            load_recipe(path)
        return str(info.value)

    assert "needs max_noise_gain" in bad({"op": "clahe", "guard": {"fallbacks": []}})
    msg = bad({"op": "clahe", "guard": {"max_noise_gain": 1.1, "fallbacks": [{"clip": 1.0}]}})
    assert "step 1 (op 'clahe')" in msg and "fallbacks[0]" in msg and "clip_limit" in msg
    msg = bad({"op": "clahe", "guard": {"max_noise_gain": 1.1, "fallbacks": [{"clip_limit": -1}]}})
    assert "fallbacks[0]" in msg and "clip_limit" in msg and "greater than 0" in msg
    msg = bad({"op": "unsharp_mask", "guard": {"max_noise_gain": 1.1, "max_gain": 2}})
    assert "step 1 (op 'unsharp_mask')" in msg and "max_gain" in msg
    assert "max_noise_gain" in bad({"op": "gamma", "gamma": 0.8, "guard": {"max_noise_gain": 0.5}})
    assert "max_dynamic_range" in bad({"op": "equalize", "when": {"max_dynamic_range": 1.5}})


def test_guard_changes_the_hash_and_round_trips() -> None:
    plain = guarded("clahe", clip_limit=2.0)
    with_guard = guarded(
        "clahe", clip_limit=2.0, guard={"max_noise_gain": 1.15, "fallbacks": [{"clip_limit": 1}]}
    )
    assert plain.hash != with_guard.hash
    assert parse_recipe(json.loads(with_guard.model_dump_json())).hash == with_guard.hash
    body = json.loads(with_guard.canonical_json())["steps"][0]
    assert body["guard"] == {"max_noise_gain": 1.15, "max_cnr_loss": None, "fallbacks": [{"clip_limit": 1}]}


# --- metrics in a fixed scale ---------------------------------------------------------------------------


def test_unsharp_mask_no_longer_scores_as_lower_range_or_contrast(
    ct: tuple[np.ndarray, dict[str, Any]], mr: np.ndarray, cxr: np.ndarray
) -> None:
    big = cv2.resize(cxr[0], (256, 256), interpolation=cv2.INTER_CUBIC)
    r = guarded("unsharp_mask", sigma=2.0, amount=1.5)
    assert r.keeps_units
    for img in (ct[0], mr, big):
        out, _ = apply_recipe(r, img)
        before, after = paired_metrics(img, out, r.keeps_units)
        assert after["dynamic_range"] >= before["dynamic_range"]
        assert after["rms_contrast"] >= before["rms_contrast"]
        assert after["sharpness"] > before["sharpness"]
        assert before == quality_metrics(img)  # the input alone, as before this change


def test_min_max_invariance_where_intended(mr: np.ndarray) -> None:
    f = mr.astype(np.float64)
    g = f * 0.25 - 40.0
    q, qg = quality_metrics(f), quality_metrics(g)
    for k in q:
        assert qg[k] == pytest.approx(q[k], rel=1e-6, abs=1e-9) or (math.isnan(q[k]) and math.isnan(qg[k])), k
    # a fixed scale follows the same affine change of both frames
    smooth = cv2.GaussianBlur(f, (0, 0), 1.0)
    a = paired_metrics(f, smooth, keeps_units=True)
    b = paired_metrics(g, smooth * 0.25 - 40.0, keeps_units=True)
    for k in q:
        assert b[1][k] == pytest.approx(a[1][k], rel=1e-6, abs=1e-9) or math.isnan(a[1][k]), k


def test_units_changing_recipe_scores_output_on_its_nominal_range(
    ct: tuple[np.ndarray, dict[str, Any]],
) -> None:
    img, meta = ct
    r = load_recipe("ct_lung")
    assert not r.keeps_units
    out, _ = apply_recipe(r, img, meta)
    assert nominal_scale(out) == (0.0, 1.0)
    assert nominal_scale(img) == (0.0, 32767.0)  # int16 display range
    _, after = paired_metrics(img, out, r.keeps_units)
    assert after == quality_metrics(out, (0.0, 1.0))
    # a window that leaves most of the frame at 1 scores a small range, not a stretched one
    narrow = ops.window(ops.rescale(img, 1.0, -1024.0), -900, 200)
    _, a = paired_metrics(img, narrow, keeps_units=False)
    assert a["dynamic_range"] <= quality_metrics(narrow)["dynamic_range"]


def test_psnr_ssim_unchanged(ct: tuple[np.ndarray, dict[str, Any]]) -> None:
    img = ct[0]
    smooth = ops.gaussian_filter(img, 1.0)
    got = reference_metrics(img, smooth)
    dr = float(np.iinfo(np.int16).max) - float(np.iinfo(np.int16).min)
    ref, test = img.astype(np.float64), smooth.astype(np.float64)
    assert got["psnr"] == skmetrics.peak_signal_noise_ratio(ref, test, data_range=dr)
    assert got["ssim"] == skmetrics.structural_similarity(ref, test, data_range=dr, win_size=7)


# --- Spark: processed.recipe_trace, quarantine at step "check", quality report -------------------------


def test_preprocess_writes_trace_and_quarantines_degenerate_outputs(spark: Any, tmp_path: Path) -> None:
    from medimg_spark.io.pixels import decode
    from medimg_spark.preprocess import PROCESSED_SCHEMA, format_quality_table, preprocess, quality_report
    from medimg_spark.schema import IMAGES_SCHEMA, QUARANTINE_SCHEMA
    from tests.test_preprocess_spark import _row as images_row

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))

    def row(image_id: str, **meta: Any) -> dict[str, Any]:
        return images_row(image_id, ds.pixel_array, "CT", **meta)

    hu = {"rescale_slope": float(ds.RescaleSlope), "rescale_intercept": float(ds.RescaleIntercept)}
    frames = [row("ct-ok", **hu), row("ct-norescale")]
    out = tmp_path / "out"
    spark.createDataFrame(frames, IMAGES_SCHEMA).write.parquet(str(out / "images"))
    recipe = {
        "name": "lung_guarded",
        "steps": [
            {"op": "flag_empty"},
            {"op": "rescale"},
            {"op": "window", "preset": "lung"},
            {"op": "clahe", "clip_limit": 2.0, "guard": {"max_noise_gain": 1.15, "max_cnr_loss": 0.1}},
        ],
    }
    path = tmp_path / "lung_guarded.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    summary = preprocess(spark, str(out), str(path))
    assert summary["frames_processed"] == 1
    assert summary["quarantined_by_error_class"] == {"DegenerateOutputError": 1}

    (ok,) = spark.read.schema(PROCESSED_SCHEMA).parquet(str(out / "processed")).collect()
    r = load_recipe(path)
    trace: list[str] = []
    expected, _ = apply_recipe(r, ds.pixel_array, hu, trace)
    assert ok["image_id"] == "ct-ok" and ok["recipe_trace"] == "; ".join(trace)
    assert ok["recipe_trace"].startswith("3:clahe: ")
    assert np.array_equal(decode(ok["pixels"], ok["rows"], ok["cols"], 1, ok["dtype"]), expected)

    (q,) = spark.read.schema(QUARANTINE_SCHEMA).parquet(str(out / "quarantine")).collect()
    assert q["source_path"] == "/data/ct-norescale" and q["stage"] == "preprocess"
    assert q["step"] == "check" and q["error_class"] == "DegenerateOutputError"
    assert "saturated at its maximum" in q["error_message"] and f"recipe_hash={r.hash}" in q["error_message"]

    report = quality_report(spark, str(out))
    (g,) = report["groups"]
    harm = g["do_no_harm"]
    assert harm["count"] == 1 and harm["both"] in (0.0, 1.0)
    qa, qb = ok["quality_after"], ok["quality_before"]
    noise_ok = qa["noise_sigma"] / qa["dynamic_range"] <= qb["noise_sigma"] / qb["dynamic_range"] * (1 + 1e-5)
    assert harm["noise_not_raised"] == float(noise_ok)
    branch = "3:clahe: " + trace[0].split(": ", 1)[1].split(" (")[0]
    assert g["branches"] == {branch: 1}
    table = format_quality_table(report)
    assert "do no harm (n=1)" in table and f"branch {branch}: 1 frames" in table

    # a processed table written before the column existed reads with a null trace and still reports
    old = tmp_path / "old"
    spark.read.parquet(str(out / "processed")).drop("recipe_trace").write.parquet(str(old / "processed"))
    (o,) = spark.read.schema(PROCESSED_SCHEMA).parquet(str(old / "processed")).collect()
    assert o["recipe_trace"] is None and o["image_id"] == "ct-ok"
    assert quality_report(spark, str(old))["groups"][0]["branches"] == {}


def test_branch_key_drops_measured_values() -> None:
    from medimg_spark.quality_stage import branch_key

    assert branch_key("4:clahe: fallback 1 clip_limit=1 (noise ×1.10, CNR −2%)") == "4:clahe: fallback 1"
    assert branch_key("2:denoise: gaussian σ=12.1 → dct σ_eff=9.8") == "2:denoise: gaussian → dct"
    assert branch_key("2:denoise: skipped: σ=0.003 below floor 0.006") == "2:denoise: skipped"
    assert branch_key("0:gamma: skipped (dynamic range 0.82 ≥ 0.6)") == "0:gamma: skipped"
    assert branch_key("no step prefix") is None
