"""Hand-crafted image features and the Spark stage that writes the ``features`` table.

Every extractor works on one 2-D frame (a 3-D ``rows x cols x channels`` frame is
averaged over its channels) and an optional 0/1 ``mask`` of the same shape, and returns
``(values, names)``: a float64 vector and one stable name per value. Names depend only
on the extractor's parameters (and, for :func:`hog_features` / :func:`pixel_features`
without ``size``, on the frame shape), never on pixel values.

Named feature sets compose extractors in YAML (``conf/features/<name>.yaml``)::

    name: texture
    extractors:
      - kind: glcm
        params: {distances: [1, 2, 3], levels: 32}
      - kind: lbp
        params: {points: 8, radius: 1}

:func:`compute_features` runs a feature set over the ``images`` or ``processed`` table
and writes ``out_dir/features/`` (image_id, label, split, features) where ``features``
is a :class:`pyspark.ml.linalg.Vector` column whose ML attribute metadata names every slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import stats as _sstats
from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern
from skimage.measure import label as _cc_label
from skimage.measure import regionprops

from medimg_spark.errors import ConfigError, MedimgError
from medimg_spark.storage import get_storage, join

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

Features = tuple[np.ndarray, list[str]]

#: The feature set a features table was computed with, recorded next to its Parquet files.
FEATURE_SET_FILE = "_feature_set.json"

GLCM_PROPS: tuple[str, ...] = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


class FeatureError(MedimgError):
    """A frame, mask or extractor parameter cannot produce features."""


class FeatureSetError(ConfigError):
    """A feature-set YAML is missing or invalid."""


# ----------------------------------------------------------------------------- helpers


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a 2-D float64 view of ``image`` (channels averaged), checking its shape.

    Raises:
        FeatureError: ``image`` is not a 2-D or 3-D array or has no pixels.
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.astype(np.float64).mean(axis=2)
    if arr.ndim != 2 or arr.size == 0:
        raise FeatureError(
            f"expected a non-empty 2-D (rows, cols) or 3-D (rows, cols, channels) frame, got shape "
            f"{np.asarray(image).shape}; pass one frame at a time"
        )
    return arr.astype(np.float64, copy=False)


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale a frame to float64 in [0, 1]: uint8 by 255, bool as 0/1, anything else by its finite min/max.

    Non-finite values become 0. A constant non-uint8 frame maps to all zeros.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return to_gray(arr) / 255.0
    if arr.dtype == np.bool_:
        return to_gray(arr.astype(np.float64))
    g = to_gray(arr)
    finite = np.isfinite(g)
    if not finite.any():
        return np.zeros_like(g)
    lo, hi = float(g[finite].min()), float(g[finite].max())
    out = np.where(finite, g, lo)
    if hi <= lo:
        return np.zeros_like(g)
    return (out - lo) / (hi - lo)


def quantize(image: np.ndarray, levels: int) -> np.ndarray:
    """Map a frame to integer grey levels ``0 .. levels-1`` (uint8 input: ``v * levels // 256``)."""
    if not 2 <= levels <= 256:
        raise FeatureError(f"levels={levels} is out of range; use 2..256 grey levels")
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.ndim == 2:
        return (arr.astype(np.uint16) * levels // 256).astype(np.uint8)
    unit = to_unit(arr)
    return np.minimum((unit * levels).astype(np.int64), levels - 1).astype(np.uint8)


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != shape:
        raise FeatureError(f"mask shape {m.shape} does not match frame shape {shape}; resample the mask")
    return m != 0


def _resize(gray: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or gray.shape == (size, size):
        return gray
    return cv2.resize(gray.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)


# ----------------------------------------------------------------------------- extractors


def intensity_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    bins: int = 16,
    percentiles: Sequence[float] = (5, 25, 50, 75, 95),
) -> Features:
    """Mean, std, skewness, kurtosis, min, max, percentiles and a normalised histogram.

    Statistics are computed on the frame scaled to [0, 1] by :func:`to_unit`, inside
    ``mask`` when given (an empty mask gives zeros). The histogram has ``bins`` equal bins
    over [0, 1] and sums to 1.
    """
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    x = unit[m] if m is not None else unit.ravel()
    pct = [float(p) for p in percentiles]
    names = ["intensity_mean", "intensity_std", "intensity_skew", "intensity_kurtosis"]
    names += ["intensity_min", "intensity_max"] + [f"intensity_p{p:g}" for p in pct]
    names += [f"intensity_hist_{i:02d}" for i in range(bins)]
    if x.size == 0:
        return np.zeros(len(names)), names
    std = float(x.std())
    if std > 0:
        skew = float(_sstats.skew(x))
        kurt = float(_sstats.kurtosis(x))
    else:
        skew = kurt = 0.0
    hist = np.histogram(x, bins=bins, range=(0.0, 1.0))[0] / x.size
    vals = np.r_[x.mean(), std, skew, kurt, x.min(), x.max(), np.percentile(x, pct), hist]
    return vals.astype(np.float64), names


def glcm_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    distances: Sequence[int] = (1, 2, 3),
    angles: Sequence[float] = (0, 45, 90, 135),
    levels: int = 32,
    props: Sequence[str] = GLCM_PROPS,
    symmetric: bool = True,
) -> Features:
    """Haralick properties of the grey-level co-occurrence matrix (``skimage.feature.graycoprops``).

    The frame is quantised to ``levels`` grey levels (:func:`quantize`); with a mask, pixels
    outside it are moved to an extra level that is dropped from the matrix. ``angles`` are in
    degrees. Names are ``glcm_<prop>_d<distance>_a<angle>``, ordered prop, distance, angle.
    """
    for p in props:
        if p not in GLCM_PROPS:
            raise FeatureError(f"unknown GLCM property {p!r}; choose from {list(GLCM_PROPS)}")
    q = quantize(np.asarray(image) if np.asarray(image).ndim == 2 else to_gray(image), levels)
    m = _check_mask(mask, q.shape)
    n_levels = levels
    if m is not None:
        q = q.copy()
        q[~m] = levels
        n_levels = levels + 1
    rad = [float(np.deg2rad(a)) for a in angles]
    glcm = graycomatrix(q, distances=list(distances), angles=rad, levels=n_levels, symmetric=symmetric)
    glcm = glcm[:levels, :levels].astype(np.float64)
    sums = glcm.sum(axis=(0, 1), keepdims=True)
    glcm = np.divide(glcm, sums, out=np.zeros_like(glcm), where=sums > 0)
    vals = []
    names = []
    for p in props:
        v = graycoprops(glcm, p)
        vals.append(np.nan_to_num(v, nan=0.0).ravel())
        names += [f"glcm_{p}_d{d}_a{a:g}" for d in distances for a in angles]
    return np.concatenate(vals).astype(np.float64), names


def lbp_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    points: int = 8,
    radius: float = 1.0,
    method: Literal["uniform", "ror", "default", "nri_uniform", "var"] = "uniform",
    bins: int | None = None,
) -> Features:
    """Normalised histogram of local binary patterns (``skimage.feature.local_binary_pattern``).

    The frame is converted to uint8 grey levels first. ``bins`` defaults to ``points + 2``
    for ``uniform``, ``points * (points - 1) + 3`` for ``nri_uniform`` and ``2**points``
    otherwise (``var`` needs an explicit ``bins``). Names are ``lbp_p<P>_r<R>_<bin>``.
    """
    if method == "var" and bins is None:
        raise FeatureError("method='var' needs an explicit bins= count")
    if bins is None:
        bins = {"uniform": points + 2, "nri_uniform": points * (points - 1) + 3}.get(method, 2**points)
    q = quantize(image, 256)
    codes = local_binary_pattern(q, points, radius, method=method)
    m = _check_mask(mask, q.shape)
    x = codes[m] if m is not None else codes.ravel()
    names = [f"lbp_p{points}_r{radius:g}_{i:02d}" for i in range(bins)]
    if x.size == 0:
        return np.zeros(bins), names
    if method == "var":
        x = np.nan_to_num(x)
        hist = np.histogram(x, bins=bins, range=(0.0, float(x.max()) + 1e-12))[0]
    else:
        hist = np.histogram(x, bins=bins, range=(0, bins))[0]
    return (hist / x.size).astype(np.float64), names


def hog_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    orientations: int = 9,
    pixels_per_cell: int = 7,
    cells_per_block: int = 2,
    size: int | None = None,
    block_norm: Literal["L1", "L1-sqrt", "L2", "L2-Hys"] = "L2-Hys",
) -> Features:
    """Histogram of oriented gradients (``skimage.feature.hog``) of the [0, 1]-scaled frame.

    ``size`` resizes the frame to ``size x size`` first (``cv2.INTER_AREA``) so frames of any
    shape give the same vector length; with a mask, pixels outside it are set to 0 first.
    Names are ``hog_<index>``.
    """
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    if m is not None:
        unit = np.where(m, unit, 0.0)
    unit = _resize(unit, size)
    need = pixels_per_cell * cells_per_block
    if min(unit.shape) < need:
        raise FeatureError(
            f"frame {unit.shape} is smaller than one HOG block ({need} px); "
            "lower pixels_per_cell/cells_per_block or set size"
        )
    vals = hog(
        unit,
        orientations=orientations,
        pixels_per_cell=(pixels_per_cell, pixels_per_cell),
        cells_per_block=(cells_per_block, cells_per_block),
        block_norm=block_norm,
        feature_vector=True,
    )
    return np.asarray(vals, dtype=np.float64), [f"hog_{i:04d}" for i in range(vals.size)]


def region_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    min_area: int = 1,
    connectivity: int = 2,
) -> Features:
    """Shape of the mask's connected regions (``skimage.measure.regionprops``).

    Returns the region count, total/largest/mean area, total perimeter, the area fraction of
    the frame, and the area-weighted mean eccentricity, solidity and mean intensity (on the
    [0, 1]-scaled frame). Regions smaller than ``min_area`` pixels are ignored. Without a mask
    every value is 0.
    """
    names = [
        "region_count",
        "region_area_total",
        "region_area_largest",
        "region_area_mean",
        "region_perimeter_total",
        "region_area_fraction",
        "region_eccentricity_mean",
        "region_solidity_mean",
        "region_intensity_mean",
    ]
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    if m is None or not m.any():
        return np.zeros(len(names)), names
    labels = _cc_label(m, connectivity=connectivity)
    regions = [r for r in regionprops(labels, intensity_image=unit) if r.area >= min_area]
    if not regions:
        return np.zeros(len(names)), names
    areas = np.array([r.area for r in regions], dtype=np.float64)
    w = areas / areas.sum()
    vals = np.array(
        [
            len(regions),
            areas.sum(),
            areas.max(),
            areas.mean(),
            sum(float(r.perimeter) for r in regions),
            areas.sum() / unit.size,
            float(np.dot(w, [r.eccentricity for r in regions])),
            float(np.dot(w, [r.solidity for r in regions])),
            float(np.dot(w, [r.intensity_mean for r in regions])),
        ],
        dtype=np.float64,
    )
    return vals, names


def pixel_features(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    size: int | None = 14,
    normalize: Literal["unit", "zscore"] = "unit",
) -> Features:
    """Pixels of the frame resized to ``size x size`` (``cv2.INTER_AREA``; ``None`` keeps the shape).

    ``unit`` scales with :func:`to_unit`; ``zscore`` additionally standardises per image. With a
    mask, pixels outside it are set to 0 before resizing. Names are ``px_<row>_<col>``.
    """
    unit = to_unit(image)
    m = _check_mask(mask, unit.shape)
    if normalize == "zscore":
        sel = unit[m] if m is not None else unit
        sd = float(sel.std()) if sel.size else 0.0
        unit = (unit - (float(sel.mean()) if sel.size else 0.0)) / (sd if sd > 0 else 1.0)
    if m is not None:
        unit = np.where(m, unit, 0.0)
    small = _resize(unit, size)
    names = [f"px_{r:03d}_{c:03d}" for r in range(small.shape[0]) for c in range(small.shape[1])]
    return small.ravel().astype(np.float64), names


EXTRACTORS: dict[str, Callable[..., Features]] = {
    "intensity": intensity_features,
    "glcm": glcm_features,
    "lbp": lbp_features,
    "hog": hog_features,
    "region": region_features,
    "pixels": pixel_features,
}


# ----------------------------------------------------------------------------- feature sets


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntensityParams(_Params):
    """Parameters of :func:`intensity_features`."""

    bins: int = Field(16, ge=1, le=1024)
    percentiles: tuple[float, ...] = (5, 25, 50, 75, 95)


class GlcmParams(_Params):
    """Parameters of :func:`glcm_features`."""

    distances: tuple[int, ...] = Field((1, 2, 3), min_length=1)
    angles: tuple[float, ...] = Field((0, 45, 90, 135), min_length=1)
    levels: int = Field(32, ge=2, le=256)
    props: tuple[Literal["contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM"], ...] = (
        GLCM_PROPS  # type: ignore[assignment]
    )
    symmetric: bool = True


class LbpParams(_Params):
    """Parameters of :func:`lbp_features`."""

    points: int = Field(8, ge=1, le=24)
    radius: float = Field(1.0, gt=0)
    method: Literal["uniform", "ror", "default", "nri_uniform", "var"] = "uniform"
    bins: int | None = Field(None, ge=1)


class HogParams(_Params):
    """Parameters of :func:`hog_features`."""

    orientations: int = Field(9, ge=1)
    pixels_per_cell: int = Field(7, ge=1)
    cells_per_block: int = Field(2, ge=1)
    size: int | None = Field(None, ge=2)
    block_norm: Literal["L1", "L1-sqrt", "L2", "L2-Hys"] = "L2-Hys"


class RegionParams(_Params):
    """Parameters of :func:`region_features`."""

    min_area: int = Field(1, ge=1)
    connectivity: int = Field(2, ge=1, le=2)


class PixelParams(_Params):
    """Parameters of :func:`pixel_features`."""

    size: int | None = Field(14, ge=1)
    normalize: Literal["unit", "zscore"] = "unit"


class _Extractor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def run(self, image: np.ndarray, mask: np.ndarray | None = None) -> Features:
        """Apply this extractor to one frame."""
        kind: str = getattr(self, "kind")  # noqa: B009
        params: _Params = getattr(self, "params")  # noqa: B009
        return EXTRACTORS[kind](image, mask, **params.model_dump())


class IntensityExtractor(_Extractor):
    """``kind: intensity``."""

    kind: Literal["intensity"]
    params: IntensityParams = IntensityParams()


class GlcmExtractor(_Extractor):
    """``kind: glcm``."""

    kind: Literal["glcm"]
    params: GlcmParams = GlcmParams()


class LbpExtractor(_Extractor):
    """``kind: lbp``."""

    kind: Literal["lbp"]
    params: LbpParams = LbpParams()


class HogExtractor(_Extractor):
    """``kind: hog``."""

    kind: Literal["hog"]
    params: HogParams = HogParams()


class RegionExtractor(_Extractor):
    """``kind: region``."""

    kind: Literal["region"]
    params: RegionParams = RegionParams()


class PixelExtractor(_Extractor):
    """``kind: pixels``."""

    kind: Literal["pixels"]
    params: PixelParams = PixelParams()


ExtractorSpec = Annotated[
    IntensityExtractor | GlcmExtractor | LbpExtractor | HogExtractor | RegionExtractor | PixelExtractor,
    Field(discriminator="kind"),
]


class FeatureSet(BaseModel):
    """A named, ordered list of extractors; the feature vector is their concatenation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    extractors: tuple[ExtractorSpec, ...] = Field(min_length=1)

    def extract(self, image: np.ndarray, mask: np.ndarray | None = None) -> Features:
        """Features of one frame: the concatenated values and names of every extractor."""
        vals: list[np.ndarray] = []
        names: list[str] = []
        for ex in self.extractors:
            v, n = ex.run(image, mask)
            vals.append(v)
            names += n
        if len(set(names)) != len(names):
            raise FeatureSetError(
                f"feature set {self.name!r} produces duplicate feature names; "
                "do not list the same extractor with the same parameters twice"
            )
        return np.concatenate(vals), names

    def extract_many(
        self, images: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray | None] | None = None
    ) -> tuple[np.ndarray, list[str]]:
        """Features of a stack of equally-shaped-output frames as an ``(n, d)`` float64 matrix."""
        rows: list[np.ndarray] = []
        names: list[str] = []
        for i, im in enumerate(images):
            v, names = self.extract(im, None if masks is None else masks[i])
            if rows and v.size != rows[0].size:
                raise FeatureError(
                    f"frame {i} gives {v.size} features but frame 0 gave {rows[0].size}; "
                    "set size= on hog/pixels extractors so frames of different shapes align"
                )
            rows.append(v)
        if not rows:
            return np.zeros((0, 0)), []
        return np.vstack(rows), names


def parse_feature_set(data: dict[str, Any], source: str = "<dict>") -> FeatureSet:
    """Validate a feature-set mapping (as read from YAML).

    Raises:
        FeatureSetError: the mapping does not describe a valid feature set.
    """
    try:
        return FeatureSet.model_validate(data)
    except ValidationError as exc:
        raise FeatureSetError(f"invalid feature set in {source}: {exc}") from exc


def feature_set_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``: ``./conf/features`` then the repository's ``conf/features``."""
    return [Path.cwd() / "conf" / "features", Path(__file__).resolve().parents[1] / "conf" / "features"]


def load_feature_set(spec: str | Path | FeatureSet | dict[str, Any]) -> FeatureSet:
    """Load a feature set from a name (``conf/features/<name>.yaml``), a YAML path, a dict or a model.

    Raises:
        FeatureSetError: the file is missing, unreadable or invalid.
    """
    if isinstance(spec, FeatureSet):
        return spec
    if isinstance(spec, dict):
        return parse_feature_set(spec)
    path = Path(spec)
    if not path.suffix and not path.exists():
        for folder in feature_set_dirs():
            cand = folder / f"{spec}.yaml"
            if cand.exists():
                path = cand
                break
        else:
            raise FeatureSetError(
                f"feature set {str(spec)!r} not found in {[str(d) for d in feature_set_dirs()]}; "
                "pass a YAML path or add conf/features/<name>.yaml"
            )
    if not path.exists():
        raise FeatureSetError(f"feature-set file {path} does not exist; check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FeatureSetError(f"feature-set file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise FeatureSetError(f"feature-set file {path} must hold a mapping with name/extractors")
    return parse_feature_set(data, str(path))


# ----------------------------------------------------------------------------- Spark stage


def vector_metadata(names: Sequence[str]) -> dict[str, Any]:
    """ML attribute metadata naming each slot of a vector column (read by VectorAssembler & co)."""
    return {
        "ml_attr": {
            "attrs": {"numeric": [{"idx": i, "name": n} for i, n in enumerate(names)]},
            "num_attrs": len(names),
        }
    }


def feature_names_of(df: DataFrame, column: str = "features") -> list[str]:
    """Names stored in the ML attribute metadata of a vector column (empty if none)."""
    meta = df.schema[column].metadata.get("ml_attr", {})
    attrs = meta.get("attrs", {})
    slots = sorted((a["idx"], a.get("name", f"f{a['idx']}")) for group in attrs.values() for a in group)
    return [n for _, n in slots]


def _decode_mask(mask: Any, rows: int, cols: int) -> np.ndarray | None:
    if mask is None or (isinstance(mask, float) and np.isnan(mask)):
        return None
    buf = bytes(mask)
    if len(buf) != rows * cols:
        raise FeatureError(
            f"mask holds {len(buf)} bytes but the frame is {rows}x{cols}; masks must be uint8 0/1 of the frame shape"
        )
    return np.frombuffer(buf, dtype=np.uint8).reshape(rows, cols)


def _feature_partitions(
    fs_json: str, use_mask: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        try:
            import cv2

            cv2.setNumThreads(1)  # one task per core: OpenCV's own threads would oversubscribe
        except ImportError:
            pass
        fs = FeatureSet.model_validate_json(fs_json)
        for pdf in batches:
            feats: list[list[float] | None] = []
            errors: list[str | None] = []
            for row in pdf.to_dict("records"):
                try:
                    img, msk = decode_row(row, use_mask)
                    v, _ = fs.extract(img, msk)
                    feats.append(v.tolist())
                    errors.append(None)
                except Exception as exc:
                    feats.append(None)
                    errors.append(f"{type(exc).__name__}: {exc}")
            yield pd.DataFrame(
                {
                    "image_id": pdf["image_id"].to_numpy(),
                    "label": pdf["label"].to_numpy(),
                    "split": pdf["split"].to_numpy(),
                    "values": feats,
                    "error": errors,
                }
            )

    return run


def decode_row(row: Mapping[Any, Any], use_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(frame, mask)`` of an ``images``/``processed`` row (mask None when absent or ``use_mask`` is false)."""
    from medimg_spark.io.pixels import decode

    rows, cols = int(row["rows"]), int(row["cols"])
    img = decode(bytes(row["pixels"]), rows, cols, int(row["channels"]), str(row["dtype"]))
    msk = _decode_mask(row.get("mask"), rows, cols) if use_mask else None
    return img, msk


def _names_for(fs: FeatureSet, first: Mapping[Any, Any], use_mask: bool) -> list[str]:
    img, msk = decode_row(first, use_mask)
    return fs.extract(img, msk)[1]


def compute_features(
    spark: SparkSession,
    out_dir: str | Path,
    source: Literal["images", "processed"] = "images",
    feature_set: str | Path | FeatureSet | dict[str, Any] = "texture",
    use_mask: bool = True,
) -> dict[str, Any]:
    """Compute a feature set for every frame of ``out_dir/<source>`` and write ``out_dir/features/``.

    Args:
        spark: active session.
        out_dir: the run's output folder holding ``images/`` or ``processed/`` (local path or URI,
            reached through :mod:`medimg_spark.storage`).
        source: ``images`` (schema :data:`medimg_spark.schema.IMAGES_SCHEMA`) or ``processed``
            (image_id, pixels, dtype, rows, cols, channels, mask, label, split); ``processed``
            masks are passed to the extractors.
        feature_set: name under ``conf/features``, YAML path, mapping or :class:`FeatureSet`.
        use_mask: pass the ``processed`` table's masks to the extractors; ``False`` computes every
            feature on the whole frame (the config's ``features.use_mask``).

    Returns:
        Summary: path, feature_set, n_features, feature_names, n_images, n_failed, failures
        (up to 20 ``{image_id, error}``), seconds.

    Raises:
        FeatureError: the source table is missing, empty, or every frame failed.
    """
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

    t0 = time.time()
    if source not in ("images", "processed"):
        raise FeatureError(f"source={source!r} is not supported; use 'images' or 'processed'")
    fs = load_feature_set(feature_set)
    store = get_storage(spark)
    src = join(out_dir, source)
    if not store.exists(src):
        raise FeatureError(f"{src} does not exist; run the stage that writes the {source} table first")
    df = spark.read.parquet(src)
    use_mask = use_mask and "mask" in df.columns
    cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype", "label", "split"]
    missing = [c for c in cols if c not in df.columns and c not in ("label", "split")]
    if missing:
        raise FeatureError(f"{src} lacks columns {missing}; it must follow the {source} table schema")
    sel = [F.col(c) if c in df.columns else F.lit(None).cast("string").alias(c) for c in cols]
    if use_mask:
        sel.append(F.col("mask"))
    df = df.select(*sel)
    first_rows = df.limit(1).collect()
    if not first_rows:
        raise FeatureError(f"{src} holds no frames; nothing to compute")
    try:
        names = _names_for(fs, first_rows[0].asDict(), use_mask)
    except MedimgError:
        raise
    except Exception as exc:
        raise FeatureError(
            f"feature set {fs.name!r} failed on frame {first_rows[0]['image_id']}: {exc}"
        ) from exc
    schema = StructType(
        [
            StructField("image_id", StringType(), False),
            StructField("label", StringType(), True),
            StructField("split", StringType(), True),
            StructField("values", ArrayType(DoubleType()), True),
            StructField("error", StringType(), True),
        ]
    )
    fn = _feature_partitions(fs.model_dump_json(), use_mask)
    computed = df.mapInPandas(fn, schema).cache()
    try:
        n_images = computed.count()
        fails = computed.where(F.col("error").isNotNull() | (F.size("values") != len(names)))
        n_failed = fails.count()
        failures = [
            {"image_id": r["image_id"], "error": r["error"] or f"feature count differs from {len(names)}"}
            for r in fails.limit(20).collect()
        ]
        if n_failed == n_images:
            raise FeatureError(
                f"every frame of {src} failed feature set {fs.name!r}; first error: {failures[0]['error']}"
            )
        ok = computed.where(F.col("error").isNull() & (F.size("values") == len(names)))
        out = ok.select(
            "image_id",
            "label",
            "split",
            array_to_vector(F.col("values")).alias("features", metadata=vector_metadata(names)),
        )
        dest = join(out_dir, "features")
        out.write.mode("overwrite").parquet(dest)
    finally:
        computed.unpersist()
    summary: dict[str, Any] = {
        "path": dest,
        "feature_set": fs.name,
        "n_features": len(names),
        "feature_names": names,
        "n_images": int(n_images - n_failed),
        "n_failed": int(n_failed),
        "failures": failures,
        "seconds": round(time.time() - t0, 3),
    }
    store.write_text(
        join(dest, FEATURE_SET_FILE), json.dumps({"feature_set": json.loads(fs.model_dump_json())})
    )
    return summary
