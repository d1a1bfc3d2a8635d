"""preprocess / quality_report through Spark equal the plain-Python recipe on the same real frames."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.io.pixels import decode, encode
from medimg_spark.ops import apply_recipe, load_recipe
from medimg_spark.preprocess import PROCESSED_SCHEMA, format_quality_table, preprocess, quality_report
from medimg_spark.quality import QUALITY_KEYS, paired_metrics, quality_metrics
from medimg_spark.schema import IMAGES_SCHEMA, QUARANTINE_SCHEMA

RECIPES = Path(__file__).resolve().parents[1] / "medimg_spark" / "resources" / "recipes"


def _row(image_id: str, arr: np.ndarray, modality: str, **meta: Any) -> dict[str, Any]:
    pixels, rows, cols, channels, dtype = encode(arr)
    row: dict[str, Any] = {f.name: None for f in IMAGES_SCHEMA.fields}
    row.update(
        image_id=image_id,
        file_sha256=f"sha-{image_id}",
        source_path=f"/data/{image_id}",
        source_format="dicom" if modality != "CXR" else "npz",
        frame_index=0,
        n_frames=1,
        modality=modality,
        rows=rows,
        cols=cols,
        channels=channels,
        dtype=dtype,
        pixels=pixels,
        ingest_run_id="ingest-test",
    )
    row.update(meta)
    return row


@pytest.fixture(scope="module")
def frames(sample_npz: Path) -> list[dict[str, Any]]:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    cxr = np.load(sample_npz)
    rows = [
        _row(
            "ct-0",
            ct.pixel_array,
            "CT",
            rescale_slope=float(ct.RescaleSlope),
            rescale_intercept=float(ct.RescaleIntercept),
            photometric="MONOCHROME2",
            pixel_spacing=[float(v) for v in ct.PixelSpacing],
        ),
        _row(
            "mr-0",
            mr.pixel_array,
            "MR",
            window_center=float(mr.WindowCenter),
            window_width=float(mr.WindowWidth),
            photometric="MONOCHROME2",
        ),
        _row("constant", np.full((16, 16), 7, np.uint8), "CXR", label="0", split="val"),
        _row("one-pixel", np.array([[3]], np.uint16), "CT"),
        _row("all-nan", np.full((8, 8), np.nan, np.float32), "MR"),
    ]
    for i in range(4):
        label = str(int(cxr["val_labels"][i, 0]))
        rows.append(_row(f"cxr-{i}", cxr["val_images"][i], "CXR", label=label, split="val"))
    return rows


@pytest.fixture(scope="module")
def out_dir(spark: Any, frames: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    df = spark.createDataFrame(frames, IMAGES_SCHEMA)
    df.write.partitionBy("modality").parquet(str(out / "images"))
    return out


def _expected(recipe_path: Path, frames: list[dict[str, Any]]) -> dict[str, Any]:
    recipe = load_recipe(recipe_path)
    out = {}
    for f in frames:
        img = decode(f["pixels"], f["rows"], f["cols"], f["channels"], f["dtype"])
        try:
            out[f["image_id"]] = (img, *apply_recipe(recipe, img, f))
        except Exception as exc:
            out[f["image_id"]] = exc
    return out


def _same_metrics(spark_struct: Any, python: dict[str, float]) -> bool:
    for k in QUALITY_KEYS:
        a, b = spark_struct[k], python[k]
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            return False
    return True


def test_spark_equals_plain_python_and_rerun_is_idempotent(
    spark: Any, out_dir: Path, frames: list[dict[str, Any]]
) -> None:
    recipe_path = RECIPES / "denoise.yaml"
    recipe = load_recipe(recipe_path)
    summary = preprocess(spark, str(out_dir), str(recipe_path))
    assert summary["frames_selected"] == len(frames)
    assert summary["frames_processed"] == 6
    assert summary["frames_quarantined"] == 3
    assert summary["quarantined_by_error_class"] == {"EmptyFrameError": 3}

    processed = spark.read.schema(PROCESSED_SCHEMA).parquet(str(out_dir / "processed"))
    rows = {r["image_id"]: r for r in processed.collect()}
    expected = _expected(recipe_path, frames)
    assert set(rows) == {"ct-0", "mr-0", "cxr-0", "cxr-1", "cxr-2", "cxr-3"}
    for image_id, r in rows.items():
        original, image, mask = expected[image_id]
        got = decode(r["pixels"], r["rows"], r["cols"], r["channels"], r["dtype"])
        assert got.dtype == image.dtype and np.array_equal(got, image), image_id
        assert mask is not None
        assert np.array_equal(np.frombuffer(r["mask"], np.uint8).reshape(r["rows"], r["cols"]), mask)
        assert _same_metrics(r["quality_before"], quality_metrics(original))
        assert _same_metrics(r["quality_after"], paired_metrics(original, image, recipe.keeps_units)[1])
        trace: list[str] = []
        apply_recipe(recipe, original, next(f for f in frames if f["image_id"] == image_id), trace)
        assert r["recipe_trace"] == ("; ".join(trace) if trace else None)
        assert r["recipe_name"] == "denoise" and r["recipe_hash"] == recipe.hash
        assert r["preprocess_run_id"] == summary["run_id"]
    assert rows["cxr-1"]["label"] == frames[6]["label"] and rows["cxr-1"]["split"] == "val"
    assert rows["ct-0"]["modality"] == "CT"

    q = spark.read.schema(QUARANTINE_SCHEMA).parquet(str(out_dir / "quarantine")).collect()
    by_path = {r["source_path"]: r for r in q}
    assert set(by_path) == {"/data/constant", "/data/one-pixel", "/data/all-nan"}
    for r in q:
        assert r["stage"] == "preprocess" and r["step"] == "0:flag_empty"
        assert r["error_class"] == "EmptyFrameError"
        assert r["ingest_run_id"] == summary["run_id"]
        assert f"recipe_hash={recipe.hash}" in r["error_message"]
    assert "constant" in by_path["/data/constant"]["error_message"]
    assert "smaller than" in by_path["/data/one-pixel"]["error_message"]
    assert "NaN" in by_path["/data/all-nan"]["error_message"]

    again = preprocess(spark, str(out_dir), str(recipe_path))
    assert again["frames_processed"] == 0 and again["frames_quarantined"] == 0
    assert again["frames_skipped"] == len(frames)
    assert spark.read.parquet(str(out_dir / "processed")).count() == 6
    assert spark.read.parquet(str(out_dir / "quarantine")).count() == 3


def test_rerun_skips_done_frames_without_broadcast(
    spark: Any, out_dir: Path, frames: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A done-set over the broadcast limit takes Spark's own join, with the same result."""
    import medimg_spark.preprocess as pre

    recipe_path = str(RECIPES / "denoise.yaml")
    preprocess(spark, str(out_dir), recipe_path)  # every frame done (here or by the test above)
    monkeypatch.setattr(pre, "_BROADCAST_DONE_IDS", 0)
    again = preprocess(spark, str(out_dir), recipe_path)
    assert again["frames_processed"] == 0 and again["frames_quarantined"] == 0
    assert again["frames_skipped"] == len(frames)
    assert spark.read.parquet(str(out_dir / "processed")).count() == 6


def test_where_filter_and_non_segmenting_recipe(
    spark: Any, out_dir: Path, frames: list[dict[str, Any]]
) -> None:
    recipe_path = RECIPES / "ct_lung.yaml"
    summary = preprocess(spark, str(out_dir), str(recipe_path), where="modality = 'CT'")
    assert summary["frames_selected"] == 2
    assert summary["frames_processed"] == 1 and summary["frames_quarantined"] == 1
    df = spark.read.schema(PROCESSED_SCHEMA).parquet(str(out_dir / "processed"))
    r = df.where("recipe_name = 'ct_lung'").collect()
    assert len(r) == 1 and r[0]["mask"] is None and r[0]["dtype"] == "float32"
    _, image, mask = _expected(recipe_path, frames[:1])["ct-0"]
    assert mask is None
    assert np.array_equal(decode(r[0]["pixels"], r[0]["rows"], r[0]["cols"], 1, "float32"), image)

    report = quality_report(spark, str(out_dir))
    on_disk = json.loads((out_dir / "metrics" / "quality.json").read_text())
    assert on_disk["groups"] == report["groups"]
    keys = {(g["recipe_name"], g["modality"]): g for g in report["groups"]}
    assert set(keys) == {("denoise", "CT"), ("denoise", "MR"), ("denoise", "CXR"), ("ct_lung", "CT")}
    cxr = keys[("denoise", "CXR")]
    assert cxr["frames"] == 4 and list(cxr["metrics"]) == list(QUALITY_KEYS)
    sharp = cxr["metrics"]["sharpness"]
    assert sharp["count"] == 4 and sharp["direction"] == "higher"
    befores = sorted(
        quality_metrics(decode(f["pixels"], 28, 28, 1, "uint8"))["sharpness"] for f in frames[5:]
    )
    assert sharp["before"]["p10"] == pytest.approx(befores[0]) and sharp["before"]["p90"] == pytest.approx(
        befores[-1]
    )
    assert 0.0 <= sharp["improved_share"] <= 1.0
    assert cxr["metrics"]["mean"]["improved_share"] is None
    table = format_quality_table(report)
    assert "ct_lung" in table and "noise_sigma" in table and "modality=CXR" in table
