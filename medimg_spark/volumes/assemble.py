"""Series → volume assembly (no Spark): plan which frames form which 3-D volume, check, then stack.

:func:`plan_series` takes the metadata of a series' frames (no pixels) and returns a typed
:class:`SeriesPlan`: the frames are de-duplicated (the same instance and frame twice, e.g. the same
file re-encoded), grouped by frame of reference, orientation (within a tolerance) and size (a
series with more than one group is split, each part with ``mixed_geometry``: never silently
stacked), sorted along the slice normal ``n = row cosine × column cosine`` (distance
``position · n``) and checked (slices at the same position, missing slices, irregular spacing).
The geometry is what SimpleITK's ``ImageSeriesReader`` gives for the same ordered files: origin =
first slice's position, x/y spacing = column/row spacing, z spacing = distance between the first
and last positions / (n - 1), direction columns = row cosine, column cosine, normal.
:func:`stack_volume` then builds the :class:`~medimg_spark.volumes.model.Volume` from the frames'
arrays. Conventions: :mod:`medimg_spark.volumes.model` and :data:`medimg_spark.schema.VOLUMES_SCHEMA`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medimg_spark.errors import MedimgError
from medimg_spark.volumes.model import Volume

#: Names of the checks in a volume's ``flags``.
FLAG_MISSING = "missing_slices"
FLAG_DUPLICATE = "duplicate_slices"
FLAG_IRREGULAR = "irregular_spacing"
FLAG_MIXED = "mixed_geometry"

#: Reasons a group of frames is not a volume.
SKIP_NO_GEOMETRY = "no_geometry"
SKIP_TOO_FEW = "too_few_slices"


class AssemblyError(MedimgError, ValueError):
    """Frames cannot be stacked as planned (an array is missing or has another shape)."""


class VolumeTooLargeError(MedimgError):
    """A series' stored pixels exceed ``volumes.max_volume_bytes``: quarantined before any pixel is read."""


@dataclass(frozen=True)
class SliceInfo:
    """The metadata of one frame that assembly needs (a row of ``images`` without its pixels).

    Attributes:
        image_id: the frame's id.
        rows: frame height.
        cols: frame width.
        channels: samples per pixel.
        dtype: numpy dtype name of the stored pixels.
        position: LPS position of the first pixel (3 values), None when unknown.
        orientation: row then column direction cosines (6 values), None when unknown.
        pixel_spacing: (row spacing, column spacing) mm, None when unknown (then 1 mm).
        frame_of_reference_uid: the frame of reference, if any.
        sop_instance_uid: the instance the frame belongs to (identity of re-encoded copies).
        frame_index: index of the frame in its file.
        instance_number: DICOM InstanceNumber (tie-break of the order).
        file_sha256: the file's hash (identity when there is no SOP Instance UID).
        rescale_slope: the frame's rescale slope (None: 1).
        rescale_intercept: the frame's rescale intercept (None: 0).
        n_frames: frames of the frame's file (copies in the file with most frames are kept).
    """

    image_id: str
    rows: int
    cols: int
    channels: int = 1
    dtype: str = "uint16"
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    pixel_spacing: tuple[float, float] | None = None
    frame_of_reference_uid: str | None = None
    sop_instance_uid: str | None = None
    frame_index: int = 0
    instance_number: int | None = None
    file_sha256: str | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    n_frames: int = 1

    @property
    def identity(self) -> tuple[str, int]:
        """What makes two frames the same frame: (SOP Instance UID or file hash or id, frame index)."""
        return (self.sop_instance_uid or self.file_sha256 or self.image_id, self.frame_index)

    @property
    def has_geometry(self) -> bool:
        """Whether position and orientation are known, finite and the orientation non-degenerate."""
        if self.position is None or self.orientation is None:
            return False
        values = (*self.position, *self.orientation)
        if len(self.position) != 3 or len(self.orientation) != 6 or not all(math.isfinite(v) for v in values):
            return False
        return bool(np.linalg.norm(np.cross(self.orientation[:3], self.orientation[3:])) > 1e-6)


@dataclass(frozen=True)
class AssemblyOptions:
    """Tolerances and limits of assembly (the config's ``volumes`` section).

    Attributes:
        min_slices: fewer distinct slices than this are not a volume.
        orientation_tolerance: largest difference of a direction cosine within one volume.
        spacing_tolerance: largest relative deviation of a slice gap from the typical gap (not
            counting gaps that are whole multiples: missing slices) before ``irregular_spacing``.
    """

    min_slices: int = 2
    orientation_tolerance: float = 1e-4
    spacing_tolerance: float = 0.05


@dataclass(frozen=True)
class VolumePlan:
    """One volume to build: its ordered frames, geometry and checks.

    Attributes:
        image_ids: the frames of slices 0..n-1, sorted along the slice normal.
        slice_positions: each slice's distance along the normal (mm).
        rows: frame height (dim y).
        cols: frame width (dim x).
        channels: samples per voxel.
        dtype: stored dtype of the frames.
        spacing: (x, y, z) mm as SimpleITK's ImageSeriesReader.
        origin: LPS position of voxel (0, 0, 0).
        direction: 9 values, row-major 3x3 with columns row cosine, column cosine, normal.
        frame_of_reference_uid: the frames' frame of reference.
        missing_slices: slices missing from gaps of about k typical spacings (k - 1 each).
        duplicate_slices: frames dropped because they repeat a kept one (same instance and frame,
            or another instance at the same position).
        dropped_ids: the ids of those frames.
        irregular_spacing: a gap deviates from the typical one by more than the tolerance.
        max_spacing_deviation: the largest relative deviation of a gap from the typical gap.
        mixed_geometry: the series held frames of another orientation, size or frame of
            reference, which went to other volumes.
    """

    image_ids: tuple[str, ...]
    slice_positions: tuple[float, ...]
    rows: int
    cols: int
    channels: int
    dtype: str
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    frame_of_reference_uid: str | None = None
    missing_slices: int = 0
    duplicate_slices: int = 0
    dropped_ids: tuple[str, ...] = ()
    irregular_spacing: bool = False
    max_spacing_deviation: float | None = None
    mixed_geometry: bool = False

    @property
    def flags(self) -> tuple[str, ...]:
        """The failed checks, in a fixed order."""
        out = []
        if self.missing_slices:
            out.append(FLAG_MISSING)
        if self.duplicate_slices:
            out.append(FLAG_DUPLICATE)
        if self.irregular_spacing:
            out.append(FLAG_IRREGULAR)
        if self.mixed_geometry:
            out.append(FLAG_MIXED)
        return tuple(out)

    @property
    def status(self) -> str:
        """``ok`` when every check passed, else ``flagged``."""
        return "flagged" if self.flags else "ok"

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """(dim_x, dim_y, dim_z)."""
        return (self.cols, self.rows, len(self.image_ids))


@dataclass(frozen=True)
class SkippedGroup:
    """Frames of a series that form no volume, and why (:data:`SKIP_NO_GEOMETRY`, :data:`SKIP_TOO_FEW`)."""

    image_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class SeriesPlan:
    """What :func:`plan_series` found in one series: its volumes and the frames left out."""

    volumes: tuple[VolumePlan, ...] = ()
    skipped: tuple[SkippedGroup, ...] = field(default_factory=tuple)


def _normal(orientation: Sequence[float]) -> np.ndarray:
    n = np.cross(np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64))
    return n / np.linalg.norm(n)


def _group_key(s: SliceInfo) -> tuple[object, ...]:
    return (s.frame_of_reference_uid, s.rows, s.cols, s.channels, s.dtype)


def _order_key(s: SliceInfo) -> tuple[object, ...]:
    return (s.instance_number is None, s.instance_number or 0, s.frame_index, s.image_id)


def plan_series(slices: Sequence[SliceInfo], options: AssemblyOptions | None = None) -> SeriesPlan:
    """Plan the volumes of one series from its frames' metadata (see the module docstring).

    Args:
        slices: every frame of the series (any order; each image_id once).
        options: tolerances and ``min_slices``.

    Returns:
        The volumes (one per geometry group with at least ``min_slices`` distinct slices, in a
        deterministic order) and the skipped frames.
    """
    opts = options or AssemblyOptions()
    # 1. the same instance and frame more than once (a file re-encoded): keep one, from the file with
    # the most frames (so a multi-frame volume keeps its frames from one file), deterministically
    ordered = sorted(slices, key=lambda s: (-s.n_frames, s.file_sha256 or "", s.frame_index, s.image_id))
    seen: dict[tuple[str, int], SliceInfo] = {}
    same_instance: list[SliceInfo] = []
    for s in ordered:
        if s.identity in seen:
            same_instance.append(s)
        else:
            seen[s.identity] = s
    unique = list(seen.values())
    no_geometry = [s for s in unique if not s.has_geometry]
    located = [s for s in unique if s.has_geometry]
    # 2. groups: frame of reference, size and dtype exactly; orientation within the tolerance
    groups: list[tuple[tuple[object, ...], tuple[float, ...], list[SliceInfo]]] = []
    for s in sorted(located, key=_order_key):
        assert s.orientation is not None
        key = _group_key(s)
        for gkey, gori, members in groups:
            if gkey == key and max(abs(a - b) for a, b in zip(gori, s.orientation, strict=True)) <= (
                opts.orientation_tolerance
            ):
                members.append(s)
                break
        else:
            groups.append((key, tuple(s.orientation), [s]))
    mixed = len(groups) > 1
    by_identity: dict[tuple[str, int], list[SliceInfo]] = {}
    for s in same_instance:
        by_identity.setdefault(s.identity, []).append(s)
    volumes: list[VolumePlan] = []
    skipped: list[SkippedGroup] = []
    if no_geometry:
        ids = [s.image_id for s in no_geometry]
        ids += [d.image_id for s in no_geometry for d in by_identity.get(s.identity, [])]
        skipped.append(SkippedGroup(tuple(sorted(ids)), SKIP_NO_GEOMETRY))
    for _, orientation, members in groups:
        plan, left_out = _plan_group(members, orientation, opts, mixed, by_identity)
        if plan is None:
            skipped.append(SkippedGroup(left_out, SKIP_TOO_FEW))
        else:
            volumes.append(plan)
    volumes.sort(key=lambda v: v.image_ids[0])
    return SeriesPlan(tuple(volumes), tuple(skipped))


def _plan_group(
    members: list[SliceInfo],
    orientation: tuple[float, ...],
    opts: AssemblyOptions,
    mixed: bool,
    copies: Mapping[tuple[str, int], list[SliceInfo]],
) -> tuple[VolumePlan | None, tuple[str, ...]]:
    normal = _normal(orientation)
    dist = {s.image_id: float(np.dot(np.asarray(s.position, dtype=np.float64), normal)) for s in members}
    members = sorted(members, key=lambda s: (dist[s.image_id], *_order_key(s)))
    gaps = np.diff([dist[s.image_id] for s in members])
    moving = gaps[gaps > 1e-4]
    same_at = max(1e-4, 0.01 * float(np.median(moving))) if moving.size else 1e-4
    kept: list[SliceInfo] = []
    dropped: list[str] = []
    for s in members:
        if kept and dist[s.image_id] - dist[kept[-1].image_id] <= same_at:
            dropped.append(s.image_id)  # another instance at the same position
        else:
            kept.append(s)
    for s in members:
        dropped.extend(d.image_id for d in copies.get(s.identity, []))
    if len(kept) < max(opts.min_slices, 1):
        return None, tuple(sorted([s.image_id for s in members] + dropped))
    positions = [dist[s.image_id] for s in kept]
    first = kept[0]
    assert first.position is not None
    missing, irregular, deviation = _spacing_checks(np.diff(positions), opts.spacing_tolerance)
    z_spacing = 1.0
    if len(kept) > 1:
        span = np.asarray(kept[-1].position, dtype=np.float64) - np.asarray(first.position, dtype=np.float64)
        z_spacing = float(np.linalg.norm(span)) / (len(kept) - 1)
        if z_spacing < 1e-12:
            z_spacing = 1.0
    row_spacing, col_spacing = first.pixel_spacing or (1.0, 1.0)
    row, col = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64)
    direction = np.column_stack([row, col, np.cross(row, col)])
    plan = VolumePlan(
        image_ids=tuple(s.image_id for s in kept),
        slice_positions=tuple(positions),
        rows=first.rows,
        cols=first.cols,
        channels=first.channels,
        dtype=first.dtype,
        spacing=(float(col_spacing), float(row_spacing), z_spacing),
        origin=(float(first.position[0]), float(first.position[1]), float(first.position[2])),
        direction=tuple(float(v) for v in direction.ravel()),
        frame_of_reference_uid=first.frame_of_reference_uid,
        missing_slices=missing,
        duplicate_slices=len(dropped),
        dropped_ids=tuple(sorted(dropped)),
        irregular_spacing=irregular,
        max_spacing_deviation=deviation,
        mixed_geometry=mixed,
    )
    return plan, ()


def _spacing_checks(gaps: np.ndarray, tolerance: float) -> tuple[int, bool, float | None]:
    """``(missing slices, irregular, max relative deviation)`` of the gaps between sorted slices.

    The typical gap is the median; a gap of about k typical gaps (k >= 2) holds k - 1 missing
    slices; a gap is irregular when it deviates from its nearest multiple by more than
    ``tolerance`` (relative to the typical gap).
    """
    if gaps.size == 0:
        return 0, False, None
    typical = float(np.median(gaps))
    if typical <= 0:
        return 0, False, None
    ratio = gaps / typical
    multiples = np.maximum(np.rint(ratio), 1.0)
    missing = int(np.sum(multiples - 1))
    irregular = bool(np.any(np.abs(ratio - multiples) > tolerance))
    deviation = float(np.max(np.abs(ratio - 1.0)))
    return missing, irregular, deviation


def volume_id(source_table: str, recipe: str | None, image_ids: Sequence[str]) -> str:
    """Deterministic id of a volume: sha256 of the source table, recipe and the ordered frame ids."""
    h = hashlib.sha256()
    h.update(f"{source_table}\x1f{recipe or ''}".encode())
    for image_id in image_ids:
        h.update(b"\x1f" + image_id.encode())
    return h.hexdigest()


def rescale_of(slices: Sequence[SliceInfo]) -> tuple[float | None, float | None] | None:
    """The (slope, intercept) all ``slices`` share, or None when they differ."""
    pairs = {(s.rescale_slope, s.rescale_intercept) for s in slices}
    return next(iter(pairs)) if len(pairs) == 1 else None


def stack_frames(
    frames: Sequence[tuple[str, np.ndarray]],
    rows: int,
    cols: int,
    channels: int,
    rescale: Mapping[str, tuple[float, float]] | None = None,
) -> np.ndarray:
    """Stack ``(image_id, frame)`` in order into a (z, y, x[, c]) array, checking each frame's shape.

    Args:
        frames: the slices in volume order.
        rows: expected frame height.
        cols: expected frame width.
        channels: expected samples per pixel.
        rescale: per image_id (slope, intercept) when the frames do not share one; the voxels are
            then the rescaled values (float64) instead of the stored ones.

    Raises:
        AssemblyError: a frame has another shape than expected.
    """
    expected = (rows, cols) if channels == 1 else (rows, cols, channels)
    out = []
    for image_id, frame in frames:
        arr = np.asarray(frame)
        if arr.ndim == 3 and arr.shape[2] == 1 and channels == 1:
            arr = arr[:, :, 0]
        if arr.shape != expected:
            raise AssemblyError(
                f"frame {image_id} has shape {arr.shape}, the volume expects {expected}; the images table "
                "disagrees with its metadata, re-run ingest"
            )
        if rescale is not None:
            slope, intercept = rescale[image_id]
            arr = arr.astype(np.float64) * slope + intercept
        out.append(arr)
    if not out:
        raise AssemblyError("a volume needs at least one frame")
    return np.stack(out, axis=0)


def stack_volume(
    plan: VolumePlan,
    arrays: Mapping[str, np.ndarray],
    rescale: Mapping[str, tuple[float, float]] | None = None,
) -> Volume:
    """Stack the planned frames (z, y, x[, c]) into a :class:`Volume` with the plan's geometry.

    Args:
        plan: from :func:`plan_series`.
        arrays: each planned image_id's frame, (rows, cols) or (rows, cols, channels).
        rescale: see :func:`stack_frames`.

    Raises:
        AssemblyError: a planned frame is missing or has another shape than planned.
    """
    missing = [i for i in plan.image_ids if i not in arrays]
    if missing:
        raise AssemblyError(f"frame {missing[0]} of the planned volume has no pixels; re-run ingest")
    voxels = stack_frames(
        [(i, arrays[i]) for i in plan.image_ids], plan.rows, plan.cols, plan.channels, rescale
    )
    return Volume(voxels=voxels, spacing=plan.spacing, origin=plan.origin, direction=plan.direction)


def _tuple(value: object, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _optional_float(value: object) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def slice_info(row: Mapping[Any, Any]) -> SliceInfo:
    """A :class:`SliceInfo` from an ``images`` row (a dict, Row.asDict() or pandas Series)."""
    get = row.get
    instance_number = _optional_float(get("instance_number"))
    n_frames = _optional_float(get("n_frames"))
    frame_index = _optional_float(get("frame_index"))
    return SliceInfo(
        image_id=str(get("image_id")),
        rows=int(row["rows"]),
        cols=int(row["cols"]),
        channels=int(get("channels") or 1),
        dtype=str(get("dtype") or "uint16"),
        position=_tuple(get("image_position"), 3),  # type: ignore[arg-type]
        orientation=_tuple(get("image_orientation"), 6),  # type: ignore[arg-type]
        pixel_spacing=_tuple(get("pixel_spacing"), 2),  # type: ignore[arg-type]
        frame_of_reference_uid=_str_or_none(get("frame_of_reference_uid")),
        sop_instance_uid=_str_or_none(get("sop_instance_uid")),
        frame_index=int(frame_index or 0),
        instance_number=None if instance_number is None else int(instance_number),
        file_sha256=_str_or_none(get("file_sha256")),
        rescale_slope=_optional_float(get("rescale_slope")),
        rescale_intercept=_optional_float(get("rescale_intercept")),
        n_frames=int(n_frames or 1),
    )


def _str_or_none(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value) or None


def resampled(info: SliceInfo, rows: int, cols: int) -> SliceInfo:
    """``info`` for the same field of view resampled to ``rows`` x ``cols`` (a processed frame).

    The pixel spacing scales with the size; the first pixel's centre moves by half the change of
    spacing along each axis (the edges of the field of view stay, as with ``cv2.resize``).
    """
    if (rows, cols) == (info.rows, info.cols):
        return info
    row_spacing, col_spacing = info.pixel_spacing or (1.0, 1.0)
    new_row = row_spacing * info.rows / rows
    new_col = col_spacing * info.cols / cols
    position = info.position
    if position is not None and info.orientation is not None:
        across = np.asarray(info.orientation[:3], dtype=np.float64)
        down = np.asarray(info.orientation[3:], dtype=np.float64)
        moved = (
            np.asarray(position)
            + 0.5 * (new_col - col_spacing) * across
            + 0.5 * (new_row - row_spacing) * down
        )
        position = (float(moved[0]), float(moved[1]), float(moved[2]))
    from dataclasses import replace

    return replace(info, rows=rows, cols=cols, pixel_spacing=(new_row, new_col), position=position)
