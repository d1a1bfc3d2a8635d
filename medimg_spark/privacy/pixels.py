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
from medimg_spark.privacy.errors import DeidConfigError, OcrFailedError, OcrUnavailableError

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


def load_yaml(path: str | None, shipped_name: str, what: str, fix: str = "") -> tuple[Any, str]:
    """Parse the YAML file ``path``, or the shipped ``shipped_name`` when ``path`` is None.

    Returns:
        The parsed data and a source label for messages (the path, or ``<packaged NAME>``).

    Raises:
        DeidConfigError: The file cannot be read or is not YAML (naming ``what``, the file and ``fix``).
    """
    if path is None:
        text, source = shipped_resources.read_shipped(shipped_name), f"<packaged {shipped_name}>"
    else:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise DeidConfigError(
                f"cannot read {what} {path}: {exc.strerror}{'; ' + fix if fix else ''}"
            ) from None
        source = path
    try:
        return yaml.safe_load(text), source
    except yaml.YAMLError as exc:
        raise DeidConfigError(f"{what} {source} is not valid YAML: {exc}") from None


@lru_cache(maxsize=16)
def load_pixel_rules(path: str | None = None) -> tuple[PixelRule, ...]:
    """Load pixel rules from ``path`` or from the packaged defaults (cached per process).

    Raises:
        DeidConfigError: When the file is missing or malformed.
    """
    data, source = load_yaml(path, shipped_resources.PIXEL_RULES, "pixel rule file")
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


#: Upper bound of the long side of an image handed to one tesseract call (after upscaling);
#: larger probes are cut into overlapping tiles, so the work per call stays bounded.
MAX_OCR_SIDE = 2400
#: Overlap of neighbouring tiles, in probe pixels (a word cut by one tile edge is whole in the other).
TILE_OVERLAP = 96
#: Tesseract processes one OCR read runs at once (each single-threaded, ``OMP_THREAD_LIMIT=1``): the
#: runs of a read are independent, and a text-prone cine at the tail of a Spark stage otherwise reads
#: its 4-8 probes one after another while the other cores idle. The results are taken in job order,
#: so the boxes found do not depend on it.
OCR_WORKERS = 2
#: Seconds one tesseract call may take before the file is quarantined (:class:`OcrFailedError`).
OCR_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class OcrWord:
    """One word Tesseract read: its box in image pixels (x, y, w, h) and its confidence (0-100)."""

    box: Region
    confidence: float


def _tesseract() -> str:
    exe = shutil.which("tesseract")
    if exe is None:
        raise OcrUnavailableError(
            "OCR requested but the tesseract binary is not installed; install the Debian package "
            "tesseract-ocr or set ocr='off'"
        )
    return exe


def ocr_probe(image: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """8-bit grey image for OCR from a 2-D (grey or palette indices) or RGB frame.

    Colour is reduced with the per-pixel maximum over channels, so saturated coloured text
    (yellow, green, cyan annotations) stays as bright as white text; grey values are stretched
    to 0-255 from their range.

    Args:
        image: Frame, (rows, cols) or (rows, cols, samples).
        palette: Optional (n, 3) lookup table applied to a palette-colour frame first.
    """
    return _probe_and_chroma(image, palette)[0]


def _probe_and_chroma(
    image: np.ndarray, palette: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`ocr_probe` and, for colour, the chroma (channel max - min) on the same 0-255 scale."""
    img = image
    if palette is not None and img.ndim == 2:
        img = palette[np.clip(img.astype(np.int64), 0, len(palette) - 1)]
    f = img.astype(np.float32)
    chroma = None
    if f.ndim == 3:
        chroma = f.max(axis=2) - f.min(axis=2)
        f = f.max(axis=2)
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return np.zeros(f.shape, np.uint8), None
    scale = 255.0 / (hi - lo)
    gray = ((f - lo) * scale).astype(np.uint8)
    return gray, None if chroma is None else np.clip(chroma * scale, 0, 255).astype(np.uint8)


def _run_tesseract(exe: str, gray: np.ndarray, psm: int, thresholding: int = 0) -> str:
    import cv2

    with tempfile.TemporaryDirectory(prefix="medimg-ocr-") as tmp:
        png = os.path.join(tmp, "probe.png")
        if not cv2.imwrite(png, gray):
            raise OcrFailedError("the OCR probe image could not be written to a temporary file")
        try:
            proc = subprocess.run(
                [
                    exe,
                    png,
                    "stdout",
                    "--psm",
                    str(psm),
                    "-l",
                    "eng",
                    "-c",
                    f"thresholding_method={thresholding}",
                    "tsv",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=OCR_TIMEOUT_S,
                env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            )
        except subprocess.TimeoutExpired:
            raise OcrFailedError(
                f"tesseract took longer than {OCR_TIMEOUT_S:.0f} s on one probe of this image"
            ) from None
        except OSError as exc:
            raise OcrFailedError(f"tesseract could not be started ({exc.strerror})") from None
    if proc.returncode != 0:
        raise OcrFailedError(
            f"tesseract failed with exit code {proc.returncode}; check its installation "
            "(Debian package tesseract-ocr with the eng language data)"
        )
    return proc.stdout


def _parse_tsv(tsv: str) -> list[tuple[str, float, Region]]:
    words: list[tuple[str, float, Region]] = []
    for line in tsv.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 12 or parts[0] != "5" or not parts[11].strip():
            continue
        try:
            conf = float(parts[10])
            x, y, bw, bh = (int(parts[i]) for i in (6, 7, 8, 9))
        except ValueError:
            continue
        words.append((parts[11].strip(), conf, (x, y, bw, bh)))
    return words


def _tiles(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    step = size - overlap
    starts = list(range(0, length - size, step))
    starts.append(length - size)
    return starts


#: Confidence (0-100) a word needs to be blanked by the redaction pass: low, because small
#: real text is often read with low confidence; the contrast test rejects speckle instead.
REDACT_CONFIDENCE = 10.0
#: Confidence a word needs to count as residual text in the verification pass.
VERIFY_CONFIDENCE = 40.0
#: Least mean grey difference (0-255 probe) between a word's glyph and background pixels
#: (Otsu split of its box). Measured on the corpus: burned-in text 95-255 (dim grey labels
#: on black ~100), ultrasound speckle that Tesseract reads as short "words" mostly below 50.
MIN_GLYPH_CONTRAST = 90.0
#: One tesseract run: (upscaling factor, Tesseract ``thresholding_method``, gamma of the probe).
Variant = tuple[int, int, float]
#: The runs of one OCR read: global Otsu at 2x, adaptive Otsu at 2x (dark text on light
#: banners), global Otsu at 2x on the gamma-3 probe (white text on mid-grey banners). The
#: rescans and the verification make these runs.
READ_VARIANTS: tuple[Variant, ...] = ((2, 0, 1.0), (2, 1, 1.0), (2, 0, 3.0))
#: The first read adds adaptive Otsu at 3x (text of 7-9 px). A verification with it as well
#: quarantined more corpus files, on speckle and Doppler read as words at 3x.
FIRST_READ_VARIANTS: tuple[Variant, ...] = (*READ_VARIANTS, (3, 1, 1.0))
#: Redaction reads at most: the first, then a rescan of the blanked pixels while the previous
#: read blanked something (glyph remainders at a box edge, words their neighbours hid).
MAX_READS = 3
#: Least ratio of glyph contrast to the pooled spread inside glyph and background pixels for a
#: word whose contrast is below :data:`MIN_GLYPH_CONTRAST` (measured: text 3.6 and above on
#: speckle or colour bars, far more on uniform banners; speckle 2.4-3.1).
MIN_CONTRAST_RATIO = 3.5
#: Largest chroma spread (0-255) of a word's bright pixels (see :func:`ocr_words`); measured:
#: Doppler blobs read as words 29-103, white, grey or one-colour text 0-23 (JPEG chroma noise).
MAX_CHROMA_SPREAD = 26.0
#: Least word height in image pixels (smaller boxes are speckle, not 8-14 px text).
MIN_WORD_HEIGHT = 6


@lru_cache(maxsize=4)
def _gamma_lut(gamma: float) -> np.ndarray:
    return (255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)


def _chroma_spread(gray: np.ndarray, chroma: np.ndarray, box: Region) -> float:
    """Standard deviation of the chroma of the bright (Otsu) pixels of ``box``."""
    import cv2

    x, y, w, h = box
    patch = np.ascontiguousarray(gray[y : y + h, x : x + w])
    if patch.size < 4:
        return 0.0
    t, _ = cv2.threshold(patch, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bright = chroma[y : y + h, x : x + w][patch > t]
    return float(bright.std()) if bright.size else 0.0


def _separable(gray: np.ndarray, box: Region, min_contrast: float) -> bool:
    """Whether ``box`` looks like glyphs on a background rather than speckle.

    Either the mean grey difference between the bright and dark Otsu classes of the box (the
    glyph/background contrast) reaches ``min_contrast``, or
    it is at least :data:`MIN_CONTRAST_RATIO` times the pooled spread inside the two classes
    (dim text on a uniform banner: small contrast, near-zero spread; speckle: both similar).
    """
    import cv2

    x, y, w, h = box
    patch = gray[y : y + h, x : x + w]
    if patch.size < 4:
        return False
    t, _ = cv2.threshold(np.ascontiguousarray(patch), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    hi, lo = patch[patch > t].astype(np.float32), patch[patch <= t].astype(np.float32)
    if hi.size == 0 or lo.size == 0:
        return False
    contrast = float(hi.mean() - lo.mean())
    spread = float(np.sqrt((hi.var() * hi.size + lo.var() * lo.size) / patch.size))
    return contrast >= min_contrast or contrast >= MIN_CONTRAST_RATIO * (spread + 1.0)


def ocr_words(
    gray: np.ndarray,
    *,
    variants: tuple[Variant, ...] = ((2, 0, 1.0),),
    psm: int = 11,
    min_confidence: float = REDACT_CONFIDENCE,
    min_contrast: float = MIN_GLYPH_CONTRAST,
    min_height: int = MIN_WORD_HEIGHT,
    chroma: np.ndarray | None = None,
) -> list[OcrWord]:
    """Words Tesseract reads in an 8-bit grey probe, boxes in probe coordinates (no text kept).

    Each ``(scale, thresholding, gamma)`` variant is one tesseract run with page segmentation mode
    ``psm`` (11: sparse text, as annotations are), tiled when the upscaled probe is larger
    than :data:`MAX_OCR_SIDE`. Small burned-in text (8-14 px) is read far better at 2-3x (a
    scale is lowered to the largest that fits :data:`MAX_OCR_SIDE`, at least 1). Tesseract's
    ``thresholding_method`` 0 (global Otsu) reads light text on dark screens; 1 (adaptive,
    tiled Otsu) also reads dark text on a light banner, which the global threshold merges into
    the banner. ``gamma`` 3 darkens mid-grey backgrounds (coloured banners, speckle) while
    near-white annotation text stays white, so a global threshold separates it again (both
    thresholdings alone missed such a banner line on the corpus). Polarity needs no variant: Tesseract 5 re-reads inverted every line it reads
    poorly (``tessedit_do_invert``). Speckle filter: words without an alphanumeric character,
    below ``min_confidence``, lower than ``min_height`` pixels, taller than
    ``max(24, rows / 20)`` (scale bars, Doppler blobs), or not :func:`_separable` are dropped;
    with a ``chroma`` map, so are words whose bright pixels vary in chroma by more than
    :data:`MAX_CHROMA_SPREAD` (colour-flow Doppler blobs shade from red to yellow; annotation
    text is white, grey or one colour).

    Raises:
        OcrUnavailableError: ``tesseract`` is not installed.
        OcrFailedError: A tesseract run failed or timed out.
    """
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    exe = _tesseract()
    rows, cols = gray.shape
    # one job per (variant, tile): (tile pixels, scale, x0, y0, thresholding)
    jobs: list[tuple[np.ndarray, int, int, int, int]] = []
    for wanted, thresholding, gamma in variants:
        # bounded work: the upscaled probe fits MAX_OCR_SIDE, else a lower scale (large frames,
        # whose text is large too, are read at 1x, tiled beyond MAX_OCR_SIDE)
        scale = max(1, min(wanted, MAX_OCR_SIDE // max(rows, cols, 1)))
        src = gray if gamma == 1.0 else _gamma_lut(gamma)[gray]
        probe = (
            src if scale == 1 else cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        )
        for y0 in _tiles(probe.shape[0], MAX_OCR_SIDE, TILE_OVERLAP):
            for x0 in _tiles(probe.shape[1], MAX_OCR_SIDE, TILE_OVERLAP):
                tile = np.ascontiguousarray(probe[y0 : y0 + MAX_OCR_SIDE, x0 : x0 + MAX_OCR_SIDE])
                jobs.append((tile, scale, x0, y0, thresholding))
    workers = min(OCR_WORKERS, len(jobs))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outputs = list(pool.map(lambda j: _run_tesseract(exe, j[0], psm, j[4]), jobs))
    else:
        outputs = [_run_tesseract(exe, j[0], psm, j[4]) for j in jobs]
    found: list[OcrWord] = []
    for (_, scale, x0, y0, _), tsv in zip(jobs, outputs, strict=True):
        for text, conf, (x, y, w, h) in _parse_tsv(tsv):
            if conf < min_confidence or not any(c.isalnum() for c in text):
                continue
            bx, by = (x + x0) // scale, (y + y0) // scale
            box = (bx, by, -(-(x + x0 + w) // scale) - bx, -(-(y + y0 + h) // scale) - by)
            if box[3] < min_height or box[3] > max(24, rows // 20) or box[2] > cols * 0.9:
                continue
            if not _separable(gray, box, min_contrast):
                continue
            if chroma is not None and _chroma_spread(gray, chroma, box) > MAX_CHROMA_SPREAD:
                continue
            found.append(OcrWord(box, conf))
    return found


def pad_box(box: Region, shape: tuple[int, int], pad: int | None = None) -> Region:
    """``box`` grown by ``pad`` pixels (default: half its height, at least 4), clipped to ``shape``."""
    x, y, w, h = box
    p = max(4, h // 2) if pad is None else pad
    rows, cols = shape
    x0, y0 = max(0, x - p), max(0, y - p)
    return (x0, y0, min(cols, x + w + p) - x0, min(rows, y + h + p) - y0)


def ocr_text_regions(
    image: np.ndarray, *, min_confidence: float = REDACT_CONFIDENCE, pad: int | None = None
) -> list[Region]:
    """Padded bounding boxes (x, y, w, h) of the words Tesseract finds in a 2-D or RGB image.

    Raises:
        OcrUnavailableError: When ``tesseract`` is not installed.
        OcrFailedError: A tesseract run failed or timed out.
    """
    gray = image if image.dtype == np.uint8 and image.ndim == 2 else ocr_probe(image)
    words = ocr_words(gray, min_confidence=min_confidence)
    return [pad_box(w.box, gray.shape, pad) for w in words]


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


def _probes(frames: np.ndarray, palette: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The images OCR reads for a (frames, rows, cols[, samples]) array.

    One frame: itself. Several: the maximum projection (burned-in text is static, so every
    bright text pixel of any frame is in it, while moving speckle averages into a haze) and
    the first frame (text whose contrast the projection's haze lowers is read there). A
    palette-colour image is read both through its lookup table (what a viewer shows) and as its
    raw indices (what the lake stores, one channel): text can be legible in either. Each probe
    comes with its chroma map (``None`` for grey) for the colour-flow filter of :func:`ocr_words`.
    """
    views = [frames[0]] if frames.shape[0] == 1 else [frames.max(axis=0), frames[0]]
    probes = [_probe_and_chroma(v, palette) for v in views]
    if palette is not None:
        probes += [_probe_and_chroma(v) for v in views]
    return probes


@dataclass(frozen=True, slots=True)
class PixelCleaning:
    """What :func:`clean_pixel_data` did to one image.

    Attributes:
        regions: Every rectangle blanked (rule regions, then padded OCR boxes).
        ocr_boxes: Text boxes the first OCR pass found (0 when OCR did not run).
        residual_boxes: Text boxes the verification pass still found after blanking.
        verified: Whether OCR ran and its verification pass found no text.
        ocr_seconds: Wall time of the OCR passes.
    """

    regions: tuple[Region, ...]
    ocr_boxes: int
    residual_boxes: int
    verified: bool
    ocr_seconds: float


def _palette(ds: Dataset) -> np.ndarray | None:
    if str(ds.get("PhotometricInterpretation", "")) != "PALETTE COLOR":
        return None
    try:
        from pydicom.pixels import apply_color_lut

        n = 1 << int(ds.get("BitsStored", 8))
        return np.asarray(apply_color_lut(np.arange(min(n, 65536)), ds))
    except Exception:  # a damaged LUT: OCR reads the indices as grey
        return None


def clean_pixel_data(ds: Dataset, regions: tuple[Region, ...], *, ocr: bool) -> PixelCleaning:
    """Blank ``regions`` and, when ``ocr``, the text Tesseract finds, then verify, in place.

    With ``ocr`` the image is read (see :func:`_probes`, :data:`FIRST_READ_VARIANTS`) after the rule
    regions are blanked, every word box is padded and blanked in every frame, and the blanked
    pixels are read again (:data:`READ_VARIANTS`), up to :data:`MAX_READS` reads while a read
    still finds words. The
    read of the final pixels is the verification: a read that finds no word (even at the low
    :data:`REDACT_CONFIDENCE`) over the redacted pixels verifies them; when the last redaction
    read still found words, one more read at :data:`VERIFY_CONFIDENCE` verifies, and its boxes
    are ``residual_boxes`` (the caller quarantines). When the first read finds nothing and no
    rule region applies, the pixels are left untouched (that read verified them).

    The pixels are decoded, blanked and stored uncompressed (Explicit VR Little Endian when the
    source was compressed); YBR colour data decoded to RGB is relabelled RGB.

    Raises:
        OcrUnavailableError: ``ocr`` but ``tesseract`` is not installed.
        OcrFailedError: A tesseract run failed or timed out.
    """
    import time

    arr = np.array(ds.pixel_array, copy=True)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = _frames_view(arr, n_frames, samples)
    applied: list[Region] = list(regions)
    shape = (frames.shape[1], frames.shape[2])
    big_endian = getattr(ds, "file_meta", None) is not None and (
        str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.2"
    )
    if ocr and big_endian and str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        # measured: the lookup table OCR reads and the one a reader of the re-encoded (little
        # endian) output applies differ, so the verification would not vouch for the output
        raise OcrFailedError(
            "this palette-colour image is Explicit VR Big Endian (retired): its lookup table is not "
            "read reliably for OCR; convert it to little endian (e.g. dcmconv +te) and ingest it again"
        )
    palette = _palette(ds) if ocr else None
    n_boxes = residual = 0
    seconds = 0.0
    if ocr:
        t0 = time.perf_counter()
        blank_regions(frames, applied)  # rule regions first: OCR reads only what they leave
        clean = False  # whether the last read, over the final pixels, found no word at all
        for read in range(MAX_READS):
            found: list[Region] = []
            variants = READ_VARIANTS if read else FIRST_READ_VARIANTS  # each includes READ_VARIANTS
            for probe, chroma in _probes(frames, palette):
                words = ocr_words(probe, variants=variants, min_confidence=REDACT_CONFIDENCE, chroma=chroma)
                found.extend(pad_box(w.box, shape) for w in words)
            n_boxes += len(found)
            applied.extend(found)
            blank_regions(frames, found)
            if not found:
                clean = True
                break
        if not (clean and REDACT_CONFIDENCE <= VERIFY_CONFIDENCE):
            # the last read still blanked words (or read less keenly than the verification would):
            # the verification reads the result
            residual = sum(
                len(ocr_words(p, variants=READ_VARIANTS, min_confidence=VERIFY_CONFIDENCE, chroma=c))
                for p, c in _probes(frames, palette)
            )
        seconds = time.perf_counter() - t0
    if applied:
        blank_regions(frames, applied)
        photometric = str(ds.PhotometricInterpretation)
        if samples == 3 and photometric.startswith("YBR"):
            photometric = "RGB"
        if getattr(ds, "file_meta", None) is not None:
            # written Explicit VR Little Endian: also what lets pydicom re-encode big-endian sources
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_pixel_data(
            arr,
            photometric_interpretation=photometric,
            bits_stored=int(ds.BitsStored),
            generate_instance_uid=False,
        )
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return PixelCleaning(tuple(applied), n_boxes, residual, ocr and residual == 0, seconds)


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
