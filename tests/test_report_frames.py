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
NOTE = "0:gaussian: σ=0.012 below floor 0.020: skipped"
REASON = "output is constant (0.5): the recipe lost the image"
FIGURE = re.compile(r'<figure( class="degenerate")?>(.*?)<figcaption>([^<]*)</figcaption></figure>', re.S)


def _section(html_text: str, anchor: str) -> str:
    start = html_text.index(f'<section id="{anchor}">')
    return html_text[start : html_text.index("</section>", start)]


def _figures(html_text: str) -> list[tuple[bool, str, str]]:
    """(degenerate flag, body, caption) of every thumbnail pair of the thumbnails section."""
    return [(bool(d), body, cap) for d, body, cap in FIGURE.findall(_section(html_text, "thumbnails"))]


@pytest.fixture(scope="module")
def lake(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One lake and its report (a single build keeps the file fast).

    Ingest (de-identified, no OCR), a gaussian recipe ``smooth`` and the quality stage on three real MR
    files; ``processed`` is rewritten without a recipe_trace column (an older lake), then a recipe
    ``smooth_broken`` is appended: the 484×484 frame with constant pixels and a recipe_trace note, plus
    one frame quarantined as ``DegenerateOutputError`` (preprocess's format: step ``check``).
    """
    from pydicom.data import get_testdata_file
    from pyspark.sql import functions as F

    from medimg_spark.io.ingest import ingest
    from medimg_spark.preprocess import preprocess
    from medimg_spark.privacy import DeidConfig, Deidentifier, generate_key_file
    from medimg_spark.privacy.hook import IngestDeidentifier
    from medimg_spark.quality_stage import quality_report
    from medimg_spark.schema import QUARANTINE_SCHEMA

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

    processed = spark.read.parquet(str(out / "processed"))
    old = processed.drop(TRACE_COLUMN) if TRACE_COLUMN in processed.columns else processed
    old.write.parquet(str(root / "processed_old"))
    shutil.rmtree(out / "processed")
    (root / "processed_old").rename(out / "processed")
    old = spark.read.parquet(str(out / "processed"))
    frames = old.select("image_id", "rows", "cols", "dtype").collect()
    big = next(r for r in frames if r["rows"] == 484)
    constant = np.full((big["rows"], big["cols"]), 3, dtype=np.dtype(big["dtype"])).tobytes()
    (
        old.where(F.col("image_id") == big["image_id"])
        .withColumn("recipe_name", F.lit("smooth_broken"))
        .withColumn("recipe_hash", F.lit(BROKEN_HASH))
        .withColumn("pixels", F.lit(bytearray(constant)))
        .withColumn("mask", F.lit(None).cast("binary"))
        .withColumn(TRACE_COLUMN, F.lit(NOTE))
        .write.mode("append")
        .parquet(str(out / "processed"))
    )
    images = spark.read.parquet(str(out / "images")).select(
        "image_id", "source_path", "file_sha256", "frame_index", "rows"
    )
    small = images.where(F.col("rows") == 64).orderBy("image_id").first()
    spark.createDataFrame(
        [
            (
                small["source_path"],
                small["file_sha256"],
                None,
                small["frame_index"],
                "preprocess",
                "check",
                "DegenerateOutputError",
                f"recipe smooth_broken recipe_hash={BROKEN_HASH}: step check: {REASON}",
                "preprocess-20261130T000000Z-abcdef",
                None,
            )
        ],
        QUARANTINE_SCHEMA,
    ).write.mode("append").parquet(str(out / "quarantine"))
    report = build_report(spark, str(out), ReportConfig(thumbs_per_recipe=2))
    return {
        "out": out,
        "summary": report,
        "html": Path(report["path"]).read_text(encoding="utf-8"),
        "frames": frames,
        "big": big,
        "small": small,
        "source": {r["image_id"]: r["source_path"] for r in images.collect()},
        "quality": json.loads((out / "metrics" / "quality.json").read_text()),
    }


def test_real_size_frame_first_and_labels_without_ids(lake: dict[str, Any]) -> None:
    summary, text, big_id = lake["summary"], lake["html"], lake["big"]["image_id"]
    assert min(r["image_id"] for r in lake["frames"]) != big_id  # the old pick (smallest id): 64×64
    assert summary["sections"]["thumbnails"] and summary["warnings"] == []
    smooth = [(d, body, cap) for d, body, cap in _figures(text) if cap.split(" · ")[1] == "smooth"]
    assert len(smooth) == 2
    (d0, body0, cap0), (d1, body1, cap1) = smooth
    assert "484×484×1" in body0 and "64×64×1" in body1  # the real-size frame first, then another file
    assert cap0.startswith(f"MR · smooth · {file_label(lake['source'][big_id])} · id {big_id[:12]}")
    assert re.fullmatch(
        r"MR · smooth · deid-[0-9a-f]{8}…\.dcm( frame \d+/10)? · id [0-9a-f]{12} · label —", cap1
    )
    assert not d0 and not d1 and "trace:" not in body0 + body1  # no recipe_trace column: no notes
    thumbs = _section(text, "thumbnails")
    assert not re.search(r"[0-9a-f]{64}", thumbs)  # no full image id, not even in alt texts
    for name in (BIG, *SMALL):  # ingest de-identified the file names: only pseudonyms are shown
        assert Path(name).stem not in text


def test_constant_after_frame_is_flagged_and_degenerate_quarantine_listed(lake: dict[str, Any]) -> None:
    """The broken recipe's constant output carries the red flag; its quarantined frame is counted and listed."""
    figs = _figures(lake["html"])
    assert lake["summary"]["thumbnails"] == 2 * (2 + 1)
    flagged = [(body, cap) for degenerate, body, cap in figs if degenerate]
    assert [cap.split(" · ")[:2] for _, cap in flagged] == [["MR", "smooth_broken"]]
    body = flagged[0][0]
    assert "degenerate: constant (3)" in body and f"trace: {NOTE}" in body
    thumbs = _section(lake["html"], "thumbnails")
    assert "1 frame quarantined as degenerate outputs" in thumbs
    table = re.search(r'<table class="degenerate">(.*?)</table>', thumbs, re.S)
    assert table is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table.group(1))
    small = lake["small"]
    assert cells == [file_label(small["source_path"]), str(small["frame_index"]), "check", REASON]
    assert thumbs.index("smooth_broken") < thumbs.index('<table class="degenerate">')


def test_quality_summary_reads_noise_and_cnr_medians(lake: dict[str, Any]) -> None:
    (group,) = lake["quality"]["groups"]
    harm = re.search(r'<table class="harm">(.*?)</table>', _section(lake["html"], "quality"), re.S)
    assert harm is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", harm.group(1))
    noise = group["metrics"]["noise_sigma"]
    assert noise["after"]["median"] < noise["before"]["median"]  # a gaussian blur lowers the MAD σ
    assert cells[:3] == ["smooth", "MR", "12"] and cells[5] == "no"
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
