"""The report's thumbnails and quality summary on a small de-identified lake of real MR frames.

pydicom's ``MR-SIEMENS-DICOM-WithOverlays.dcm`` (484×484) is ingested with ``emri_small.dcm`` (10 frames
of 64×64) and ``MR_small.dcm`` (64×64): the thumbnails must show the real-size frame first, label frames
by modality / recipe / shortened pseudonym, flag a constant "after" frame, list frames quarantined as
``DegenerateOutputError``, show ``recipe_trace`` notes when ``processed`` has them, and still render a
lake whose ``processed`` files have no such column.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medimg_spark.config_models import ReportConfig
from medimg_spark.report import build_report
from medimg_spark.report.build import TRACE_COLUMN, file_label, harm_cell
from medimg_spark.report.images import degenerate_reason

KEY = bytes.fromhex("5a" * 32)
BIG = "MR-SIEMENS-DICOM-WithOverlays.dcm"
SMALL = ("emri_small.dcm", "MR_small.dcm")
RECIPE = "name: smooth\nsteps:\n  - op: gaussian\n    sigma: 1.0\n"
BROKEN_HASH = "b0" * 32
FIGURE = re.compile(r'<figure( class="degenerate")?>(.*?)<figcaption>([^<]*)</figcaption></figure>', re.S)


def _section(html_text: str, anchor: str) -> str:
    start = html_text.index(f'<section id="{anchor}">')
    return html_text[start : html_text.index("</section>", start)]


def _figures(html_text: str) -> list[tuple[bool, str, str]]:
    """(degenerate flag, body, caption) of every thumbnail pair of the thumbnails section."""
    return [(bool(d), body, cap) for d, body, cap in FIGURE.findall(_section(html_text, "thumbnails"))]


@pytest.fixture(scope="module")
def lake(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ingest (de-identified, no OCR), one gaussian recipe and the quality stage on three real MR files."""
    from pydicom.data import get_testdata_file

    from medimg_spark.io.ingest import ingest
    from medimg_spark.preprocess import preprocess
    from medimg_spark.privacy import DeidConfig, Deidentifier, generate_key_file
    from medimg_spark.privacy.hook import IngestDeidentifier
    from medimg_spark.quality_stage import quality_report

    root = tmp_path_factory.mktemp("report_frames")
    inp = root / "in"
    inp.mkdir()
    for name in (BIG, *SMALL):
        shutil.copy(get_testdata_file(name), inp / name)
    hook = IngestDeidentifier(
        Deidentifier(DeidConfig(ocr="off"), KEY),
        vault_dir=str(root / "vault"),
        vault_key_file=str(generate_key_file(root / "vault.key")),
    )
    out = root / "lake"
    summary = ingest(spark, [str(inp)], str(out), deidentify=hook)
    assert summary["frames_written"] == 12, summary
    recipe = root / "smooth.yaml"
    recipe.write_text(RECIPE)
    assert preprocess(spark, str(out), str(recipe))["frames_processed"] == 12
    quality_report(spark, str(out))
    return out


def _copy(lake: Path, dest: Path, spark: Any, *, drop_trace: bool) -> Path:
    """A copy of the lake; ``drop_trace`` rewrites ``processed`` without a recipe_trace column."""
    shutil.copytree(lake, dest)
    if drop_trace:
        src = spark.read.parquet(str(lake / "processed"))
        shutil.rmtree(dest / "processed")
        src.drop(TRACE_COLUMN).write.parquet(str(dest / "processed"))
    return dest


def test_real_size_frame_first_and_labels_without_ids(spark: Any, lake: Path, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    out = _copy(lake, tmp_path / "old", spark, drop_trace=True)  # an older lake: no recipe_trace column
    assert TRACE_COLUMN not in spark.read.parquet(str(out / "processed")).columns
    frames = spark.read.parquet(str(out / "processed")).select("image_id", "rows").collect()
    big_id = next(r["image_id"] for r in frames if r["rows"] == 484)
    assert min(r["image_id"] for r in frames) != big_id  # the old pick (smallest id) was a 64×64 frame
    source = {
        r["image_id"]: r["source_path"]
        for r in spark.read.parquet(str(out / "images")).select("image_id", "source_path").collect()
    }

    summary = build_report(spark, str(out), ReportConfig(thumbs_per_recipe=2))
    assert summary["sections"]["thumbnails"] and summary["warnings"] == []
    text = Path(summary["path"]).read_text(encoding="utf-8")
    figs = _figures(text)
    assert len(figs) == 2 and summary["thumbnails"] == 4
    (_, body0, cap0), (_, body1, cap1) = figs
    assert "484×484×1" in body0 and "64×64×1" in body1  # the real-size frame first, then another file
    assert cap0.startswith(f"MR · smooth · {file_label(source[big_id])} · id {big_id[:12]}")
    assert re.fullmatch(
        r"MR · smooth · deid-[0-9a-f]{8}…\.dcm( frame \d+/10)? · id [0-9a-f]{12} · label —", cap1
    )
    thumbs = _section(text, "thumbnails")
    assert not re.search(r"[0-9a-f]{64}", thumbs)  # no full image id, not even in alt texts
    assert "trace:" not in thumbs and 'class="degenerate"' not in thumbs
    for name in (BIG, *SMALL):  # ingest de-identified the file names: only pseudonyms are shown
        assert Path(name).stem not in text
    n_rows = spark.read.parquet(str(out / "processed")).where(F.col("rows") == 64).count()
    assert n_rows == 11


def test_constant_after_frame_is_flagged_and_degenerate_quarantine_listed(
    spark: Any, lake: Path, tmp_path: Path
) -> None:
    """A broken recipe's constant output carries the red flag; its quarantined frame is counted and listed."""
    from pyspark.sql import functions as F

    from medimg_spark.schema import QUARANTINE_SCHEMA

    out = _copy(lake, tmp_path / "broken", spark, drop_trace=False)
    processed = spark.read.parquet(str(out / "processed"))
    big = processed.where(F.col("rows") == 484)
    row = big.select("rows", "cols", "dtype").first()
    constant = np.full((row["rows"], row["cols"]), 3, dtype=np.dtype(row["dtype"])).tobytes()
    note = "0:gaussian: σ=0.012 below floor 0.020: skipped"
    broken = (
        big.withColumn("recipe_name", F.lit("smooth_broken"))
        .withColumn("recipe_hash", F.lit(BROKEN_HASH))
        .withColumn("pixels", F.lit(bytearray(constant)))
        .withColumn("mask", F.lit(None).cast("binary"))
    )
    if TRACE_COLUMN in broken.columns:
        broken = broken.drop(TRACE_COLUMN)
    broken.withColumn(TRACE_COLUMN, F.lit(note)).write.mode("append").parquet(str(out / "processed"))
    image = spark.read.parquet(str(out / "images")).where(F.col("rows") == 64).orderBy("image_id").first()
    reason = "output is constant (0.5): the recipe lost the image"
    spark.createDataFrame(
        [
            (
                image["source_path"],
                image["file_sha256"],
                None,
                image["frame_index"],
                "preprocess",
                "check",
                "DegenerateOutputError",
                f"recipe smooth_broken recipe_hash={BROKEN_HASH}: step check: {reason}",
                "preprocess-20261130T000000Z-abcdef",
                None,
            )
        ],
        QUARANTINE_SCHEMA,
    ).write.mode("append").parquet(str(out / "quarantine"))

    summary = build_report(spark, str(out), ReportConfig(thumbs_per_recipe=1))
    assert summary["warnings"] == []
    text = Path(summary["path"]).read_text(encoding="utf-8")
    figs = _figures(text)
    flagged = [(body, cap) for degenerate, body, cap in figs if degenerate]
    assert [cap.split(" · ")[:2] for _, cap in flagged] == [["MR", "smooth_broken"]]
    body = flagged[0][0]
    assert "degenerate: constant (3)" in body and f"trace: {note}" in body
    assert all("smooth_broken" not in cap for d, _, cap in figs if not d)  # the real recipe: no flag
    thumbs = _section(text, "thumbnails")
    assert "1 frame quarantined as degenerate outputs" in thumbs
    table = re.search(r'<table class="degenerate">(.*?)</table>', thumbs, re.S)
    assert table is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table.group(1))
    assert cells == [file_label(image["source_path"]), str(image["frame_index"]), "check", reason]
    assert thumbs.index("smooth_broken") < thumbs.index('<table class="degenerate">')


def test_quality_summary_reads_noise_and_cnr_medians(spark: Any, lake: Path) -> None:
    data = json.loads((lake / "metrics" / "quality.json").read_text())
    (group,) = data["groups"]
    summary = build_report(spark, str(lake))
    page = Path(summary["path"]).read_text(encoding="utf-8")
    harm = re.search(r'<table class="harm">(.*?)</table>', _section(page, "quality"), re.S)
    assert harm is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", harm.group(1))
    noise = group["metrics"]["noise_sigma"]
    b, a = noise["before"]["median"], noise["after"]["median"]
    assert cells[:3] == ["smooth", "MR", "12"]
    assert cells[5] == ("WORSE" if a > b else "no")
    assert a < b  # a gaussian blur lowers the MAD noise estimate of these frames
    cnr = harm_cell(group["metrics"]["cnr"], "higher")
    assert cells[10] == ("WORSE" if cnr.worse else "no")


def test_harm_cell_reads_keys_defensively() -> None:
    c = harm_cell(
        {"direction": "lower", "before": {"median": 0.02}, "after": {"median": 0.01}, "no_worse_share": 0.99},
        "lower",
    )
    assert (c.before, c.after, c.worse, c.no_worse_share) == (0.02, 0.01, False, 0.99)
    assert harm_cell({"before": {"median": 3.0}, "after": {"median": 2.5}}, "higher").worse is True
    assert harm_cell(None, "lower") == harm_cell({"before": None, "after": "x"}, "lower")
    assert harm_cell(None, "lower").worse is None


def test_file_label_shortens_pseudonyms_and_never_shows_folders() -> None:
    assert file_label("/lake/in/deid-0d446ad8924f82964b0d333b0cf0781a.dcm") == "deid-0d446ad8….dcm"
    assert file_label("s3a://bucket/x/deid-63fff012d3b42c1e8200d4628b69303a") == "deid-63fff012…"
    assert file_label("deid-1ee96c57b8e126aca39cd01ecc0a91e9.gz") == "deid-1ee96c57….gz"
    assert file_label("/data/patients/smith_john/CT_small.dcm") == "CT_small.dcm"
    long = file_label("/x/pneumoniamnist_trainval_and_test_images.npz")
    assert long.endswith("….npz") and len(long) <= 28 and long.startswith("pneumoniamnist")
    assert file_label(None) == file_label("") == "?"


def test_degenerate_reason_on_real_frames() -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ct = dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    assert degenerate_reason(ct) is None
    assert degenerate_reason(ct.astype(np.float32) / 4096) is None
    assert degenerate_reason(np.full_like(ct, 7)) == "constant (7)"
    near = ct.copy()
    near.ravel()[: int(near.size * 0.995)] = -1000  # 99.5 % one value: min-max display would hide it
    assert degenerate_reason(near) == "near-constant (98 % of pixels = -1000)"
    nan = np.full(ct.shape, np.nan, np.float32)
    assert degenerate_reason(nan) == "all values non-finite"
    nan[:40] = ct[:40]
    assert degenerate_reason(nan) == "69% of values non-finite"
    nan[:, :] = 0.5
    nan[0, 0] = np.nan
    assert degenerate_reason(nan) == "constant (0.5)"
