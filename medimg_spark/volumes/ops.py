"""Volume-wise filters: pure functions on a :class:`~medimg_spark.volumes.model.Volume`, and their steps.

Every filter returns a new :class:`Volume` with the same shape and geometry (spacing, origin,
direction). Filters act over the three spatial axes (z, y, x) only; a multi-channel volume
``(z, y, x, c)`` is filtered channel by channel.

Dtype policy (the 2-D op layer's, :mod:`medimg_spark.ops._common`): **the dtype is preserved**.
The median picks existing values, so it runs in the input dtype. The Gaussian and the mean run on a
``float32`` copy (``float64`` for float64 voxels; scipy accumulates in float64) and are cast back
with round-half-to-even and saturation to the dtype's range
(:func:`~medimg_spark.ops._common.cast_like`); float volumes stay float. Keeping the dtype keeps a ``volumes`` row's ``rescale_slope``/``rescale_intercept`` valid
for the filtered voxels. Borders replicate the edge voxel (scipy ``mode="nearest"``, ITK's
zero-flux Neumann condition), so results match SimpleITK's filters (see the tests for the tolerances).

Sizes: the Gaussian's ``sigma_mm`` is in millimetres and becomes a per-axis sigma in voxels from the
spacing (``sigma_mm / spacing``), so an anisotropic CT is smoothed isotropically in physical space.
The median and mean take either ``size`` (an odd number of voxels per axis, or one per axis in
(x, y, z) order) or ``radius_mm`` (per axis ``round(radius_mm / spacing)`` voxels each side).

Importing this module is light (numpy, pydantic): the config models import it; scipy and the 2-D op
layer's helpers are imported when a filter runs.

Steps: each op has a pydantic model (``extra="forbid"``) registered by op name in
:data:`VOLUME_OPS`; :data:`VolumeFilterStep` is the discriminated union on ``op`` that a config
``filters:`` list validates against (``[{op: gaussian, sigma_mm: 1.0}, {op: median, size: 3}]``),
and :func:`parse_volume_filters` turns a bad list into a :class:`VolumeOpConfigError` (exit 2)
naming the step, the parameter and the registered ops.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union, get_args

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from medimg_spark.errors import ConfigError, RecipeError
from medimg_spark.registry import Registry, UnknownNameError
from medimg_spark.volumes.model import Volume

__all__ = [
    "VOLUME_OPS",
    "GaussianStep",
    "MeanStep",
    "MedianStep",
    "UnknownVolumeOpError",
    "UnsupportedVolumeError",
    "VolumeFilterStep",
    "VolumeOp",
    "VolumeOpConfigError",
    "apply_filters",
    "filters_hash",
    "filters_name",
    "gaussian",
    "mean",
    "median",
    "parse_volume_filters",
    "register_volume_op",
    "voxel_size",
]


class VolumeOpConfigError(ConfigError):
    """A volume filter step has an unknown op or invalid parameters (raised before Spark starts)."""


class UnknownVolumeOpError(UnknownNameError, VolumeOpConfigError):
    """An op name that no volume op registered."""


class UnsupportedVolumeError(RecipeError):
    """The voxel array is not a 3-D (or 3-D plus channels) array of a real dtype."""


VOLUME_OPS: Registry[type[VolumeOp]] = Registry(
    "volume op",
    hint="add one as a function plus a @register_volume_op VolumeOp model in medimg_spark/volumes/ops.py",
    error=UnknownVolumeOpError,
)
"""Volume op name → step model, in registration order."""


# --- the filters ---------------------------------------------------------------------------------


def _voxels(volume: Volume) -> np.ndarray:
    arr = np.asarray(volume.voxels)
    if arr.ndim not in (3, 4) or 0 in arr.shape:
        raise UnsupportedVolumeError(
            f"expected voxels of shape (z, y, x) or (z, y, x, channels), got {arr.shape}; "
            "decode the row with medimg_spark.volumes.model.volume_from_row"
        )
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise UnsupportedVolumeError(f"unsupported voxel dtype {arr.dtype}; use an integer or float dtype")
    return arr


def _spatial(values: Sequence[float], arr: np.ndarray, fill: float) -> tuple[float, ...]:
    """Per-axis parameters given in (x, y, z) order as the array's axis order (z, y, x[, c])."""
    x, y, z = values
    return (z, y, x) if arr.ndim == 3 else (z, y, x, fill)


def _work(arr: np.ndarray) -> np.ndarray:
    """The float copy a smoothing filter runs on: float64 for float64 voxels, float32 otherwise."""
    return arr.astype(np.float64 if arr.dtype == np.float64 else np.float32)


def _with_voxels(volume: Volume, voxels: np.ndarray) -> Volume:
    return replace(volume, voxels=voxels)


def voxel_size(
    volume: Volume, size: int | Sequence[int] | None = None, radius_mm: float | None = None
) -> tuple[int, int, int]:
    """A neighbourhood's side in voxels per axis, in (x, y, z) order.

    Args:
        volume: gives the spacing for ``radius_mm``.
        size: an odd side for every axis, or three odd sides (x, y, z).
        radius_mm: instead of ``size``: ``2 * round(radius_mm / spacing) + 1`` per axis.

    Raises:
        ValueError: both or neither given, an even or non-positive side, or a negative radius.
    """
    if (size is None) == (radius_mm is None):
        raise ValueError("give exactly one of size (voxels) and radius_mm")
    if radius_mm is not None:
        if radius_mm < 0:
            raise ValueError(f"radius_mm must be >= 0, got {radius_mm}")
        radii = [round(radius_mm / float(s)) for s in volume.spacing]
        return (2 * radii[0] + 1, 2 * radii[1] + 1, 2 * radii[2] + 1)
    sides = (size,) * 3 if isinstance(size, int) else tuple(int(s) for s in size)  # type: ignore[union-attr]
    if len(sides) != 3 or any(s < 1 or s % 2 == 0 for s in sides):
        raise ValueError(f"size must be a positive odd integer or three of them (x, y, z), got {size}")
    return sides  # type: ignore[return-value]


def gaussian(volume: Volume, sigma_mm: float = 1.0, truncate: float = 4.0) -> Volume:
    """Gaussian smoothing with a standard deviation of ``sigma_mm`` millimetres along every axis.

    :func:`scipy.ndimage.gaussian_filter` with per-axis sigma ``sigma_mm / spacing`` voxels, the
    kernel cut at ``truncate`` sigmas, replicated borders; dtype preserved (see the module docstring).
    """
    if sigma_mm <= 0:
        raise ValueError(f"sigma_mm must be > 0, got {sigma_mm}")
    from scipy import ndimage

    arr = _voxels(volume)
    sigma = _spatial([sigma_mm / float(s) for s in volume.spacing], arr, 0.0)
    from medimg_spark.ops._common import cast_like

    out = ndimage.gaussian_filter(_work(arr), sigma=sigma, mode="nearest", truncate=truncate)
    return _with_voxels(volume, cast_like(out, arr.dtype))


def median(volume: Volume, size: int | Sequence[int] | None = None, radius_mm: float | None = None) -> Volume:
    """Median over a box of ``size`` voxels (or ``radius_mm``, see :func:`voxel_size`); dtype kept exactly.

    :func:`scipy.ndimage.median_filter` with replicated borders (SimpleITK's ``Median`` with radius
    ``size // 2``). With neither argument the box is 3 voxels per axis.
    """
    from scipy import ndimage

    arr = _voxels(volume)
    sides = voxel_size(volume, 3 if size is None and radius_mm is None else size, radius_mm)
    if sides == (1, 1, 1):
        return _with_voxels(volume, arr.copy())
    out = ndimage.median_filter(arr, size=_spatial(sides, arr, 1), mode="nearest")
    return _with_voxels(volume, out)


def mean(volume: Volume, size: int | Sequence[int] | None = None, radius_mm: float | None = None) -> Volume:
    """Box mean over ``size`` voxels (or ``radius_mm``, see :func:`voxel_size`); dtype preserved.

    :func:`scipy.ndimage.uniform_filter` with replicated borders (SimpleITK's ``Mean`` with radius
    ``size // 2``). With neither argument the box is 3 voxels per axis.
    """
    from scipy import ndimage

    arr = _voxels(volume)
    sides = voxel_size(volume, 3 if size is None and radius_mm is None else size, radius_mm)
    if sides == (1, 1, 1):
        return _with_voxels(volume, arr.copy())
    from medimg_spark.ops._common import cast_like

    work = _work(arr)
    out = ndimage.uniform_filter(work, size=_spatial(sides, arr, 1), mode="nearest", output=work.dtype)
    return _with_voxels(volume, cast_like(out, arr.dtype))


# --- steps ---------------------------------------------------------------------------------------


class VolumeOp(BaseModel):
    """Base of the volume step models: ``op`` names the registered op, :meth:`apply` runs it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    op: str

    @abstractmethod
    def apply(self, volume: Volume) -> Volume:
        """The filtered volume (same geometry and dtype); every registered op model defines it."""


V = TypeVar("V", bound=type[VolumeOp])


def register_volume_op(model: V) -> V:
    """Class decorator: register a :class:`VolumeOp` model in :data:`VOLUME_OPS` under its ``op`` literal."""
    base: type[VolumeOp] = model
    args = get_args(base.model_fields["op"].annotation)
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{model.__name__}.op must be annotated Literal['<op name>'], got {args}")
    doc = (model.__doc__ or "").strip().splitlines()
    VOLUME_OPS.register(args[0], model, help=doc[0] if doc else "")
    return model


@register_volume_op
class GaussianStep(VolumeOp):
    """Gaussian smoothing, sigma in mm (per-axis voxels from the spacing); dtype preserved."""

    op: Literal["gaussian"]
    sigma_mm: float = Field(1.0, gt=0, le=100, description="standard deviation in millimetres")
    truncate: float = Field(4.0, gt=0, le=10, description="kernel half-width in sigmas")

    def apply(self, volume: Volume) -> Volume:
        return gaussian(volume, self.sigma_mm, self.truncate)


class _Box(VolumeOp):
    size: int | tuple[int, int, int] | None = Field(
        None, description="odd box side in voxels, or three (x, y, z); default 3 unless radius_mm is given"
    )
    radius_mm: float | None = Field(None, ge=0, le=100, description="instead of size: box half-side in mm")

    @field_validator("size")
    @classmethod
    def _odd(cls, v: int | tuple[int, int, int] | None) -> int | tuple[int, int, int] | None:
        sides = () if v is None else (v,) if isinstance(v, int) else v
        if any(s < 1 or s % 2 == 0 or s > 99 for s in sides):
            raise ValueError(f"must be a positive odd integer up to 99 (or three of them), got {v}")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> _Box:
        if self.size is not None and self.radius_mm is not None:
            raise ValueError("give size (voxels) or radius_mm, not both")
        return self


@register_volume_op
class MedianStep(_Box):
    """Median over a box (size in voxels or radius in mm); dtype kept exactly."""

    op: Literal["median"]

    def apply(self, volume: Volume) -> Volume:
        return median(volume, self.size, self.radius_mm)


@register_volume_op
class MeanStep(_Box):
    """Box mean (size in voxels or radius in mm); dtype preserved."""

    op: Literal["mean"]

    def apply(self, volume: Volume) -> Volume:
        return mean(volume, self.size, self.radius_mm)


VOLUME_STEP_MODELS: dict[str, type[VolumeOp]] = {name: VOLUME_OPS.get(name) for name in VOLUME_OPS}
"""Op name → step model (a snapshot of :data:`VOLUME_OPS`, taken after this module's registrations)."""

if TYPE_CHECKING:
    VolumeFilterStep = VolumeOp
else:
    VolumeFilterStep = Annotated[Union[tuple(VOLUME_STEP_MODELS.values())], Field(discriminator="op")]  # noqa: UP007
"""One step of a ``filters:`` list: the registered op models, discriminated on ``op``."""

_STEPS_ADAPTER: TypeAdapter[list[VolumeOp]] = TypeAdapter(list[VolumeFilterStep])


def _describe(err: Any, data: Sequence[Any]) -> str:
    loc = list(err.get("loc", ()))
    typ = str(err.get("type", ""))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if not loc or not isinstance(loc[0], int):
        return f"filters: {msg} (a list of steps like [{{op: gaussian, sigma_mm: 1.0}}])"
    raw = data[loc[0]] if loc[0] < len(data) else None
    op = raw.get("op") if isinstance(raw, dict) else None
    head = f"filters[{loc[0]}]" + (f" (op '{op}')" if op else "")
    names = ", ".join(VOLUME_OPS.names())
    if typ == "union_tag_invalid":
        return f"{head}: unknown volume op '{op}'; choose from {names}"
    if typ == "union_tag_not_found":
        return f"{head}: missing 'op'; every step needs one of: {names}"
    if typ in ("model_type", "model_attributes_type"):
        return (
            f"{head}: a step must be a mapping like {{op: gaussian, sigma_mm: 1.0}}, got {err.get('input')!r}"
        )
    param = ".".join(str(p) for p in loc[2:])
    if not param:
        return f"{head}: {msg}"
    if typ == "missing":
        return f"{head}, parameter '{param}': required parameter is missing"
    if typ == "extra_forbidden" and op in VOLUME_STEP_MODELS:
        valid = ", ".join(f for f in VOLUME_STEP_MODELS[op].model_fields if f != "op")
        return f"{head}, parameter '{param}': unknown parameter; valid parameters of '{op}': {valid}"
    return f"{head}, parameter '{param}': {msg} (got {err.get('input')!r})"


def parse_volume_filters(data: Any) -> list[VolumeOp]:
    """Validate a ``filters:`` list (mappings or already-built steps).

    Raises:
        VolumeOpConfigError: one line per problem naming the step index, op and parameter; an unknown op
            lists the registered ops.
    """
    if data is None:
        return []
    if not isinstance(data, (list, tuple)):
        raise VolumeOpConfigError(
            f"filters must be a list of steps like [{{op: gaussian, sigma_mm: 1.0}}], got {type(data).__name__}"
        )
    raw = [s.model_dump() if isinstance(s, VolumeOp) else s for s in data]
    try:
        return list(_STEPS_ADAPTER.validate_python(raw))
    except ValidationError as exc:
        lines = [_describe(e, raw) for e in exc.errors()]
        raise VolumeOpConfigError("invalid volume filters:\n  " + "\n  ".join(lines)) from None


def _canonical(steps: Sequence[VolumeOp]) -> str:
    body = [s.model_dump(mode="json") for s in steps]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def filters_hash(steps: Sequence[VolumeOp]) -> str:
    """sha256 hex digest of the steps with every parameter (defaults included): equal for equal processing."""
    return hashlib.sha256(_canonical(steps).encode("utf-8")).hexdigest()


def filters_name(steps: Sequence[VolumeOp]) -> str:
    """A readable, path-safe name of a step list: the ops joined by ``+`` and 8 hex digits of the hash.

    ``[{op: gaussian, sigma_mm: 1}, {op: median}]`` → ``gaussian+median-1a2b3c4d``.
    """
    return "+".join(s.op for s in steps) + "-" + filters_hash(steps)[:8]


def apply_filters(steps: Sequence[VolumeOp], volume: Volume) -> Volume:
    """Run the steps in order.

    Raises:
        RecipeStepError: a step failed; ``step_index``/``op``/``cause`` say which and why.
    """
    from medimg_spark.ops._common import RecipeStepError

    out = volume
    for i, step in enumerate(steps):
        try:
            out = step.apply(out)
        except Exception as exc:
            raise RecipeStepError(i, step.op, exc) from exc
    return out
