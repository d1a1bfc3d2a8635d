"""End-to-end performance benchmark: decode → recipe → quality → features → Parquet, four ways.

    python benchmarks/run.py                          # N = 500, 2000, 8000 → benchmarks/results/bench_*.{json,md}
    python benchmarks/run.py --n 2000 --out DIR       # one size → DIR/results.json and DIR/results.md
    python benchmarks/run.py --quick --out DIR        # smoke run (tiny corpus, every mode once)
    python benchmarks/run.py --against f73b140 --profile   # what ``make bench`` runs (hours on 2 cores)
    python benchmarks/run.py --n 500 --repeats 1 --modes loop pool spark ray daft --against f73b140 \
        --profile --out DIR                           # the same comparisons at one size (about an hour)

Corpus (deterministic, cached under ``benchmarks/.cache/``): ``N`` CT-like 512x512 int16 DICOM files made
from pydicom's real ``CT_small.dcm`` frame (resized, flipped/shifted, per-file noise; 3 in 4 uncompressed
Explicit VR Little Endian, 1 in 4 JPEG 2000 lossless) and ``N/2`` 1024x1024 8-bit PNG chest X-rays made
from PneumoniaMNIST frames (upscaled, per-file noise). Every file is unique (ingest deduplicates content).

The same work runs in every mode, each in its own subprocess (fresh interpreter, fresh JVM):

* ``loop``: one Python process calls the per-image functions the Spark stages call:
  :func:`medimg_spark.io.files.process_file` (ingest decode), :func:`medimg_spark.preprocess.process_row`
  (:func:`medimg_spark.ops.apply_recipe` + :func:`medimg_spark.quality.quality_metrics` before/after) and
  :meth:`medimg_spark.features.FeatureSet.extract`, and writes ``images``/``instances``/``processed``/
  ``features`` Parquet (zstd) with pyarrow, one file per chunk of files;
* ``pool``: the same chunks over ``multiprocessing.Pool(cores)``;
* ``spark``: the project's stages in ``local[cores]``: ``ingest(..., deidentify=None)``, ``preprocess``
  (once per recipe, ``where`` on modality), ``compute_features(source="processed")``;
* ``spark_local1``: the same in ``local[1]`` (scaling with cores);
* ``spark_row_udf``: the same three stages with row-at-a-time Python UDFs (no Arrow) around the same
  per-image functions;
* ``ray``: Ray Data, ``ray.init(num_cpus=cores)``, ``read_binary_files`` + ``map_batches`` (one CPU per task,
  ``cores`` tasks at a time, batches of 32 files) calling the loop's per-image chain (:func:`run_chain`),
  each batch writing the four tables with pyarrow;
* ``daft``: Daft's native runner, the bytes read by ``daft.functions.download``, then a ``daft.cls``
  (``use_process=True``, ``max_concurrency=cores``: processes, not threads) batch method calling the same
  chain and writing the same tables. Both need the ``bench`` extra; without it they are skipped (reported).

``--against REF`` (``make bench``: ``BENCH_AGAINST``, f73b140) measures a speed-up side by side on this
noisy machine: a detached git worktree of REF under ``benchmarks/.cache/against/<sha>`` (reused when present,
else created and removed afterwards; ``--keep-against`` keeps it), and the ``--against-modes`` (default
``loop``) run again as ``MODE@<short sha>``, each right after its current twin: this script's harness with
``MEDIMG_BENCH_CODE``/``PYTHONPATH`` pointing at REF's package (the recipes' YAML and feature sets come from
the package that runs). The two outputs are compared per image: feature vectors (identical count, largest
relative difference, images beyond :data:`FEATURE_RTOL`) and the quality metrics of ``processed``
(:data:`QUALITY_RTOL`); ``loop_cpu_per_image_vs_<sha>`` is REF's CPU per image over the current one.

``--profile [M]``: cProfile (CPU time) of the loop's per-image work (:func:`process_chunk`) on about M
images (default 60: 40 CT + 20 PNG), the top 20 functions by cumulative time written into the results
(also for REF's code with ``--against``).

Recipes: CT frames get the shipped ``ct_lung`` recipe; PNG X-rays (no rescale header, 8-bit display values)
get the same filters without HU rescale and lung window (:data:`XRAY_RECIPE`); the rule is the same in
every mode. Feature set: ``--feature-set`` (default ``shape``: intensity statistics + region shape).

Measured per mode: wall time of the pipeline (interpreter/JVM start excluded, reported separately),
images/s, CPU seconds per image of the whole process tree (driver, JVM, Python workers): the larger of
the CPU of reaped children (this process makes itself a child subreaper on Linux) and the sum over every
process of its CPU time sampled every 0.2 s (pyspark's daemon ignores SIGCHLD, so the CPU of its exited
workers is not reported to any parent), peak RSS (``VmHWM``) of
the driver process, of the JVM and of the largest Python worker (sampled every 0.2 s), output size on disk
and a digest of the per-image feature vectors (equal digests = equal outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
#: The checkout whose ``medimg_spark`` the benchmark imports: this repository, or (``--against REF``) a git
#: worktree of REF. Read before anything imports the package, so this script's harness runs the old code.
CODE_ENV = "MEDIMG_BENCH_CODE"
CODE = Path(os.environ.get(CODE_ENV) or REPO).resolve()
if str(CODE) not in sys.path:
    sys.path.insert(0, str(CODE))

CACHE = REPO / "benchmarks" / ".cache"
CT_SIZE = 512
XRAY_SIZE = 1024
J2K_EVERY = 4  # one CT file in four is JPEG 2000 lossless
CHUNK_FILES = 32  # files per loop/pool task (and Parquet file)
SEED = 20240607
DEFAULT_SIZES = (500, 2000, 8000)
QUICK_N = 8
#: The peers a user would pick instead of Spark (the ``bench`` extra; skipped with a reason when missing).
PEER_MODES = ("ray", "daft")
#: ``spark_fused``: the stages with the fused recipe + features pass, where the package has it (else skipped).
#: Its features are one table per recipe (the second recipe's call moves the first's set to
#: ``feature_sets/``), read back by :func:`feature_tables` like the spark mode's.
ALL_MODES = ("loop", "pool", "spark", "spark_fused", "spark_local1", "spark_row_udf", *PEER_MODES)
QUICK_MODES = ("loop", "pool", "spark", "spark_row_udf")
# ``make bench`` (no --n): every mode at N=500; the modes the targets need at the larger sizes, so the run
# stays within hours, not a day, on a 2-core machine (an explicit --n runs every mode).
DEFAULT_PLAN: dict[int, tuple[str, ...]] = {
    500: ALL_MODES,
    2000: ("loop", "pool", "spark", "spark_fused", "spark_row_udf", *PEER_MODES),
    8000: ("pool", "spark", "spark_fused"),
}
#: The Spark modes the issue's targets are evaluated for.
SPARK_TARGET_MODES = ("spark", "spark_fused")
#: ``--against REF`` runs these modes with REF's package too (``--against-modes``).
AGAINST_MODES = ("loop",)
PROFILE_IMAGES = 60  # ``--profile``: images of the loop's cProfile (40 CT + 20 PNG)
PROFILE_TOP = 20
XRAY_RECIPE = """\
name: xray_filters
description: ct_lung's filters for 8-bit X-rays (no HU rescale, no lung window).
steps:
  - op: flag_empty
  - op: bilateral
    diameter: 5
    sigma_color: 0.1
    sigma_space: 1.5
  - op: clahe
    clip_limit: 2.0
    tile_grid: [8, 8]
"""
CT_RECIPE = CODE / "medimg_spark" / "resources" / "recipes" / "ct_lung.yaml"  # the running package's
TABLES = ("images", "instances", "processed", "features")
_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------ corpus


def _xray_recipe_path() -> Path:
    path = CACHE / "recipes" / "xray_filters.yaml"
    if not path.exists() or path.read_text() != XRAY_RECIPE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(XRAY_RECIPE)
    return path


def _ct_file(i: int, dest: Path) -> None:
    import cv2
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless, generate_uid

    rng = np.random.default_rng([SEED, 1, i])
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = ds.pixel_array.astype(np.float32)
    frame = cv2.resize(base, (CT_SIZE, CT_SIZE), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        frame = frame[:, ::-1]
    frame = np.roll(frame, (int(rng.integers(-24, 25)), int(rng.integers(-24, 25))), axis=(0, 1))
    sigma = float(rng.uniform(5.0, 40.0))  # stored units (slope 1): HU-like noise
    frame = frame * float(rng.uniform(0.9, 1.1)) + rng.normal(0.0, sigma, frame.shape)
    arr = np.clip(np.rint(frame), -2000, 4000).astype(np.int16)
    ds.Rows, ds.Columns = CT_SIZE, CT_SIZE
    ds.PixelSpacing = [0.7, 0.7]
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["medimg-bench", str(SEED), str(i)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = i + 1
    if i % J2K_EVERY == J2K_EVERY - 1:
        ds.compress(JPEG2000Lossless, arr)
    else:
        ds.PixelData = arr.tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(dest, enforce_file_format=True)


def _xray_file(i: int, dest: Path, frames: Any) -> None:
    import cv2
    import numpy as np

    rng = np.random.default_rng([SEED, 2, i])
    small = frames[i % len(frames)].astype(np.float32)
    big = cv2.resize(small, (XRAY_SIZE, XRAY_SIZE), interpolation=cv2.INTER_CUBIC)
    big = big * float(rng.uniform(0.85, 1.1)) + rng.normal(0.0, float(rng.uniform(2.0, 12.0)), big.shape)
    cv2.imwrite(str(dest), np.clip(np.rint(big), 0, 255).astype(np.uint8))


def _generate(kind: str, indices: list[int], pool_dir: str) -> int:
    import numpy as np

    frames = None
    if kind == "xray":
        npz = REPO / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
        with np.load(npz) as d:
            frames = d["train_images"]
    for i in indices:
        dest = Path(pool_dir) / (f"ct_{i:06d}.dcm" if kind == "ct" else f"cxr_{i:06d}.png")
        if dest.exists():
            continue
        tmp = dest.with_name("." + dest.name + ".tmp")
        if kind == "ct":
            _ct_file(i, tmp)
        else:
            _xray_file(i, tmp.with_suffix(".png"), frames)
            tmp = tmp.with_suffix(".png")
        tmp.replace(dest)
    return len(indices)


def corpus(n: int, workers: int) -> Path:
    """``benchmarks/.cache/corpus/n<N>/`` (hard links into a shared file pool, generated once)."""
    pool = CACHE / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    n_ct, n_xray = n, n // 2
    root = CACHE / "corpus" / f"n{n}"
    done = root / ".complete"
    if done.exists():
        return root
    todo: list[tuple[str, list[int]]] = []
    for kind, count, name in (("ct", n_ct, "ct_{:06d}.dcm"), ("xray", n_xray, "cxr_{:06d}.png")):
        missing = [i for i in range(count) if not (pool / name.format(i)).exists()]
        step = max(1, -(-len(missing) // (workers * 4)))
        todo += [(kind, missing[k : k + step]) for k in range(0, len(missing), step)]
    if todo:
        started = time.perf_counter()
        print(f"generating corpus files for N={n} ({sum(len(t[1]) for t in todo)} new) ...", flush=True)
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as p:
            p.starmap(_generate, [(k, idx, str(pool)) for k, idx in todo])
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    if root.exists():
        shutil.rmtree(root)
    for sub, count, name in (("ct", n_ct, "ct_{:06d}.dcm"), ("xray", n_xray, "cxr_{:06d}.png")):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            os.link(pool / name.format(i), root / sub / name.format(i))
    done.write_text(json.dumps({"n_ct": n_ct, "n_xray": n_xray}))
    return root


def corpus_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


# ------------------------------------------------------------------------------------ loop / pool


def _arrow_schema(schema: Any) -> Any:
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    return to_arrow_schema(
        StructType([f for f in schema.fields if f.name != "quarantined_at"]), timezone="UTC"
    )


def _table(rows: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_arrays(
        [pa.array([r.get(n) for r in rows], type=schema.field(n).type) for n in schema.names], schema=schema
    )


def _write(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


class ChainOutput:
    """The rows of the four tables that :func:`run_chain` made from a batch of files."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []
        self.processed: list[dict[str, Any]] = []
        self.features: list[dict[str, Any]] = []
        self.failed = 0
        self.feature_names: list[str] = []
        self.per_file: list[int] = []  # feature rows (images through the whole chain) of each input file


def configure_process() -> None:
    """What the package's per-partition functions do first (:func:`medimg_spark.worker.configure_worker`:
    one OpenCV thread, glibc's allocator keeping frame-sized blocks); for a ``--against`` REF without that
    module, what REF's did (one OpenCV thread)."""
    try:
        from medimg_spark.worker import configure_worker
    except ImportError:
        import cv2

        cv2.setNumThreads(1)
        return
    configure_worker()


def run_chain(files: Iterable[tuple[str, bytes]], fs_name: str, run_id: str) -> ChainOutput:
    """Ingest → recipe + quality → features for ``(path, content)`` pairs: the per-image work of every mode
    but Spark's (loop, pool, Ray Data, Daft), with the functions the Spark stages call.

    ``path`` is a ``file:`` URI; the image ids derive from the content alone.
    """
    import datetime as _dt

    from medimg_spark.features import decode_row, load_feature_set
    from medimg_spark.io.files import IMAGE, INSTANCE, FileContext, process_file
    from medimg_spark.ops import load_recipe
    from medimg_spark.preprocess import process_row

    configure_process()
    ct_recipe, xray_recipe = load_recipe(str(CT_RECIPE)), load_recipe(str(_xray_recipe_path()))
    fs = load_feature_set(fs_name)
    ctx = FileContext(run_id=run_id)
    res_out = ChainOutput()
    now = _dt.datetime.now(_dt.UTC)
    for path, content in files:
        before = len(res_out.features)
        for row in process_file(path, content, ctx):
            if row["_kind"] == INSTANCE:
                res_out.instances.append(row)
            elif row["_kind"] != IMAGE:
                res_out.failed += 1
                continue
            else:
                res_out.images.append(row)
                recipe = ct_recipe if row.get("modality") == "CT" else xray_recipe
                res = process_row(row, recipe, run_id)
                if not res["ok"]:
                    res_out.failed += 1
                    continue
                res["processed_at"] = now
                res_out.processed.append(res)
                img, msk = decode_row(res, True)
                values, names = fs.extract(img, msk)
                res_out.feature_names = list(names)
                res_out.features.append(
                    {
                        "image_id": res["image_id"],
                        "label": res["label"],
                        "split": res["split"],
                        "values": values,
                    }
                )
        res_out.per_file.append(len(res_out.features) - before)
    return res_out


def write_chain_output(res: ChainOutput, out: str, name: str) -> None:
    """One Parquet file (zstd) ``name`` per table (``images`` partitioned by modality) under ``out``."""
    import pyarrow as pa

    from medimg_spark.preprocess import PROCESSED_SCHEMA
    from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA

    img_schema = _arrow_schema(IMAGES_SCHEMA)
    for modality in sorted({str(r["modality"]) for r in res.images}):
        sub = [r for r in res.images if r["modality"] == modality]
        _write(_table(sub, img_schema), Path(out) / "images" / f"modality={modality}" / name)
    _write(_table(res.instances, _arrow_schema(INSTANCES_SCHEMA)), Path(out) / "instances" / name)
    _write(_table(res.processed, _arrow_schema(PROCESSED_SCHEMA)), Path(out) / "processed" / name)
    feat = pa.table(
        {
            "image_id": pa.array([f["image_id"] for f in res.features], pa.string()),
            "label": pa.array([f["label"] for f in res.features], pa.string()),
            "split": pa.array([f["split"] for f in res.features], pa.string()),
            "features": pa.array([f["values"].tolist() for f in res.features], pa.list_(pa.float64())),
        }
    )
    _write(feat, Path(out) / "features" / name)


def process_chunk(chunk_id: int, paths: list[str], out: str, fs_name: str, run_id: str) -> dict[str, Any]:
    """Ingest → recipe + quality → features for ``paths``; writes one Parquet file per table."""
    res = run_chain((("file:" + p, Path(p).read_bytes()) for p in paths), fs_name, run_id)
    write_chain_output(res, out, f"part-{chunk_id:05d}.zstd.parquet")
    return {"images": len(res.features), "failed": res.failed, "feature_names": res.feature_names}


def _chunks(files: list[Path]) -> list[list[str]]:
    names = [str(p) for p in files]
    return [names[k : k + CHUNK_FILES] for k in range(0, len(names), CHUNK_FILES)]


def _process_chunk_star(args: tuple[int, list[str], str, str, str]) -> dict[str, Any]:
    return process_chunk(*args)


def run_loop_or_pool(files: list[Path], out: str, fs_name: str, procs: int) -> dict[str, Any]:
    run_id = "bench-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    jobs = [(i, c, out, fs_name, run_id) for i, c in enumerate(_chunks(files))]
    started = time.perf_counter()
    if procs <= 1:
        results = [_process_chunk_star(j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(procs) as pool:
            results = list(pool.imap_unordered(_process_chunk_star, jobs, chunksize=1))
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "images": sum(r["images"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "feature_names": next((r["feature_names"] for r in results if r["feature_names"]), []),
    }


# ------------------------------------------------------------------------------- Ray Data / Daft


def _chain_batch(paths: list[str], contents: list[bytes], out: str, fs_name: str, run_id: str) -> list[int]:
    """:func:`run_chain` on one batch of files, written as one Parquet file per table; images per file.

    The part name derives from the batch's first path (batches are disjoint), so reruns overwrite.
    """
    uris = [p if p.startswith("file:") else "file:" + p for p in paths]
    res = run_chain(zip(uris, (bytes(c) for c in contents), strict=True), fs_name, run_id)
    write_chain_output(res, out, "part-" + hashlib.sha1(uris[0].encode()).hexdigest()[:16] + ".zstd.parquet")
    return res.per_file


def run_ray(files: list[Path], out: str, fs_name: str, cores: int) -> dict[str, Any]:
    """Ray Data: ``read_binary_files`` + ``map_batches`` (one CPU per task, ``cores`` tasks at a time) over
    the same per-image chain as the loop, each batch writing its Parquet files with pyarrow."""
    import numpy as np
    import ray

    run_id = "bench-ray"
    t0 = time.perf_counter()
    for attempt in range(1, 4):  # Ray gives its raylet 30 s to register: too short on a loaded 2-core machine
        try:
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=True, logging_level="ERROR")
            break
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == 3:
                raise
            print(f"ray.init attempt {attempt} timed out (machine load {os.getloadavg()[0]:.1f}); retrying")
            ray.shutdown()
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    t1 = time.perf_counter()

    def chain(batch: dict[str, Any]) -> dict[str, Any]:
        n = _chain_batch(list(batch["path"]), list(batch["bytes"]), out, fs_name, run_id)
        return {"images": np.asarray(n, dtype=np.int64)}

    ds = ray.data.read_binary_files([str(f) for f in files], include_paths=True)
    counts = ds.map_batches(
        chain,
        batch_size=CHUNK_FILES,
        batch_format="numpy",
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=cores),
    ).take_all()
    t2 = time.perf_counter()
    ray.shutdown()
    return {
        "wall_s": t2 - t1,
        "startup_s": t1 - t0,
        "images": int(sum(r["images"] for r in counts)),
        "failed": None,
        "files": len(counts),
    }


def run_daft(files: list[Path], out: str, fs_name: str, cores: int) -> dict[str, Any]:
    """Daft (native runner): the files' bytes read with ``daft.functions.download``, then a ``daft.cls``
    batch method running the same per-image chain in ``cores`` processes (``use_process=True``), each batch
    writing its Parquet files with pyarrow."""
    import daft
    from daft.functions import download

    run_id = "bench-daft"
    t0 = time.perf_counter()
    daft.set_runner_native(num_threads=cores)
    t1 = time.perf_counter()

    @daft.cls(cpus=1, use_process=True, max_concurrency=cores)
    class Chain:
        def __init__(self, out: str, fs_name: str) -> None:
            self.out, self.fs_name = out, fs_name

        @daft.method.batch(return_dtype=daft.DataType.int64(), batch_size=CHUNK_FILES)
        def __call__(self, path: Any, content: Any) -> list[int]:
            return _chain_batch(path.to_pylist(), content.to_pylist(), self.out, self.fs_name, run_id)

    df = daft.from_pydict({"path": [str(f) for f in files]})
    df = df.with_column("content", download(df["path"]))
    chain = Chain(out, fs_name)
    counts = df.select(chain(df["path"], df["content"]).alias("images")).to_pydict()["images"]
    t2 = time.perf_counter()
    return {
        "wall_s": t2 - t1,
        "startup_s": t1 - t0,
        "images": int(sum(counts)),
        "failed": None,
        "files": len(counts),
    }


# ------------------------------------------------------------------------------------------ spark


def _session(master: str, conf: dict[str, str]) -> Any:
    from medimg_spark.session import build_session

    return build_session(
        "medimg-bench", master=master, conf={"spark.ui.showConsoleProgress": "false", **conf}
    )


def has_fused_preprocess() -> bool:
    """Whether the running package's ``preprocess`` takes ``features=`` (the fused recipe + features pass)."""
    import inspect

    from medimg_spark.preprocess import preprocess

    return "features" in inspect.signature(preprocess).parameters


class SparkStagesResult(NamedTuple):
    """What :func:`spark_stages` returns: the stages' summaries and the feature rows counted (a NamedTuple,
    not a dataclass: tests load this file without registering it in ``sys.modules``)."""

    ingest: dict[str, Any]
    preprocess: list[dict[str, Any]]
    images: int


def spark_stages(
    spark: Any,
    corpus_dir: Path,
    out: str,
    fs_name: str,
    fused: bool = False,
    files_per_partition: int | None = None,
    mark: Callable[[str], None] = lambda stage: None,
) -> SparkStagesResult:
    """The spark modes' work: ingest → preprocess (CT, X-ray recipes; in one pass with
    ``preprocess_passes`` where the package has it, else one run per recipe) → features per recipe,
    calling ``mark(stage)`` after each (``ingest``, ``preprocess <recipe>[+<recipe>]``, ``features
    <recipe>``; with ``fused`` the features come out of the recipes' pass and only ``features`` marks the
    count).

    Shared by :func:`run_spark` and ``benchmarks/spark_stages.py`` (its per-stage CPU breakdown).
    """
    from medimg_spark.config import IngestConfig
    from medimg_spark.features import compute_features
    from medimg_spark.io.ingest import ingest
    from medimg_spark.preprocess import preprocess

    cfg = IngestConfig(files_per_partition=files_per_partition) if files_per_partition else None
    s_ingest = ingest(spark, [str(corpus_dir)], out, config=cfg, deidentify=None)
    mark("ingest")
    extra: dict[str, Any] = {"features": fs_name} if fused else {}
    recipes = (
        ("ct_lung", CT_RECIPE, "modality = 'CT'"),
        ("xray_filters", _xray_recipe_path(), "modality <> 'CT'"),
    )
    pre = []
    try:  # both recipes in one pass over the frames (one Spark job), where the package can
        from medimg_spark.preprocess import RecipePass, preprocess_passes
    except ImportError:  # an --against ref from before preprocess_passes: one run per recipe
        for name, recipe, where in recipes:
            pre.append(preprocess(spark, out, str(recipe), where=where, **extra))
            mark(f"preprocess {name}")
    else:
        passes = [RecipePass(str(recipe), where, extra.get("features")) for _, recipe, where in recipes]
        pre.extend(preprocess_passes(spark, out, passes))
        mark("preprocess " + "+".join(name for name, _, _ in recipes))
    n_images = 0
    if fused:  # counted from the tables' Parquet footers: no pixels read
        n_images = sum(spark.read.parquet(p).count() for p in feature_tables(Path(out)))
        mark("features")
    else:
        # Features are per (image, recipe): one table per recipe (the second call moves the first set to
        # feature_sets/<set id>/, see compute_features), as the loop computes each frame under its recipe.
        for name in ("ct_lung", "xray_filters"):
            n_images += compute_features(spark, out, source="processed", feature_set=fs_name, recipe=name)[
                "n_images"
            ]
            mark(f"features {name}")
    return SparkStagesResult(ingest=s_ingest, preprocess=pre, images=n_images)


def run_spark(
    corpus_dir: Path, out: str, fs_name: str, master: str, conf: dict[str, str], fused: bool = False
) -> dict[str, Any]:
    """The project's stages in ``master`` (:func:`spark_stages`); ``fused`` (mode ``spark_fused``, or a
    ``--variant`` with ``_fused=true``): the features computed in the recipe's pass
    (``preprocess(..., features=...)``) instead of a separate ``compute_features`` stage reading the
    processed pixels back."""
    conf = dict(conf)
    fpp = conf.pop("_files_per_partition", None)
    fused = fused or conf.pop("_fused", "false").lower() in ("1", "true", "yes")
    if fused and not has_fused_preprocess():
        raise SystemExit("spark_fused: this medimg_spark's preprocess() has no features= (no fused pass)")
    t0 = time.perf_counter()
    spark = _session(master, conf)
    t1 = time.perf_counter()
    stage_s = {"ingest": 0.0, "preprocess": 0.0, "features": 0.0}
    last = t1

    def mark(stage: str) -> None:
        nonlocal last
        now = time.perf_counter()
        stage_s[stage.split()[0]] += now - last
        last = now

    res = spark_stages(spark, corpus_dir, out, fs_name, fused, int(fpp) if fpp else None, mark)
    t4 = time.perf_counter()
    spark.stop()
    return {
        "wall_s": t4 - t1,
        "startup_s": t1 - t0,
        "stage_s": stage_s,
        "images": res.images,
        "failed": res.ingest["quarantined"] + sum(s["frames_quarantined"] for s in res.preprocess),
    }


def run_spark_row_udf(
    corpus_dir: Path, out: str, fs_name: str, master: str, conf: dict[str, str]
) -> dict[str, Any]:
    """The three stages with plain (pickled, row-at-a-time) Python UDFs around the same per-image code."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, StructType

    from medimg_spark.features import decode_row, load_feature_set
    from medimg_spark.io.files import FileContext, process_file
    from medimg_spark.io.ingest import UNION_SCHEMA
    from medimg_spark.ops import load_recipe
    from medimg_spark.preprocess import PROCESSED_SCHEMA, RECIPE_INPUT_COLUMNS, WORK_SCHEMA, process_row
    from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA

    conf = {
        **conf,
        "spark.sql.execution.pythonUDF.arrow.enabled": "false",
        # Rows are pickled 100 at a time by default: 100 processed X-rays (4 MB each) overflow the 2g heap.
        "spark.sql.execution.python.udf.maxRecordsPerBatch": "16",
    }
    conf.pop("_files_per_partition", None)
    t0 = time.perf_counter()
    spark = _session(master, conf)
    t1 = time.perf_counter()
    run_id = "bench-row-udf"
    ctx = FileContext(run_id=run_id)
    names = UNION_SCHEMA.names

    def decode_file(path: str, content: bytearray) -> list[tuple[Any, ...]]:
        configure_process()
        return [tuple(r.get(n) for n in names) for r in process_file(path, bytes(content), ctx)]

    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(corpus_dir))
    decoded = files.select(
        F.explode(F.udf(decode_file, ArrayType(UNION_SCHEMA))("path", "content")).alias("r")
    ).select("r.*")
    decoded.write.parquet(f"{out}/_staging/decoded")  # decoded once, then split into the tables
    decoded = spark.read.parquet(f"{out}/_staging/decoded")

    def table(kind: str, schema: StructType) -> Any:
        cols = [F.col(f.name).cast(f.dataType) for f in schema.fields if f.name != "quarantined_at"]
        return decoded.where(F.col("_kind") == kind).select(*cols)

    table("image", IMAGES_SCHEMA).write.partitionBy("modality").parquet(f"{out}/images")
    table("instance", INSTANCES_SCHEMA).write.parquet(f"{out}/instances")
    t2 = time.perf_counter()

    recipes = {"ct": load_recipe(str(CT_RECIPE)), "x": load_recipe(str(_xray_recipe_path()))}
    work_names = WORK_SCHEMA.names

    def run_recipe(row: Any) -> tuple[Any, ...]:
        configure_process()
        d = row.asDict()
        res = process_row(d, recipes["ct" if d.get("modality") == "CT" else "x"], run_id)
        return tuple(res.get(n) for n in work_names)

    images = spark.read.schema(IMAGES_SCHEMA).parquet(f"{out}/images").select(*RECIPE_INPUT_COLUMNS)
    work = images.select(F.udf(run_recipe, WORK_SCHEMA)(F.struct(*RECIPE_INPUT_COLUMNS)).alias("w")).select(
        "w.*"
    )
    work.write.parquet(f"{out}/_staging/work")
    work = spark.read.parquet(f"{out}/_staging/work")
    now = F.current_timestamp()
    processed = work.where(F.col("ok")).select(
        *[
            (now if f.name == "processed_at" else F.col(f.name)).cast(f.dataType).alias(f.name)
            for f in PROCESSED_SCHEMA
        ]
    )
    processed.write.parquet(f"{out}/processed")
    t3 = time.perf_counter()

    fs = load_feature_set(fs_name)

    def extract(row: Any) -> list[float]:
        img, msk = decode_row(row.asDict(), True)
        return fs.extract(img, msk)[0].tolist()

    cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype", "mask"]
    src = spark.read.parquet(f"{out}/processed")
    feats = src.select(
        "image_id",
        "label",
        "split",
        F.udf(extract, ArrayType(DoubleType()))(F.struct(*cols)).alias("features"),
    )
    feats.write.parquet(f"{out}/features")
    t4 = time.perf_counter()
    n_images = spark.read.parquet(f"{out}/features").count()
    spark.stop()
    shutil.rmtree(f"{out}/_staging", ignore_errors=True)
    return {
        "wall_s": t4 - t1,
        "startup_s": t1 - t0,
        "stage_s": {"ingest": t2 - t1, "preprocess": t3 - t2, "features": t4 - t3},
        "images": n_images,
        "failed": None,
    }


# ---------------------------------------------------------------------------- measurement (parent)


def _proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class TreeSampler:
    """Samples the peak RSS (``VmHWM``, else RSS) of every process under ``pid`` by role."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb: dict[str, int] = {"driver": 0, "jvm": 0, "worker": 0, "workers_total": 0}
        self.worker_pids: set[int] = set()
        self.cpu_by_pid: dict[int, float] = {}  # last seen user+system CPU of each process (cross-check)
        self.role_by_pid: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _role(self, proc: Any) -> str:
        if proc.pid == self.pid:
            return "driver"
        try:
            exe = (proc.cmdline() or [""])[0]
        except Exception:
            return "worker"
        return "jvm" if Path(exe).name == "java" else "worker"

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                kb = _proc_status_kb(p.pid, "VmHWM") or p.memory_info().rss // 1024
                rss = p.memory_info().rss // 1024
            except psutil.Error:
                continue
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                self.cpu_by_pid[p.pid] = t.user + t.system
            role = self._role(p)
            self.role_by_pid[p.pid] = role
            if role == "worker":
                self.worker_pids.add(p.pid)
                total += rss
            self.peak_kb[role] = max(self.peak_kb[role], kb)
        self.peak_kb["workers_total"] = max(self.peak_kb["workers_total"], total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def _become_subreaper() -> bool:
    """Make orphaned descendants (the JVM, pyspark daemons) our children, so their CPU time is counted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


def _reap_orphans(keep: set[int], timeout: float = 90.0) -> None:
    """Wait for the children that are not in ``keep`` (orphans handed to us as subreaper) to exit."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in psutil.Process().children() if p.pid not in keep]
        if not pending:
            return
        for p in pending:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
        if time.monotonic() > deadline:
            for p in pending:
                with contextlib.suppress(psutil.Error):
                    p.kill()  # a descendant of a benchmark subprocess that outlived it
            deadline = time.monotonic() + 30
        time.sleep(0.1)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def feature_tables(out: Path) -> list[str]:
    """``features/`` and the per-recipe sets ``compute_features`` moved to ``feature_sets/<set id>/``."""
    sets = out / "feature_sets"
    extra = sorted(str(p) for p in sets.iterdir() if p.is_dir()) if sets.is_dir() else []
    return [str(out / "features"), *extra]


def feature_digests(out: Path) -> dict[str, str]:
    """``{image_id: sha256 of the float64 feature vector}`` read with pyarrow (never through Spark)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    digests: dict[str, str] = {}
    for f in (f for table in feature_tables(out) for f in sorted(Path(table).rglob("*.parquet"))):
        t = pq.read_table(f, columns=["image_id", "features"])
        ids = t.column("image_id").to_pylist()
        col = t.column("features")
        if pa.types.is_struct(col.type):  # a Spark ML vector: (type, size, indices, values)
            values = col.combine_chunks().field("values").to_pylist()
        else:
            values = col.to_pylist()
        for i, v in zip(ids, values, strict=True):
            digests[i] = hashlib.sha256(np.asarray(v, dtype=np.float64).tobytes()).hexdigest()[:16]
    return digests


def base_mode(mode: str) -> str:
    """``spark+tuned`` → ``spark``, ``loop@f73b140`` → ``loop``: the worker a mode runs."""
    return mode.split("+", 1)[0].split("@", 1)[0]


def run_mode(
    mode: str,
    corpus_dir: Path,
    out: Path,
    fs_name: str,
    cores: int,
    conf: dict[str, str],
    code: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run one mode in a subprocess and measure it from here; ``code``: the checkout whose package it runs
    (default: this one)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    result_file = out.parent / f"{out.name}.result.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_worker",
        base_mode(mode),
        "--_corpus",
        str(corpus_dir),
        "--out",
        str(out),
        "--feature-set",
        fs_name,
        "--cores",
        str(cores),
        "--_result",
        str(result_file),
    ]
    for k, v in conf.items():
        cmd += ["--conf", f"{k}={v}"]
    cmd += list(extra_args)
    env = {**os.environ, **_THREAD_ENV, "MEDIMG_SPARK_LOG_LEVEL": "ERROR"}
    env.pop(CODE_ENV, None)
    if code is not None and code.resolve() != CODE:
        env[CODE_ENV] = str(code.resolve())
        env["PYTHONPATH"] = os.pathsep.join([str(code.resolve()), *filter(None, [env.get("PYTHONPATH")])])
    import psutil

    keep = {p.pid for p in psutil.Process().children()}
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # The working directory is the package's checkout: pyspark's daemon starts its workers with
    # ``python -m pyspark.daemon``, whose sys.path[0] is the working directory, so with cwd=REPO the Spark
    # workers of a ``MODE@REF`` run imported this checkout's package ahead of PYTHONPATH.
    workdir = code.resolve() if code is not None else REPO
    with subprocess.Popen(cmd, env=env, cwd=workdir) as proc, TreeSampler(proc.pid) as sampler:
        rc = proc.wait()
    _reap_orphans(keep)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"mode {mode} failed with exit code {rc}: {' '.join(cmd)}")
    res = json.loads(result_file.read_text())
    result_file.unlink()
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # pyspark's daemon ignores SIGCHLD, so its exited Python workers are reaped by the kernel and their CPU
    # never reaches RUSAGE_CHILDREN; the sampler's per-process CPU (last value seen, every 0.2 s) covers them.
    cpu = max(reaped, sum(sampler.cpu_by_pid.values()))
    n = int(res["images"])
    digests = feature_digests(out)
    joined = "\n".join(f"{k} {v}" for k, v in sorted(digests.items()))
    sizes = {t: _dir_bytes(out / t) for t in TABLES if (out / t).exists()}
    driver_kb = max(sampler.peak_kb["driver"], int(res.get("self_maxrss_kb", 0)))
    return {
        "images": n,
        "failed": res.get("failed"),
        "wall_s": round(res["wall_s"], 3),
        "process_s": round(elapsed, 3),
        "startup_s": round(res.get("startup_s", 0.0), 3),
        "stage_s": {k: round(v, 2) for k, v in res.get("stage_s", {}).items()},
        "images_per_s": round(n / res["wall_s"], 3) if n else 0.0,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cores_used": round(cpu / elapsed, 2),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_image": round(cpu / n, 4) if n else None,
        "reaped_cpu_s": round(reaped, 2),
        "sampled_cpu_s": round(sum(sampler.cpu_by_pid.values()), 2),
        "sampled_cpu_s_by_role": {
            role: round(
                sum(c for p, c in sampler.cpu_by_pid.items() if sampler.role_by_pid.get(p) == role), 2
            )
            for role in ("driver", "jvm", "worker")
        },
        "driver_peak_rss_mb": round(driver_kb / 1024, 1),
        "jvm_peak_rss_mb": round(sampler.peak_kb["jvm"] / 1024, 1) or None,
        "workers_peak_rss_mb": round(sampler.peak_kb["worker"] / 1024, 1),
        "workers_total_peak_rss_mb": round(sampler.peak_kb["workers_total"] / 1024, 1),
        "worker_processes": len(sampler.worker_pids),
        "output_bytes": sum(sizes.values()),
        "output_bytes_by_table": sizes,
        "features_digest": hashlib.sha256(joined.encode()).hexdigest()[:16],
        "feature_digests": digests,
        "conf": conf,
        "package": res.get("package"),
        **{k: res[k] for k in ("feature_names", "profile") if k in res},
    }


def worker_main(args: argparse.Namespace) -> None:
    import medimg_spark

    conf = dict(kv.split("=", 1) for kv in args.conf)
    # every process this one starts (Pool, Spark's Python workers, Ray and Daft workers) imports CODE's package
    os.environ["PYTHONPATH"] = os.pathsep.join([str(CODE), *filter(None, [os.environ.get("PYTHONPATH")])])
    package = Path(medimg_spark.__file__).resolve().parent
    if package.parent != CODE:
        raise SystemExit(f"the benchmark imported {package}, not the package of {CODE}; unset PYTHONPATH")
    files = corpus_files(Path(args._corpus))
    if args._worker == "profile":
        res = run_profile(files, args.out, args.feature_set, args.profile_top)
    elif args._worker == "loop":
        res = run_loop_or_pool(files, args.out, args.feature_set, 1)
    elif args._worker == "pool":
        res = run_loop_or_pool(files, args.out, args.feature_set, args.cores)
    elif args._worker == "spark":
        res = run_spark(Path(args._corpus), args.out, args.feature_set, f"local[{args.cores}]", conf)
    elif args._worker == "spark_fused":
        res = run_spark(Path(args._corpus), args.out, args.feature_set, f"local[{args.cores}]", conf, True)
    elif args._worker == "spark_local1":
        res = run_spark(Path(args._corpus), args.out, args.feature_set, "local[1]", conf)
    elif args._worker == "spark_row_udf":
        res = run_spark_row_udf(Path(args._corpus), args.out, args.feature_set, f"local[{args.cores}]", conf)
    elif args._worker == "ray":
        res = run_ray(files, args.out, args.feature_set, args.cores)
    elif args._worker == "daft":
        res = run_daft(files, args.out, args.feature_set, args.cores)
    else:
        raise SystemExit(f"unknown mode {args._worker}")
    res["self_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res["package"] = str(package)
    Path(args._result).write_text(json.dumps(res))


# ------------------------------------------------------------------------------------- profile


def _short_source(filename: str) -> str:
    for marker in ("site-packages/", "/medimg_spark/", "/benchmarks/"):
        if marker in filename:
            head = "medimg_spark/" if marker == "/medimg_spark/" else ""
            return head + filename.split(marker, 1)[1]
    return filename


def run_profile(files: list[Path], out: str, fs_name: str, top: int) -> dict[str, Any]:
    """cProfile of the loop's per-image work (:func:`process_chunk` over ``files``) after a warm-up chunk.

    CPU per image is measured twice: once plain (``time.process_time``), once under the profiler.
    """
    import cProfile
    import pstats

    chunks = _chunks(files)
    run_id = "bench-profile"
    process_chunk(0, chunks[0][:4], out, fs_name, run_id)  # imports, first-call caches
    cpu0 = time.process_time()
    n = 0
    for i, c in enumerate(chunks):
        n += process_chunk(i, c, out, fs_name, run_id)["images"]
    plain = time.process_time() - cpu0
    prof = cProfile.Profile(time.process_time)  # CPU time: wall time means nothing on a shared machine
    started = time.perf_counter()
    cpu0 = time.process_time()
    prof.enable()
    for i, c in enumerate(chunks):
        process_chunk(i, c, out, fs_name, run_id)
    prof.disable()
    profiled = time.process_time() - cpu0
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative")
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in entries[:top]:
        where = "~" if filename == "~" else f"{_short_source(filename)}:{line}"
        rows.append(
            {
                "function": f"{where}({func})",
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
                "cum_s_per_image": round(cumtime / n, 4) if n else None,
                "cum_share": round(cumtime / profiled, 3) if profiled else None,
            }
        )
    return {
        "wall_s": time.perf_counter() - started,
        "images": n,
        "failed": None,
        "profile": {
            "images": n,
            "cpu_s_per_image": round(plain / n, 4) if n else None,
            "profiled_cpu_s_per_image": round(profiled / n, 4) if n else None,
            "top": rows,
        },
    }


def profile_corpus_n(images: int) -> int:
    """The corpus size N whose N CT + N/2 PNG files hold about ``images`` images."""
    return max(2, round(images * 2 / 3))


# ------------------------------------------------------------------------------------- --against


class AgainstTree:
    """A detached git worktree of ``ref`` under ``benchmarks/.cache/against/<sha>``: reused when present,
    otherwise created and removed again on exit (unless ``keep``)."""

    def __init__(self, ref: str, keep: bool = False) -> None:
        self.ref = ref
        self.keep = keep
        self.sha = self._git("rev-parse", "--verify", f"{ref}^{{commit}}")
        self.short = self._git("rev-parse", "--short=7", self.sha)
        self.path = CACHE / "against" / self.sha
        self.created = False

    @staticmethod
    def _git(*args: str, cwd: Path = REPO) -> str:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"--against: git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def __enter__(self) -> AgainstTree:
        head = self.path / ".git"
        if head.exists() and self._git("rev-parse", "HEAD", cwd=self.path) == self.sha:
            print(f"--against {self.ref}: reusing the worktree {self.path}", flush=True)
            return self
        if self.path.exists():
            shutil.rmtree(self.path)
        self._git("worktree", "prune")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._git("worktree", "add", "--detach", str(self.path), self.sha)
        self.created = True
        print(f"--against {self.ref}: worktree of {self.short} at {self.path}", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.created and not self.keep:
            self._git("worktree", "remove", "--force", str(self.path))
            self._git("worktree", "prune")


#: Features of the current code and of ``--against REF`` agree when ``|a - b| <= FEATURE_RTOL * max(|a|, |b|)``
#: (values below ``REL_FLOOR`` times the column's largest magnitude are compared against that floor instead):
#: the denoise and metric rewrites may move the float32 frames by rounding, which moves histogram bin edges
#: and percentiles by about that much.
FEATURE_RTOL = 1e-3
#: The same for the ``quality_before``/``quality_after`` metrics of ``processed`` (the per-metric checks of
#: the rewritten kernels against the old functions are in the tests of medimg_spark.quality).
QUALITY_RTOL = 1e-2
REL_FLOOR = 1e-6


def snapshot(out: Path, dest: Path) -> None:
    """Keep what ``--against`` compares (features and quality metrics per image, no pixels) of one run."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    def read(table: str | Path, columns: list[str]) -> Any:
        ds = pads.dataset(out / table, format="parquet", partitioning="hive", exclude_invalid_files=True)
        return ds.to_table(columns=columns)

    parts = []
    for table in feature_tables(out):  # one per recipe in the Spark modes
        part = read(table, ["image_id", "features"])
        col = part.column("features").combine_chunks()
        if pa.types.is_struct(col.type):  # a Spark ML vector
            col = col.field("values")
        parts.append(
            pa.table({"image_id": part.column("image_id"), "features": col.cast(pa.list_(pa.float64()))})
        )
    feats = pa.concat_tables(parts)
    quality = read("processed", ["image_id", "quality_before", "quality_after"])
    dest.mkdir(parents=True, exist_ok=True)
    pq.write_table(feats, dest / "features.parquet")
    pq.write_table(quality, dest / "quality.parquet")


def _rel_diff(a: Any, b: Any) -> Any:
    """Element-wise ``|a - b| / max(|a|, |b|, floor)`` over rows (axis 0) of two float arrays; NaN on both
    sides counts as equal, NaN on one side as infinitely different."""
    import numpy as np

    finite = np.concatenate([np.abs(a[np.isfinite(a)]), np.abs(b[np.isfinite(b)])])
    floor = max(float(finite.max()) * REL_FLOOR if finite.size else 0.0, 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    d[np.isnan(a) & np.isnan(b)] = 0.0
    d[np.isnan(d)] = np.inf
    return d


def compare_against(current: Path, old: Path, feature_names: list[str]) -> dict[str, Any]:
    """Features and quality metrics of the same images from two snapshots (current vs ``--against``)."""
    import numpy as np
    import pyarrow.parquet as pq

    by_cur: dict[str, dict[str, Any]] = {}
    by_ref: dict[str, dict[str, Any]] = {}
    for snap, rows in ((current, by_cur), (old, by_ref)):
        for r in pq.read_table(snap / "features.parquet").to_pylist():
            rows[r["image_id"]] = {"features": r["features"], "quality_before": None, "quality_after": None}
        for r in pq.read_table(snap / "quality.parquet").to_pylist():
            rows.setdefault(r["image_id"], {"features": None}).update(r)
    common = sorted(set(by_cur) & set(by_ref))
    out: dict[str, Any] = {
        "images": len(by_cur),
        "images_against": len(by_ref),
        "same_images": set(by_cur) == set(by_ref),
        "feature_rtol": FEATURE_RTOL,
        "quality_rtol": QUALITY_RTOL,
    }
    fc = [by_cur[i]["features"] for i in common]
    fr = [by_ref[i]["features"] for i in common]
    out["features_identical"] = sum(1 for a, b in zip(fc, fr, strict=True) if a == b)
    if common and all(
        a is not None and b is not None and len(a) == len(b) for a, b in zip(fc, fr, strict=True)
    ):
        a, b = np.asarray(fc, dtype=np.float64), np.asarray(fr, dtype=np.float64)
        d = np.column_stack([_rel_diff(a[:, j], b[:, j]) for j in range(a.shape[1])]) if a.size else a
        i, j = np.unravel_index(int(np.argmax(d)), d.shape) if d.size else (0, 0)
        names = feature_names if len(feature_names) == a.shape[1] else [f"#{k}" for k in range(a.shape[1])]
        out["features_max_rel_diff"] = float(d.max()) if d.size else 0.0
        out["features_max_abs_diff"] = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
        out["features_images_beyond_rtol"] = int((d > FEATURE_RTOL).any(axis=1).sum())
        if d.size and d.max() > 0:
            out["features_worst"] = {
                "feature": names[j],
                "image_id": common[i],
                "current": float(a[i, j]),
                "against": float(b[i, j]),
            }
    else:
        out["features_max_rel_diff"] = float("inf") if common else None
        out["features_images_beyond_rtol"] = len(common)
    per_metric: dict[str, float] = {}
    beyond: set[str] = set()
    for side in ("quality_before", "quality_after"):
        rows_c = [by_cur[i][side] or {} for i in common]
        rows_r = [by_ref[i][side] or {} for i in common]
        keys = sorted({k for r in rows_c for k in r} & {k for r in rows_r for k in r})
        for k in keys:
            a = np.asarray([np.nan if r.get(k) is None else r[k] for r in rows_c], dtype=np.float64)
            b = np.asarray([np.nan if r.get(k) is None else r[k] for r in rows_r], dtype=np.float64)
            d = _rel_diff(a, b)
            per_metric[f"{side.split('_')[1]}.{k}"] = float(d.max()) if d.size else 0.0
            beyond |= {common[x] for x in np.flatnonzero(d > QUALITY_RTOL)}
    out["quality_max_rel_diff"] = max(per_metric.values(), default=0.0)
    out["quality_max_rel_diff_by_metric"] = {k: float(f"{v:.3g}") for k, v in per_metric.items()}
    out["quality_images_beyond_rtol"] = len(beyond)
    return out


# -------------------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    import psutil

    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("pyspark", "numpy", "cv2", "pydicom", "pyarrow", "skimage", "pylibjpeg", "openjpeg", "gdcm"):
        try:
            m = __import__(mod)
            versions[mod] = str(getattr(m, "__version__", None) or getattr(m, "GDCM_VERSION", "?"))
        except Exception:
            versions[mod] = "missing"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    versions["java"] = java.splitlines()[0] if java else "?"
    try:
        versions["medimg_spark_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
        ).stdout.strip()
    except OSError:
        versions["medimg_spark_commit"] = "?"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def machine_line(m: dict[str, Any], commit: bool = False) -> str:
    """The reports' one-line description of :func:`machine_info`'s result (``commit``: with the commit)."""
    line = (
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB; {m['platform']}; "
        f"load average at start {m['load_avg_at_start']} (shared machine)"
    )
    if commit:
        line += f"; commit {m['versions'].get('medimg_spark_commit', '?')}"
    return line + "."


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


SUMMARY_KEYS = (
    "images_per_s",
    "cpu_s_per_image",
    "driver_peak_rss_mb",
    "jvm_peak_rss_mb",
    "workers_peak_rss_mb",
    "workers_total_peak_rss_mb",
    "output_bytes",
    "wall_s",
    "startup_s",
    "cpu_s",
)


def summarise(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the repeats for the numbers; the rest from the first repeat."""
    out = {k: v for k, v in repeats[0].items() if k not in ("feature_digests", "feature_names", "profile")}
    for k in SUMMARY_KEYS:
        vals = [r[k] for r in repeats if r.get(k) is not None]
        if vals:
            out[k] = round(statistics.median(vals), 4)
    out["repeats"] = len(repeats)
    if len(repeats) > 1:
        out["images_per_s_all"] = [r["images_per_s"] for r in repeats]
    return out


def compare_outputs(modes: dict[str, dict[str, Any]], digests: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Per-image feature digests of every mode against the loop's (``mode@REF`` modes are reported but do
    not count in ``all_equal``: their code differs; :func:`compare_against` measures by how much)."""
    ref_mode = "loop" if "loop" in digests else next(iter(digests))
    ref = digests[ref_mode]
    out: dict[str, Any] = {"reference": ref_mode}
    for m, d in digests.items():
        diff = sum(1 for k in set(ref) | set(d) if ref.get(k) != d.get(k))
        out[m] = {"images": len(d), "mismatches_vs_reference": diff}
        modes[m]["feature_mismatches_vs_" + ref_mode] = diff
    out["all_equal"] = all(
        v["mismatches_vs_reference"] == 0 for k, v in out.items() if isinstance(v, dict) and "@" not in k
    )
    return out


def _target(ratio: float, wanted: str) -> dict[str, Any]:
    """``{"ratio", "target", "met"}`` for a target written as ``">= x"`` or ``"<= x"``."""
    op, bound = wanted.split()
    met = ratio >= float(bound) if op == ">=" else ratio <= float(bound)
    return {"ratio": float(f"{ratio:.4g}"), "target": wanted, "met": met}


def targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, evaluated on what was measured."""
    t: dict[str, Any] = {}
    by_n = {r["n"]: r["modes"] for r in runs}
    # the loop's CPU per image does not depend on N: a size run without the loop uses the largest with it
    loops = {n: m["loop"]["cpu_s_per_image"] for n, m in by_n.items() if "loop" in m}
    for n, m in sorted(by_n.items()):
        for sm in SPARK_TARGET_MODES:  # the stages as they are, and with the fused pass
            if sm not in m:
                continue
            spark = m[sm]
            if "pool" in m:
                t[f"{sm}_vs_pool_throughput_n{n}"] = _target(
                    spark["images_per_s"] / m["pool"]["images_per_s"], ">= 0.95" if n >= 8000 else ">= 0.9"
                )
            if loops:
                ref = n if n in loops else max(loops)
                key = f"{sm}_vs_loop_cpu_per_image_n{n}" + ("" if ref == n else f"_loop_n{ref}")
                t[key] = _target(spark["cpu_s_per_image"] / loops[ref], "<= 1.15")
            for peer in PEER_MODES:
                if peer in m:
                    t[f"{sm}_vs_{peer}_throughput_n{n}"] = _target(
                        spark["images_per_s"] / m[peer]["images_per_s"], ">= 1"
                    )
        if "spark" not in m:
            continue
        spark = m["spark"]
        if "spark_row_udf" in m:
            t[f"arrow_vs_row_udf_throughput_n{n}"] = _target(
                spark["images_per_s"] / m["spark_row_udf"]["images_per_s"], ">= 5"
            )
        if "spark_local1" in m:
            ratio = spark["images_per_s"] / m["spark_local1"]["images_per_s"]
            t[f"spark_local2_vs_local1_n{n}"] = {"ratio": round(ratio, 3), "target": "> 1 (grows with cores)"}
    for sm in SPARK_TARGET_MODES:
        if sm in by_n.get(2000, {}) and sm in by_n.get(8000, {}):
            a, b = by_n[2000][sm]["driver_peak_rss_mb"], by_n[8000][sm]["driver_peak_rss_mb"]
            t["driver_rss_n8000_vs_n2000" if sm == "spark" else f"{sm}_driver_rss_n8000_vs_n2000"] = _target(
                b / a, "<= 1.1"
            )
    for run in runs:  # --against: CPU per image of REF's code over the current code's, and the outputs
        n = run["n"]
        for old_mode, cmp in (run.get("against") or {}).items():
            mode, _, short = old_mode.partition("@")
            m = run["modes"]
            if mode in m and old_mode in m and m[mode]["cpu_s_per_image"]:
                ratio = m[old_mode]["cpu_s_per_image"] / m[mode]["cpu_s_per_image"]
                key = f"{mode}_cpu_per_image_vs_{short}_n{n}"
                t[key] = (
                    _target(ratio, ">= 2.5") if mode == "loop" else {"ratio": round(ratio, 3), "target": "-"}
                )
            if cmp.get("features_max_rel_diff") is not None:
                t[f"{mode}_features_max_rel_diff_vs_{short}_n{n}"] = _target(
                    cmp["features_max_rel_diff"], f"<= {FEATURE_RTOL:g}"
                )
                t[f"{mode}_quality_max_rel_diff_vs_{short}_n{n}"] = _target(
                    cmp["quality_max_rel_diff"], f"<= {QUALITY_RTOL:g}"
                )
    return t


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# medimg-spark benchmark ({report['started_at']})",
        "",
        machine_line(m),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Work per image: ingest decode → recipe (CT: ct_lung; PNG: xray_filters) → quality before/after → "
        f"features `{report['feature_set']}` → Parquet (zstd). Corpus per N: N CT DICOM 512² "
        f"(1 in {J2K_EVERY} JPEG 2000) + N/2 PNG 1024²; images = 1.5 N. Spark settings: medimg_spark/resources/spark-defaults.conf"
        + (f" + {report['spark_conf']}" if report.get("spark_conf") else "")
        + ".",
    ]
    if report.get("against_ref"):
        a = report["against_ref"]
        lines.append(
            f"`mode@{a['short']}`: this script's harness running the package of {a['ref']} ({a['sha']}, a git "
            "worktree) in the same invocation, alternated with the current code's modes."
        )
    lines += [
        "",
        "| N | mode | images | images/s | CPU s/image | driver peak RSS MB | JVM peak RSS MB "
        "| worker peak RSS MB (max / sum) | output MB | wall s | cores used | load 1m | repeats | equal outputs |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in report["runs"]:
        for mode, r in run["modes"].items():
            mism = next((v for k, v in r.items() if k.startswith("feature_mismatches_vs_")), None)
            equal = "yes" if mism == 0 else f"{mism} differ"
            if "@" in mode and mode in (run.get("against") or {}):
                cmp = run["against"][mode]
                fmax = cmp["features_max_rel_diff"]
                equal = f"{cmp['features_identical']}/{cmp['images']} identical, max rel diff " + (
                    "-" if fmax is None else f"{fmax:.2g}"
                )
            lines.append(
                f"| {run['n']} | {mode} | {r['images']} | {r['images_per_s']:.2f} | {r['cpu_s_per_image']:.3f} "
                f"| {r['driver_peak_rss_mb']:.0f} | {r['jvm_peak_rss_mb'] or 0:.0f} "
                f"| {r['workers_peak_rss_mb']:.0f} / {r['workers_total_peak_rss_mb']:.0f} "
                f"| {r['output_bytes'] / 2**20:.0f} | {r['wall_s']:.1f} | {r.get('cores_used', '-')} "
                f"| {'-'.join(str(x) for x in r.get('load_avg_1m', [])) or '-'} | {r['repeats']} "
                f"| {equal} |"
            )
    for run in report["runs"]:
        for mode, err in (run.get("failed_modes") or {}).items():
            lines.append(f"| {run['n']} | {mode} | FAILED: {err[-300:]} |" + " |" * 11)
        for mode, why in (run.get("skipped_modes") or {}).items():
            lines.append(f"| {run['n']} | {mode} | skipped: {why} |" + " |" * 11)
    cmps = [(run["n"], mode, c) for run in report["runs"] for mode, c in (run.get("against") or {}).items()]
    if cmps:
        lines += [
            "",
            f"Outputs vs `--against` (relative difference |a - b| / max(|a|, |b|); tolerances: features "
            f"{FEATURE_RTOL:g}, quality metrics {QUALITY_RTOL:g}):",
            "",
            "| N | modes | images (current / against) | features identical | features max rel diff "
            "| images beyond tol. (features / metrics) | metrics max rel diff | worst metrics |",
            "| ---: | --- | --- | ---: | ---: | --- | ---: | --- |",
        ]
        for n, mode, c in cmps:
            worst = sorted(c["quality_max_rel_diff_by_metric"].items(), key=lambda kv: -kv[1])[:3]
            fmax = c["features_max_rel_diff"]
            lines.append(
                f"| {n} | {mode.split('@')[0]} vs {mode} | {c['images']} / {c['images_against']} "
                f"| {c['features_identical']} | {'-' if fmax is None else f'{fmax:.3g}'} "
                f"| {c['features_images_beyond_rtol']} / {c['quality_images_beyond_rtol']} "
                f"| {c['quality_max_rel_diff']:.3g} | {', '.join(f'{k} {v:.2g}' for k, v in worst) or '-'} |"
            )
    if report.get("targets"):
        lines += ["", "| target | ratio | wanted | met |", "| --- | ---: | --- | --- |"]
        for k, v in report["targets"].items():
            lines.append(f"| {k} | {v['ratio']} | {v['target']} | {v.get('met', '-')} |")
    for label, prof in (report.get("profiles") or {}).items():
        lines += [
            "",
            f"Profile of the loop's per-image work ({label}: cProfile over `process_chunk`, {prof['images']} "
            f"images; CPU s/image {prof['cpu_s_per_image']} plain, {prof['profiled_cpu_s_per_image']} under "
            f"the profiler), top {len(prof['top'])} by cumulative time:",
            "",
            "| function | calls | tottime s | cumtime s | cum s/image | share |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in prof["top"]:
            lines.append(
                f"| `{r['function']}` | {r['calls']} | {r['tottime_s']} | {r['cumtime_s']} "
                f"| {r['cum_s_per_image']} | {r['cum_share']} |"
            )
    lines.append("")
    return "\n".join(lines)


def _mode_unavailable(mode: str) -> str | None:
    """Why ``mode`` cannot run in this interpreter (a peer's package missing), else None."""
    import importlib.util

    base = base_mode(mode)
    if base in PEER_MODES and importlib.util.find_spec(base) is None:
        return f"{base} is not installed (pip install -e '.[bench]')"
    if base == "spark_fused" and "@" not in mode and not has_fused_preprocess():
        return "this medimg_spark's preprocess() has no features= (the fused pass)"
    return None


def run_profiles(args: argparse.Namespace, against: AgainstTree | None, work: Path) -> dict[str, Any]:
    """``--profile``: the loop's cProfile on about ``args.profile`` images, for the current code (and REF's)."""
    root = corpus(profile_corpus_n(args.profile), args.cores)
    codes: list[tuple[str, Path | None]] = [("current", None)]
    if against is not None:
        codes.append((against.short, against.path))
    profiles: dict[str, Any] = {}
    for label, code in codes:
        print(f"profile ({label}) on {root.name} ...", flush=True)
        r = run_mode(
            "profile",
            root,
            work / "profile" / label,
            args.feature_set,
            1,
            {},
            code,
            ("--profile-top", str(args.profile_top)),
        )
        profiles[label] = r["profile"]
    shutil.rmtree(work / "profile", ignore_errors=True)
    return profiles


def prepare_jvm() -> str | None:
    """Make the current package's JVM class archive before any timed run (not timed: a one-time cost of
    an installation, as compiling would be); its path, or None where the package has none."""
    try:
        from medimg_spark.session import prepare_class_archive
    except ImportError:
        return None
    path = prepare_class_archive()
    print(f"JVM class archive: {path}", flush=True)
    return str(path) if path else None


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import psutil  # noqa: F401  (fail early when missing)

    _become_subreaper()
    sizes = [QUICK_N] if args.quick else (args.n or list(DEFAULT_SIZES))
    if args.profile_only:
        sizes = []
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else CACHE / "runs"
    conf = dict(kv.split("=", 1) for kv in args.conf)
    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "feature_set": args.feature_set,
        "spark_conf": conf,
        "quick": bool(args.quick),
        "runs": [],
    }
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report["class_archive"] = prepare_jvm()
    with contextlib.ExitStack() as stack:
        against = stack.enter_context(AgainstTree(args.against, args.keep_against)) if args.against else None
        if against is not None:
            report["against_ref"] = {"ref": args.against, "sha": against.sha, "short": against.short}
        for n in sizes:
            report["runs"].append(bench_size(args, n, conf, work, against))
            write_reports(report, out_root, args.out == str(REPO / "benchmarks" / "results"), stamp)
        if args.profile:
            report["profiles"] = run_profiles(args, against, work)
    write_reports(report, out_root, args.out == str(REPO / "benchmarks" / "results"), stamp)
    print(markdown(report))
    return report


def bench_size(
    args: argparse.Namespace, n: int, conf: dict[str, str], work: Path, against: AgainstTree | None
) -> dict[str, Any]:
    """Every mode of one corpus size, alternated over the repeats; the summary of the size."""
    root = corpus(n, args.cores)
    if args.modes:
        modes = list(args.modes)
    elif args.quick:
        modes = list(QUICK_MODES)
    else:
        modes = list(DEFAULT_PLAN.get(n, ALL_MODES) if args.n is None else ALL_MODES)
    variants = {}
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        variants[f"spark+{name}"] = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    modes += [v for v in variants if v not in modes]
    if against is not None:  # each REF mode right after its current twin: measured side by side
        for m in args.against_modes:
            old = f"{m}@{against.short}"
            modes.insert(modes.index(m) + 1 if m in modes else len(modes), old)
    skipped = {m: why for m in modes if (why := _mode_unavailable(m))}
    modes = [m for m in modes if m not in skipped]
    for m, why in skipped.items():
        print(f"N={n}: {m} skipped: {why}", flush=True)
    compared = {m for m in modes if "@" in m} | {m.split("@")[0] for m in modes if "@" in m}
    reps = args.repeats if args.repeats else (2 if 100 < n <= 500 else 1)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    failures: dict[str, str] = {}
    for rep in range(reps):
        order = modes if rep % 2 == 0 else list(reversed(modes))  # alternate to spread load drift
        for mode in order:
            print(f"N={n} repeat {rep + 1}/{reps}: {mode} ...", flush=True)
            mode_conf = {**conf, **variants.get(mode, {})}
            code = against.path if against is not None and "@" in mode else None
            out = work / f"n{n}" / mode
            try:
                r = run_mode(mode, root, out, args.feature_set, args.cores, mode_conf, code)
            except RuntimeError as exc:  # recorded, and the other modes still run
                print(f"  FAILED: {exc}", flush=True)
                failures[mode] = str(exc)
                continue
            print(
                f"  {r['images']} images, {r['images_per_s']:.2f} images/s, "
                f"{r['cpu_s_per_image']} CPU s/image, wall {r['wall_s']:.1f} s",
                flush=True,
            )
            if mode in compared and not results[mode]:  # what --against compares, kept past the rerun
                try:
                    snapshot(out, work / f"n{n}" / "_compare" / mode)
                except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
                    print(f"  FAILED to keep its outputs for --against: {exc}", flush=True)
                    failures[mode] = f"snapshot for --against: {exc}"
                    continue
            results[mode].append(r)
    results = {m: rs for m, rs in results.items() if rs}
    digests = {m: rs[0]["feature_digests"] for m, rs in results.items()}
    summary = {m: summarise(rs) for m, rs in results.items()}
    run: dict[str, Any] = {
        "n": n,
        "images_expected": n + n // 2,
        "modes": summary,
        "outputs": compare_outputs(summary, digests) if summary else {"all_equal": False},
        "failed_modes": failures,
        "skipped_modes": skipped,
    }
    cmp_dir = work / f"n{n}" / "_compare"
    against_cmp: dict[str, Any] = {}
    for old in (m for m in results if "@" in m):
        cur = old.split("@")[0]
        if cur in results and (cmp_dir / cur).is_dir() and (cmp_dir / old).is_dir():
            names = results[cur][0].get("feature_names") or []
            against_cmp[old] = compare_against(cmp_dir / cur, cmp_dir / old, names)
    if against_cmp:
        run["against"] = against_cmp
    if not args.keep_outputs:
        shutil.rmtree(work / f"n{n}", ignore_errors=True)
    return run


def write_stamped(out: Path, kind: str, suffix: str, result: dict[str, Any], md: str) -> None:
    """A helper script's result as ``out/<kind>_<UTC stamp>_<suffix>.{json,md}``, also printed."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{kind}_{stamp}_{suffix}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"results in {out / name}.{{json,md}}")


def write_reports(report: dict[str, Any], out_root: Path, default_out: bool, stamp: str) -> None:
    """``results.json``/``.md`` for one size; ``bench_<stamp>.json``/``.md`` for several, for none
    (``--profile-only``) or in the default --out."""
    report["targets"] = targets(report["runs"])
    report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if len(report["runs"]) == 1:
        single = {**report["runs"][0], **{k: v for k, v in report.items() if k != "runs"}}
        (out_root / "results.json").write_text(json.dumps(single, indent=2) + "\n")
        (out_root / "results.md").write_text(markdown(report))
    if len(report["runs"]) != 1 or default_out:
        (out_root / f"bench_{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_root / f"bench_{stamp}.md").write_text(markdown(report))
    print(f"results in {out_root}", flush=True)


def combine(paths: list[str], out_root: Path) -> dict[str, Any]:
    """Merge single-size ``results.json`` files (separate runs) into one ``bench_<stamp>`` report."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    report: dict[str, Any] = {
        k: v for k, v in runs[0].items() if k not in ("n", "images_expected", "modes", "outputs")
    }
    report["combined_from"] = [
        {"n": r["n"], "started_at": r["started_at"], "load_avg_at_start": r["machine"]["load_avg_at_start"]}
        for r in runs
    ]
    by_n: dict[int, dict[str, Any]] = {}
    for r in runs:  # runs of one size are merged: a later file's modes replace an earlier file's
        merged = by_n.setdefault(r["n"], {"n": r["n"], "images_expected": r["images_expected"], "modes": {}})
        merged["modes"].update(r["modes"])
        failed = {**merged.get("failed_modes", {}), **r.get("failed_modes", {})}
        merged["failed_modes"] = {m: e for m, e in failed.items() if m not in merged["modes"]}
    for merged in by_n.values():
        modes = merged["modes"]
        ref = "loop" if "loop" in modes else next(iter(modes))
        merged["outputs"] = {"reference": ref}
        for m, v in modes.items():
            same = (
                v["features_digest"] == modes[ref]["features_digest"] and v["images"] == modes[ref]["images"]
            )
            merged["outputs"][m] = {"images": v["images"], "digest_equal_to_reference": same}
        merged["outputs"]["all_equal"] = all(
            o["digest_equal_to_reference"] for o in merged["outputs"].values() if isinstance(o, dict)
        )
    report["runs"] = [by_n[n] for n in sorted(by_n)]
    out_root.mkdir(parents=True, exist_ok=True)
    write_reports(report, out_root, True, dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, action="append", help="corpus size N (repeatable); default 500 2000 8000")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where results go")
    p.add_argument(
        "--quick", action="store_true", help=f"smoke run: N={QUICK_N}, modes {', '.join(QUICK_MODES)}"
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=ALL_MODES,
        help="modes to run (default: all; without --n the plan of DEFAULT_PLAN)",
    )
    p.add_argument("--repeats", type=int, help="repeats per mode (default 2 at 100 < N <= 500, else 1)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Pool size and local[cores]")
    p.add_argument("--feature-set", default="shape", help="feature set name or YAML (default shape)")
    p.add_argument("--conf", action="append", default=[], help="extra Spark setting key=value (repeatable)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra Spark mode NAME:key=value,... run as spark+NAME alternated with the others (tuning)",
    )
    p.add_argument(
        "--against",
        metavar="REF",
        help="also run --against-modes with the package of git REF (a worktree under benchmarks/.cache/"
        "against/), alternated with the current code's; reported as MODE@<short sha>",
    )
    p.add_argument(
        "--against-modes",
        nargs="+",
        default=list(AGAINST_MODES),
        choices=ALL_MODES,
        help=f"modes run with REF's package (default: {' '.join(AGAINST_MODES)})",
    )
    p.add_argument(
        "--keep-against", action="store_true", help="keep the --against worktree for the next run (reused)"
    )
    p.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=PROFILE_IMAGES,
        metavar="M",
        help=f"cProfile the loop's per-image work on about M images (default {PROFILE_IMAGES}; with "
        "--against also REF's); top --profile-top functions by cumulative time go into the results",
    )
    p.add_argument("--profile-top", type=int, default=PROFILE_TOP, help=argparse.SUPPRESS)
    p.add_argument("--profile-only", action="store_true", help="only the --profile run, no benchmark modes")
    p.add_argument("--work", help="scratch folder for the outputs (default benchmarks/.cache/runs)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the Parquet outputs of each mode")
    p.add_argument(
        "--combine", nargs="+", metavar="RESULTS_JSON", help="merge single-size results into --out"
    )
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_corpus", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        worker_main(args)
        return 0
    if args.combine:
        combine(args.combine, Path(args.out))
        return 0
    if args.profile_only and not args.profile:
        args.profile = PROFILE_IMAGES
    report = bench(args)
    ok = all(
        r["outputs"]["all_equal"]
        and not r["failed_modes"]
        and all(c["same_images"] for c in (r.get("against") or {}).values())
        for r in report["runs"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
