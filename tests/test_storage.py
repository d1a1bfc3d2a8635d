"""The storage layer (``medimg_spark.storage``) on local paths, ``file:`` URIs and a non-``file`` scheme.

The non-``file`` scheme is Hadoop's ``viewfs://``: a client-side mount table whose link points at a
local folder, shipped with Spark and needing no server. Its files go through ViewFileSystem (which,
like HDFS, refuses to rename onto an existing file) and land in the linked folder, where the tests
look for them with plain ``pathlib``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medimg_spark.storage import (
    Storage,
    StorageExistsError,
    StorageFormatError,
    StorageIOError,
    StorageNotADirectoryError,
    StorageNotFoundError,
    StoragePathError,
    basename,
    get_storage,
    is_local,
    join,
    local_path,
    parent,
    split_uri,
)

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- paths (no Spark)


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3a://bucket/lake", ("features",), "s3a://bucket/lake/features"),
        ("s3a://bucket/lake/", ("models/lr", "card.json"), "s3a://bucket/lake/models/lr/card.json"),
        ("s3a://bucket", ("x",), "s3a://bucket/x"),
        ("hdfs://nn:8020/a", ("b//c/", "./d"), "hdfs://nn:8020/a/b/c/d"),
        ("viewfs://lake/lake/run1", ("metrics",), "viewfs://lake/lake/run1/metrics"),
        ("viewfs:/lake", ("x",), "viewfs:/lake/x"),
        ("file:/tmp/out", ("features",), "file:/tmp/out/features"),
        ("file:///tmp/out", ("features",), "file:///tmp/out/features"),
        ("file:///", ("tmp",), "file:///tmp"),
        ("demo-out", ("features",), "demo-out/features"),
        ("./demo-out/", ("models", "lr"), "demo-out/models/lr"),
        ("/abs/out", ("a b#c%20.json",), "/abs/out/a b#c%20.json"),
        ("run:1/out", ("x",), "run:1/out/x"),
        ("s3a://bucket/lake", (), "s3a://bucket/lake"),
    ],
)
def test_join_keeps_uris_uris_and_local_paths_local(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(base, *parts) == expected


def test_path_helpers() -> None:
    assert join(Path("/a"), Path("b")) == "/a/b"
    assert split_uri("s3a://bucket/lake") == ("s3a", "bucket", "/lake")
    assert split_uri("out/run") == ("", None, "out/run")
    assert split_uri("run:1/out") == ("", None, "run:1/out")
    assert [is_local(p) for p in ("out", "/a", "file:/a", "file:///a", "file://localhost/a")] == [True] * 5
    assert [is_local(p) for p in ("s3a://b/x", "viewfs://l/x", "hdfs:/x", "file://host/a")] == [False] * 4
    assert local_path("file:/a/b c%20.dcm") == "/a/b c%20.dcm"
    assert local_path("file:///a/./b") == "/a/b"
    assert local_path("s3a://b/x") == "s3a://b/x"
    assert parent("s3a://b/lake/x.json") == "s3a://b/lake"
    assert parent("s3a://b/x") == "s3a://b/"
    assert parent("out/models/lr") == "out/models"
    assert basename("s3a://b/lake/models/lr/") == "lr"
    assert basename("out/models/lr") == "lr"
    for bad in ("/abs", "s3a://other/x"):
        with pytest.raises(StoragePathError, match="relative"):
            join("s3a://b/lake", bad)
    with pytest.raises(StoragePathError, match="empty"):
        join("", "x")


# ----------------------------------------------------------------------------- the API on three stores


@dataclass
class Store:
    """A storage, a root folder on it and the local folder where that root's files land."""

    storage: Storage
    root: str
    real: Path
    kind: str


def mount_viewfs(spark: Any, real: Path) -> tuple[str, str]:
    """Link ``viewfs://<table>/lake`` to the local folder ``real``; returns (root URI, conf key)."""
    table = f"t{secrets.token_hex(4)}"  # a new mount table: no FileSystem cached for it
    key = f"fs.viewfs.mounttable.{table}.link./lake"
    spark.sparkContext._jsc.hadoopConfiguration().set(key, real.as_uri())
    return f"viewfs://{table}/lake", key


def names_in(folder: Path) -> list[str]:
    """Names in a local folder, without the ``.crc`` sidecar files of Hadoop's checksum layer (ViewFs)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".crc"))


@pytest.fixture(params=["local", "file-uri", "viewfs", "no-spark"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    real = tmp_path / "real"
    real.mkdir()
    kind = request.param
    if kind == "no-spark":
        yield Store(Storage(None), str(real), real, kind)
        return
    spark = request.getfixturevalue("spark")
    if kind == "viewfs":
        root, key = mount_viewfs(spark, real)
        yield Store(Storage(spark), root, real, kind)
        spark.sparkContext._jsc.hadoopConfiguration().unset(key)
        return
    yield Store(Storage(spark), str(real) if kind == "local" else real.as_uri(), real, kind)


def test_read_write_and_queries(store: Store) -> None:
    s, root = store.storage, store.root
    doc = join(root, "metrics", "eval_lr_val.json")
    assert not s.exists(doc) and not s.is_file(doc) and not s.is_dir(doc)
    assert s.write_json(doc, {"accuracy": 0.5, "n": [1, 2]}) == doc
    assert json.loads((store.real / "metrics" / "eval_lr_val.json").read_text()) == {
        "accuracy": 0.5,
        "n": [1, 2],
    }
    assert s.read_json(doc) == {"accuracy": 0.5, "n": [1, 2]}
    assert s.exists(doc) and s.is_file(doc) and s.is_dir(join(root, "metrics"))
    # overwrite: ViewFs (like HDFS) refuses to rename onto an existing file, the storage replaces it
    s.write_text(doc, "ünïcode\n")
    assert s.read_text(doc) == "ünïcode\n"
    assert s.info(doc).size == len("ünïcode\n".encode()) and not s.info(doc).is_dir
    odd = join(root, "odd", "a b#c%20?.bin")
    payload = bytes(range(256)) * 40_000  # 10 MB: several chunks through the gateway
    s.write_bytes(odd, payload)
    assert (store.real / "odd" / "a b#c%20?.bin").read_bytes() == payload
    assert s.read_bytes(odd) == payload
    if store.kind != "viewfs":  # Hadoop's checksum layer (ViewFs → file:) cannot name a colon file
        s.write_text(join(root, "odd", "x:y.json"), "[]")
        assert s.read_json(join(root, "odd", "x:y.json")) == []
    s.append_text(join(root, "IDENTIFIED"), "run1\n")
    s.append_text(join(root, "IDENTIFIED"), "run2\n")
    assert (store.real / "IDENTIFIED").read_text() == "run1\nrun2\n"
    s.touch(join(root, "_MARKER"), "{}\n")
    assert (store.real / "_MARKER").read_text() == "{}\n"
    # no temporary sibling is left behind; local paths get no .crc sidecar files
    names = {p.name for p in store.real.rglob("*")}
    assert not [n for n in names if n.endswith(".tmp")]
    if store.kind != "viewfs":
        assert not [n for n in names if n.endswith(".crc")]


def test_listing(store: Store) -> None:
    s, root = store.storage, store.root
    for rel in ("t/part-0.parquet", "t/k=1/part-1.parquet", "t/_SUCCESS", "t/.hidden", "t/_tmp/x.parquet"):
        s.write_text(join(root, rel), "x")
    s.mkdirs(join(root, "t", "empty"))
    t = join(root, "t")
    names = [".hidden", "_SUCCESS", "_tmp", "empty", "k=1", "part-0.parquet"]
    assert s.list(t) == [join(t, n) for n in names]
    assert s.list(t, dirs=False, include_hidden=False) == [join(t, "part-0.parquet")]
    assert s.list(t, files=False) == [join(t, "_tmp"), join(t, "empty"), join(t, "k=1")]
    assert s.list(t, dirs=False, recursive=True, pattern="*.parquet") == [
        join(t, "_tmp/x.parquet"),
        join(t, "k=1/part-1.parquet"),
        join(t, "part-0.parquet"),
    ]
    assert s.list(t, recursive=True, include_hidden=False) == [
        join(t, "empty"),
        join(t, "k=1"),
        join(t, "k=1/part-1.parquet"),
        join(t, "part-0.parquet"),
    ]
    assert sorted(s.data_files(t)) == ["_tmp/x.parquet", "k=1/part-1.parquet", "part-0.parquet"]
    assert s.data_files(join(root, "nowhere")) == []
    assert sorted(s.list_names(t) or []) == names
    assert s.list_names(join(root, "nowhere")) is None
    assert s.list(join(root, "nowhere"), missing_ok=True) == []
    with pytest.raises(StorageNotFoundError, match="nowhere"):
        s.list(join(root, "nowhere"))
    with pytest.raises(StorageNotADirectoryError, match=r"part-0\.parquet"):
        s.list_names(join(t, "part-0.parquet"))
    matches = s.glob(join(t, "*", "*.parquet"))
    assert [basename(m) for m in matches] == ["x.parquet", "part-1.parquet"]
    assert all(is_local(m) == (store.kind != "viewfs") for m in matches)
    if store.kind == "viewfs":
        assert all(m.startswith(root) for m in matches)


def test_delete_rename_move(store: Store) -> None:
    s, root = store.storage, store.root
    for rel in ("_staging/decoded-1/a", "_staging/decoded-2/b", "_staging/keep"):
        s.write_text(join(root, rel), rel)
    assert s.delete_glob(join(root, "_staging", "decoded-*")) == 2
    assert names_in(store.real / "_staging") == ["keep"]
    assert not s.remove_if_empty(join(root, "_staging"))
    assert s.delete(join(root, "_staging", "keep")) and not s.delete(join(root, "_staging", "keep"))
    with pytest.raises(StorageNotFoundError):
        s.delete(join(root, "_staging", "keep"), missing_ok=False)
    assert s.remove_if_empty(join(root, "_staging")) and not (store.real / "_staging").exists()
    a, b = join(root, "a.txt"), join(root, "sub", "b.txt")
    s.write_text(a, "A")
    s.write_text(b, "B")
    with pytest.raises(StorageExistsError, match="overwrite=True"):
        s.rename(a, b)
    s.rename(a, b, overwrite=True)
    assert s.read_text(b) == "A" and not s.exists(a)
    s.move(b, join(root, "moved", "c.txt"))
    s.move(join(root, "gone.txt"), join(root, "moved", "c.txt"))  # replayed: destination exists
    assert (store.real / "moved" / "c.txt").read_text() == "A"
    s.mkdirs(join(root, "d1", "d2"))
    assert (store.real / "d1" / "d2").is_dir()
    with pytest.raises(StorageExistsError, match="a file has that name"):
        s.mkdirs(join(root, "moved", "c.txt"))
    with pytest.raises(StorageExistsError, match="a folder has that name"):
        s.write_text(join(root, "d1"), "x")
    assert s.delete(join(root, "d1")) and not (store.real / "d1").exists()


def test_move_tree(store: Store) -> None:
    """Staged table files moved into a table: whole when it is new, per partition, then per file."""
    s, root = store.storage, store.root
    staged, table = join(root, "_staging", "run1"), join(root, "table")
    for rel in ("m=CT/part-1.parquet", "m=CT/.part-1.parquet.crc", "m=MR/part-2.parquet"):
        s.write_text(join(staged, rel), rel)
    assert not s.move_tree(join(root, "_staging", "none"), table)
    assert s.move_tree(staged, table)
    assert sorted(s.data_files(table)) == ["m=CT/part-1.parquet", "m=MR/part-2.parquet"]
    assert not s.exists(staged)  # a new table: the staged folder itself, hidden checksum included
    assert (store.real / "table" / "m=CT" / ".part-1.parquet.crc").is_file()
    # an existing table: a new partition folder moves whole, an existing one file by file
    second = join(root, "_staging", "run2")
    for rel in ("m=CT/part-3.parquet", "m=CT/part-1.parquet", "m=US/part-4.parquet", "_SUCCESS"):
        s.write_text(join(second, rel), "new " + rel)
    assert s.move_tree(second, table)
    assert names_in(store.real / "table") == ["m=CT", "m=MR", "m=US"]  # _SUCCESS stays behind
    assert s.read_text(join(table, "m=CT", "part-1.parquet")) == "m=CT/part-1.parquet"  # replayed: kept
    assert s.read_text(join(table, "m=CT", "part-3.parquet")) == "new m=CT/part-3.parquet"
    assert s.read_text(join(table, "m=US", "part-4.parquet")) == "new m=US/part-4.parquet"
    assert s.exists(join(second, "m=CT", "part-1.parquet"))  # left in the staging folder


def test_local_files_up_and_down(store: Store, tmp_path: Path) -> None:
    s, root = store.storage, store.root
    src = tmp_path / "src"
    (src / "assets").mkdir(parents=True)
    (src / "index.html").write_text("<html></html>")
    (src / "assets" / "a.png").write_bytes(b"\x89PNG" + bytes(100))
    report = join(root, "report")
    s.write_text(join(report, "stale.html"), "old")  # replaced, not merged
    assert s.upload(src, report) == report
    tree = (store.real / "report").rglob("*")
    assert sorted(str(p.relative_to(store.real / "report")) for p in tree if p.suffix != ".crc") == [
        "assets",
        "assets/a.png",
        "index.html",
    ]
    s.upload(src / "index.html", join(root, "copy.html"))
    assert (store.real / "copy.html").read_text() == "<html></html>"
    with s.local_copy(report) as local:
        assert local.is_dir() and (local / "assets" / "a.png").read_bytes().startswith(b"\x89PNG")
    if store.kind == "viewfs":
        assert not local.exists()  # the temporary copy is removed
    got = s.download(join(root, "copy.html"), tmp_path / "dl" / "x.html")
    assert got.read_text() == "<html></html>"
    got = s.download(report, tmp_path / "dl" / "x.html")  # a file is replaced by the folder
    assert (got / "index.html").is_file()
    with s.staged_file(join(root, "models", "lr", "model.joblib")) as f:
        f.write_bytes(b"joblib")
    assert (store.real / "models" / "lr" / "model.joblib").read_bytes() == b"joblib"
    with s.staged_dir(join(root, "pipeline")) as d:
        (d / "metadata").mkdir()
        (d / "metadata" / "part-0").write_text("{}")
    assert (store.real / "pipeline" / "metadata" / "part-0").read_text() == "{}"
    with pytest.raises(RuntimeError), s.staged_file(join(root, "never.bin")) as f:
        f.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert not (store.real / "never.bin").exists()
    with pytest.raises(StorageNotFoundError, match="nowhere"):
        s.upload(tmp_path / "nowhere", join(root, "x"))
    with pytest.raises(StorageNotFoundError, match="nowhere"), s.local_copy(join(root, "nowhere")):
        pass
    assert not [p for p in store.real.rglob("*") if p.name.endswith(".tmp")]


def test_errors_name_the_path_and_the_fix(store: Store) -> None:
    s, root = store.storage, store.root
    missing = join(root, "metrics", "quality.json")
    with pytest.raises(StorageNotFoundError, match=r"quality\.json") as exc:
        s.read_json(missing)
    assert isinstance(exc.value, FileNotFoundError)
    with pytest.raises(StorageNotFoundError, match="does not exist"):
        s.info(missing)
    s.write_text(missing, "{not json")
    with pytest.raises(StorageFormatError, match=r"quality\.json is not valid JSON"):
        s.read_json(missing)
    s.write_bytes(missing, b"\xff\xfe")
    with pytest.raises(StorageFormatError, match="not utf-8 text"):
        s.read_text(missing)
    with pytest.raises(StorageIOError, match="is a folder"):
        s.read_bytes(join(root, "metrics"))


def test_uris_need_spark_and_a_connector(spark: Any, tmp_path: Path) -> None:
    with pytest.raises(StoragePathError, match=r"no SparkSession.*Storage\(spark\)"):
        Storage(None).read_text("s3a://bucket/lake/x.json")
    hadoop = Storage(spark)
    with pytest.raises(StorageIOError, match="no Hadoop file system for scheme 'nosuchfs'"):
        hadoop.exists("nosuchfs://host/lake")
    with pytest.raises(StorageIOError, match="unknown host"):
        hadoop.exists("hdfs://no-such-namenode.invalid/lake")
    assert get_storage(spark).spark is spark
    assert get_storage().spark is spark  # the active session
    assert "hadoop" in repr(hadoop) and "local only" in repr(Storage(None))


# ----------------------------------------------------------------------------- the demo pipeline on viewfs://

DEMO_STAGES = [
    "ingest",
    "preprocess",
    "volumes",
    "quality",
    "features",
    "train",
    "predict",
    "evaluate",
    "localize",
    "report",
]


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory: pytest.TempPathFactory, sample_npz: Path) -> Path:
    """A small cut of the demo's data: PneumoniaMNIST frames and real CT and MR DICOMs."""
    import io
    import shutil

    import numpy as np
    from pydicom.data import get_testdata_file

    src = tmp_path_factory.mktemp("demo_in")
    ref = np.load(sample_npz)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=ref["train_images"][:120],
        train_labels=ref["train_labels"][:120],
        val_images=ref["val_images"][:60],
        val_labels=ref["val_labels"][:60],
    )
    (src / "small.npz").write_bytes(buf.getvalue())
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), src / name)
    return src


def demo_config(path: Path, inputs: Path, spark_conf: dict[str, str]) -> Path:
    """conf/demo.yaml on ``inputs``, with the predict stage and an MLlib model added."""
    import yaml

    cfg = yaml.safe_load((REPO / "conf" / "demo.yaml").read_text())
    pipe = cfg["pipeline"]
    pipe.pop("out", None)
    pipe["inputs"] = [str(inputs)]
    assert [s for s in DEMO_STAGES if s != "predict"] == pipe["stages"]
    pipe["stages"] = DEMO_STAGES
    pipe["models"].append({"name": "mlr", "model": "mllib_logreg"})
    cfg["spark"]["conf"].update(spark_conf)
    path.write_text(yaml.safe_dump(cfg))
    return path


def table_rows(spark: Any, folder: Path) -> dict[str, int]:
    """Rows of each Parquet table of a run folder (read as a plain local path)."""
    names = [
        "images",
        "instances",
        "quarantine",
        "processed",
        "features",
        "predictions",
        "regions",
        "clusters",
    ]
    return {n: spark.read.parquet(str(folder / n)).count() for n in names}


def medimg_run(config: Path, out: str, cwd: Path) -> dict[str, Any]:
    """``medimg run --config CONFIG --out OUT --ephemeral-key --json`` in its own process (its own Spark)."""
    import subprocess
    import sys

    args = ["run", "--config", str(config), "--out", out, "--ephemeral-key", "--json", "--master", "local[2]"]
    proc = subprocess.run(
        [sys.executable, "-m", "medimg_spark.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.integration
def test_demo_pipeline_on_viewfs_matches_a_local_run(spark: Any, demo_inputs: Path, tmp_path: Path) -> None:
    """``medimg run --out viewfs://lake/lake/run1`` (the mount table in the YAML config's Spark conf)
    writes every stage's output into the linked local folder, equal to the same run into a local path."""
    real = tmp_path / "real"
    real.mkdir()
    cwd = tmp_path / "cwd"  # a relative "viewfs:/lake/..." folder would appear here if a path were mangled
    cwd.mkdir()
    link = {"spark.hadoop.fs.viewfs.mounttable.lake.link./lake": real.as_uri()}
    uri = "viewfs://lake/lake/run1"
    remote = medimg_run(demo_config(tmp_path / "demo-viewfs.yaml", demo_inputs, link), uri, cwd)
    assert list(cwd.iterdir()) == []
    local_out = tmp_path / "local-run"
    local = medimg_run(demo_config(tmp_path / "demo-local.yaml", demo_inputs, {}), str(local_out), cwd)
    print(f"viewfs run {remote['wall_time_s']} s, local run {local['wall_time_s']} s")

    # every stage's output landed in the linked folder, under the names a local run uses
    run1 = real / "run1"
    for rel in (
        "_MEDIMG_LAKE",
        "metrics/quality.json",
        "features/_feature_set.json",
        "models/demo_logreg/card.json",
        "models/demo_logreg/model.joblib",
        "models/mlr/card.json",
        "metrics/eval_demo_logreg_val.json",
        "metrics/eval_demo_logreg_val.txt",
        "metrics/eval_mlr_val.json",
        "clusters/_summary.json",
        "report/index.html",
    ):
        assert (run1 / rel).is_file(), rel
        assert (local_out / rel).is_file(), rel
    for rel in ("models/mlr/pipeline", "predictions/model=demo_logreg", "predictions/model=mlr", "regions"):
        assert (run1 / rel).is_dir(), rel
    assert len(list((run1 / "runs").glob("ingest-*.json"))) == 1

    # the summaries name the URI paths, never a mangled local path
    assert remote["features"]["path"] == f"{uri}/features"
    assert [t["model_path"] for t in remote["train"]] == [f"{uri}/models/demo_logreg", f"{uri}/models/mlr"]
    assert remote["report"]["path"] == f"{uri}/report/index.html"
    assert [e["path"] for e in remote["evaluate"]] == [
        f"{uri}/metrics/eval_demo_logreg_val.json",
        f"{uri}/metrics/eval_mlr_val.json",
    ]

    # equal to the local run: rows of every table, counts of every stage, the metrics
    assert table_rows(spark, run1) == table_rows(spark, local_out)
    for key in ("files_seen", "files_ingested", "frames_written", "quarantined_by_error_class"):
        assert remote["ingest"][key] == local["ingest"][key], key
    processed = [
        (p["recipe_name"], p["frames_processed"], p["frames_quarantined"]) for p in remote["preprocess"]
    ]
    assert processed == [
        (p["recipe_name"], p["frames_processed"], p["frames_quarantined"]) for p in local["preprocess"]
    ]
    assert [g["frames"] for g in remote["quality"]["groups"]] == [
        g["frames"] for g in local["quality"]["groups"]
    ]
    for key in ("n_images", "n_failed", "feature_names"):
        assert remote["features"][key] == local["features"][key], key
    for r, lo in zip(remote["train"], local["train"], strict=True):
        assert (r["n_train"], r["n_val"], r["classes"]) == (lo["n_train"], lo["n_val"], lo["classes"])
    assert [p["n_rows"] for p in remote["predict"]] == [p["n_rows"] for p in local["predict"]]
    for r, lo in zip(remote["evaluate"], local["evaluate"], strict=True):
        assert r["model"] == lo["model"] and r["n"] == lo["n"] == 60
        for key in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
            assert r[key] == pytest.approx(lo[key], abs=1e-6), (r["model"], key)
        stored = json.loads((run1 / "metrics" / f"eval_{r['model']}_val.json").read_text())
        assert stored["roc_auc"] == pytest.approx(r["roc_auc"]) and stored["path"] == r["path"]
    regions = {x["method"]: x for x in remote["localize"]}
    local_regions = {x["method"]: x for x in local["localize"]}
    assert regions["lungs"]["n_regions"] == local_regions["lungs"]["n_regions"]
    assert regions["mllib_kmeans"]["n_rows"] == local_regions["mllib_kmeans"]["n_rows"]
    assert remote["report"]["sections"] == local["report"]["sections"]
    assert all(remote["report"]["sections"].values())
    assert remote["report"]["warnings"] == []
    html = (run1 / "report" / "index.html").read_text(encoding="utf-8")
    assert uri in html and "demo_logreg" in html and "mlr" in html


def test_spark_path_makes_plain_paths_absolute_and_keeps_uris(tmp_path: Path, monkeypatch: Any) -> None:
    from medimg_spark.storage import spark_path

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    assert spark_path("link/out") == str(real / "out")
    assert spark_path(Path("real")) == str(real)
    for uri in ("file:relative/x", "file:///a/b", "viewfs://lake/lake/run1", "s3a://bucket/k"):
        assert spark_path(uri) == uri
