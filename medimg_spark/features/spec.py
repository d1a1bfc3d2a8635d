"""Feature sets: named, ordered lists of extractors, validated from YAML (no Spark).

Named feature sets compose extractors in YAML (shipped in ``medimg_spark/resources/features/<name>.yaml``)::

    name: texture
    extractors:
      - kind: glcm
        params: {distances: [1, 2, 3], levels: 32}
      - kind: lbp
        params: {points: 8, radius: 1}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medimg_spark.features.extract import (
    EXTRACTORS,
    GLCM_PROPS,
    FeatureError,
    Features,
    FeatureSetError,
)

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


def load_feature_set(spec: str | Path | FeatureSet | dict[str, Any]) -> FeatureSet:
    """Load a feature set from a name, a YAML path, a dict or a model.

    A name is looked up in ``./conf/features/<name>.yaml``, then in the shipped feature sets
    (``medimg_spark/resources/features``, see :func:`medimg_spark.resources.shipped_names`).

    Raises:
        FeatureSetError: the file is missing, unreadable or invalid.
    """
    from medimg_spark import resources

    if isinstance(spec, FeatureSet):
        return spec
    if isinstance(spec, dict):
        return parse_feature_set(spec)
    found = resources.resolve("features", spec, FeatureSetError)
    path = found.location
    try:
        data = yaml.safe_load(found.read_text())
    except yaml.YAMLError as exc:
        raise FeatureSetError(f"feature-set file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise FeatureSetError(f"feature-set file {path} must hold a mapping with name/extractors")
    return parse_feature_set(data, str(path))
