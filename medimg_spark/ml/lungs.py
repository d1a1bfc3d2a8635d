"""Lung-field localisation on chest X-rays (numpy/OpenCV/SciPy, no Spark).

The lung fields are the large dark regions either side of the (bright) mediastinum. On one frame:

1. scale to [0, 1] and resize so the longer side is ``lung_work_side`` pixels (28×28
   PneumoniaMNIST crops are upsampled, full-size CR/DX frames downsampled), Gaussian smoothing;
2. Otsu threshold: the dark pixels; a narrow band at the midline is cleared so the two lungs
   never merge through a dark mediastinum, then a small morphological opening;
3. connected components; a component lying mostly in the outer rim of the frame (the air
   outside the body along the edges of a full-size frame) is dropped, as are specks (< 2 % of
   the frame);
4. the largest component whose centroid lies left of the midline, and the largest right of
   it, closed morphologically and hole-filled: one lung each;
5. the two masks are carried back to full resolution (nearest neighbour), where area, centroid,
   bounding box and mean intensity are measured.

Frames must be displayed with air dark (MONOCHROME2); the Spark stage inverts MONOCHROME1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from medimg_spark.features import to_gray

if TYPE_CHECKING:
    from medimg_spark.config_models import LocalizeConfig

__all__ = [
    "LUNG_MIDLINE_CUT",
    "LUNG_MIN_FRACTION",
    "LUNG_RIM",
    "find_lungs",
    "lung_masks",
    "plausible_lung_boxes",
]

#: Half-width of the band cleared at the midline, as a fraction of the frame width.
LUNG_MIDLINE_CUT = 0.03
#: Width of the outer rim (fraction of the width) and the share of a component's pixels in it
#: beyond which the component is taken for air outside the body.
LUNG_RIM = (0.05, 0.6)
#: Percentiles mapped to black and white before thresholding (robust to a few extreme pixels).
LUNG_PERCENTILES = (0.5, 99.5)
LUNG_CLEAR_RIM = True
#: Components smaller than this fraction of the frame are ignored.
LUNG_MIN_FRACTION = 0.02


def _ellipse(size: int) -> np.ndarray:
    k = max(3, size) | 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def lung_masks(image: np.ndarray, work_side: int = 128) -> list[np.ndarray]:
    """Boolean full-resolution masks of the lung fields of one frame: ``[left, right]`` (image left/right).

    Either may be missing (zero, one or two masks are returned, ordered by centroid column).
    """
    gray = to_gray(image).astype(np.float32)
    finite = gray[np.isfinite(gray)]
    if finite.size == 0:
        return []
    lo, hi = np.percentile(finite, LUNG_PERCENTILES)
    if hi <= lo:
        return []
    unit = np.clip((np.nan_to_num(gray, nan=lo) - lo) / (hi - lo), 0, 1)
    h, w = unit.shape
    s = work_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    work = cv2.resize(unit, size, interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
    blur = cv2.GaussianBlur(work, (0, 0), max(1.0, work_side / 64))
    u8 = np.rint(np.clip(blur, 0, 1) * 255).astype(np.uint8)
    if int(u8.max()) == int(u8.min()):
        return []
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = u8 <= t
    hh, ww = dark.shape
    c0, c1 = round(ww * (0.5 - LUNG_MIDLINE_CUT)), round(ww * (0.5 + LUNG_MIDLINE_CUT))
    dark[:, c0:c1] = False
    band = max(1, round(LUNG_RIM[0] * ww))
    if LUNG_CLEAR_RIM:
        dark[:band, :] = dark[hh - band :, :] = False
        dark[:, :band] = dark[:, ww - band :] = False
    dark = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, _ellipse(work_side // 32)).astype(bool)
    lab, n = ndi.label(dark)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    rim = np.zeros_like(dark)
    rim[:, :band] = rim[:, ww - band :] = rim[:band, :] = True
    areas = ndi.sum_labels(np.ones_like(lab), lab, idx)
    in_rim = ndi.sum_labels(rim, lab, idx)
    cols = [c for _, c in ndi.center_of_mass(dark, lab, idx)]
    keep = [
        (float(areas[i]), float(cols[i]), i + 1)
        for i in range(n)
        if areas[i] >= LUNG_MIN_FRACTION * hh * ww and in_rim[i] <= LUNG_RIM[1] * areas[i]
    ]
    masks = []
    for left in (True, False):
        side = [k for k in keep if (k[1] < ww / 2) == left]
        if not side:
            continue
        _, _, label_id = max(side)
        m = cv2.morphologyEx((lab == label_id).astype(np.uint8), cv2.MORPH_CLOSE, _ellipse(work_side // 12))
        m = ndi.binary_fill_holes(m).astype(np.uint8)
        full = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        if full.any():
            masks.append(full)
    return masks


def find_lungs(image: np.ndarray, config: LocalizeConfig) -> list[dict[str, Any]]:
    """The lung fields of one chest X-ray as regions (see :func:`medimg_spark.ml.localize.find_regions`).

    Region 0 is the larger lung; boxes are in the frame's own (full-resolution) pixels.
    """
    from medimg_spark.ml.localize import region_row  # localize imports this module on first use

    gray = to_gray(image)
    regions = []
    for m in lung_masks(image, config.lung_work_side):
        r, c = np.nonzero(m)
        if r.size < config.min_area:
            continue
        regions.append(region_row(r, c, gray))
    regions.sort(key=lambda d: (-d["area"], d["centroid_col"]))
    for i, reg in enumerate(regions):
        reg["region"] = i
    return regions


def plausible_lung_boxes(regions: list[dict[str, Any]], rows: int, cols: int) -> bool:
    """True when ``regions`` are two plausible lung boxes of a ``rows x cols`` frame.

    Two regions, one centroid each side of the midline, neither box reaching more than 10 % of
    the width into the other half, each box covering 10-45 % of the frame.
    """
    if len(regions) != 2:
        return False
    left, right = sorted(regions, key=lambda r: r["centroid_col"])
    if not left["centroid_col"] < cols / 2 < right["centroid_col"]:
        return False
    if (left["bbox_max_col"] + 1) > 0.6 * cols or right["bbox_min_col"] < 0.4 * cols:
        return False
    for r in (left, right):
        frac = (
            (r["bbox_max_row"] - r["bbox_min_row"] + 1)
            * (r["bbox_max_col"] - r["bbox_min_col"] + 1)
            / (rows * cols)
        )
        if not 0.10 <= frac <= 0.45:
            return False
    return True
