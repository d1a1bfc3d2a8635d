"""Odd input paths, the output lake and the run log (issue #11, items 2, 6, 7, 8), on real DICOM files.

Every input file ends as exactly one outcome (ingested, a duplicate of an ingested file, or a quarantine
row with a typed reason), whatever its name: spaces and URI-escaped characters, a colon, bytes that are
not UTF-8, an empty file; a folder symlink cycle is walked once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.cli import EXIT_CONFIG, EXIT_OK, main
from medimg_spark.config import IngestConfig
from medimg_spark.errors import ConfigError
from medimg_spark.io.files import local_path
from medimg_spark.io.ingest import (
    LAKE_MARKER,
    NotALakeError,
    ingest,
    ingest_incremental,
    prepare_lake,
    read_labels,
)
from medimg_spark.io.listing import hadoop_path, list_local

#: Distinct real DICOMs (distinct content: no file is a duplicate of another).
DICOMS = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "SC_rgb.dcm",
    "US1_UNCR.dcm",
    "MR_small_RLE.dcm",
    "emri_small.dcm",
    "liver_1frame.dcm",
    "SC_rgb_rle.dcm",
    "rtplan.dcm",
    "MR_small_implicit.dcm",
    "SC_rgb_jpeg.dcm",
]
#: Files (relative paths) of the odd-names tree, each a different DICOM.
ODD_NAMES = [
    "Test Data/ct.dcm",
    "a#b/x.dcm",
    "x%20y/x.dcm",
    "[br]/x.dcm",
    "{c}/x.dcm",
    "q?/x.dcm",
    "a:b.dcm",
    "percent%20enc.dcm",
    "c:d/z.dcm",
    "cyc/inner/y.dcm",
]
BAD_NAME = b"\xff\xfe.dcm"  # not UTF-8
EMPTY_NAME = "empty space.dcm"


def make_odd_tree(root: Path) -> list[str]:
    """Build the odd-names tree under ``root``; return the Hadoop path strings of its regular files."""
    names = iter(DICOMS)
    for rel in ODD_NAMES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(next(names)), root / rel)
    (root / EMPTY_NAME).write_bytes(b"")
    with open(os.fsencode(root) + b"/" + BAD_NAME, "wb") as fh:
        fh.write(Path(get_testdata_file(next(names))).read_bytes())
    os.symlink("..", root / "cyc" / "inner" / "loop")  # a cycle: links to its own grandparent
    os.symlink(root / "a#b", root / "cyc" / "again")  # a folder also reached through its real path
    (root / "_hidden.dcm").write_bytes(b"skipped, as everywhere in Spark")
    files = []
    for dirpath, _, filenames in os.walk(os.fsencode(root)):  # symlinks to folders not followed
        files += [os.path.join(dirpath, f) for f in filenames if not f.startswith((b"_", b"."))]
    return sorted("file:" + os.fsdecode(f) for f in files)


def test_hadoop_path_decodes_uris_exactly_once() -> None:
    assert hadoop_path("file:///d/Test%20Data/x.dcm") == "file:/d/Test Data/x.dcm"
    assert hadoop_path("file:///d/x%2520y/a%23b%3F.dcm") == "file:/d/x%20y/a#b?.dcm"
    assert hadoop_path("hdfs://nn:8020/d/%5Bbr%5D") == "hdfs://nn:8020/d/[br]"
    assert hadoop_path("/d/x%20y") == "/d/x%20y"


def test_listing_walks_a_symlink_cycle_once(tmp_path: Path) -> None:
    root = tmp_path / "in"
    expected = make_odd_tree(root)
    listing = list_local([str(root)])
    found = sorted([*listing.files, *(p.path for p in listing.problems)])
    bad = "file:" + str(root) + "/\\xff\\xfe.dcm"  # the name's bytes as escapes, valid UTF-8 text
    assert found == sorted(bad if "\udcff" in p else p for p in expected)
    assert [(p.path, p.kind) for p in listing.problems] == [(bad, "name-encoding")]
    assert sorted(listing.skipped) == [f"file:{root}/cyc/again", f"file:{root}/cyc/inner/loop"]
    # Spark gets whole clean folders, and the files of folders with a problem or a link one by one.
    assert f"file:{root}/Test Data" in listing.roots and f"file:{root}/a:b.dcm" in listing.roots
    assert not any(r.startswith(f"file:{root}/cyc/inner/loop") for r in listing.roots)


def test_listing_follows_a_link_to_an_outside_folder_once(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), outside / "ct.dcm")
    root = tmp_path / "in"
    root.mkdir()
    os.symlink(outside, root / "link1")
    os.symlink(outside, root / "link2")  # the same folder again: not followed
    listing = list_local([str(root)])
    assert list(listing.files) == [f"file:{root}/link1/ct.dcm"]
    assert listing.roots == [f"file:{root}/link1"] and listing.skipped == [f"file:{root}/link2"]


@pytest.fixture(scope="module")
def odd_run(spark, tmp_path_factory) -> tuple[Path, list[str], dict]:
    tmp = tmp_path_factory.mktemp("odd")
    root = tmp / "in"
    expected = make_odd_tree(root)
    labels = tmp / "labels.csv"
    labels.write_text(
        "path,label\n"
        "in/x%20y/x.dcm,percent-folder\n"  # a name with %20 in it: matched literally
        "in/Test Data/ct.dcm,spaced\n"
        "in/no-such-file.dcm,ghost\n"  # matches no input file
    )
    cfg = IngestConfig(label_from_parent_dir=True)
    summary = ingest(spark, [str(root)], str(tmp / "out"), cfg, labels_csv=str(labels))
    return tmp / "out", expected, summary


def test_odd_names_each_file_has_exactly_one_outcome(odd_run) -> None:
    out, expected, summary = odd_run
    assert summary["files_seen"] == len(expected) == 12
    inst = pq.read_table(out / "instances", columns=["source_path"]).column(0).to_pylist()
    q = pq.read_table(out / "quarantine").to_pylist()
    outcomes = sorted(inst + [r["source_path"] for r in q if r["stage"] in ("read", "parse")])
    bad = next(p for p in expected if "\udcff" in p)
    shown = "file:" + os.path.dirname(bad)[len("file:") :] + "/\\xff\\xfe.dcm"
    assert outcomes == sorted(shown if p == bad else p for p in expected)
    assert summary["duplicates_skipped"] == 0 and summary["symlinks_skipped"] == 2
    by_path = {r["source_path"]: r for r in q}
    empty = by_path[f"file:{out.parent}/in/{EMPTY_NAME}"]
    assert (empty["error_class"], empty["stage"], empty["size_bytes"]) == ("EmptyFileError", "read", 0)
    odd = by_path[shown]
    assert odd["error_class"] == "FileNameEncodingError" and "rename it to UTF-8" in odd["error_message"]
    assert summary["quarantined_by_error_class"] == {"EmptyFileError": 1, "FileNameEncodingError": 1}
    # The colon file is ingested, not a failed run.
    assert f"file:{out.parent}/in/a:b.dcm" in inst


def test_labels_and_parent_dir_labels_of_percent_names(odd_run) -> None:
    out, _, summary = odd_run
    rows = pq.read_table(out / "images", columns=["source_path", "label"]).to_pylist()
    label = {
        Path(local_path(r["source_path"])).relative_to(out.parent / "in").as_posix(): r["label"] for r in rows
    }
    assert label["x%20y/x.dcm"] == "percent-folder"
    assert label["Test Data/ct.dcm"] == "spaced"
    assert label["a#b/x.dcm"] == "a#b" and label["q?/x.dcm"] == "q?"  # parent folder, name not cut at # or ?
    assert "percent%20enc.dcm" in label and label["percent%20enc.dcm"] == "in"
    assert summary["labels_unmatched"] == 1


def test_odd_names_rerun_adds_nothing_and_leaves_no_staging(spark, odd_run) -> None:
    out, _, _ = odd_run
    assert not (out / "_staging").exists()
    assert json.loads((out / LAKE_MARKER).read_text())["format"] == "medimg-lake"
    before = {t: pq.read_table(out / t).num_rows for t in ("images", "instances", "quarantine")}
    again = ingest(spark, [str(out.parent / "in")], str(out))
    assert again["quarantined"] == 0 and again["files_ingested"] == 0 and again["files_seen"] == 12
    assert before == {t: pq.read_table(out / t).num_rows for t in before}


def test_incremental_odd_names_each_file_once(spark, tmp_path: Path) -> None:
    root = tmp_path / "in data"
    root.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct a#b.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "x%20y.dcm")
    shutil.copy(get_testdata_file("SC_rgb.dcm"), root / "a:b.dcm")
    (root / EMPTY_NAME).write_bytes(b"")
    sub = root / "sub"
    sub.mkdir()
    shutil.copy(get_testdata_file("rtplan.dcm"), sub / "plan.dcm")
    os.symlink("..", sub / "loop")
    with open(os.fsencode(root) + b"/" + BAD_NAME, "wb") as fh:  # the streaming source does not list it
        fh.write(Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes())
    out = tmp_path / "out"
    first = ingest_incremental(spark, [str(root)], str(out))
    assert first["files_seen"] == 6 and first["files_ingested"] == 4 and first["symlinks_skipped"] == 1
    assert first["quarantined_by_error_class"] == {"EmptyFileError": 1, "FileNameEncodingError": 1}
    paths = pq.read_table(out / "instances", columns=["source_path"]).column(0).to_pylist()
    assert not any("/loop/" in p for p in paths) and len(paths) == len(set(paths)) == 4
    again = ingest_incremental(spark, [str(root)], str(out))
    assert again["files_seen"] == 0 and again["quarantined"] == 0
    assert pq.read_table(out / "quarantine").num_rows == 2
    assert not (out / "_staging").exists()


# ------------------------------------------------------------------------------------------------
# The output directory: a medimg lake
# ------------------------------------------------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.run(
        [sys.executable, "-m", "medimg_spark.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_foreign_out_is_refused_before_spark_starts(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    foreign = tmp_path / "home"
    (foreign / "_staging" / "decoded-mine").mkdir(parents=True)
    (foreign / "_staging" / "decoded-mine" / "thesis.tex").write_text("not medimg's")
    (foreign / "instances").mkdir()
    (foreign / "instances" / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(foreign)) for p in foreign.rglob("*"))
    started = time.perf_counter()
    for verb in (["ingest", str(src)], ["ingest", str(src), "--incremental"]):
        proc = _cli(*verb, "--out", str(foreign), "--keep-phi", "--master", "local[1]")
        assert proc.returncode == EXIT_CONFIG, proc.stderr[-2000:]
        assert f"--out {foreign} is not empty and is not a medimg lake" in proc.stderr
        assert "Choose a new or empty directory" in proc.stderr
        assert "Traceback" not in proc.stderr and "log4j" not in proc.stderr  # Spark never started
    assert time.perf_counter() - started < 60
    assert sorted(str(p.relative_to(foreign)) for p in foreign.rglob("*")) == before


def test_run_with_ingest_refuses_a_foreign_out(tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "report.pdf").write_bytes(b"%PDF-1.4")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f'pipeline:\n  inputs: ["{get_testdata_file("CT_small.dcm")}"]\n  stages: [ingest]\n')
    assert main(["run", "--config", str(cfg), "--out", str(foreign), "--keep-phi"]) == EXIT_CONFIG
    assert "is not a medimg lake" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["report.pdf"]


def test_lake_marker_new_empty_legacy_and_stray_files(tmp_path: Path) -> None:
    assert prepare_lake(str(tmp_path / "new")) == "created"
    marker = json.loads((tmp_path / "new" / LAKE_MARKER).read_text())
    assert marker["format"] == "medimg-lake" and marker["version"] == 1
    assert prepare_lake(str(tmp_path / "new")) == "lake"
    (tmp_path / "empty").mkdir()
    assert prepare_lake(str(tmp_path / "empty")) == "created"
    # A lake written before the marker existed: runs/*.json ingest summaries.
    old = tmp_path / "old"
    (old / "runs").mkdir(parents=True)
    (old / "instances").mkdir()
    (old / "runs" / "ingest-1.json").write_text(json.dumps({"run_id": "ingest-1", "stage": "ingest"}))
    assert prepare_lake(str(old)) == "upgraded" and (old / LAKE_MARKER).is_file()
    # runs/ without an ingest summary is not enough.
    other = tmp_path / "other"
    (other / "runs").mkdir(parents=True)
    (other / "runs" / "x.json").write_text("{}")
    with pytest.raises(NotALakeError, match="not a medimg lake"):
        prepare_lake(str(other))
    # A stray file in a table of a lake would make the table unreadable.
    (tmp_path / "new" / "images" / "modality=CT").mkdir(parents=True)
    (tmp_path / "new" / "images" / "modality=CT" / "part-0.zstd.parquet").write_bytes(b"PAR1")
    (tmp_path / "new" / "images" / "notes.txt").write_text("mine")
    with pytest.raises(NotALakeError, match=r"images/notes.txt\); move them out of the lake"):
        prepare_lake(str(tmp_path / "new"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotALakeError, match="is a file"):
        prepare_lake(str(tmp_path / "file"))


# ------------------------------------------------------------------------------------------------
# --log-json, --labels errors and unmatched rows
# ------------------------------------------------------------------------------------------------


def test_labels_errors_name_the_file_and_columns_never_its_content(tmp_path: Path) -> None:
    secret = "root:x:0:0:Jane Doe 1961-04-02:/root:/bin/bash"
    passwd = tmp_path / "passwd"
    passwd.write_text(secret + "\n")
    with pytest.raises(ConfigError) as err:
        read_labels(str(passwd))
    assert str(passwd) in str(err.value) and "'label'" in str(err.value) and "'path'" in str(err.value)
    assert "Jane" not in str(err.value) and "root" not in str(err.value).replace(str(tmp_path), "")
    binary = tmp_path / "labels.csv"
    binary.write_bytes(b"path,label\n\xff\xfeJane\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text") as err:
        read_labels(str(binary))
    assert "Jane" not in str(err.value)
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"path,label\nJane\x00Doe,1\n")
    with pytest.raises(ConfigError, match="line 2: 'path' contains a NUL byte") as err:
        read_labels(str(nul))
    assert "Jane" not in str(err.value)


def test_cli_labels_error_exits_2_without_content(tmp_path: Path, capsys) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:Jane Doe:/root:/bin/bash\n")
    code = main(
        ["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--labels", str(passwd), "--keep-phi"]
    )
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG and str(passwd) in err and "Jane" not in err
    assert not (tmp_path / "o").exists()


def test_ingest_log_json_and_unmatched_labels_warning(tmp_path: Path, capsys, caplog) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nin/ct.dcm,a\nin/gone-1.dcm,b\nin/gone-2.dcm,c\n")
    out, log = tmp_path / "out", tmp_path / "out" / "run.jsonl"  # the log inside --out is allowed
    argv = ["ingest", str(src), "--out", str(out), "--keep-phi", "--labels", str(labels), "--json"]
    code = main([*argv, "--log-json", str(log)])
    assert code == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels_unmatched"] == 2 and summary["frames_written"] == 1
    assert "2 of 3 rows of the labels file" in caplog.text and "gone-1" not in caplog.text
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["stage"]) for e in events] == [("stage_start", "ingest"), ("stage_end", "ingest")]
    end = events[-1]
    assert end["run_id"] == summary["run_id"] and end["files_seen"] == 1 and end["labels_unmatched"] == 2
    assert not (out / "_staging").exists() and (out / LAKE_MARKER).is_file()
    # A failing verb logs stage_failed (here: --out is not a lake).
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    flog = tmp_path / "failed.jsonl"
    assert (
        main(["ingest", str(src), "--out", str(foreign), "--keep-phi", "--log-json", str(flog)])
        == EXIT_CONFIG
    )
    failed = [json.loads(line) for line in flog.read_text().splitlines()]
    assert failed[-1]["event"] == "stage_failed" and failed[-1]["error_class"] == "NotALakeError"
