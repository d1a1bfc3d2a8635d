"""JVM-side overhead (issue 17): ingest writes the pixels once, preprocess fuses the features stage,
frame scans give every core several tasks. Real frames (pydicom's test files, PneumoniaMNIST)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from medimg_spark.features import compute_features
from medimg_spark.io.ingest import IMAGE_ROW_GROUPS, ingest
from medimg_spark.preprocess import (
    PROCESSED_SCHEMA,
    SIDE_JSON_SCHEMA,
    SIDE_PART,
    SPLIT_MAX_BYTES,
    STAGED_SCHEMA,
    TASKS_PER_CORE,
    _conf_bytes,
    frame_splits,
    preprocess,
    scan_tasks,
    staged_rows,
)
from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA

RECIPES = Path(__file__).resolve().parents[1] / "medimg_spark" / "resources" / "recipes"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, sample_npz: Path) -> Path:
    """CT_small, MR_small, six PNG chest X-rays (PneumoniaMNIST frames, 128x128) and a non-image file."""
    root = tmp_path_factory.mktemp("overhead-in")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), root / name)
    cxr = np.load(sample_npz)["val_images"]
    for i in range(6):
        cv2.imwrite(str(root / f"cxr_{i}.png"), cv2.resize(cxr[i], (128, 128), interpolation=cv2.INTER_CUBIC))
    (root / "notes.txt").write_text("not an image\n")
    return root


def _file_columns(table: Path) -> set[tuple[str, ...]]:
    """The column names of every Parquet file of ``table`` (read with pyarrow, not Spark)."""
    return {tuple(pq.read_schema(f).names) for f in sorted(table.rglob("*.parquet"))}


def test_ingest_tables_hold_exactly_their_schema(spark: Any, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    summary = ingest(spark, [str(corpus)], str(out), deidentify=None)
    assert summary["frames_written"] == 8 and summary["files_ingested"] == 8
    assert summary["quarantined"] == 1 and summary["duplicates_skipped"] == 0
    image_cols = tuple(f.name for f in IMAGES_SCHEMA.fields if f.name != "modality")  # the partition column
    assert _file_columns(out / "images") == {image_cols}
    assert _file_columns(out / "instances") == {tuple(INSTANCES_SCHEMA.names)}
    assert _file_columns(out / "quarantine") == {tuple(QUARANTINE_SCHEMA.names)}
    assert not (out / "_staging").exists()
    # the images table holds the rows the per-file reader decodes (the same decoder), moved as written
    from medimg_spark.io.datasource import register

    register(spark)
    images = spark.read.schema(IMAGES_SCHEMA).parquet(str(out / "images"))
    direct = spark.read.format("medimg").options(keep_phi="true").load(str(corpus))
    cols = [c for c in IMAGES_SCHEMA.names if c != "ingest_run_id"]
    assertDataFrameEqual(images.select(*cols).collect(), direct.select(*cols).collect())
    instances = spark.read.parquet(str(out / "instances"))
    direct_instances = (
        spark.read.format("medimg").options(table="instances", keep_phi="true").load(str(corpus))
    )
    cols = [c for c in INSTANCES_SCHEMA.names if c != "ingest_run_id"]
    assertDataFrameEqual(instances.select(*cols).collect(), direct_instances.select(*cols).collect())
    quarantine = spark.read.parquet(str(out / "quarantine")).collect()
    assert [(r.stage, r.source_path.endswith("notes.txt")) for r in quarantine] == [("parse", True)]

    # a rerun finds every file ingested: nothing written, the images table unchanged
    again = ingest(spark, [str(corpus)], str(out), deidentify=None)
    assert again["frames_written"] == 0 and again["already_ingested"] == 9
    assert spark.read.parquet(str(out / "images")).count() == 8
    assert _file_columns(out / "images") == {image_cols}


def test_ingest_with_duplicates_rewrites_only_kept_rows(spark: Any, corpus: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    shutil.copytree(corpus, src)
    shutil.copy(src / "CT_small.dcm", src / "zz_copy_of_ct.dcm")  # same content: deduplicated
    out = tmp_path / "lake"
    summary = ingest(spark, [str(src)], str(out), deidentify=None)
    assert summary["duplicates_skipped"] == 1 and summary["frames_written"] == 8
    image_cols = tuple(f.name for f in IMAGES_SCHEMA.fields if f.name != "modality")
    assert _file_columns(out / "images") == {image_cols}
    paths = [r.source_path for r in spark.read.parquet(str(out / "images")).select("source_path").collect()]
    assert len(paths) == 8 and not any("zz_copy" in p for p in paths)
    assert spark.read.parquet(str(out / "instances")).count() == 8


@pytest.fixture(scope="module")
def lake(spark: Any, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("overhead-lake") / "lake"
    ingest(spark, [str(corpus)], str(out), deidentify=None)
    return out


def _copy(lake: Path, dest: Path) -> Path:
    shutil.copytree(lake, dest)
    return dest


@pytest.mark.parametrize("recipe", ["chest_xray", "ct_lung"])
def test_fused_features_equal_separate_stages(spark: Any, lake: Path, tmp_path: Path, recipe: str) -> None:
    where = "modality = 'CT'" if recipe == "ct_lung" else "modality <> 'CT'"
    path = str(RECIPES / f"{recipe}.yaml")
    sep, fused = _copy(lake, tmp_path / "sep"), _copy(lake, tmp_path / "fused")

    s_pre = preprocess(spark, str(sep), path, where=where)
    s_feat = compute_features(spark, str(sep), source="processed", feature_set="shape")
    f_pre = preprocess(spark, str(fused), path, where=where, features="shape")
    f_feat = f_pre.pop("features")  # type: ignore[typeddict-item]
    assert f_pre["frames_processed"] == s_pre["frames_processed"] > 0

    keep = ("seconds", "archived", "path")  # path: the two lakes' own features folders
    assert {k: v for k, v in f_feat.items() if k not in keep} == {
        k: v for k, v in s_feat.items() if k not in keep
    }
    read = spark.read.parquet
    assertDataFrameEqual(read(str(fused / "features")), read(str(sep / "features")))
    assert read(str(fused / "features")).schema == read(str(sep / "features")).schema  # vector metadata
    sep_rec, fused_rec = (
        {
            k: v
            for k, v in json.loads((d / "features" / "_feature_set.json").read_text()).items()
            if k != "created_at"
        }
        for d in (sep, fused)
    )
    assert fused_rec == sep_rec
    runs = ("preprocess_run_id", "processed_at")
    assertDataFrameEqual(read(str(fused / "processed")).drop(*runs), read(str(sep / "processed")).drop(*runs))
    # the staged feature columns never reach the processed table; its files are the staged frame files
    assert read(str(fused / "processed")).columns == read(str(sep / "processed")).columns
    for lake_dir in (sep, fused):
        assert _file_columns(lake_dir / "processed") == {tuple(PROCESSED_SCHEMA.names)}
        assert not (lake_dir / "_staging").exists()

    # a rerun skips every frame; the features of the frames of earlier runs come from compute_features
    again = preprocess(spark, str(fused), path, where=where, features="shape")
    assert again["frames_processed"] == 0 and again["features"]["n_images"] == s_feat["n_images"]  # type: ignore[typeddict-item]
    assertDataFrameEqual(read(str(fused / "features")), read(str(sep / "features")))


def test_fused_pipeline_run_equals_stage_by_stage(spark: Any, corpus: Path, tmp_path: Path) -> None:
    from medimg_spark.config import MedimgConfig
    from medimg_spark.pipeline import fused_recipe, resolve_recipe_path, run_pipeline

    cfg = MedimgConfig.model_validate(
        {
            "pipeline": {
                "stages": ["ingest", "preprocess", "features"],
                "inputs": [str(corpus)],
                "recipes": [{"recipe": "chest_xray", "where": "modality <> 'CT'"}],
                "features": {"source": "processed", "set": "shape"},
            }
        }
    )
    assert fused_recipe(cfg, cfg.pipeline, tmp_path) == resolve_recipe_path("chest_xray", tmp_path)
    results = run_pipeline(spark, cfg, cfg.pipeline, str(tmp_path / "run"), tmp_path)
    sep = tmp_path / "sep"
    ingest(spark, [str(corpus)], str(sep), deidentify=None)
    preprocess(spark, str(sep), str(RECIPES / "chest_xray.yaml"), where="modality <> 'CT'")
    expected = compute_features(spark, str(sep), source="processed", feature_set="shape")
    assert results["features"]["n_images"] == expected["n_images"] > 0
    assert "features" not in results["preprocess"][0]
    read = spark.read.parquet
    assertDataFrameEqual(read(str(tmp_path / "run" / "features")), read(str(sep / "features")))
    # two recipes and features named by name: the stages run one after the other (no fusion)
    two = cfg.pipeline.model_copy(
        update={
            "recipes": [
                *cfg.pipeline.recipes,
                cfg.pipeline.recipes[0].model_copy(update={"recipe": "ct_lung"}),
            ],
            "features": cfg.pipeline.features.model_copy(update={"recipe": "ct_lung"}),
        }
    )
    assert fused_recipe(cfg, two, tmp_path) is None


def test_frame_splits_give_every_core_several_even_tasks(spark: Any, tmp_path: Path) -> None:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    frames = [np.roll(cv2.resize(ct, (512, 512)), i, axis=0) for i in range(48)]  # 512 KB each
    rows = [(f"ct-{i}", f.tobytes()) for i, f in enumerate(frames)]
    table = str(tmp_path / "frames")
    (
        spark.createDataFrame(rows, "image_id string, pixels binary")
        .coalesce(1)
        .write.options(**{**IMAGE_ROW_GROUPS, "parquet.block.size": str(2 << 20)})  # row groups of 4 frames
        .parquet(table)
    )

    def per_task() -> list[int]:
        df = spark.read.parquet(table).select(F.spark_partition_id().alias("p"))
        return [r["count"] for r in df.groupBy("p").count().collect()]

    cores = spark.sparkContext.defaultParallelism
    assert len(per_task()) <= cores  # Spark's own splits: at most one per core
    with frame_splits(spark):
        counts = per_task()
    assert sum(counts) == 48
    assert len(counts) >= cores * (TASKS_PER_CORE - 1)  # several tasks per core ...
    assert max(counts) <= 48 // cores // 2  # ... none holding more than half a core's share of frames
    assert spark.conf.get("spark.sql.files.minPartitionNum", None) is None  # restored


def test_frame_splits_even_the_task_count_over_the_cores(spark: Any, tmp_path: Path) -> None:
    """35 one-frame files: 7 tasks under the default frame splits (one core idle for the last); evened, a
    multiple of the cores, every task holding frames, each frame read once, the session's settings kept."""
    import pyarrow as pa

    ct = cv2.resize(pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array, (512, 512))
    table = tmp_path / "frames"
    table.mkdir()
    for i in range(35):
        frame = np.roll(ct, 7 * i, axis=1).tobytes()
        pq.write_table(
            pa.table({"image_id": [f"ct-{i}"], "pixels": [frame]}), table / f"part-{i:02d}.parquet"
        )
    scan = spark.read.parquet(str(table)).select("image_id", "pixels")
    largest = max(p.stat().st_size for p in table.iterdir())
    cores = spark.sparkContext.defaultParallelism
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.minPartitionNum")
    before = [spark.conf.get(k, None) for k in keys]
    with frame_splits(spark):
        plain = scan_tasks(scan)
    assert plain % cores != 0  # the case evening is for
    with frame_splits(spark, scan=scan, row_group_bytes=largest):
        evened = scan_tasks(scan)
        per_task = [r["count"] for r in scan.groupBy(F.spark_partition_id()).count().collect()]
    assert evened % cores == 0
    assert len(per_task) == evened and sum(per_task) == 35 and max(per_task) - min(per_task) <= 1
    assert ids_read_once(scan) == 35
    assert [spark.conf.get(k, None) for k in keys] == before
    # 7 of those files: a task each; evening them would take splits smaller than a row group (empty tasks)
    few = spark.read.parquet(*[str(table / f"part-{i:02d}.parquet") for i in range(7)]).select("pixels")
    with frame_splits(spark, scan=few, row_group_bytes=largest):
        assert scan_tasks(few) == 7
    assert [spark.conf.get(k, None) for k in keys] == before


def ids_read_once(scan: Any) -> int:
    """Distinct ids of ``scan`` after checking none is read twice."""
    counts = scan.groupBy("image_id").count()
    assert counts.where(F.col("count") != 1).count() == 0
    return int(counts.count())


def test_frame_splits_cap_the_split_size_and_keep_a_smaller_one(spark: Any) -> None:
    key = "spark.sql.files.maxPartitionBytes"
    before = spark.conf.get(key)
    assert _conf_bytes(spark, key) == 128 << 20  # Spark's default, spelled "134217728b"
    with frame_splits(spark):
        assert _conf_bytes(spark, key) == SPLIT_MAX_BYTES  # large tables: tasks of about 60 CT frames
    assert spark.conf.get(key) == before
    with frame_splits(spark, max_split_bytes=None):  # the features stage: the session's split size
        assert _conf_bytes(spark, key) == 128 << 20
    spark.conf.set(key, "8m")
    try:
        with frame_splits(spark):
            assert _conf_bytes(spark, key) == 8 << 20  # a smaller setting of the session is kept
    finally:
        spark.conf.set(key, before)


def test_side_rows_carry_quarantine_fields_and_feature_values_exactly(spark: Any) -> None:
    """The JSON of a side row reaches Spark with every double bit for bit (NaN and infinities included)."""
    import datetime as dt

    values = [0.1, 1 / 3, -0.0, 1e-310, 1.7976931348623157e308, float("nan"), float("inf"), -float("inf")]
    ok = {name: None for name in PROCESSED_SCHEMA.names} | {"image_id": "a", "ok": True, "label": "1"}
    ok |= {"split": "val", "_features": values, "_feature_error": None}
    bad = {"image_id": "b", "ok": False, "source_path": "/x/b.dcm", "file_sha256": "f" * 64}
    bad |= {"frame_index": 2, "step": "0:flag_empty", "error_class": "EmptyFrameError"}
    bad |= {"error_message": 'constant frame "7"; recipe_hash=abc'}
    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    rows = staged_rows([ok, bad], True, now)
    assert [r["_part"] for r in rows] == ["frame", SIDE_PART, SIDE_PART]
    assert rows[0]["processed_at"] == now and set(rows[0]) == set(STAGED_SCHEMA.names)
    assert staged_rows([ok], False, now)[1:] == []  # no feature side row without a fused run

    df = spark.createDataFrame(
        [(r["image_id"], r["pixels"]) for r in rows[1:]], "image_id string, pixels binary"
    )
    side = df.select("image_id", F.from_json(F.col("pixels").cast("string"), SIDE_JSON_SCHEMA).alias("j"))
    got = {r["image_id"]: r["j"] for r in side.collect()}
    feats = got["a"]
    assert feats["kind"] == "features" and feats["label"] == "1" and feats["split"] == "val"
    assert np.array_equal(np.array(feats["values"]), np.array(values), equal_nan=True)
    assert np.array(feats["values"]).tobytes()[:40] == np.array(values).tobytes()[:40]  # -0.0 and subnormal
    q = got["b"]
    assert q["kind"] == "quarantine" and q["values"] is None
    assert (q["source_path"], q["file_sha256"], q["frame_index"], q["step"]) == (
        "/x/b.dcm",
        "f" * 64,
        2,
        "0:flag_empty",
    )
    assert (q["error_class"], q["error_message"]) == (
        "EmptyFrameError",
        'constant frame "7"; recipe_hash=abc',
    )


def test_run_concurrently_overlaps_actions_keeps_order_and_raises_after_all(spark: Any) -> None:
    """Actions from driver threads: results in the order given, the caller's job description inherited,
    the jobs of two actions overlap in time, and a failing action is raised after the others finished."""
    import threading
    import time

    from medimg_spark.session import run_concurrently

    sc = spark.sparkContext
    started: dict[str, float] = {}
    ended: dict[str, float] = {}

    def job(name: str, seconds: float) -> Any:
        def action() -> Any:
            started[name] = time.monotonic()
            desc = sc.getLocalProperty("spark.job.description")
            n = sc.parallelize(range(2), 2).map(lambda x: time.sleep(seconds) or x).sum()
            ended[name] = time.monotonic()
            return (name, desc, n, threading.current_thread().name)

        return action

    sc.setJobDescription("medimg bookkeeping test")
    try:
        first, second = run_concurrently(spark, job("a", 1.0), job("b", 0.2))
        assert first[:3] == ("a", "medimg bookkeeping test", 1) and second[:3] == (
            "b",
            "medimg bookkeeping test",
            1,
        )
        assert first[3] != second[3] != threading.current_thread().name
        assert started["b"] < ended["a"]  # b was submitted while a's job ran

        def failing() -> None:
            raise ValueError("bad action")

        ended.clear()
        with pytest.raises(ValueError, match="bad action"):
            run_concurrently(spark, failing, job("c", 0.5))
        assert "c" in ended  # waited for, not abandoned
        assert run_concurrently(spark, lambda: 7) == [7]  # one action: run in the caller's thread
    finally:
        sc.setJobDescription(None)  # type: ignore[arg-type]


def _insert_plan(spark: Any, table: str) -> str:
    """The optimized plan of a partitioned insert into ``table`` (EXPLAIN, nothing written)."""
    return str(spark.sql(f"EXPLAIN EXTENDED INSERT INTO {table} SELECT * FROM frames_view").first()[0])


def test_unsorted_partitioned_writes_skip_the_sort_keep_the_rows_and_restore_settings(
    spark: Any, lake: Path, tmp_path: Path
) -> None:
    """Inside the block a partitioned write has no sort by the partition columns in its plan (Spark keeps
    a file open per value instead), writes the same rows, also past ``writers`` values (Spark's fallback
    to sorting), and the session's settings come back afterwards."""
    from medimg_spark.session import session_conf, unsorted_partitioned_writes

    keys = ("spark.sql.optimizer.plannedWrite.enabled", "spark.sql.maxConcurrentOutputFileWriters")
    before = {k: spark.conf.get(k, None) for k in keys}
    frames = spark.read.schema(IMAGES_SCHEMA).parquet(str(lake / "images"))
    modalities = {r.modality for r in frames.select("modality").distinct().collect()}
    assert len(modalities) == 3  # CT, MR and the PNG X-rays: more values than writers=2 below
    frames.createOrReplaceTempView("frames_view")
    spark.sql(
        f"CREATE TABLE frames_part USING parquet PARTITIONED BY (modality) LOCATION '{tmp_path / 't'}' "
        "AS SELECT * FROM frames_view LIMIT 0"
    )
    try:
        assert "Sort [modality" in _insert_plan(spark, "frames_part")  # Spark's planned write sorts
        with unsorted_partitioned_writes(spark):
            assert "Sort [" not in _insert_plan(spark, "frames_part")
        for writers in (2, 16):
            out = tmp_path / f"w{writers}"
            with unsorted_partitioned_writes(spark, writers=writers):
                frames.write.partitionBy("modality").parquet(str(out))
            assert {p.name for p in out.iterdir() if p.is_dir()} == {f"modality={m}" for m in modalities}
            assertDataFrameEqual(spark.read.schema(IMAGES_SCHEMA).parquet(str(out)), frames)
    finally:
        spark.sql("DROP TABLE IF EXISTS frames_part")
        spark.catalog.dropTempView("frames_view")
    assert {k: spark.conf.get(k, None) for k in keys} == before

    # session_conf: an unset key is unset again, a set one gets its value back, also after an error
    spark.conf.set("spark.sql.files.openCostInBytes", "1234567")
    settings = {"spark.sql.files.openCostInBytes": "1", "spark.sql.files.minPartitionNum": "3"}
    with pytest.raises(RuntimeError, match="inside"), session_conf(spark, settings):
        assert spark.conf.get("spark.sql.files.minPartitionNum") == "3"
        raise RuntimeError("inside")
    assert spark.conf.get("spark.sql.files.openCostInBytes") == "1234567"
    assert spark.conf.get("spark.sql.files.minPartitionNum", None) is None
    spark.conf.unset("spark.sql.files.openCostInBytes")


def _tables(spark: Any, out: Path) -> dict[str, Any]:
    """The lake's preprocess outputs without their run ids and timestamps."""
    read = spark.read.parquet
    runs = ("preprocess_run_id", "processed_at")
    tables = {
        "processed": read(str(out / "processed")).drop(*runs),
        "quarantine": read(str(out / "quarantine")).drop("ingest_run_id", "quarantined_at"),
        "features": read(str(out / "features")),
    }
    for old in sorted((out / "feature_sets").glob("*")) if (out / "feature_sets").is_dir() else []:
        tables[f"feature_sets/{old.name}"] = read(str(old))
    return tables


def _same_summary(a: dict[str, Any], b: dict[str, Any]) -> None:
    drop = ("run_id", "seconds", "features")
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    if "features" in a or "features" in b:
        keep = ("seconds", "archived", "path")
        fa, fb = a["features"], b["features"]
        assert {k: v for k, v in fa.items() if k not in keep} == {
            k: v for k, v in fb.items() if k not in keep
        }


def test_one_pass_over_several_recipes_equals_one_run_per_recipe(
    spark: Any, lake: Path, tmp_path: Path
) -> None:
    """preprocess_passes: the same processed, quarantine and features rows as preprocess() per recipe, from
    one Spark job (one run id); a recipe named twice runs in a later round; a rerun skips everything."""
    from medimg_spark.preprocess import RecipePass, preprocess_passes

    ct, cxr = str(RECIPES / "ct_lung.yaml"), str(RECIPES / "chest_xray.yaml")
    # ct_lung on every frame (the PNG X-rays and the MR among them), chest_xray on the non-CT frames
    passes = [RecipePass(ct, None, "shape"), RecipePass(cxr, "modality <> 'CT'", "shape")]
    seq, one = _copy(lake, tmp_path / "seq"), _copy(lake, tmp_path / "one")
    expected = [preprocess(spark, str(seq), p.recipe, where=p.where, features=p.features) for p in passes]
    got = preprocess_passes(spark, str(one), passes)
    assert [s["recipe_name"] for s in got] == ["ct_lung", "chest_xray"]
    assert got[0]["frames_selected"] == 8 and got[1]["frames_selected"] == 7
    assert got[0]["frames_processed"] > 0 and got[1]["frames_processed"] > 0
    # ct_lung quarantines a frame (a degenerate output): the failures are told apart by recipe
    assert got[0]["frames_quarantined"] >= 1 and got[1]["frames_quarantined"] == 0
    for a, b in zip(got, expected, strict=True):
        _same_summary(dict(a), dict(b))
    assert len({s["run_id"] for s in got}) == 1
    t_one, t_seq = _tables(spark, one), _tables(spark, seq)
    assert sorted(t_one) == sorted(t_seq)
    for name, df in t_one.items():
        assertDataFrameEqual(df, t_seq[name])
    processed = spark.read.parquet(str(one / "processed"))
    assert processed.select("preprocess_run_id").distinct().count() == 1  # one job wrote both recipes
    assert _file_columns(one / "processed") == {tuple(PROCESSED_SCHEMA.names)}
    assert not (one / "_staging").exists()

    # a rerun: every frame of both recipes is done
    again = preprocess_passes(spark, str(one), passes)
    assert [s["frames_processed"] for s in again] == [0, 0]
    assert [s["frames_quarantined"] for s in again] == [0, 0]
    assert [s["frames_skipped"] for s in again] == [s["frames_selected"] for s in again]
    assert processed.count() == spark.read.parquet(str(one / "processed")).count()

    # the same recipe twice (two filters): the second pass runs after the first, as two calls would
    twice = [RecipePass(cxr, "modality = 'CT'"), RecipePass(cxr, None)]
    seq2, one2 = _copy(lake, tmp_path / "seq2"), _copy(lake, tmp_path / "one2")
    expected2 = [preprocess(spark, str(seq2), p.recipe, where=p.where) for p in twice]
    got2 = preprocess_passes(spark, str(one2), twice)
    for a, b in zip(got2, expected2, strict=True):
        _same_summary(dict(a), dict(b))
    assert (
        got2[1]["frames_skipped"] == got2[0]["frames_selected"] == 1
        and got2[0]["run_id"] != got2[1]["run_id"]
    )
    runs = ("preprocess_run_id", "processed_at")
    read = spark.read.parquet
    assertDataFrameEqual(read(str(one2 / "processed")).drop(*runs), read(str(seq2 / "processed")).drop(*runs))


def test_preprocess_passes_checks_every_recipe_before_spark_work(
    spark: Any, lake: Path, tmp_path: Path
) -> None:
    from medimg_spark.errors import ConfigError
    from medimg_spark.preprocess import RecipePass, preprocess_passes

    out = _copy(lake, tmp_path / "bad")
    with pytest.raises(ConfigError, match="no recipe"):
        preprocess_passes(spark, str(out), [])
    with pytest.raises(ConfigError, match="no_such_recipe"):
        preprocess_passes(spark, str(out), [RecipePass("chest_xray"), RecipePass("no_such_recipe")])
    assert not (out / "processed").exists()
