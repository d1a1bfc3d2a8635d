"""Series → volume assembly against SimpleITK, on every multi-slice series of the real corpus.

The reference is SimpleITK's ``ImageSeriesReader`` (GDCM) on the same files. Where it disagrees
for a principled reason the test says which and asserts what is right:

* frames of different orientations (localizers: MR700, MR2, CT2N) — ITK stacks them anyway, we
  split them (each part alone has too few slices, so no volume);
* copies of one instance (the same SOP Instance UID re-encoded: MR_small, MR2_*, ctbrain*, the
  rtdose files) or other instances at the same position (693_*) — ITK stacks the copies as slices
  at spacing 0, we keep one (``duplicate_slices``);
* frames without position/orientation (US, SC, CR, emri_small whose functional groups were
  stripped) — ITK invents a geometry, we make no volume;
* our slice axis is always DICOM's normal, row cosine × column cosine (right-handed); where the
  reference's third axis points the other way (enhanced multi-frame read by GDCM, NIfTI files
  whose i/j swap makes the frame left-handed) the reference is flipped along z first (the same
  physical samples, indexed from the other end);
* GDCM reads the 32-bit Explicit VR Big Endian ``rtdose_expb.dcm`` byte-swapped: its voxels are
  compared with pydicom's, the geometry with SimpleITK's.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medimg_spark.io.files import FileContext, image_id, process_file
from medimg_spark.io.pixels import to_array
from medimg_spark.volumes.assemble import (
    FLAG_DUPLICATE,
    FLAG_IRREGULAR,
    FLAG_MISSING,
    FLAG_MIXED,
    SKIP_NO_GEOMETRY,
    SKIP_TOO_FEW,
    AssemblyOptions,
    SeriesPlan,
    SliceInfo,
    plan_series,
    slice_info,
    stack_volume,
)
from medimg_spark.volumes.model import Volume, from_sitk

sitk = pytest.importorskip("SimpleITK")

TOL = 1e-4


def _pkg_dir(module: str) -> Path:
    import importlib

    return Path(importlib.import_module(module).__file__).resolve().parent  # type: ignore[arg-type]


CORPUS = [_pkg_dir("pydicom") / "data", _pkg_dir("data_store") / "data", _pkg_dir("deid_data") / "data"]
NIB_DATA = _pkg_dir("nibabel") / "tests" / "data"


def _scan_series() -> dict[str, list[Path]]:
    """Every series (SeriesInstanceUID) of the corpus with more than one frame, by a readable label."""
    import pydicom

    found: dict[str, list[Path]] = collections.defaultdict(list)
    frames: collections.Counter[str] = collections.Counter()
    for root in CORPUS:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, defer_size=1024)  # pixel data left unread
                    uid = str(ds.SeriesInstanceUID)
                    if "Rows" not in ds or not any(k in ds for k in ("PixelData", "FloatPixelData")):
                        continue
                    n = int(ds.get("NumberOfFrames", 1) or 1)
            except Exception:
                continue
            found[uid].append(path)
            frames[uid] += n
    out = {}
    for uid, paths in found.items():
        if frames[uid] > 1:
            first = paths[0]
            label = f"{first.parent.name}/{first.name}+{len(paths) - 1}"
            out[label] = paths
    return out


SERIES = _scan_series()

#: What each corpus series must give: (dim_z of each volume, flags of each volume), or the reason
#: no volume is made (see the module docstring).
EXPECTED: dict[str, Any] = {
    "CT2/17106+3": [(4, (FLAG_MISSING,))],  # InstanceNumber 18 then 180..182: 161 slices missing
    "CT5N/2062+4": [(5, ())],
    "CT2N/6293+1": SKIP_TOO_FEW,  # two orientations
    "MR2/4950+2": SKIP_TOO_FEW,  # three orthogonal localizer planes
    "MR2/6273+2": SKIP_TOO_FEW,
    "MR700/4467+6": SKIP_TOO_FEW,  # seven orientations
    "test_files/rtdose.dcm+5": [(15, (FLAG_DUPLICATE,))],  # 3 copies of 15 frames + 3 one-frame copies
    "data/eCT_Supplemental.dcm+0": [(2, ())],
    "test_files/MR_small.dcm+8": SKIP_TOO_FEW,  # one instance, re-encoded
    "test_files/693_J2KI.dcm+3": SKIP_TOO_FEW,  # two instances at one position, each twice
    "data/MR2_J2KI.dcm+3": SKIP_TOO_FEW,
    "humans/ctbrain1.dcm+1": SKIP_TOO_FEW,
    "test_files/examples_overlay.dcm+1": SKIP_TOO_FEW,  # two sizes (300x484, 484x484)
    "test_files/liver_1frame.dcm+3": [
        (3, (FLAG_DUPLICATE,))
    ],  # a SEG of 3 frames, twice, + 2 one-frame copies
}


def _rows(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    out = [r for r in process_file(f"file:{path}", data, FileContext(run_id="t")) if r["_kind"] == "image"]
    for r in out:
        r["_path"] = path
    return out


def _header_infos(path: Path) -> list[SliceInfo]:
    """SliceInfos from the header alone (no pixels decoded): the reader's image and frame geometry."""
    from medimg_spark.io.dicom import frame_geometry, parse_dicom, read_dataset_bytes

    data = path.read_bytes()
    try:
        parsed = parse_dicom(data)
        ds, _ = read_dataset_bytes(data)
    except Exception:
        return []
    sha = hashlib.sha256(data).hexdigest()
    geometry = frame_geometry(ds, parsed.n_frames)
    rows, cols, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1)
    return [
        slice_info(
            {
                **parsed.image_meta,
                **geometry[i],
                "image_id": image_id(sha, i),
                "frame_index": i,
                "n_frames": parsed.n_frames,
                "file_sha256": sha,
                "rows": rows,
                "cols": cols,
                "channels": samples,
                "dtype": "header",
            }
        )
        for i in range(parsed.n_frames)
    ]


def _right_handed(image: Any) -> Any:
    """``image`` indexed so that its z axis is x axis × y axis (flipped along z when it is not)."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.dot(np.cross(d[:, 0], d[:, 1]), d[:, 2]) < 0:
        return sitk.Flip(image, [False, False, True], False)
    return image


def _rescaled(volume: Volume, rows: list[dict[str, Any]]) -> np.ndarray:
    by_id = {r["image_id"]: r for r in rows}
    first = by_id[next(iter(by_id))]
    slope = first.get("rescale_slope") or 1.0
    intercept = first.get("rescale_intercept") or 0.0
    return volume.voxels.astype(np.float64) * slope + intercept


def assert_same_volume(ours: Volume, ref: Volume, voxels: np.ndarray | None = None) -> None:
    """Voxels (``voxels``: ours rescaled), spacing, origin and direction within :data:`TOL`."""
    got = ours.voxels if voxels is None else voxels
    assert got.shape == ref.voxels.shape
    np.testing.assert_allclose(got, ref.voxels.astype(np.float64), rtol=1e-6, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(ours.spacing, ref.spacing, atol=TOL)
    np.testing.assert_allclose(ours.origin, ref.origin, atol=TOL)
    np.testing.assert_allclose(ours.direction, ref.direction, atol=TOL)


def _assemble(rows: list[dict[str, Any]]) -> tuple[SeriesPlan, list[Volume]]:
    plan = plan_series([slice_info(r) for r in rows])
    arrays = {r["image_id"]: to_array(r) for r in rows}
    return plan, [stack_volume(v, arrays) for v in plan.volumes]


def test_the_corpus_holds_the_known_series() -> None:
    assert set(EXPECTED) <= set(SERIES), sorted(SERIES)


@pytest.mark.parametrize("label", sorted(SERIES))
def test_series_equals_simpleitk(label: str, tmp_path: Path) -> None:
    paths = SERIES[label]
    header_plan = plan_series([i for p in paths for i in _header_infos(p)])
    expected = EXPECTED.get(label, SKIP_NO_GEOMETRY)
    if isinstance(expected, str):
        assert not header_plan.volumes
        assert {s.reason for s in header_plan.skipped} == {expected}
        if expected == SKIP_NO_GEOMETRY:
            import pydicom

            for p in paths:  # no position/orientation anywhere, neither per frame
                ds = pydicom.dcmread(p, stop_before_pixels=True)
                assert "ImagePositionPatient" not in ds and "PlanePositionSequence" not in str(ds)
        else:
            # each group alone holds fewer than 2 distinct positions along its normal
            infos = {i.image_id: i for p in paths for i in _header_infos(p)}
            for group in header_plan.skipped:
                members = [infos[i] for i in group.image_ids]
                orientations = {tuple(np.round(m.orientation, 3)) for m in members}  # type: ignore[arg-type]
                assert len(orientations) == 1
                n = np.cross(members[0].orientation[:3], members[0].orientation[3:])  # type: ignore[index]
                assert len({round(float(np.dot(m.position, n)), 3) for m in members}) == 1  # type: ignore[arg-type]
            if label.startswith(("CT2N", "MR2/", "MR700")):
                assert len(header_plan.skipped) == len(paths)  # every frame has its own orientation
        return
    rows = [r for p in paths for r in _rows(p)]
    plan, volumes = _assemble(rows)
    assert [v.image_ids for v in plan.volumes] == [v.image_ids for v in header_plan.volumes]
    assert [(v.shape_xyz[2], v.flags) for v in plan.volumes] == expected
    by_id = {r["image_id"]: r for r in rows}
    for vplan, ours in zip(plan.volumes, volumes, strict=True):
        files = list(dict.fromkeys(by_id[i]["_path"] for i in vplan.image_ids))
        if len(files) == 1:
            ref_image = sitk.ReadImage(str(files[0]))
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(f) for f in files])
            ref_image = reader.Execute()
        ref = from_sitk(_right_handed(ref_image))
        voxels = _rescaled(ours, rows)
        if by_id[vplan.image_ids[0]]["modality"] == "SEG":  # GDCM shows 1-bit SEG frames as 0/255
            assert set(np.unique(ref.voxels)) <= {0, 255}
            ref.voxels = (ref.voxels > 0).astype(np.uint8)
        if files[0].name == "rtdose_expb.dcm":  # GDCM byte-swaps this file's 32-bit big-endian data
            import pydicom

            ref.voxels = pydicom.dcmread(files[0]).pixel_array.astype(np.float64)
            assert not np.array_equal(sitk.GetArrayFromImage(ref_image), ref.voxels)
        assert_same_volume(ours, ref, voxels)
        _assert_exports_read_back_as(ours, ref, tmp_path)


def _assert_exports_read_back_as(ours: Volume, ref: Volume, tmp_path: Path) -> None:
    """The NIfTI and NRRD exports of ``ours``, read with SimpleITK: our stored voxels and the
    reference's geometry within :data:`TOL`."""
    from medimg_spark.export.nifti import nifti_bytes
    from medimg_spark.export.nrrd import nrrd_bytes

    for name, data in (("v.nii.gz", nifti_bytes(ours)), ("v.nrrd", nrrd_bytes(ours))):
        (tmp_path / name).write_bytes(data)
        back = from_sitk(sitk.ReadImage(str(tmp_path / name)))
        assert back.voxels.shape == ours.voxels.shape, name
        nan = np.isnan(ours.voxels) if ours.voxels.dtype.kind == "f" else False
        np.testing.assert_array_equal(
            np.where(nan, 0, back.voxels), np.where(nan, 0, ours.voxels), err_msg=name
        )
        for got, want in (
            (back.spacing, ref.spacing),
            (back.origin, ref.origin),
            (back.direction, ref.direction),
        ):
            np.testing.assert_allclose(got, want, atol=TOL, err_msg=name)


def test_series_order_matches_gdcm_on_a_shuffled_series() -> None:
    """GetGDCMSeriesFileNames' own order (sorted along the normal) is ours, whatever the input order."""
    folder = next(iter(SERIES["CT5N/2062+4"])).parent
    reader = sitk.ImageSeriesReader()
    (uid,) = reader.GetGDCMSeriesIDs(str(folder))
    gdcm_order = [Path(f).name for f in reader.GetGDCMSeriesFileNames(str(folder), uid)]
    rows = [r for p in reversed(SERIES["CT5N/2062+4"]) for r in _rows(p)]
    plan, _ = _assemble(rows)
    names = {r["image_id"]: r["_path"].name for r in rows}
    assert [names[i] for i in plan.volumes[0].image_ids] == gdcm_order


def test_enhanced_multiframe_positions_equal_pydicom() -> None:
    """eCT_Supplemental: per-frame functional groups; slices follow PlanePositionSequence as pydicom reads it."""
    import pydicom

    path = _pkg_dir("data_store") / "data" / "eCT_Supplemental.dcm"
    ds = pydicom.dcmread(path)
    positions = [
        [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    shared = ds.SharedFunctionalGroupsSequence[0]
    ori = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    rows = _rows(path)
    assert [r["image_position"] for r in rows] == positions
    assert all(r["image_orientation"] == ori and r["pixel_spacing"] == spacing for r in rows)
    assert all(r["rescale_intercept"] == -1024.0 for r in rows)  # PixelValueTransformationSequence
    plan, (vol,) = _assemble(rows)
    normal = np.cross(ori[:3], ori[3:])
    order = sorted(range(len(positions)), key=lambda i: float(np.dot(positions[i], normal)))
    assert [r["frame_index"] for i in plan.volumes[0].image_ids for r in rows if r["image_id"] == i] == order
    np.testing.assert_allclose(vol.origin, positions[order[0]])
    np.testing.assert_allclose(plan.volumes[0].slice_positions, [np.dot(positions[i], normal) for i in order])
    np.testing.assert_array_equal(vol.voxels, ds.pixel_array[order])


def _nifti_cases() -> list[str]:
    out = []
    for path in sorted(NIB_DATA.glob("*.nii*")):
        import nibabel as nib

        try:
            img = nib.load(path)
        except Exception:
            continue
        if len(img.shape) >= 3 and img.shape[2] > 1 and img.header.get_intent()[0] == "none":
            out.append(path.name)
    return out


@pytest.mark.parametrize("name", _nifti_cases())
def test_nifti_volume_equals_simpleitk(name: str, tmp_path: Path) -> None:
    """Each 3-D volume of a NIfTI file (each time point of a 4-D one) equals sitk.ReadImage's.

    Our frames are ``data[:, :, k]``, so our x/y are NIfTI's j/i: the reference is permuted.
    SimpleITK does not read NIfTI-2: those are compared with the same data and affine saved by
    nibabel as NIfTI-1. ITK reads NaN voxels as 0: ours keep the stored NaN.
    """
    import nibabel as nib

    path = NIB_DATA / name
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        src = nib.load(path)
        assert isinstance(src, nib.Nifti2Image)
        copy = tmp_path / "as_nifti1.nii"
        nib.save(nib.Nifti1Image(np.asanyarray(src.dataobj), src.affine), copy)
        image = sitk.ReadImage(str(copy))
    rows = _rows(path)
    series: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        series[r["series_instance_uid"]].append(r)
    n_t = image.GetSize()[3] if image.GetDimension() == 4 else 1
    assert len(series) == n_t
    assert len({r["study_instance_uid"] for r in rows}) == 1
    z = image.GetSize()[2]
    for t in sorted({0, n_t - 1}):
        part = [r for r in rows if r["frame_index"] // z == t]
        ref_image = image[:, :, :, t] if image.GetDimension() == 4 else image
        ref = from_sitk(_right_handed(sitk.PermuteAxes(ref_image, [1, 0, 2])))
        plan, (vol,) = _assemble(part)
        assert plan.volumes[0].status == "ok"
        voxels = _rescaled(vol, part)
        nan = np.isnan(voxels)
        assert np.all(ref.voxels[nan] == 0)
        assert_same_volume(vol, ref, np.where(nan, 0.0, voxels))
        _assert_exports_read_back_as(vol, ref, tmp_path)


def test_nifti_geometry_is_lps() -> None:
    """image_position/orientation/pixel_spacing of NIfTI frames: nibabel's RAS affine with x, y negated."""
    import nibabel as nib

    path = NIB_DATA / "anatomical.nii"
    affine = nib.load(path).affine
    rows = _rows(path)
    for r in rows[:3]:
        ras = affine @ np.array([0.0, 0.0, r["frame_index"], 1.0])
        np.testing.assert_allclose(r["image_position"], [-ras[0], -ras[1], ras[2]])
        col = affine[:3, 1] * [-1, -1, 1] / np.linalg.norm(affine[:3, 1])
        row = affine[:3, 0] * [-1, -1, 1] / np.linalg.norm(affine[:3, 0])
        np.testing.assert_allclose(r["image_orientation"], [*col, *row])
        np.testing.assert_allclose(r["pixel_spacing"], np.linalg.norm(affine[:3, :2], axis=0))
        assert r["frame_of_reference_uid"].startswith("2.25.")


# --- broken series ------------------------------------------------------------------------------------


def _ct5n_rows() -> list[dict[str, Any]]:
    return [r for p in SERIES["CT5N/2062+4"] for r in _rows(p)]


def test_a_removed_slice_is_flagged_missing_not_silently_stacked() -> None:
    rows = _ct5n_rows()
    plan, _ = _assemble(rows)
    order = plan.volumes[0].image_ids
    broken = [r for r in rows if r["image_id"] != order[2]]
    (v,) = plan_series([slice_info(r) for r in broken]).volumes
    assert v.missing_slices == 1 and v.status == "flagged" and v.flags == (FLAG_MISSING,)
    assert not v.irregular_spacing and v.max_spacing_deviation == pytest.approx(1.0)
    # the gap stays visible in the slice positions, the ordered ids skip the removed frame
    full = plan.volumes[0].slice_positions
    assert v.slice_positions == (full[0], full[1], full[3], full[4])


def test_a_slice_of_another_orientation_splits_the_series(tmp_path: Path) -> None:
    import pydicom

    paths = SERIES["CT5N/2062+4"]
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal
    odd = tmp_path / "odd.dcm"
    ds.save_as(odd)
    rows = [r for p in [paths[0], odd, *paths[2:]] for r in _rows(p)]
    plan = plan_series([slice_info(r) for r in rows])
    (v,) = plan.volumes
    assert v.shape_xyz[2] == 4 and v.mixed_geometry and FLAG_MIXED in v.flags and v.status == "flagged"
    odd_id = next(r["image_id"] for r in rows if r["_path"] == odd)
    assert odd_id not in v.image_ids
    assert plan.skipped[0].image_ids == (odd_id,) and plan.skipped[0].reason == SKIP_TOO_FEW
    # with a looser tolerance it would still be split: 90 degrees is no rounding error
    assert (
        len(
            plan_series([slice_info(r) for r in rows], AssemblyOptions(orientation_tolerance=0.1))
            .volumes[0]
            .image_ids
        )
        == 4
    )


def test_irregular_spacing_and_duplicates_are_flagged() -> None:
    rows = _ct5n_rows()
    plan, _ = _assemble(rows)
    order = plan.volumes[0].image_ids
    moved = [dict(r) for r in rows]
    for r in moved:
        if r["image_id"] == order[2]:
            ori = np.asarray(r["image_orientation"])
            n = np.cross(ori[:3], ori[3:])
            gap = plan.volumes[0].slice_positions[1] - plan.volumes[0].slice_positions[0]
            r["image_position"] = list(np.asarray(r["image_position"]) + 0.3 * gap * n)
    (v,) = plan_series([slice_info(r) for r in moved]).volumes
    assert v.irregular_spacing and v.max_spacing_deviation == pytest.approx(0.3, abs=1e-6)
    assert v.flags == (FLAG_IRREGULAR,)
    loose = plan_series([slice_info(r) for r in moved], AssemblyOptions(spacing_tolerance=0.5)).volumes[0]
    assert not loose.irregular_spacing and loose.status == "ok"
    # another instance at the position of slice 1: one of the two is dropped and counted
    twin = dict(rows[0])
    twin.update(image_id="twin", sop_instance_uid="1.2.3.4", file_sha256="x")
    first = next(r for r in rows if r["image_id"] == order[1])
    twin["image_position"] = first["image_position"]
    (v,) = plan_series([slice_info(r) for r in [*rows, twin]]).volumes
    assert v.duplicate_slices == 1 and v.flags == (FLAG_DUPLICATE,) and len(v.image_ids) == 5


# --- the Spark stage ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume_lake(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lake with a few real series, ``volumes`` run twice (the second a rerun), then on processed frames.

    The ``images`` table holds the rows ingest's per-file function (:func:`process_file`) makes of
    the files, written as ingest writes them (partitioned by modality) in one Spark job: ingest's
    own jobs are tested in test_ingest_spark (which checks the geometry columns too), and the test
    budget is tight. ``max_volume_bytes`` = 10000: anatomical.nii (33x41x25 int16, 67650 bytes) is over it.
    """
    from medimg_spark.config_models import VolumesConfig
    from medimg_spark.schema import IMAGES_SCHEMA
    from medimg_spark.volumes.stage import assemble_volumes

    files = [p for label in ("CT5N/2062+4", "CT2/17106+3", "CT2N/6293+1") for p in SERIES[label]]
    files += [_pkg_dir("pydicom") / "data" / "test_files" / "rtdose.dcm", NIB_DATA / "anatomical.nii"]
    rows = [{k: r.get(k) for k in IMAGES_SCHEMA.names} for p in files for r in _rows(p)]
    out = str(tmp_path_factory.mktemp("lake"))
    spark.createDataFrame(rows, IMAGES_SCHEMA).write.partitionBy("modality").parquet(f"{out}/images")
    inputs = tmp_path_factory.mktemp("recipes")
    cfg = VolumesConfig(max_volume_bytes=10000)
    first = assemble_volumes(spark, out, cfg)
    again = assemble_volumes(spark, out, cfg)
    from medimg_spark.preprocess import preprocess

    recipe = inputs / "half.yaml"
    recipe.write_text(
        "name: half\nsteps:\n  - op: resize\n    rows: 8\n    cols: 8\n    keep_aspect: false\n"
    )
    preprocess(spark, out, str(recipe), where="modality = 'CT'")
    processed = assemble_volumes(spark, out, cfg, table="processed")
    return {"out": out, "first": first, "again": again, "cfg": cfg, "processed": processed}


def test_volumes_stage_rows_equal_the_core_result(spark: Any, volume_lake: dict[str, Any]) -> None:
    from pyspark.testing import assertDataFrameEqual

    from medimg_spark.schema import IMAGES_SCHEMA, VOLUMES_SCHEMA
    from medimg_spark.volumes.assemble import AssemblyOptions, volume_id
    from medimg_spark.volumes.model import volume_from_row

    out = volume_lake["out"]
    images = spark.read.schema(IMAGES_SCHEMA).parquet(f"{out}/images").toPandas()
    expected_rows = []
    expected_vox = {}
    limit = volume_lake["cfg"].max_volume_bytes
    for _, part in images.groupby("series_instance_uid"):
        rows = [dict(r) for r in part.to_dict("records")]
        if sum(r["rows"] * r["cols"] * r["channels"] * np.dtype(r["dtype"]).itemsize for r in rows) > limit:
            continue  # over max_volume_bytes: quarantined (anatomical.nii)
        plan = plan_series([slice_info(r) for r in rows], AssemblyOptions())
        arrays = {r["image_id"]: to_array(r) for r in rows}
        for v in plan.volumes:
            vid = volume_id("images", None, v.image_ids)
            expected_rows.append(
                (vid, list(v.image_ids), v.shape_xyz[2], v.status, list(v.flags), v.missing_slices)
            )
            expected_vox[vid] = stack_volume(v, arrays)
    got = spark.read.schema(VOLUMES_SCHEMA).parquet(f"{out}/volumes").where("source_table = 'images'")
    cols = ["volume_id", "image_ids", "dim_z", "status", "flags", "missing_slices"]
    assertDataFrameEqual(got.select(*cols), spark.createDataFrame(expected_rows, got.select(*cols).schema))
    for row in got.collect():
        ours = volume_from_row(row)
        assert_same_volume(ours, expected_vox[row["volume_id"]])
        assert row["source_table"] == "images" and row["volumes_run_id"] == volume_lake["first"]["run_id"]
    # CT5N ok, CT2 flagged (missing slices), rtdose ok; CT2N gives none (two orientations)
    assert sorted((r["dim_z"], r["status"]) for r in got.collect()) == [(4, "flagged"), (5, "ok"), (15, "ok")]
    first = volume_lake["first"]
    assert first["volumes_written"] == 3 and first["volumes_flagged"] == 1
    assert first["flags"] == {FLAG_MISSING: 1}
    assert first["frame_groups_left_out"] == {SKIP_TOO_FEW: 2}


def test_volumes_stage_quarantines_an_over_limit_series_and_reruns_idempotently(
    spark: Any, volume_lake: dict[str, Any]
) -> None:
    from medimg_spark.schema import QUARANTINE_SCHEMA, VOLUMES_SCHEMA

    out = volume_lake["out"]
    q = spark.read.schema(QUARANTINE_SCHEMA).parquet(f"{out}/quarantine").where("stage = 'volumes'").collect()
    assert len(q) == 25  # every slice of anatomical.nii, none of its pixels read
    assert {r["error_class"] for r in q} == {"VolumeTooLargeError"}
    assert {r["step"] for r in q} == {"size"}
    assert all("volumes.max_volume_bytes = 10000" in r["error_message"] for r in q)
    assert all(r["source_path"].endswith("anatomical.nii") for r in q)
    first, again = volume_lake["first"], volume_lake["again"]
    assert first["series_too_large"] == 1 and first["frames_quarantined"] == 25
    assert again["volumes_written"] == 0 and again["volumes_existing"] == first["volumes_planned"] == 3
    assert again["frames_quarantined"] == 0  # the quarantined frames are not tried again at the same limit
    volumes = spark.read.schema(VOLUMES_SCHEMA).parquet(f"{out}/volumes")
    assert volumes.where("source_table = 'images'").count() == 3
    import json

    saved = json.loads((Path(out) / "runs" / f"{again['run_id']}.json").read_text())
    assert saved["volumes_existing"] == 3
    from medimg_spark.volumes.stage import format_summary

    assert "volumes_written: 0" in format_summary(again) and "missing_slices=1" in format_summary(first)


def test_volumes_stage_on_processed_frames_keeps_the_field_of_view(
    spark: Any, volume_lake: dict[str, Any]
) -> None:
    """--table processed: a recipe's 8x8 frames stacked in the source volume's order; same field of view."""
    from medimg_spark.preprocess import PROCESSED_SCHEMA
    from medimg_spark.schema import VOLUMES_SCHEMA
    from medimg_spark.volumes.model import volume_from_row

    out = volume_lake["out"]
    assert volume_lake["processed"]["volumes_written"] == 2  # CT5N and CT2 (rtdose is not CT)
    rows = spark.read.schema(VOLUMES_SCHEMA).parquet(f"{out}/volumes").collect()
    source = {r["series_instance_uid"]: r for r in rows if r["source_table"] == "images"}
    frames = {
        r["image_id"]: to_array(r)
        for r in spark.read.schema(PROCESSED_SCHEMA).parquet(f"{out}/processed").collect()
    }
    done = [r for r in rows if r["source_table"] == "processed"]
    assert len(done) == 2 and all(r["recipe_name"] == "half" for r in done)
    for row in done:
        src = source[row["series_instance_uid"]]
        assert row["image_ids"] == src["image_ids"] and row["volume_id"] != src["volume_id"]
        ours, before = volume_from_row(row), volume_from_row(src)
        assert ours.shape_xyz == (8, 8, before.shape_xyz[2])
        np.testing.assert_array_equal(ours.voxels, np.stack([frames[i] for i in row["image_ids"]]))
        np.testing.assert_allclose(ours.spacing[:2], np.asarray(before.spacing[:2]) * 2)
        np.testing.assert_allclose(ours.spacing[2], before.spacing[2])
        np.testing.assert_allclose(ours.direction, before.direction)
        # the corner of the field of view (half a pixel before the first pixel's centre) stays put
        d = before.direction_matrix()
        corner = np.asarray(before.origin) - d[:, :2] @ (np.asarray(before.spacing[:2]) / 2)
        np.testing.assert_allclose(
            np.asarray(ours.origin) - d[:, :2] @ (np.asarray(ours.spacing[:2]) / 2), corner
        )


def test_volumes_arguments_and_config_fail_before_spark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad flags or ``volumes:`` keys exit 2 naming the key and the fix, before a session starts."""
    from medimg_spark.cli import EXIT_CONFIG, main
    from medimg_spark.config import parse_config

    assert main(["volumes", "--out", str(tmp_path), "--recipe", "half"]) == EXIT_CONFIG
    assert "--table processed" in capsys.readouterr().err
    for bad, key in (
        ({"max_volume_bytes": 0}, "volumes.max_volume_bytes"),
        ({"min_slice": 3}, "volumes.min_slice"),
    ):
        cfg = tmp_path / "c.yaml"
        import yaml

        cfg.write_text(yaml.safe_dump({"volumes": bad}))
        assert main(["volumes", "--out", str(tmp_path), "--config", str(cfg)]) == EXIT_CONFIG
        assert key in capsys.readouterr().err
    # the pipeline runs volumes only when listed, after ingest (and preprocess)
    assert "volumes" not in parse_config({}, "t.yaml").pipeline.stages
    stages = parse_config({"pipeline": {"stages": ["ingest", "volumes"]}}, "t.yaml").pipeline.stages
    assert stages == ["ingest", "volumes"]


def test_a_volume_whose_frames_disagree_with_the_plan_fails_typed() -> None:
    """The stack pass turns a frame of another shape into an AssemblyError row (then quarantined)."""
    import pandas as pd

    from medimg_spark.volumes.stage import build_group

    rows = _ct5n_rows()[:2]
    frames = pd.DataFrame(
        [
            {
                "volume_id": "v",
                "z": z,
                "image_id": r["image_id"],
                "rows": r["rows"],
                "cols": r["cols"],
                "channels": r["channels"],
                "dtype": r["dtype"],
                "pixels": r["pixels"],
                "dim_x": 16,
                "dim_y": 16,
                "dim_z": 2,
                "v_channels": 1,
                "rescale_per_slice": False,
                "f_slope": None,
                "f_intercept": None,
            }
            for z, r in enumerate(rows)
        ]
    )
    ok = build_group(frames.assign(dim_y=16)).iloc[0]
    assert ok["ok"] and ok["dtype"] == rows[0]["dtype"] and len(ok["voxels"]) == 2 * 16 * 16 * 2
    bad = build_group(frames.assign(dim_y=8)).iloc[0]
    assert not bad["ok"] and bad["error_class"] == "AssemblyError"
    assert "expects (8, 16)" in bad["error_message"]
