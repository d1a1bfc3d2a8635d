"""Segmentation and mask post-processing ops on real frames, without Spark."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage
from skimage import filters, measure, morphology, segmentation

import medimg_spark.ops as ops

SAMPLE_NPZ = (
    Path(__file__).resolve().parents[1] / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
)
KINDS = [(dt, ch) for ch in (1, 3) for dt in ("uint8", "uint16", "int16", "float32")]


@cache
def cxr(i: int = 0) -> np.ndarray:
    return np.load(SAMPLE_NPZ)["val_images"][i]


@cache
def ct() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array


@cache
def frame(dtype: str, channels: int) -> np.ndarray:
    """CT_small (1 channel) or SC_rgb (3 channels), converted to ``dtype`` by an increasing affine map."""
    base = ct() if channels == 1 else pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array
    unit = (base.astype(np.float64) - base.min()) / np.ptp(base)
    if dtype == "float32":
        return (unit * 3000 - 1000).astype(np.float32)
    if dtype == "int16":
        return np.rint(unit * 4000 - 1000).astype(np.int16)
    top = np.iinfo(dtype).max
    return np.rint(unit * top).astype(dtype)


def kind_ids(k: tuple[str, int]) -> str:
    return f"{k[0]}-{k[1]}ch"


def luma(img: np.ndarray) -> np.ndarray:
    return ops._common.luma(img)


def is_mask(m: np.ndarray, shape: tuple[int, ...]) -> bool:
    return m.dtype == np.uint8 and m.shape == shape[:2] and set(np.unique(m)) <= {0, 1}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


@pytest.mark.parametrize("kind", KINDS, ids=kind_ids)
def test_every_segmentation_returns_a_01_mask(kind: tuple[str, int]) -> None:
    img = frame(*kind)
    for fn in (
        ops.otsu_threshold,
        ops.adaptive_threshold,
        ops.canny_fill,
        ops.watershed,
        ops.texture_kmeans,
        ops.superpixel_mask,
    ):
        m = fn(img)
        assert is_mask(m, img.shape), fn.__name__
        assert 0 < m.sum() < m.size, fn.__name__
    # the op sees the same structure whatever the dtype: Otsu masks agree across dtypes
    ref = ops.otsu_threshold(frame("uint8", kind[1]))
    assert iou(ops.otsu_threshold(img), ref) > 0.97


@pytest.mark.parametrize("kind", KINDS, ids=kind_ids)
def test_otsu_and_fixed_threshold_equal_skimage(kind: tuple[str, int]) -> None:
    img = frame(*kind)
    g = luma(img)
    assert np.array_equal(ops.otsu_threshold(img), (g > filters.threshold_otsu(g)).astype(np.uint8))
    assert np.array_equal(
        ops.otsu_threshold(img, invert=True), (g <= filters.threshold_otsu(g)).astype(np.uint8)
    )
    t = float(np.median(g))
    assert np.array_equal(ops.threshold(img, t), (g > t).astype(np.uint8))


@pytest.mark.parametrize("i", range(3))
def test_otsu_agrees_with_opencv_on_uint8(i: int) -> None:
    img = cxr(i)
    _, ref = cv2.threshold(img, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # skimage and OpenCV may pick neighbouring thresholds on a 256-level histogram: >= 97 % agreement
    assert np.mean(ops.otsu_threshold(img) == ref) >= 0.97


def test_adaptive_threshold_equals_opencv() -> None:
    img = cxr(0)
    ref = cv2.adaptiveThreshold(img, 1, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, 7, 2)
    assert np.array_equal(ops.adaptive_threshold(img, 7, 2.0, "gaussian"), ref)
    u16 = frame("uint16", 1)
    u8 = np.rint((u16 - float(u16.min())) / float(np.ptp(u16)) * 255).astype(np.uint8)
    ref = cv2.adaptiveThreshold(u8, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, 11, 3)
    assert np.array_equal(ops.adaptive_threshold(u16, 11, 3.0, "mean", invert=True), ref)


def test_canny_fill_equals_opencv_pipeline_and_recovers_a_closed_outline() -> None:
    img = ct()
    u8 = np.rint((img - float(img.min())) / float(np.ptp(img)) * 255).astype(np.uint8)
    edges = cv2.Canny(cv2.GaussianBlur(u8, (0, 0), 1.0), 30, 90)
    edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    contours, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ref = cv2.drawContours(np.zeros(u8.shape, np.uint8), contours, -1, 1, thickness=cv2.FILLED)
    assert np.array_equal(ops.canny_fill(img, 30, 90, sigma=1.0, close_ksize=5), ref)
    # a real radiograph pasted on a black canvas: its outline is closed, the filled mask is the frame
    canvas = np.zeros((48, 48), np.uint8)
    canvas[10:38, 10:38] = np.maximum(cxr(1), 60)
    truth = np.zeros_like(canvas)
    truth[10:38, 10:38] = 1
    assert iou(ops.canny_fill(canvas, 50, 150, sigma=0.0), truth) > 0.9
    assert not ops.canny_fill(np.zeros((20, 20), np.uint8)).any()


def test_watershed_equals_skimage_pipeline() -> None:
    img = ct()
    unit = (img - float(img.min())) / float(np.ptp(img))
    t = filters.threshold_otsu(unit)
    markers = np.zeros(img.shape, np.int32)
    markers[unit < t - 0.1] = 1
    markers[unit > t + 0.1] = 2
    ref = segmentation.watershed(filters.sobel(unit), markers) == 2
    assert np.array_equal(ops.watershed(img, 0.1), ref.astype(np.uint8))
    assert iou(ops.watershed(img), ops.otsu_threshold(img)) > 0.8


def test_texture_kmeans_separates_texture_from_smooth() -> None:
    rng = np.random.default_rng(1)
    smooth = cv2.resize(cxr(2), (64, 64), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img = smooth.copy()
    img[:, 32:] = 128 + rng.normal(0, 40, (64, 32))  # textured right half, same mean level
    m = ops.texture_kmeans(np.clip(img, 0, 255).astype(np.uint8), select="bright")
    truth = np.zeros((64, 64), np.uint8)
    truth[:, 32:] = 1
    assert max(iou(m, truth), iou(1 - m, truth)) > 0.8
    assert np.array_equal(ops.texture_kmeans(img), ops.texture_kmeans(img))  # deterministic
    assert ops.texture_features(img).shape == (64, 64, 5)


@pytest.mark.parametrize("method", ["slic", "quickshift"])
def test_superpixels_equal_skimage_and_give_lung_mask(method: str) -> None:
    img = cxr(0)
    unit = (img - float(img.min())) / float(np.ptp(img))
    if method == "slic":
        ref = segmentation.slic(
            unit, n_segments=50, compactness=0.1, sigma=1.0, channel_axis=None, start_label=0
        )
    else:
        rgb = np.repeat(unit[:, :, None], 3, axis=2)
        ref = segmentation.quickshift(rgb, ratio=0.5, kernel_size=1, max_dist=4, sigma=1.0, convert2lab=False)
    labels = ops.superpixels(img, method=method, n_segments=50, kernel_size=1, max_dist=4)
    assert np.array_equal(labels, ref)
    assert labels.max() >= 4
    mask = ops.superpixel_mask(img, method=method, n_segments=50, kernel_size=1, max_dist=4)
    assert is_mask(mask, img.shape)
    # dark superpixels are darker on average than the rest
    assert img[mask == 1].mean() < img[mask == 0].mean()


def test_largest_component_and_remove_small_objects_equal_skimage() -> None:
    m = ops.adaptive_threshold(ct(), 15, 2.0)
    labels = measure.label(m, connectivity=2)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    biggest = labels == np.argmax(sizes)
    assert np.array_equal(ops.largest_component(m), biggest.astype(np.uint8))
    two = np.argsort(-sizes, kind="stable")[:2]
    assert np.array_equal(ops.largest_component(m, n=2), np.isin(labels, two).astype(np.uint8))
    ref = morphology.remove_small_objects(m.astype(bool), max_size=19, connectivity=2)
    assert np.array_equal(ops.remove_small_objects(m, 20), ref.astype(np.uint8))
    assert np.array_equal(ops.fill_holes(m), ndimage.binary_fill_holes(m).astype(np.uint8))
    assert not ops.largest_component(np.zeros((5, 5), np.uint8)).any()


def test_apply_mask_fills_outside() -> None:
    img = ct()
    m = ops.otsu_threshold(img)
    out = ops.apply_mask(img, m)
    assert out.dtype == img.dtype
    assert np.all(out[m == 0] == img.min()) and np.array_equal(out[m == 1], img[m == 1])
    with pytest.raises(ops.UnsupportedImageError, match="does not match"):
        ops.apply_mask(img, m[:10])


@pytest.mark.parametrize(
    "img",
    [np.full((16, 16), 9, np.uint16), np.zeros((1, 1), np.float32), np.full((6, 6), np.nan, np.float32)],
)
def test_degenerate_frames_do_not_crash(img: np.ndarray) -> None:
    for fn in (
        ops.otsu_threshold,
        ops.watershed,
        ops.superpixel_mask,
        ops.adaptive_threshold,
        ops.canny_fill,
    ):
        m = fn(img) if img.shape[0] > 2 or fn is not ops.adaptive_threshold else fn(img, 3)
        assert is_mask(m, img.shape) and not m.any(), fn.__name__
