"""Per-frame localisation (OpenCV k-means, DBSCAN, Gaussian mixture) and dataset clustering with MLlib."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.measure import label, regionprops
from skimage.segmentation import clear_border

from medimg_spark.features import vector_metadata
from medimg_spark.io.pixels import encode
from medimg_spark.ml import LocalizeConfig, ModelConfigError, find_regions, foreground_mask, localize

CENTERS = ((20, 18), (44, 50))
RADII = (7, 9)


@pytest.fixture(scope="module")
def two_blobs() -> np.ndarray:
    """64x64 uint16 frame: two bright disks on a noisy dark background."""
    rng = np.random.default_rng(0)
    img = rng.normal(200, 20, (64, 64))
    rr, cc = np.mgrid[:64, :64]
    for (r0, c0), rad in zip(CENTERS, RADII, strict=True):
        img[(rr - r0) ** 2 + (cc - c0) ** 2 <= rad**2] = 3000 + rng.normal(
            0, 50, ((rr - r0) ** 2 + (cc - c0) ** 2 <= rad**2).sum()
        )
    return np.clip(img, 0, None).astype(np.uint16)


@pytest.fixture(scope="module")
def lung_frame(sample_npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real normal chest X-ray (val frame 81, upsampled to 112 px) and a two-lung mask from Otsu + clear_border."""
    d = np.load(sample_npz)
    assert d["val_labels"][81, 0] == 0
    big = cv2.resize(d["val_images"][81], (112, 112), interpolation=cv2.INTER_CUBIC)
    blur = cv2.GaussianBlur(big, (5, 5), 0)
    t, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lab = label(clear_border(blur < t))
    regs = sorted(regionprops(lab), key=lambda r: -r.area)[:2]
    mask = np.isin(lab, [r.label for r in regs]).astype(np.uint8)
    return big, mask


@pytest.mark.parametrize("method", ["kmeans", "dbscan", "gmm"])
def test_two_blobs_found(two_blobs: np.ndarray, method: str) -> None:
    regs = find_regions(two_blobs, None, method, {"foreground": "otsu_bright", "k": 2, "eps": 1.5})
    assert len(regs) == 2
    by_row = sorted(regs, key=lambda r: r["centroid_row"])
    for reg, (r0, c0), rad in zip(by_row, CENTERS, RADII, strict=True):
        assert reg["centroid_row"] == pytest.approx(r0, abs=0.5)
        assert reg["centroid_col"] == pytest.approx(c0, abs=0.5)
        assert reg["area"] == pytest.approx(np.pi * rad**2, rel=0.1)
        assert (reg["bbox_min_row"], reg["bbox_max_row"]) == (r0 - rad, r0 + rad)
        assert reg["mean_intensity"] == pytest.approx(3000, rel=0.02)
    assert [r["region"] for r in regs] == [0, 1] and regs[0]["area"] > regs[1]["area"]


def test_two_lungs_found_in_chest_xray_mask(lung_frame: tuple[np.ndarray, np.ndarray]) -> None:
    img, mask = lung_frame
    n_components = label(mask).max()
    assert n_components == 2
    for method in ("kmeans", "gmm", "dbscan"):
        regs = find_regions(img, mask, method, {"k": 2, "eps": 1.5})
        assert len(regs) == 2, method
        cols = sorted(r["centroid_col"] for r in regs)
        assert cols[0] < 56 < cols[1], method  # one lung each side of the midline
        assert sum(r["area"] for r in regs) == int(mask.sum())
        assert all(r["mean_intensity"] < img[mask == 0].mean() for r in regs)  # lungs are dark


def test_foreground_and_config_errors(two_blobs: np.ndarray) -> None:
    fg = foreground_mask(two_blobs, mode="otsu_bright")
    assert fg.sum() == pytest.approx(np.pi * (49 + 81), rel=0.1)
    assert foreground_mask(two_blobs, mode="otsu_dark").sum() == fg.size - fg.sum()
    with pytest.raises(ModelConfigError, match="unknown per-frame method"):
        find_regions(two_blobs, None, "meanshift")
    with pytest.raises(ModelConfigError, match="invalid localize config"):
        find_regions(two_blobs, None, "kmeans", {"clusters": 2})
    assert find_regions(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "kmeans") == []


def test_localize_on_spark_writes_regions_and_clusters(
    spark, two_blobs: np.ndarray, lung_frame: tuple[np.ndarray, np.ndarray], sample_npz: Path, tmp_path: Path
) -> None:
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    img, mask = lung_frame
    recs = []
    for iid, frame, m in (("blobs", two_blobs, (two_blobs > 1000).astype(np.uint8)), ("lungs", img, mask)):
        px, r, c, ch, dt = encode(frame)
        recs.append((iid, px, dt, r, c, ch, m.tobytes(), None, "test"))
    schema = "image_id string, pixels binary, dtype string, rows int, cols int, channels int, mask binary, label string, split string"
    spark.createDataFrame(recs, schema).write.parquet(str(tmp_path / "processed"))
    res = localize(spark, tmp_path, "kmeans", LocalizeConfig(k=2))
    assert res["n_regions"] == 4 and res["n_frames_with_regions"] == 2
    rows = spark.read.parquet(res["path"]).where("image_id = 'blobs'").orderBy("centroid_row").collect()
    assert [round(r["centroid_row"]) for r in rows] == [20, 44]
    assert [round(r["centroid_col"]) for r in rows] == [18, 50]

    # dataset level: MLlib KMeans / GaussianMixture on features of real frames (normal vs pneumonia)
    d = np.load(sample_npz)
    ims, ys = d["val_images"][:120], d["val_labels"][:120, 0]
    X = np.stack([cv2.resize(i, (4, 4), interpolation=cv2.INTER_AREA).ravel() / 255.0 for i in ims])
    df = spark.createDataFrame(
        [(f"v{i}", str(ys[i]), "val", X[i].tolist()) for i in range(len(ys))],
        "image_id string, label string, split string, v array<double>",
    )
    names = [f"px_{i:03d}" for i in range(X.shape[1])]
    df.select(
        "image_id",
        "label",
        "split",
        array_to_vector(F.col("v")).alias("features", metadata=vector_metadata(names)),
    ).write.parquet(str(tmp_path / "features"))
    for method in ("mllib_kmeans", "mllib_gmm"):
        out = localize(spark, tmp_path, method, {"k": 2, "seed": 1})
        assert out["n_rows"] == 120 and sum(out["cluster_sizes"].values()) == 120
        assert -1.0 <= out["silhouette"] <= 1.0 and len(out["cluster_sizes"]) == 2
        clusters = spark.read.parquet(out["path"])
        assert clusters.columns == ["image_id", "label", "split", "cluster"] and clusters.count() == 120
        if method == "mllib_kmeans":
            assert out["silhouette"] > 0.1
    with pytest.raises(ModelConfigError, match="unknown localize method"):
        localize(spark, tmp_path, "hdbscan")
