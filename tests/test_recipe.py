"""Recipe loading, validation messages, hashing, and plain-Python application on real frames."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

import medimg_spark.ops as ops
from medimg_spark.errors import ConfigError, RecipeError
from medimg_spark.ops import Recipe, RecipeFileError, RecipeStepError, apply_recipe, load_recipe, parse_recipe
from medimg_spark.ops._common import DegenerateOutputError
from medimg_spark.ops.denoise import denoise

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["chest_xray", "ct_lung", "mri", "denoise", "classify"]


def ct_frame() -> tuple[np.ndarray, dict[str, Any]]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    meta = {
        "rescale_slope": float(ds.RescaleSlope),
        "rescale_intercept": float(ds.RescaleIntercept),
        "photometric": ds.PhotometricInterpretation,
        "pixel_spacing": [float(v) for v in ds.PixelSpacing],
    }
    return ds.pixel_array, meta


def mr_frame() -> tuple[np.ndarray, dict[str, Any]]:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    return ds.pixel_array, {"window_center": float(ds.WindowCenter), "window_width": float(ds.WindowWidth)}


def cxr(i: int = 0) -> np.ndarray:
    return np.load(REPO / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz")["val_images"][
        i
    ]


def bad(steps: list[dict[str, Any]], **extra: Any) -> str:
    with pytest.raises(RecipeFileError) as info:
        parse_recipe({"name": "t", "steps": steps, **extra}, "test.yaml")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, RecipeError)
    return str(info.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_load_by_path_and_name(name: str) -> None:
    r = load_recipe(REPO / "medimg_spark" / "resources" / "recipes" / f"{name}.yaml")
    assert r.name == name and r == load_recipe(name)
    assert len(r.hash) == 64 and r.description


def test_hash_is_sha256_of_canonical_json_and_stable() -> None:
    base = {"name": "h", "steps": [{"op": "gaussian", "sigma": 1}, {"op": "otsu"}]}
    r = parse_recipe(base)
    assert r.hash == hashlib.sha256(r.canonical_json().encode()).hexdigest()
    canonical = json.loads(r.canonical_json())
    assert canonical["steps"][0] == {"op": "gaussian", "sigma": 1.0, "ksize": 0}  # defaults included
    reordered = {"steps": [{"sigma": 1.0, "op": "gaussian"}, {"op": "otsu", "invert": False}], "name": "h"}
    assert parse_recipe({**reordered, "description": "docs only"}).hash == r.hash
    assert (
        parse_recipe({"name": "h", "steps": [{"op": "gaussian", "sigma": 1.5}, {"op": "otsu"}]}).hash
        != r.hash
    )
    assert parse_recipe({"name": "h2", "steps": base["steps"]}).hash != r.hash
    assert Recipe.model_validate_json(r.model_dump_json()).hash == r.hash


def test_unknown_op_names_step_and_choices() -> None:
    msg = bad([{"op": "gaussian"}, {"op": "gausian", "sigma": 1}])
    assert "step 1" in msg and "unknown op 'gausian'" in msg and "gaussian" in msg and "test.yaml" in msg


def test_unknown_parameter_lists_valid_ones() -> None:
    msg = bad([{"op": "clahe", "clip": 2.0}])
    assert "step 0 (op 'clahe'), parameter 'clip'" in msg and "clip_limit, tile_grid" in msg


@pytest.mark.parametrize(
    ("step", "param", "hint"),
    [
        ({"op": "gaussian", "sigma": -1}, "sigma", "greater than 0"),
        ({"op": "median", "ksize": 4}, "ksize", "odd"),
        ({"op": "mean", "ksize": "big"}, "ksize", "integer"),
        ({"op": "clahe", "tile_grid": [0, 8]}, "tile_grid", "between 1 and 256"),
        ({"op": "window", "width": 0.5, "center": 0}, "width", "greater than or equal to 1"),
        ({"op": "resize", "rows": 64}, "cols", "missing"),
        ({"op": "superpixels", "method": "felzenszwalb"}, "method", "slic"),
        ({"op": "largest_component", "connectivity": 6}, "connectivity", "4"),
    ],
)
def test_bad_parameter_names_step_op_parameter(step: dict[str, Any], param: str, hint: str) -> None:
    steps = [{"op": "otsu"}, step] if step["op"] == "largest_component" else [{"op": "minmax"}, step]
    msg = bad(steps)
    assert f"step 1 (op '{step['op']}'), parameter '{param}'" in msg
    assert hint in msg


@pytest.mark.parametrize(
    ("step", "hint"),
    [
        ({"op": "window", "preset": "lung", "center": 40, "width": 400}, "exactly one window source"),
        ({"op": "window", "center": 40}, "both center and width"),
        ({"op": "clip"}, "at least one of"),
        ({"op": "percentile_scale", "lower": 99, "upper": 1}, "must be < upper"),
        ({"op": "canny_fill", "low": 200, "high": 100}, "must be <= high"),
    ],
)
def test_cross_parameter_rules(step: dict[str, Any], hint: str) -> None:
    msg = bad([step])
    assert f"step 0 (op '{step['op']}')" in msg and hint in msg


def test_recipe_level_errors() -> None:
    assert "needs a mask" in bad([{"op": "minmax"}, {"op": "fill_holes"}])
    assert "step 1 (op 'fill_holes')" in bad([{"op": "minmax"}, {"op": "fill_holes"}])
    assert "missing 'op'" in bad([{"sigma": 1}])
    assert "steps" in bad([])
    assert "name" in bad([{"op": "minmax"}], name="bad name/")
    with pytest.raises(RecipeFileError, match="author: unknown field"):
        parse_recipe({"name": "t", "steps": [{"op": "minmax"}], "author": "me"})
    with pytest.raises(RecipeFileError, match="expected a mapping"):
        parse_recipe(["op"])


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeFileError, match=r"not found.*ct_lung"):
        load_recipe(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsteps: [\n", encoding="utf-8")
    with pytest.raises(RecipeFileError, match="not valid YAML"):
        load_recipe(broken)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "g", "steps": [{"op": "median", "ksize": 6}]}), encoding="utf-8")
    with pytest.raises(RecipeFileError, match=r"(?s)good.yaml.*step 0 \(op 'median'\), parameter 'ksize'"):
        load_recipe(good)


def test_ct_lung_equals_manual_op_chain() -> None:
    img, meta = ct_frame()
    out, mask = apply_recipe(load_recipe("ct_lung"), img, meta)
    hu = ops.rescale(img, meta["rescale_slope"], meta["rescale_intercept"])
    # issue 16: noise-aware denoising in HU before the window; no bilateral filter, no CLAHE
    ref = ops.window(denoise(hu, floor=0.002)[0], -600, 1500)
    assert mask is None and out.dtype == np.float32
    assert np.array_equal(out, ref)


def test_chest_xray_gives_denoised_image_and_lung_mask() -> None:
    r = load_recipe("chest_xray")
    assert r.segments
    for i in range(3):
        img = cxr(i)
        out, mask = apply_recipe(r, img, {"photometric": "MONOCHROME2"})
        # issue 16: the image output is the denoised frame (no global equalisation)
        assert out.dtype == np.uint8 and np.array_equal(out, denoise(img, strength=0.7)[0])
        assert mask is not None and mask.shape == img.shape and set(np.unique(mask)) <= {0, 1}
        assert 0.05 < mask.mean() < 0.7
        assert img[mask == 1].mean() < img[mask == 0].mean()  # lungs are the dark fields
        flipped, _ = apply_recipe(r, ops.invert(img), {"photometric": "MONOCHROME1"})
        assert np.array_equal(flipped, out)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_runs_on_real_frames(name: str) -> None:
    r = load_recipe(name)
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array
    frames = {"ct": ct_frame(), "mr": mr_frame(), "cxr": (cxr(0), {}), "rgb": (rgb, {})}
    for kind, (img, meta) in frames.items():
        if name == "ct_lung" and kind == "mr":
            # an MR frame is not in HU: the lung window saturates it, and the output check refuses it
            with pytest.raises(DegenerateOutputError, match="saturated at its maximum"):
                apply_recipe(r, img, meta)
            continue
        out, mask = apply_recipe(r, img, meta)
        assert out.dtype.name in ops.SUPPORTED_DTYPES and out.shape[:2] == img.shape[:2]
        assert np.isfinite(out).all()
        assert (mask is not None) == r.segments


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize(
    "img",
    [np.full((8, 8), 5, np.uint8), np.zeros((1, 1), np.int16), np.full((4, 4), np.nan, np.float32)],
    ids=["constant", "1x1", "nan"],
)
def test_degenerate_frames_are_flagged(name: str, img: np.ndarray) -> None:
    with pytest.raises(RecipeStepError) as info:
        apply_recipe(load_recipe(name), img, {})
    assert info.value.step == "0:flag_empty"
    assert isinstance(info.value.cause, ops.EmptyFrameError)


def test_nonfinite_pixels_are_cleaned_by_mri_recipe() -> None:
    img, meta = mr_frame()
    f = img.astype(np.float32)
    f[:3, :3] = np.nan
    f[10, 10] = np.inf
    out, _ = apply_recipe(load_recipe("mri"), f, meta)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_missing_header_value_fails_the_step() -> None:
    r = parse_recipe({"name": "w", "steps": [{"op": "window", "from_header": True}]})
    with pytest.raises(RecipeStepError) as info:
        apply_recipe(r, mr_frame()[0], {})
    assert info.value.step == "0:window" and isinstance(info.value.cause, ops.MissingMetadataError)
    out, _ = apply_recipe(r, *mr_frame())
    assert np.array_equal(out, ops.window(mr_frame()[0], 600, 1600))
    fallback = parse_recipe(
        {"name": "w", "steps": [{"op": "window", "from_header": True, "fallback_preset": "brain"}]}
    )
    step_out, _ = fallback.steps[0].run(mr_frame()[0], None, {})
    assert np.array_equal(step_out, ops.window(mr_frame()[0], 40, 80))
    with pytest.raises(
        DegenerateOutputError, match=r"constant|saturated"
    ):  # a brain CT window on an MR frame
        apply_recipe(fallback, mr_frame()[0], {})


def test_geometry_steps_move_the_mask() -> None:
    img, meta = ct_frame()
    r = parse_recipe(
        {
            "name": "geo",
            "steps": [
                {"op": "otsu"},
                {"op": "crop_foreground", "margin": 1},
                {"op": "resize", "rows": 64, "cols": 48},
                {"op": "resample_spacing", "spacing": 1.0},
            ],
        }
    )
    out, mask = apply_recipe(r, img, meta)
    assert mask is not None and mask.shape == out.shape[:2]
    assert set(np.unique(mask)) <= {0, 1}
    expect = ops.otsu_threshold(img)
    bbox = ops.foreground_bbox(img, margin=1)
    expect = ops.resize(ops.crop(expect, bbox), 64, 48, interpolation="nearest")
    assert np.array_equal(
        ops.resize(ops.crop(img, bbox), 64, 48),
        apply_recipe(parse_recipe({"name": "g", "steps": r.model_dump()["steps"][1:3]}), img, meta)[0],
    )
    spacing = (float(meta["pixel_spacing"][0]), float(meta["pixel_spacing"][1]))
    rows = round(64 * spacing[0])
    cols = round(48 * spacing[1])
    assert mask.shape == (rows, cols)
    assert np.array_equal(mask, ops.resize(expect, rows, cols, keep_aspect=False, interpolation="nearest"))


def test_segment_combine_and_within_mask_zscore() -> None:
    img = cxr(2)
    both = parse_recipe(
        {"name": "c", "steps": [{"op": "otsu"}, {"op": "adaptive_threshold", "combine": "and"}]}
    )
    _, mask = apply_recipe(both, img)
    assert mask is not None
    assert np.array_equal(mask, ops.otsu_threshold(img) & ops.adaptive_threshold(img))
    z = parse_recipe({"name": "z", "steps": [{"op": "otsu"}, {"op": "zscore", "within_mask": True}]})
    out, m = apply_recipe(z, img)
    assert m is not None and abs(float(out[m == 1].mean())) < 1e-5


def test_bad_input_array_is_a_step_error() -> None:
    with pytest.raises(RecipeStepError) as info:
        apply_recipe(load_recipe("classify"), np.zeros((4, 4, 4), np.uint8))
    assert info.value.step == "-1:input" and isinstance(info.value.cause, ops.UnsupportedImageError)
    out, _ = apply_recipe(load_recipe("classify"), cxr(0).astype(np.float64))
    assert out.dtype == np.float32
