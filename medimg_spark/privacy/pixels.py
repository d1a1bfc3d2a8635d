"""Burned-in text in pixels: rules in YAML (CTP pixel-anonymizer style) and optional OCR.

A rule file looks like::

    version: 1
    rules:
      - name: Philips EPIQ ultrasound, patient banner
        match:                      # every key must match
          Modality: US              # strings: case-insensitive substring (CTP containsIgnoreCase)
          Manufacturer: philips
          ManufacturerModelName: EPIQ
          Rows: 768                 # integers: equality
          Columns: 1024
        regions:                    # [x, y, width, height] in pixels, blanked in every frame
          - [0, 0, 1024, 24]

A rule with ``regions: []`` records that a human reviewed that device/size combination and
found no burned-in text: matching images are written unchanged. Images whose pixels are
presumed to carry text (Burned In Annotation = YES, text-prone modality or SOP class) and that
match no rule are rejected with :class:`~medimg_spark.privacy.errors.BurnedInAnnotationError`
unless the caller allows them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from medimg_spark import resources as shipped_resources
from medimg_spark.privacy.errors import DeidConfigError, OcrUnavailableError

MATCH_KEYS: dict[str, type] = {
    "Modality": str,
    "Manufacturer": str,
    "ManufacturerModelName": str,
    "SoftwareVersions": str,
    "SOPClassUID": str,
    "ImageType": str,
    "PhotometricInterpretation": str,
    "Rows": int,
    "Columns": int,
}

Region = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class PixelRule:
    """One rule: attribute conditions and the rectangles (x, y, width, height) to blank."""

    name: str
    match: tuple[tuple[str, str | int], ...]
    regions: tuple[Region, ...]

    def matches(self, ds: Dataset) -> bool:
        """Whether every condition holds for ``ds``."""
        for key, expected in self.match:
            actual = ds.get(key)
            if actual is None:
                return False
            if isinstance(expected, int):
                try:
                    if int(actual) != expected:
                        return False
                except (TypeError, ValueError):
                    return False
            else:
                text = "\\".join(str(v) for v in actual) if _is_multi(actual) else str(actual)
                if expected.lower() not in text.lower():
                    return False
        return True


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _parse_rules(data: Any, source: str) -> tuple[PixelRule, ...]:
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise DeidConfigError(f"pixel rule file {source}: expected a mapping with a 'rules' list")
    rules: list[PixelRule] = []
    for i, raw in enumerate(data["rules"]):
        where = f"pixel rule file {source}, rule {i + 1}"
        if not isinstance(raw, dict) or set(raw) - {"name", "match", "regions", "note"}:
            raise DeidConfigError(f"{where}: allowed keys are name, match, regions, note")
        match = raw.get("match")
        if not isinstance(match, dict) or not match:
            raise DeidConfigError(f"{where}: 'match' must be a non-empty mapping of attribute -> value")
        conditions: list[tuple[str, str | int]] = []
        for key, value in match.items():
            if key not in MATCH_KEYS:
                raise DeidConfigError(f"{where}: cannot match on {key!r}; use one of {sorted(MATCH_KEYS)}")
            kind = MATCH_KEYS[key]
            if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise DeidConfigError(f"{where}: {key} must be an integer")
            conditions.append((key, value if kind is int else str(value)))
        regions_raw = raw.get("regions")
        if not isinstance(regions_raw, list):
            raise DeidConfigError(
                f"{where}: 'regions' must be a list of [x, y, width, height] (may be empty)"
            )
        regions: list[Region] = []
        for r in regions_raw:
            if (
                not isinstance(r, list | tuple)
                or len(r) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r)
                or r[2] == 0
                or r[3] == 0
            ):
                raise DeidConfigError(
                    f"{where}: region {r!r} must be [x, y, width, height], non-negative integers"
                )
            regions.append((r[0], r[1], r[2], r[3]))
        rules.append(PixelRule(str(raw.get("name", f"rule {i + 1}")), tuple(conditions), tuple(regions)))
    return tuple(rules)


@lru_cache(maxsize=16)
def load_pixel_rules(path: str | None = None) -> tuple[PixelRule, ...]:
    """Load pixel rules from ``path`` or from the packaged defaults (cached per process).

    Raises:
        DeidConfigError: When the file is missing or malformed.
    """
    if path is None:
        text = shipped_resources.read_shipped(shipped_resources.PIXEL_RULES)
        source = f"<packaged {shipped_resources.PIXEL_RULES}>"
    else:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise DeidConfigError(f"cannot read pixel rule file {path}: {exc.strerror}") from None
        source = path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DeidConfigError(f"pixel rule file {source} is not valid YAML: {exc}") from None
    return _parse_rules(data, source)


def find_rule(rules: tuple[PixelRule, ...], ds: Dataset) -> PixelRule | None:
    """First rule matching ``ds``, or ``None``."""
    for rule in rules:
        if rule.matches(ds):
            return rule
    return None


def tesseract_available() -> bool:
    """Whether the ``tesseract`` binary is on ``PATH``."""
    return shutil.which("tesseract") is not None


def ocr_text_regions(image: np.ndarray, *, min_confidence: float = 30.0, pad: int = 3) -> list[Region]:
    """Bounding boxes (x, y, w, h) of words Tesseract finds in a 2-D or RGB image.

    Raises:
        OcrUnavailableError: When ``tesseract`` is not installed.
    """
    import cv2

    exe = shutil.which("tesseract")
    if exe is None:
        raise OcrUnavailableError(
            "OCR requested but the tesseract binary is not installed; install the Debian package "
            "tesseract-ocr or set ocr='off'"
        )
    img = image.astype(np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    lo, hi = float(img.min()), float(img.max())
    gray = np.zeros(img.shape, np.uint8) if hi <= lo else ((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    boxes: list[Region] = []
    with tempfile.TemporaryDirectory(prefix="medimg-ocr-") as tmp:
        png = os.path.join(tmp, "frame.png")
        cv2.imwrite(png, gray)
        proc = subprocess.run(
            [exe, png, "stdout", "--psm", "11", "tsv"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        )
    if proc.returncode != 0:
        raise OcrUnavailableError(
            f"tesseract failed with exit code {proc.returncode}; check its installation"
        )
    h, w = gray.shape
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 12 or parts[0] != "5" or not parts[11].strip():
            continue
        try:
            conf = float(parts[10])
            x, y, bw, bh = (int(parts[i]) for i in (6, 7, 8, 9))
        except ValueError:
            continue
        if conf < min_confidence:
            continue
        x0, y0 = max(0, x - pad), max(0, y - pad)
        boxes.append((x0, y0, min(w, x + bw + pad) - x0, min(h, y + bh + pad) - y0))
    return boxes


def _frames_view(arr: np.ndarray, n_frames: int, samples: int) -> np.ndarray:
    """View of ``arr`` as (frames, rows, cols[, samples])."""
    if n_frames > 1:
        return arr
    return arr[np.newaxis, ...]


def blank_regions(frames: np.ndarray, regions: list[Region] | tuple[Region, ...]) -> None:
    """Set the rectangles to 0 in every frame of a (frames, rows, cols[, samples]) array, in place."""
    rows, cols = frames.shape[1], frames.shape[2]
    for x, y, w, h in regions:
        x0, y0 = min(x, cols), min(y, rows)
        frames[:, y0 : min(rows, y + h), x0 : min(cols, x + w), ...] = 0


def clean_pixel_data(ds: Dataset, regions: tuple[Region, ...], *, ocr: bool) -> list[Region]:
    """Blank ``regions`` (and OCR-found text when ``ocr``) in the pixels of ``ds``, in place.

    The pixels are decoded, blanked and stored uncompressed (Explicit VR Little Endian when the
    source was compressed); YBR colour data decoded to RGB is relabelled RGB.

    Returns:
        All rectangles blanked (rule regions plus OCR boxes).
    """
    arr = np.array(ds.pixel_array, copy=True)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = _frames_view(arr, n_frames, samples)
    applied: list[Region] = list(regions)
    if ocr:
        probe = frames.max(axis=0) if frames.shape[0] > 1 else frames[0]
        applied.extend(ocr_text_regions(probe))
    blank_regions(frames, applied)
    photometric = str(ds.PhotometricInterpretation)
    if samples == 3 and photometric.startswith("YBR"):
        photometric = "RGB"
    ds.set_pixel_data(
        arr,
        photometric_interpretation=photometric,
        bits_stored=int(ds.BitsStored),
        generate_instance_uid=False,
    )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return applied


def blank_overlay_regions(ds: Dataset, regions: list[Region]) -> None:
    """Clear the bits of retained overlay planes (60xx,3000) that fall inside ``regions``."""
    for group in range(0x6000, 0x6020, 2):
        data_tag = (group << 16) | 0x3000
        if data_tag not in ds:
            continue
        rows = int(ds.get((group << 16) | 0x0010).value)
        cols = int(ds.get((group << 16) | 0x0011).value)
        origin = ds.get((group << 16) | 0x0050)
        oy, ox = (int(origin.value[0]) - 1, int(origin.value[1]) - 1) if origin is not None else (0, 0)
        raw = np.frombuffer(ds[data_tag].value, dtype=np.uint8)
        bits = np.unpackbits(raw, bitorder="little")
        n_planes = max(1, bits.size // (rows * cols))
        planes = bits[: n_planes * rows * cols].reshape(n_planes, rows, cols).copy()
        shifted = [(x - ox, y - oy, w, h) for x, y, w, h in regions]
        blank_regions(
            planes, [(max(0, x), max(0, y), w + min(0, x), h + min(0, y)) for x, y, w, h in shifted]
        )
        packed = np.packbits(planes.reshape(-1), bitorder="little").tobytes()
        ds[data_tag].value = packed + (b"\x00" if len(packed) % 2 else b"")
