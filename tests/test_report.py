"""``build_report`` on a run directory made by the project's own stages from real data.

Real DICOMs shipped by pydicom, a small PneumoniaMNIST npz cut from the sample, an empty file and a
non-image file (both quarantined) go through ingest, two recipes, quality, features, train, evaluate
and both kinds of localisation; the report must parse, embed only decodable PNGs, reference nothing on
the network and show the real counts. A headless Chromium render runs when ``chromium`` is installed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from medimg_spark.report import SECTIONS, ReportError, build_report

REPO = Path(__file__).resolve().parents[1]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class PageParser(HTMLParser):
    """Checks tag balance and collects headings, resource URLs, images and tables (cell texts)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.headings: list[str] = []
        self.urls: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._heading: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.urls += [a[k] for k in ("src", "href", "action", "poster", "data") if k in a]
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)
        if tag in ("h2", "h3"):
            self._heading = []
        elif tag == "table":
            self.tables.append((a.get("class", ""), []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(
                f"</{tag}> closes <{self.stack[-1] if self.stack else None}> at {self.getpos()}"
            )
        else:
            self.stack.pop()
        if tag in ("h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1][1]:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_page(text: str) -> PageParser:
    p = PageParser()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], p.stack
    return p


def table_by_class(page: PageParser, css_class: str) -> list[list[str]]:
    found = [rows for cls, rows in page.tables if css_class in cls.split()]
    assert len(found) == 1, f"expected one table.{css_class}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def run(spark: Any, sample_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run directory built with ingest, preprocess (2 recipes), quality, features, train, evaluate, localize."""
    import pydicom.data

    from medimg_spark.features import compute_features
    from medimg_spark.io.ingest import ingest
    from medimg_spark.ml import evaluate, localize, train
    from medimg_spark.preprocess import preprocess, quality_report

    root = tmp_path_factory.mktemp("report")
    inputs = root / "in"
    inputs.mkdir()
    d = np.load(sample_npz)
    np.savez(
        inputs / "pneumonia_small.npz",
        train_images=d["train_images"][:60],
        train_labels=d["train_labels"][:60],
        val_images=d["val_images"][:30],
        val_labels=d["val_labels"][:30],
    )
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom.data.get_testdata_file(name), inputs / name)
    (inputs / "empty.dcm").write_bytes(b"")
    (inputs / "notes.dcm").write_bytes(b"this is not an image, just text " * 8)
    out = root / "out"
    ingested = ingest(spark, [str(inputs)], str(out))
    preprocess(spark, str(out), "classify", where="source_format = 'npz'")
    preprocess(spark, str(out), "chest_xray", where="source_format = 'dicom'")
    quality_report(spark, str(out))
    compute_features(spark, str(out), "processed", "pixels14", recipe="classify")
    trained = train(spark, str(out), "sk_logreg", {"params": {"C": 0.1}})
    evaluated = evaluate(spark, str(out), trained["model_path"], "val")
    localize(spark, str(out), "kmeans", {"k": 2})
    localize(spark, str(out), "lungs", {"source": "images"})
    clusters = localize(spark, str(out), "mllib_kmeans", {"k": 2})
    summary = build_report(spark, str(out))
    return {
        "out": out,
        "ingest": ingested,
        "eval": evaluated,
        "clusters": clusters,
        "summary": summary,
        "html": Path(summary["path"]).read_text(encoding="utf-8"),
    }


def test_report_is_self_contained_and_complete(run: dict[str, Any]) -> None:
    summary, text = run["summary"], run["html"]
    assert Path(summary["path"]) == run["out"] / "report" / "index.html"
    assert summary["sections"] == {a: True for a, _ in SECTIONS} and summary["sections_present"] == 6
    assert summary["warnings"] == []
    page = parse_page(text)
    for _, title in SECTIONS:
        assert title in page.headings
    assert "Not run yet" not in text
    # classify: 4 frames of the one npz; chest_xray: both DICOM frames (one per file); each before and after
    assert summary["thumbnails"] == 2 * (4 + 2)
    assert len(page.images) == summary["images"] >= summary["thumbnails"] + 3 + 2 + 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.size > 0 and min(img.shape[:2]) > 0
    assert all(not re.match(r"(?i)\s*(https?:)?//", u) for u in page.urls), page.urls
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls)
    assert not {"script", "link", "iframe", "object"} & page.tags
    assert not re.search(r"(?i)@import|url\(\s*['\"]?(https?:)?//", text)
    assert "IDENTIFIED" in text  # ingested without de-identification: the page warns


def test_report_tables_hold_the_real_counts(spark: Any, run: dict[str, Any]) -> None:
    from medimg_spark.schema import QUARANTINE_SCHEMA

    page = parse_page(run["html"])
    ing = run["ingest"]
    q = spark.read.schema(QUARANTINE_SCHEMA).parquet(str(run["out"] / "quarantine"))
    expected = sorted(
        (r["stage"], r["error_class"], str(r["count"]))
        for r in q.groupBy("stage", "error_class").count().collect()
    )
    rows = table_by_class(page, "quarantine")
    assert rows[0] == ["stage", "error_class", "count"]
    assert sorted(tuple(r) for r in rows[1:-1]) == expected
    assert (
        {cls: int(n) for _, cls, n in expected}
        == ing["quarantined_by_error_class"]
        == {
            "EmptyFileError": 1,
            "UnsupportedFormatError": 1,
        }
    )
    assert rows[-1] == ["total", "", str(ing["quarantined"])]

    runs = table_by_class(page, "runs")
    assert runs[0][:3] == ["run_id", "stage", "wall_time_s"]
    (row,) = [r for r in runs[1:] if r[0] == ing["run_id"]]
    assert row[1] == "ingest"
    for key in ("files_seen", "files_ingested", "frames_written", "quarantined"):
        assert f"{key}={ing[key]}" in row[3], (key, row[3])
    assert ing["frames_written"] == 92 and ing["files_seen"] == 5
    assert "EmptyFileError=1" in row[4]

    models = table_by_class(page, "models")
    ev = run["eval"]
    header, first = models[0], models[1]
    assert first[:2] == ["sk_logreg", "val"]
    assert first[header.index("n")] == "30"
    assert float(first[header.index("accuracy")]) == pytest.approx(ev["accuracy"], abs=1e-4)
    assert float(first[header.index("roc_auc")]) == pytest.approx(ev["roc_auc"], abs=1e-4)
    assert f"{run['clusters']['silhouette']:.4f}" in run["html"]


def test_report_draws_each_methods_regions(run: dict[str, Any]) -> None:
    """The lung fields (``lungs``) and the k-means clusters are drawn on frames, each method on its own."""
    html = run["html"]
    lungs = re.findall(r"<figcaption>([^<]*) · lungs · (\d+) regions · ([^<]*)</figcaption>", html)
    kmeans = re.findall(r"<figcaption>([^<]*) · kmeans · (\d+) regions · ([^<]*)</figcaption>", html)
    assert len(lungs) == len(kmeans) == 4
    assert all(src == "images" for _, _, src in lungs)  # lungs ran on images, kmeans on processed frames
    assert all(src.startswith("processed (") for _, _, src in kmeans)
    assert sum(n == "2" for _, n, _ in lungs) >= 3  # two lung fields on the chest X-rays


def test_missing_inputs_say_not_run_yet(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "partial"
    shutil.copytree(run["out"] / "runs", out / "runs")
    (out / "metrics").mkdir()
    (out / "metrics" / "eval_broken_val.json").write_text("{not json")
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    summary = build_report(spark, str(out))
    assert summary["sections"] == {
        "dataset": False,
        "thumbnails": False,
        "quality": False,
        "models": True,
        "localize": False,
        "runs": True,
    }
    assert summary["images"] == 0
    assert len(summary["warnings"]) == 1 and "eval_broken_val.json" in summary["warnings"][0]
    text = Path(summary["path"]).read_text(encoding="utf-8")
    page = parse_page(text)
    assert text.count("Not run yet") == 4 and run["ingest"]["run_id"] in text
    assert [t for _, t in SECTIONS] == [h for h in page.headings if h[:2] in {f"{i}." for i in range(1, 7)}]
    with pytest.raises(ReportError, match="run medimg ingest"):
        build_report(spark, str(tmp_path / "nowhere"))
    with pytest.raises(ReportError, match=r"hdfs://no-such-namenode\.invalid/runs/x: unknown host"):
        build_report(spark, "hdfs://no-such-namenode.invalid/runs/x")


def test_thumbnail_scaling_of_real_frames() -> None:
    import pydicom.data
    from pydicom import dcmread

    from medimg_spark.report.images import thumbnail, to_uint8

    ct = dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array  # int16, 128x128
    u8 = to_uint8(ct.astype(np.float32) * 3.5 - 1000)
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    np.testing.assert_array_equal(u8, to_uint8(ct))  # min-max is invariant to a positive affine map
    mask = (ct > np.median(ct)).astype(np.uint8)
    th = thumbnail(ct, mask)
    assert th.shape == (128, 128, 3) and np.any(th[..., 2] != th[..., 0])  # orange outline drawn
    big = np.tile(ct, (3, 2))  # 384 x 256 → ≤ 160 px
    assert thumbnail(big).shape[:2] == (160, 107)
    assert thumbnail(np.zeros((28, 28), np.float32)).shape == (140, 140, 3)  # tiny frames: x5 nearest


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(run: dict[str, Any], tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            Path(run["summary"]["path"]).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (2000, 1280)
    assert float(img.std()) > 20.0
    # the header band is the report's dark blue, and thumbnails (varied grey levels) were painted below it
    assert np.allclose(img[20, 640], [0x5C, 0x3B, 0x1F], atol=8)
    assert len(np.unique(img[700:].reshape(-1, 3), axis=0)) > 200
    json.dumps(run["summary"])  # the summary is plain JSON-serialisable data
