"""Volume-wise filters, 3-D components/regions and volume quality: core vs SimpleITK on real volumes, and Spark.

The volumes are real series read with SimpleITK (the reference reader of issue 14): pydicom's CT5N and
MR700 DICOM series, pydicom-data's enhanced multi-frame MR (emri_small) and CT (eCT_Supplemental), and
nibabel's anatomical.nii.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medimg_spark.config import validate_section
from medimg_spark.errors import ConfigError
from medimg_spark.volumes import ops
from medimg_spark.volumes.model import Volume, from_sitk, to_sitk, volume_columns, volume_from_row
from medimg_spark.volumes.quality import VOLUME_QUALITY_KEYS, noise_sigma_3d, unit_voxels, volume_quality
from medimg_spark.volumes.regions import LocalizeVolumeError, VolumeLocalizeConfig, find_regions_3d

sitk = pytest.importorskip("SimpleITK")

# --- real volumes ----------------------------------------------------------------------------------


def _pkg(module: str) -> Path:
    import importlib

    return Path(importlib.import_module(module).__file__).resolve().parent  # type: ignore[arg-type]


def _series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return from_sitk(reader.Execute())


@pytest.fixture(scope="module")
def real_volumes() -> Iterator[dict[str, Volume]]:
    """name → Volume: small real CT/MR volumes of several dtypes, spacings and orientations."""
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK warns of the irregular test series
    dicomdir = _pkg("pydicom") / "data" / "test_files" / "dicomdirtests"
    store = _pkg("data_store") / "data"
    yield {
        "ct5n": _series(dicomdir / "98892001" / "CT5N"),  # int32 HU, 5 x 16 x 16, z 2.5 mm
        "mr700": _series(dicomdir / "98892003" / "MR700"),  # int16, oblique, z 25 mm
        "emri": from_sitk(sitk.ReadImage(str(store / "emri_small.dcm"))),  # uint16 10 x 64 x 64
        "anat": from_sitk(sitk.ReadImage(str(_pkg("nibabel") / "tests" / "data" / "anatomical.nii"))),
        "ect": from_sitk(sitk.ReadImage(str(store / "eCT_Supplemental.dcm"))),  # int32 HU 2 x 512 x 512
    }
    sitk.ProcessObject_SetGlobalWarningDisplay(True)


def _as_float(v: Volume) -> Any:
    return sitk.Cast(to_sitk(v), sitk.sitkFloat64)


def _same_geometry(a: Volume, b: Volume) -> None:
    assert a.voxels.shape == b.voxels.shape
    assert a.voxels.dtype == b.voxels.dtype
    assert (a.spacing, a.origin, a.direction) == (b.spacing, b.origin, b.direction)


# --- filters vs SimpleITK ----------------------------------------------------------------------------

SMALL = ("ct5n", "mr700", "emri", "anat")


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("sigma_mm", [1.0, 2.0])
def test_gaussian_matches_sitk_recursive_gaussian(real_volumes, name, sigma_mm):
    """Tolerance: max |ours - ITK| <= 1% and mean <= 0.2% of the volume's range.

    Ours samples the Gaussian (scipy), ITK's recursive filter approximates it (Deriche); both
    take sigma in mm along each axis, so an axis-order mistake on these anisotropic volumes
    (z spacing 2.5 and 25 mm) would be far outside the tolerance.
    """
    v = real_volumes[name]
    out = ops.gaussian(v, sigma_mm)
    _same_geometry(out, v)
    ref = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(_as_float(v), sigma_mm))
    span = float(v.voxels.max()) - float(v.voxels.min())
    diff = np.abs(out.voxels.astype(np.float64) - ref)
    assert diff.max() <= 0.01 * span
    assert diff.mean() <= 0.002 * span


def test_gaussian_matches_sitk_discrete_gaussian_at_larger_sigma(real_volumes):
    """ITK's discrete (Bessel) kernel converges to the sampled Gaussian at a few voxels of sigma: <= 0.5%."""
    v = real_volumes["emri"]
    f = sitk.DiscreteGaussianImageFilter()
    f.SetVariance(16.0)
    f.SetUseImageSpacing(True)
    f.SetMaximumError(1e-6)
    f.SetMaximumKernelWidth(1000)
    ref = sitk.GetArrayFromImage(f.Execute(_as_float(v)))
    diff = np.abs(ops.gaussian(v, 4.0).voxels.astype(np.float64) - ref)
    assert diff.max() <= 0.005 * (float(v.voxels.max()) - float(v.voxels.min()))


@pytest.mark.parametrize("name", [*SMALL, "ect"])
def test_median_equals_sitk_median(real_volumes, name):
    v = real_volumes[name]
    out = ops.median(v, 3)
    _same_geometry(out, v)
    np.testing.assert_array_equal(out.voxels, sitk.GetArrayFromImage(sitk.Median(to_sitk(v), [1, 1, 1])))
    # radius in mm: per-axis voxels from the spacing (ect: 0.39 x 0.39 x 10 mm → radius 3, 3, 0)
    mm = 1.0 if name == "ect" else 2.0
    radius = [round(mm / s) for s in v.spacing]
    by_mm = ops.median(v, radius_mm=mm)
    np.testing.assert_array_equal(by_mm.voxels, sitk.GetArrayFromImage(sitk.Median(to_sitk(v), radius)))


@pytest.mark.parametrize("name", SMALL)
def test_mean_equals_sitk_mean_rounded(real_volumes, name):
    """The integer result is ITK's float mean rounded half to even (|diff| <= 0.5 + float32 error)."""
    v = real_volumes[name]
    out = ops.mean(v, size=(3, 3, 1))
    _same_geometry(out, v)
    ref = sitk.GetArrayFromImage(sitk.Mean(_as_float(v), [1, 1, 0]))
    assert np.abs(out.voxels.astype(np.float64) - ref).max() <= 0.5 + 1e-3


def test_float_volume_stays_float_and_channels_are_filtered_separately(real_volumes):
    v = real_volumes["emri"]
    f = Volume(v.voxels.astype(np.float32), v.spacing, v.origin, v.direction)
    out = ops.gaussian(f, 1.0)
    assert out.voxels.dtype == np.float32
    f64 = Volume(v.voxels.astype(np.float64), *_geom(v))
    box = ops.mean(f64, 3)
    assert box.voxels.dtype == np.float64  # computed in float64: ITK's float mean to 1e-9
    ref = sitk.GetArrayFromImage(sitk.Mean(_as_float(v), [1, 1, 1]))
    np.testing.assert_allclose(box.voxels, ref, rtol=0, atol=1e-9 * float(v.voxels.max()))
    rgb = Volume(np.stack([v.voxels, v.voxels[::-1]], axis=3), v.spacing, v.origin, v.direction)
    got = ops.median(rgb, 3).voxels
    np.testing.assert_array_equal(got[..., 0], ops.median(v, 3).voxels)
    np.testing.assert_array_equal(got[..., 1], ops.median(Volume(v.voxels[::-1], *_geom(v)), 3).voxels)


def _geom(v: Volume) -> tuple[Any, Any, Any]:
    return v.spacing, v.origin, v.direction


# --- steps, registry and config validation ------------------------------------------------------------


def test_steps_validate_and_name_is_stable():
    steps = ops.parse_volume_filters(
        [{"op": "gaussian", "sigma_mm": 1.0}, {"op": "median", "radius_mm": 1.5}]
    )
    assert [type(s).__name__ for s in steps] == ["GaussianStep", "MedianStep"]
    assert ops.filters_name(steps).startswith("gaussian+median-")
    again = ops.parse_volume_filters(
        [{"op": "gaussian", "sigma_mm": 1.0, "truncate": 4.0}, {"op": "median", "radius_mm": 1.5}]
    )
    assert ops.filters_hash(again) == ops.filters_hash(steps)
    assert ops.filters_hash(
        ops.parse_volume_filters([{"op": "gaussian", "sigma_mm": 2.0}])
    ) != ops.filters_hash(steps)
    assert set(ops.VOLUME_OPS.names()) >= {"gaussian", "median", "mean"}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            [{"op": "gausian", "sigma_mm": 1}],
            "unknown volume op 'gausian'; choose from gaussian, median, mean",
        ),
        (
            [{"op": "gaussian", "sigma": 1}],
            "parameter 'sigma': unknown parameter; valid parameters of 'gaussian': sigma_mm, truncate",
        ),
        ([{"op": "gaussian", "sigma_mm": -1}], "filters[0] (op 'gaussian'), parameter 'sigma_mm'"),
        ([{"op": "median", "size": 4}], "positive odd integer"),
        ([{"op": "mean", "size": 3, "radius_mm": 1}], "not both"),
        ([{"sigma_mm": 1}], "missing 'op'"),
        ({"op": "gaussian"}, "must be a list"),
    ],
)
def test_bad_steps_raise_a_config_error_naming_the_fix(steps, expected):
    with pytest.raises(ops.VolumeOpConfigError) as err:
        ops.parse_volume_filters(steps)
    assert isinstance(err.value, ConfigError)  # exit 2 before Spark starts
    assert expected in str(err.value)


def test_filter_step_union_in_a_config_section_names_the_registered_ops():
    """How the ``volumes:`` section will hold ``filters`` (added at merge): extra keys and unknown ops fail."""
    from pydantic import BaseModel, ConfigDict

    class Section(BaseModel):
        model_config = ConfigDict(extra="forbid")
        filters: list[ops.VolumeFilterStep] = []
        localize: VolumeLocalizeConfig = VolumeLocalizeConfig()

    ok = validate_section(
        Section,
        {
            "filters": [{"op": "mean", "size": 5}],
            "localize": {"threshold": "window", "center": 40, "width": 400},
        },
        "cfg.yaml",
    )
    assert ok.filters[0].apply(
        Volume(np.zeros((3, 3, 3), np.int16), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ).voxels.shape == (3, 3, 3)
    with pytest.raises(ConfigError, match=r"filters\.0.*'gaussian', 'median', 'mean'"):
        validate_section(Section, {"filters": [{"op": "blur"}]}, "cfg.yaml")
    with pytest.raises(ConfigError, match=r"localize\.min_voxel.*remove it"):
        validate_section(Section, {"localize": {"min_voxel": 3}}, "cfg.yaml")
    with pytest.raises(ConfigError, match="needs center and width"):
        validate_section(Section, {"localize": {"threshold": "window"}}, "cfg.yaml")


def test_the_config_facing_modules_import_light():
    """The config models import ops/regions: no OpenCV, scipy, SimpleITK or Spark at import time."""
    import subprocess
    import sys

    code = (
        "import sys, medimg_spark.volumes.ops, medimg_spark.volumes.regions; "
        "print([m for m in ('cv2', 'scipy', 'skimage', 'SimpleITK', 'pyspark') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


def test_a_failing_step_names_its_index_and_op(real_volumes):
    from medimg_spark.ops import RecipeStepError

    bad = Volume(np.zeros((2, 2), np.int16), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    steps = ops.parse_volume_filters([{"op": "mean"}, {"op": "median"}])
    with pytest.raises(RecipeStepError) as err:
        ops.apply_filters(steps, bad)
    assert err.value.step == "0:mean"
    assert isinstance(err.value.cause, ops.UnsupportedVolumeError)
    out = ops.apply_filters(steps, real_volumes["ct5n"])
    np.testing.assert_array_equal(out.voxels, ops.median(ops.mean(real_volumes["ct5n"]), 3).voxels)


# --- 3-D components and regions vs SimpleITK ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("ect", VolumeLocalizeConfig(threshold="range", low=-500, connectivity=1)),  # body in HU
        ("ect", VolumeLocalizeConfig(threshold="window", center=0, width=200, connectivity=3, min_voxels=10)),
        ("anat", VolumeLocalizeConfig(threshold="otsu", connectivity=3)),
        ("emri", VolumeLocalizeConfig(threshold="otsu", connectivity=1, min_voxels=3)),
        ("ct5n", VolumeLocalizeConfig(threshold="range", low=-200, high=200)),
    ],
)
def test_regions_equal_sitk_connected_components_and_shape_statistics(real_volumes, name, config):
    v = real_volumes[name]
    res = find_regions_3d(v, config)
    assert res.labels.voxels.dtype == np.uint16
    assert (res.labels.spacing, res.labels.origin, res.labels.direction) == _geom(v)
    assert res.n_components == len(res.regions) > 0

    values = _as_float(v)
    if config.threshold == "otsu":
        fg = values > res.threshold
    elif config.threshold == "window":
        fg = sitk.And(values >= config.center - config.width / 2, values <= config.center + config.width / 2)
    else:
        fg = sitk.And(
            values >= (config.low if config.low is not None else -math.inf),
            values <= (config.high if config.high is not None else math.inf),
        )
    cc = sitk.ConnectedComponent(fg, config.connectivity == 3)
    ref = sitk.RelabelComponent(cc, sortByObjectSize=True, minimumObjectSize=config.min_voxels)
    np.testing.assert_array_equal(res.labels.voxels, sitk.GetArrayFromImage(ref))

    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(ref)
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.Execute(ref, values)
    assert shape.GetNumberOfLabels() == res.n_components
    for r in res.regions:
        assert r.voxel_count == shape.GetNumberOfPixels(r.region)
        assert r.volume_mm3 == pytest.approx(shape.GetPhysicalSize(r.region), rel=1e-9)
        np.testing.assert_allclose(r.centroid_lps, shape.GetCentroid(r.region), atol=1e-6)
        x, y, z, sx, sy, sz = shape.GetBoundingBox(r.region)
        assert (r.bbox_min_x, r.bbox_min_y, r.bbox_min_z) == (x, y, z)
        assert (r.bbox_max_x, r.bbox_max_y, r.bbox_max_z) == (x + sx - 1, y + sy - 1, z + sz - 1)
        corners = [
            to_sitk(v).TransformContinuousIndexToPhysicalPoint((float(a), float(b), float(c)))
            for a in (x, x + sx - 1)
            for b in (y, y + sy - 1)
            for c in (z, z + sz - 1)
        ]
        np.testing.assert_allclose(r.bbox_min_lps, np.min(corners, axis=0), atol=1e-6)
        np.testing.assert_allclose(r.bbox_max_lps, np.max(corners, axis=0), atol=1e-6)
        assert r.mean_intensity == pytest.approx(stats.GetMean(r.region), rel=1e-9)
        assert (r.min_intensity, r.max_intensity) == (stats.GetMinimum(r.region), stats.GetMaximum(r.region))


def test_region_size_filters_and_rescale(real_volumes):
    v = real_volumes["emri"]
    all_regions = find_regions_3d(v, VolumeLocalizeConfig())
    big = find_regions_3d(v, VolumeLocalizeConfig(min_volume_mm3=40.0, max_regions=2))
    kept = [r.voxel_count for r in all_regions.regions if r.volume_mm3 >= 40.0][:2]
    assert [r.voxel_count for r in big.regions] == kept
    assert int(big.labels.voxels.max()) == len(kept)
    # a fixed threshold reads modality units: stored * slope + intercept
    stored = Volume(((v.voxels.astype(np.int32) - 100) // 2).astype(np.int16), *_geom(v))
    by_hu = find_regions_3d(stored, VolumeLocalizeConfig(threshold="range", low=150), 2.0, 100.0)
    expected = find_regions_3d(
        Volume(stored.voxels.astype(np.float64) * 2 + 100, *_geom(v)),
        VolumeLocalizeConfig(threshold="range", low=150),
    )
    np.testing.assert_array_equal(by_hu.labels.voxels, expected.labels.voxels)
    raw = find_regions_3d(
        stored, VolumeLocalizeConfig(threshold="range", low=150, apply_rescale=False), 2.0, 100.0
    )
    assert raw.foreground_voxels < by_hu.foreground_voxels
    with pytest.raises(LocalizeVolumeError, match="single-channel"):
        find_regions_3d(Volume(np.stack([v.voxels] * 3, axis=3), *_geom(v)))


# --- quality ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["emri", "anat"])
def test_noise_estimate_tracks_added_noise(real_volumes, name):
    """Added white noise of σ combines with the volume's own: estimate ≈ sqrt(base² + σ²) within 12%."""
    u = unit_voxels(real_volumes[name])
    base = noise_sigma_3d(u)
    rng = np.random.default_rng(0)
    for sigma in (0.02, 0.05):
        est = noise_sigma_3d(u + rng.normal(0.0, sigma, u.shape))
        assert est == pytest.approx(math.hypot(base, sigma), rel=0.12)


@pytest.mark.parametrize("name", ["emri", "anat", "ct5n"])
def test_gaussian_lowers_noise_and_sharpening_raises_sharpness(real_volumes, name):
    v = real_volumes[name]
    q = volume_quality(v)
    assert tuple(q.as_dict()) == VOLUME_QUALITY_KEYS
    assert 0 <= q.mean <= 1 and 0 < q.foreground < 1 and q.snr > 0 and q.entropy > 0
    assert volume_quality(ops.gaussian(v, 2.0)).noise_sigma < q.noise_sigma
    f = v.voxels.astype(np.float64)
    blurred = ops.gaussian(Volume(f, *_geom(v)), 2.0).voxels
    sharpened = np.clip(f + 1.5 * (f - blurred), f.min(), f.max())  # unsharp mask in the same range
    assert volume_quality(Volume(sharpened, *_geom(v))).sharpness > q.sharpness


def test_quality_is_invariant_to_rescale_and_defined_on_constant_volumes(real_volumes):
    v = real_volumes["ct5n"]
    scaled = Volume(v.voxels.astype(np.float64) * 2.5 - 1024, *_geom(v))
    a, b = volume_quality(v).as_dict(), volume_quality(scaled).as_dict()
    for k in VOLUME_QUALITY_KEYS:  # int16 voxels are measured in float32, float64 ones in float64
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-9)
    flat = volume_quality(Volume(np.full((3, 4, 4), 7, np.int16), *_geom(v)))
    assert flat.std == 0 and flat.sharpness == 0 and math.isnan(flat.snr)


# --- Spark ----------------------------------------------------------------------------------------------

_GOOD = ("ct5n", "emri", "anat")


def _row(volume_id: str, v: Volume, modality: str, **extra: Any) -> dict[str, Any]:
    import datetime as dt

    z = v.voxels.shape[0]
    row: dict[str, Any] = {
        "volume_id": volume_id,
        "source_table": "images",
        "recipe_name": None,
        "modality": modality,
        "source_format": "dicom",
        "study_instance_uid": f"1.2.826.0.1.3680043.10.1.{len(volume_id)}",
        "series_instance_uid": f"1.2.826.0.1.3680043.10.2.{len(volume_id)}",
        "frame_of_reference_uid": None,
        "image_ids": [f"{volume_id}-{k}" for k in range(z)],
        "slice_positions": [float(k) * v.spacing[2] for k in range(z)],
        "rescale_slope": None,
        "rescale_intercept": None,
        "window_center": None,
        "window_width": None,
        "label": None,
        "split": "train",
        "missing_slices": 0,
        "duplicate_slices": 0,
        "irregular_spacing": False,
        "max_spacing_deviation": 0.0,
        "mixed_geometry": False,
        "status": "ok",
        "flags": [],
        "volumes_run_id": "volumes-test",
        "created_at": dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
        **volume_columns(v),
    }
    row.update(extra)
    return row


@pytest.fixture(scope="module")
def volume_lake(spark, tmp_path_factory, real_volumes):
    """A lake with ``volumes`` built from the real volumes plus one row whose voxel bytes are cut short."""
    from medimg_spark.schema import VOLUMES_SCHEMA

    out = tmp_path_factory.mktemp("vol-lake")
    rows = [_row(n, real_volumes[n], "CT" if n == "ct5n" else "MR") for n in _GOOD]
    broken = _row("broken", real_volumes["ct5n"], "CT")
    broken["voxels"] = broken["voxels"][:100]
    rows.append(broken)
    spark.createDataFrame(
        [tuple(r[f.name] for f in VOLUMES_SCHEMA) for r in rows], VOLUMES_SCHEMA
    ).write.partitionBy("modality").parquet(str(out / "volumes"))
    return out


def test_process_and_localize_volumes_on_spark(spark, volume_lake, real_volumes):
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    from medimg_spark.schema import QUARANTINE_SCHEMA, VOLUMES_SCHEMA
    from medimg_spark.volumes.spark import (
        VOLUME_QUALITY_SCHEMA,
        VOLUME_REGIONS_SCHEMA,
        localize_volumes,
        process_volumes,
    )

    out = str(volume_lake)
    steps = [{"op": "gaussian", "sigma_mm": 1.0}, {"op": "median", "size": 3}]
    first = process_volumes(spark, out, steps, run_id="volumes-t1")
    models = ops.parse_volume_filters(steps)
    name = ops.filters_name(models)
    assert first["recipe_name"] == name
    assert (first["volumes_selected"], first["volumes_processed"], first["volumes_skipped"]) == (4, 3, 0)
    assert first["quarantined_by_error_class"] == {"ValueError": 1}

    processed = spark.read.schema(VOLUMES_SCHEMA).parquet(f"{out}/processed_volumes")
    got = {r["volume_id"]: r for r in processed.collect()}
    assert set(got) == set(_GOOD)
    for vid in _GOOD:
        row = got[vid]
        assert (row["source_table"], row["recipe_name"], row["volumes_run_id"]) == (
            "processed_volumes",
            name,
            "volumes-t1",
        )
        expected = ops.apply_filters(models, real_volumes[vid])
        decoded = volume_from_row(row)
        np.testing.assert_array_equal(decoded.voxels, expected.voxels)
        assert _geom(decoded) == _geom(real_volumes[vid])
        assert row["image_ids"] == [f"{vid}-{k}" for k in range(real_volumes[vid].voxels.shape[0])]

    quality = spark.read.schema(VOLUME_QUALITY_SCHEMA).parquet(f"{out}/volume_quality")
    expected_q = [
        (
            vid,
            name,
            volume_quality(real_volumes[vid]).noise_sigma,
            volume_quality(ops.apply_filters(models, real_volumes[vid])).noise_sigma,
        )
        for vid in _GOOD
    ]
    assertDataFrameEqual(
        quality.select(
            "volume_id",
            "recipe_name",
            F.col("quality_before.noise_sigma").alias("b"),
            F.col("quality_after.noise_sigma").alias("a"),
        ),
        spark.createDataFrame(expected_q, "volume_id string, recipe_name string, b double, a double"),
        checkRowOrder=False,
        rtol=1e-9,
    )

    cfg = VolumeLocalizeConfig(threshold="otsu", connectivity=1, min_voxels=3)
    # label the filtered volumes: the label maps' recipe name chains the filters' name
    loc = localize_volumes(spark, out, cfg, run_id="volumes-t2", source="processed_volumes")
    assert (loc["volumes_selected"], loc["volumes_localized"], loc["volumes_quarantined"]) == (3, 3, 0)
    regions = spark.read.schema(VOLUME_REGIONS_SCHEMA).parquet(f"{out}/volume_regions")
    expected_rows = []
    labels = {
        r["volume_id"]: r for r in spark.read.schema(VOLUMES_SCHEMA).parquet(f"{out}/volume_labels").collect()
    }
    assert set(labels) == set(_GOOD)
    for vid in _GOOD:
        res = find_regions_3d(ops.apply_filters(models, real_volumes[vid]), cfg)
        expected_rows += [
            (vid, r.region, r.voxel_count, r.volume_mm3, r.centroid_lps[2]) for r in res.regions
        ]
        assert (labels[vid]["dtype"], labels[vid]["source_table"]) == ("uint16", "volume_labels")
        assert labels[vid]["recipe_name"] == f"{name}+{loc['recipe_name']}"
        np.testing.assert_array_equal(volume_from_row(labels[vid]).voxels, res.labels.voxels)
    assert loc["regions"] == len(expected_rows)
    assertDataFrameEqual(
        regions.select(
            "volume_id", "region", "voxel_count", "volume_mm3", F.col("centroid_lps")[2].alias("s")
        ),
        spark.createDataFrame(
            expected_rows, "volume_id string, region int, voxel_count long, volume_mm3 double, s double"
        ),
        checkRowOrder=False,
        rtol=1e-9,
    )

    # the cut-short row is quarantined with its step and class; a rerun skips everything
    q = spark.read.schema(QUARANTINE_SCHEMA).parquet(f"{out}/quarantine").collect()
    assert [(r["source_path"], r["stage"], r["step"], r["error_class"]) for r in q] == [
        ("volume:broken", "volumes", "input", "ValueError")
    ]
    assert q[0]["error_message"].startswith(
        f"processed_volumes {name} hash={ops.filters_hash(models)}: input:"
    )
    again = process_volumes(spark, out, steps)
    assert (again["volumes_processed"], again["volumes_quarantined"], again["volumes_skipped"]) == (0, 0, 4)
    assert processed.count() == 3 and quality.count() == 3 and regions.count() == len(expected_rows)
    assert spark.read.parquet(f"{out}/quarantine").count() == 1


def test_spark_functions_fail_before_spark_work_on_bad_input(spark, tmp_path):
    from medimg_spark.volumes.spark import localize_volumes, process_volumes

    with pytest.raises(ops.VolumeOpConfigError, match="unknown volume op 'sharpen'"):
        process_volumes(spark, str(tmp_path), [{"op": "sharpen"}])
    with pytest.raises(ops.VolumeOpConfigError, match="filters is empty"):
        process_volumes(spark, str(tmp_path), [])
    with pytest.raises(ConfigError, match=r"(?s)volumes\.localize.*connectivity"):
        localize_volumes(spark, str(tmp_path), {"connectivity": 4})
    with pytest.raises(ConfigError, match=r"no volumes table at .*run `medimg volumes`"):
        process_volumes(spark, str(tmp_path), [{"op": "median"}])
