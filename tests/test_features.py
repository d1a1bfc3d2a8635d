"""Feature extractors against scikit-image / OpenCV / scipy references on real frames, and the Spark stage."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import stats
from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern
from skimage.measure import label, regionprops

from medimg_spark import features as F
from medimg_spark import resources
from medimg_spark.io.pixels import encode
from medimg_spark.schema import IMAGES_SCHEMA

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frames(sample_npz: Path) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(sample_npz)
    return d["val_images"][:40], d["val_labels"][:40, 0]


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array


def test_intensity_matches_numpy_scipy(frames: tuple[np.ndarray, np.ndarray]) -> None:
    im = frames[0][3]
    vals, names = F.intensity_features(im, bins=8)
    x = im.astype(np.float64).ravel() / 255.0
    got = dict(zip(names, vals, strict=True))
    assert got["intensity_mean"] == pytest.approx(x.mean())
    assert got["intensity_std"] == pytest.approx(x.std())
    assert got["intensity_skew"] == pytest.approx(stats.skew(x))
    assert got["intensity_kurtosis"] == pytest.approx(stats.kurtosis(x))
    assert got["intensity_p50"] == pytest.approx(np.median(x))
    hist = np.histogram(x, bins=8, range=(0, 1))[0] / x.size
    np.testing.assert_allclose(vals[-8:], hist)
    assert names[-1] == "intensity_hist_07"


def test_intensity_inside_mask_only(frames: tuple[np.ndarray, np.ndarray]) -> None:
    im = frames[0][0]
    mask = np.zeros_like(im)
    mask[5:20, 3:12] = 1
    vals, names = F.intensity_features(im, mask)
    sel = im[5:20, 3:12].astype(np.float64) / 255.0
    assert vals[names.index("intensity_mean")] == pytest.approx(sel.mean())
    assert vals[names.index("intensity_max")] == pytest.approx(sel.max())


def test_glcm_matches_skimage(frames: tuple[np.ndarray, np.ndarray]) -> None:
    im = frames[0][7]
    vals, names = F.glcm_features(im, distances=(1, 2), angles=(0, 90), levels=16)
    q = (im.astype(np.int32) * 16 // 256).astype(np.uint8)
    g = graycomatrix(q, [1, 2], [0, np.pi / 2], levels=16, symmetric=True, normed=True)
    ref = np.concatenate([graycoprops(g, p).ravel() for p in F.GLCM_PROPS])
    np.testing.assert_allclose(vals, ref, rtol=1e-10, atol=1e-12)
    assert names[:3] == ["glcm_contrast_d1_a0", "glcm_contrast_d1_a90", "glcm_contrast_d2_a0"]
    assert names[-1] == "glcm_ASM_d2_a90"
    assert len(names) == 6 * 2 * 2


def test_glcm_full_mask_equals_no_mask_and_partial_mask_differs(
    frames: tuple[np.ndarray, np.ndarray],
) -> None:
    im = frames[0][2]
    full = np.ones_like(im)
    np.testing.assert_allclose(F.glcm_features(im, full)[0], F.glcm_features(im)[0], rtol=1e-12)
    half = np.zeros_like(im)
    half[:, :14] = 1
    v_half = F.glcm_features(im, half)[0]
    v_crop = F.glcm_features(im[:, :14])[0]
    np.testing.assert_allclose(v_half, v_crop, rtol=1e-10)


def test_glcm_on_ct_int16_uses_minmax_quantisation(ct: np.ndarray) -> None:
    vals, _ = F.glcm_features(ct, distances=(1,), angles=(0,), levels=32)
    lo, hi = float(ct.min()), float(ct.max())
    q = np.minimum(((ct - lo) / (hi - lo) * 32).astype(np.int64), 31).astype(np.uint8)
    g = graycomatrix(q, [1], [0], levels=32, symmetric=True, normed=True)
    np.testing.assert_allclose(vals, [graycoprops(g, p)[0, 0] for p in F.GLCM_PROPS], rtol=1e-10)


def test_lbp_matches_skimage(frames: tuple[np.ndarray, np.ndarray], ct: np.ndarray) -> None:
    im = frames[0][5]
    vals, names = F.lbp_features(im, points=16, radius=2)
    codes = local_binary_pattern(im, 16, 2, method="uniform")
    np.testing.assert_allclose(vals, np.histogram(codes, bins=18, range=(0, 18))[0] / codes.size)
    assert names[0] == "lbp_p16_r2_00" and len(names) == 18
    assert vals.sum() == pytest.approx(1.0)
    v_ct, _ = F.lbp_features(ct)
    assert v_ct.sum() == pytest.approx(1.0) and v_ct.shape == (10,)


def test_hog_matches_skimage(frames: tuple[np.ndarray, np.ndarray]) -> None:
    im = frames[0][9]
    vals, names = F.hog_features(im, orientations=9, pixels_per_cell=7, cells_per_block=2)
    ref = hog(im / 255.0, orientations=9, pixels_per_cell=(7, 7), cells_per_block=(2, 2), block_norm="L2-Hys")
    np.testing.assert_allclose(vals, ref, rtol=1e-10)
    assert len(names) == 324 and names[0] == "hog_0000" and names[-1] == "hog_0323"


def test_hog_size_aligns_different_shapes(frames: tuple[np.ndarray, np.ndarray], ct: np.ndarray) -> None:
    a, na = F.hog_features(frames[0][0], size=28)
    b, nb = F.hog_features(ct, size=28)
    assert a.shape == b.shape and na == nb
    with pytest.raises(F.FeatureError, match="smaller than one HOG block"):
        F.hog_features(frames[0][0][:10, :10])


def test_pixels_match_opencv_area_resize(frames: tuple[np.ndarray, np.ndarray], ct: np.ndarray) -> None:
    im = frames[0][1]
    vals, names = F.pixel_features(im, size=14)
    ref = cv2.resize((im / 255.0).astype(np.float32), (14, 14), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(vals, ref.ravel(), rtol=1e-6)
    assert names[0] == "px_000_000" and names[-1] == "px_013_013"
    v_ct, _ = F.pixel_features(ct, size=None)
    assert v_ct.min() == 0.0 and v_ct.max() == 1.0 and v_ct.size == 128 * 128
    z, _ = F.pixel_features(im, size=None, normalize="zscore")
    assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std() == pytest.approx(1.0)


def test_region_features_match_regionprops(ct: np.ndarray) -> None:
    mask = (ct > np.percentile(ct, 70)).astype(np.uint8)
    vals, names = F.region_features(ct, mask, min_area=5)
    got = dict(zip(names, vals, strict=True))
    regs = [r for r in regionprops(label(mask > 0, connectivity=2)) if r.area >= 5]
    areas = np.array([r.area for r in regs], dtype=float)
    assert got["region_count"] == len(regs) and len(regs) >= 1
    assert got["region_area_total"] == areas.sum()
    assert got["region_area_largest"] == areas.max()
    assert got["region_perimeter_total"] == pytest.approx(sum(r.perimeter for r in regs))
    w = areas / areas.sum()
    assert got["region_solidity_mean"] == pytest.approx(float(np.dot(w, [r.solidity for r in regs])))
    assert got["region_eccentricity_mean"] == pytest.approx(float(np.dot(w, [r.eccentricity for r in regs])))
    assert np.all(F.region_features(ct)[0] == 0)


def test_bad_inputs_raise_feature_error(frames: tuple[np.ndarray, np.ndarray]) -> None:
    im = frames[0][0]
    with pytest.raises(F.FeatureError, match="mask shape"):
        F.intensity_features(im, np.ones((3, 3)))
    with pytest.raises(F.FeatureError, match="2-D"):
        F.intensity_features(np.zeros(5))
    with pytest.raises(F.FeatureError, match="unknown GLCM property"):
        F.glcm_features(im, props=("bogus",))


def test_names_are_stable_across_frames_and_sets(frames: tuple[np.ndarray, np.ndarray]) -> None:
    fs = F.load_feature_set("texture")
    v1, n1 = fs.extract(frames[0][0])
    v2, n2 = fs.extract(frames[0][1])
    assert n1 == n2 and len(n1) == len(set(n1)) == v1.size == v2.size
    assert not np.allclose(v1, v2)
    X, names = fs.extract_many(frames[0][:5])
    assert X.shape == (5, len(n1)) and names == n1
    np.testing.assert_allclose(X[0], v1)


def test_all_shipped_feature_sets_load_and_run(frames: tuple[np.ndarray, np.ndarray]) -> None:
    names = resources.shipped_names("features")
    assert len(names) >= 3 and "pneumonia" in names
    for name in names:
        fs = F.load_feature_set(name)
        assert fs == F.load_feature_set(REPO / "medimg_spark" / "resources" / "features" / f"{name}.yaml")
        v, n = fs.extract(frames[0][0])
        assert fs.name == name and v.size == len(n) and np.isfinite(v).all()


def test_feature_set_yaml_rejects_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nextractors:\n  - kind: hog\n    params: {orientation: 9}\n")
    with pytest.raises(F.FeatureSetError, match="orientation"):
        F.load_feature_set(bad)
    bad.write_text("name: bad\nextractors:\n  - kind: wavelet\n")
    with pytest.raises(F.FeatureSetError, match="wavelet"):
        F.load_feature_set(bad)
    with pytest.raises(F.FeatureSetError, match="not found"):
        F.load_feature_set("no_such_set")


def _images_rows(images: np.ndarray, labels: np.ndarray, split: str) -> list[dict]:
    rows = []
    for i, im in enumerate(images):
        px, r, c, ch, dt = encode(im)
        rec: dict = {f.name: None for f in IMAGES_SCHEMA.fields}
        rec.update(
            image_id=f"{split}-{i:04d}",
            file_sha256="0" * 64,
            source_path=f"/data/{split}.npz",
            source_format="npz",
            frame_index=i,
            n_frames=len(images),
            modality="CR",
            rows=r,
            cols=c,
            channels=ch,
            dtype=dt,
            pixels=px,
            label=str(int(labels[i])),
            split=split,
            ingest_run_id="test",
        )
        rows.append(rec)
    return rows


def test_compute_features_on_spark_matches_driver(
    spark, frames: tuple[np.ndarray, np.ndarray], ct: np.ndarray, tmp_path: Path
) -> None:
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.functions import vector_to_array

    ims, labs = frames
    rows = _images_rows(ims[:12], labs[:12], "val")
    ct_rows = _images_rows(ct[None], np.array([0]), "ct")
    ct_rows[0]["image_id"] = "ct-0000"
    spark.createDataFrame(rows + ct_rows, IMAGES_SCHEMA).write.parquet(str(tmp_path / "images"))
    fs = {"name": "t", "extractors": [{"kind": "intensity"}, {"kind": "hog", "params": {"size": 28}}]}
    summary = F.compute_features(spark, tmp_path, "images", fs)
    assert summary["n_images"] == 13 and summary["n_failed"] == 0
    out = spark.read.parquet(str(tmp_path / "features"))
    assert out.columns == ["image_id", "recipe", "label", "split", "features"]  # recipe: null from images
    names = F.feature_names_of(out)
    assert names == summary["feature_names"] and names[0] == "intensity_mean"
    got = {
        r["image_id"]: np.array(r["v"])
        for r in out.select("image_id", vector_to_array("features").alias("v")).collect()
    }
    fset = F.load_feature_set(fs)
    np.testing.assert_allclose(got["val-0004"], fset.extract(ims[4])[0], rtol=1e-12)
    np.testing.assert_allclose(got["ct-0000"], fset.extract(ct)[0], rtol=1e-12)
    # VectorAssembler propagates the slot names it reads from the column metadata.
    assembled = VectorAssembler(inputCols=["features"], outputCol="all").transform(out)
    attrs = assembled.schema["all"].metadata["ml_attr"]["attrs"]
    assembled_names = [a["name"] for g in attrs.values() for a in g]
    assert sorted(assembled_names) == sorted(f"features_{n}" for n in names)


def test_compute_features_processed_uses_masks(
    spark, frames: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ims, labs = frames
    recs = []
    for i in range(4):
        px, r, c, ch, dt = encode(ims[i])
        mask = np.zeros((28, 28), np.uint8)
        mask[4 : 10 + i, 4:20] = 1
        recs.append((f"p{i}", px, dt, r, c, ch, mask.tobytes(), str(labs[i]), "train"))
    schema = "image_id string, pixels binary, dtype string, rows int, cols int, channels int, mask binary, label string, split string"
    spark.createDataFrame(recs, schema).write.parquet(str(tmp_path / "processed"))
    fs = {"name": "r", "extractors": [{"kind": "region"}]}
    F.compute_features(spark, tmp_path, "processed", fs)
    rows = {
        r["image_id"]: r["features"].toArray()
        for r in spark.read.parquet(str(tmp_path / "features")).collect()
    }
    assert [rows[f"p{i}"][1] for i in range(4)] == [16.0 * (6 + i) for i in range(4)]
