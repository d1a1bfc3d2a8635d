"""What grows with the corpus on the driver, and a standalone cluster against ``local[2]``.

    python benchmarks/scaling.py                      # every section (~15 min) → benchmarks/results/scaling.{json,md}
    python benchmarks/scaling.py --quick --out DIR    # small sizes, no cluster (< 1 min): DIR/scaling.{json,md}
    python benchmarks/scaling.py --only cluster       # one section; the others are kept from scaling.json

Sections (``docs/scaling.md`` reads them):

* ``listing``: tiny files (1 byte, 100 per folder) under ``benchmarks/.cache/scaling/files-<n>``, listed
  the way ingest lists local inputs (:func:`medimg_spark.io.listing.list_local`, then
  :func:`medimg_spark.io.datasource.split_files` / ``balance_slices`` into read tasks, the pickled
  partitions shipped to the JVM) in a fresh interpreter per size (driver CPU s, wall s, RSS growth),
  and the way Spark lists a Hadoop URI (``binaryFile`` with ``recursiveFileLookup``: the JVM's
  ``InMemoryFileIndex``), plus the ``path, length`` listing DataFrame ingest built from the local listing
  until 0d04a9d (it now counts, size-filters and matches labels from the driver's ``{path: size}``).
* ``checkpoint``: incremental ingest's streaming checkpoint (Spark's file source log) and medimg's commit
  records (:func:`medimg_spark.io.commit.commit_batch`, :func:`~medimg_spark.io.commit.batch_files`) after
  ten micro-batches over n files: commit time per batch, the restart of a query that finds nothing new
  (recovery: the source log is read back and the folder listed again), one batch of 10 new files, and
  the log sizes.
* ``broadcast``: the done-id anti-join of ``preprocess`` (``F.broadcast(done)``, image ids as sha256 hex):
  the broadcast's size (Spark's ``dataSize`` metric), build and total time, driver JVM heap.
* ``model``: a trained scikit-learn random forest (the project's ``sk_rf``: 300 trees) on PneumoniaMNIST
  frames and the JAX CNN/ResNet weights (``init_params``; size is fixed by the architecture) as shipped:
  pickled bytes and ``sc.broadcast`` + one job reading it on every task.
* ``cluster``: the benchmark workload (``benchmarks/run.py``'s corpus, ``ingest → preprocess → features``)
  on a standalone master with two workers of one core each and on ``local[2]``, alternating, each run in a
  fresh interpreter; feature digests compared, medians reported. The cluster runs twice per round: its
  executors with the JVM's defaults, and with the options ``local[2]``'s one JVM gets from the package's
  spark-defaults (``spark.driver.extraJavaOptions``: serial GC, C1 only). The cluster is stopped in ``finally``.

Times are wall seconds (``perf_counter``) and CPU seconds of the driver's Python (``process_time``) or of
the driver JVM (``/proc/<pid>/stat``); the machine is shared, so the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import pickle
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypedDict

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = REPO / "benchmarks" / ".cache" / "scaling"
RESULTS = REPO / "benchmarks" / "results"
SECTIONS = ("listing", "checkpoint", "broadcast", "model", "cluster")
FULL = {
    "listing": (10_000, 30_000, 100_000),
    # every trigger lists the whole folder (~1.7 ms of JVM CPU per file): 100,000 files in 10 batches is ~35 min
    # of driver CPU, so the default stops at 10,000 (--sizes checkpoint=1000,10000,100000 for more)
    "checkpoint": (1_000, 3_000, 10_000),
    "broadcast": (10_000, 100_000, 1_000_000),
}
QUICK = {"listing": (500, 2_000), "checkpoint": (50, 150), "broadcast": (1_000, 10_000)}
FILES_PER_FOLDER = 100
CHECKPOINT_BATCHES = (
    10  # Spark's file source log is compacted every 10 batches: the last one reads a .compact
)
QUICK_CHECKPOINT_BATCHES = 2
CLUSTER_N = (
    150  # 225 images: 4 runs in ~8 min on an idle 2-core machine (--cluster-n 300 for the bigger corpus)
)
PROJECT_FILES = 10_000_000
PROJECT_NODES = 100
PROJECT_CORES_PER_NODE = 16
_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Measure(TypedDict):
    """One timed call: wall seconds, CPU seconds of the driver's Python and of the driver JVM."""

    wall_s: float
    cpu_s: float
    jvm_cpu_s: float | None


class Fit(TypedDict):
    """A least-squares fit ``y = a + b * g(n)`` with ``g`` linear or ``n log2 n``, and its projection."""

    model: str
    a: float
    b: float
    r2: float
    projected: float
    at_n: int


# ------------------------------------------------------------------------------------------ helpers


def _status_kb(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds (Linux ``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def timed(jvm_pid: int | None = None) -> Iterator[Measure]:
    """Measure the block: wall, Python CPU and (with ``jvm_pid``) the JVM's CPU, filled in on exit."""
    m: Measure = {"wall_s": 0.0, "cpu_s": 0.0, "jvm_cpu_s": None}
    j0 = _proc_cpu_s(jvm_pid) if jvm_pid else 0.0
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        yield m
    finally:
        m["wall_s"] = round(time.perf_counter() - w0, 4)
        m["cpu_s"] = round(time.process_time() - c0, 4)
        if jvm_pid:
            m["jvm_cpu_s"] = round(_proc_cpu_s(jvm_pid) - j0, 3)


def fit_growth(ns: list[int], ys: list[float], at_n: int) -> Fit:
    """The better (higher R²) of ``y = a + b·n`` and ``y = a + b·n·log2 n`` over the points, projected to ``at_n``.

    Raises:
        ValueError: fewer than two points.
    """
    if len(ns) < 2:
        raise ValueError(f"fit_growth needs two sizes or more, got {ns}; run the section at two sizes")
    best: Fit | None = None
    for model, g in (("linear", float), ("n log n", lambda n: n * math.log2(max(n, 2)))):
        xs = [g(n) for n in ns]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        a = my - b * mx
        ss_tot = sum((y - my) ** 2 for y in ys)
        ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
        r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
        fit: Fit = {
            "model": model,
            "a": a,
            "b": b,
            "r2": round(r2, 5),
            "projected": a + b * g(at_n),
            "at_n": at_n,
        }
        if best is None or r2 > best["r2"] + 1e-9:
            best = fit
    assert best is not None
    return best


def tiny_tree(n: int) -> Path:
    """``CACHE/files-<n>``: n one-byte files, 100 per folder, two folder levels (generated once)."""
    root = CACHE / f"files-{n}"
    done = root / ".complete"
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    for i in range(n):
        folder = root / f"p{i // 10_000:03d}" / f"d{(i // FILES_PER_FOLDER) % 100:02d}"
        if i % FILES_PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:08d}.dcm").write_bytes(b"\x00")
    done.write_text(str(n))
    return root


def _session(master: str = "local[2]", conf: dict[str, str] | None = None) -> Any:
    from medimg_spark.session import build_session

    return build_session(
        "medimg-scaling",
        master=master,
        conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", **(conf or {})},
    )


def _jvm_pid(spark: Any) -> int:
    return int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())


def _jvm_heap_mb(spark: Any) -> float:
    jvm = spark.sparkContext._jvm
    jvm.java.lang.System.gc()
    rt = jvm.java.lang.Runtime.getRuntime()
    return round((rt.totalMemory() - rt.freeMemory()) / 2**20, 1)


def _dir_bytes(path: Path) -> tuple[int, int]:
    """Files and bytes under ``path`` (a file Spark renames or deletes meanwhile is not counted)."""
    count = size = 0
    for p in [path, *path.rglob("*")] if path.is_file() else path.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if p.is_file():
                size += p.stat().st_size
                count += 1
    return count, size


# ------------------------------------------------------------------------------------------ listing


def probe_listing(root: Path, parallelism: int) -> dict[str, Any]:
    """In a fresh interpreter: ingest's driver-side listing of ``root`` (what :func:`_scan_inputs` and the data source's planning do)."""
    from medimg_spark.io.datasource import ReadPlan, _ListedReader, split_files
    from medimg_spark.io.files import FileContext
    from medimg_spark.io.listing import list_local

    base_kb = _status_kb("self", "VmRSS")
    with timed() as t_list:
        listing = list_local([str(root)])
    files = {p: s for p, s in listing.files.items() if s}
    plan = ReadPlan(
        paths=[], table="all", frames="all", dicom_only=False, ctx=FileContext(run_id="scaling"),
        flush_bytes=64 << 20, parallelism=parallelism,
    )  # fmt: skip
    with timed() as t_split:
        parts = split_files(files, [], plan)
    with timed() as t_pickle:
        shipped = len(pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL))
    # The read command Spark's planner worker pickles once and every read task unpickles: it holds the
    # reader, and ingest's reader holds every listed file (pyspark/sql/worker/plan_data_source_read.py).
    from pyspark import cloudpickle

    command = cloudpickle.dumps(_ListedReader(plan, files))
    with timed() as t_unpickle:
        cloudpickle.loads(command)
    return {
        "files": len(listing.files),
        "list_local": t_list,
        "split_files": t_split,
        "tasks": len(parts),
        "pickle": t_pickle,
        "partitions_pickled_bytes": shipped,
        "read_command_bytes": len(command),
        "read_command_unpickle": t_unpickle,
        "rss_growth_mb": round((_status_kb("self", "VmHWM") - base_kb) / 1024, 1),
    }


def section_listing(spark: Any, sizes: tuple[int, ...], parallelism: tuple[int, ...]) -> dict[str, Any]:
    """Local listing (fresh interpreter per size) and Spark's Hadoop listing of the same trees."""
    from medimg_spark.io.planning import LOCAL_BYTES_PER_TASK, LOCAL_OPEN_COST

    rows: list[dict[str, Any]] = []
    for n in sizes:
        root = tiny_tree(n)
        for par in parallelism:
            if par != parallelism[0] and n * LOCAL_OPEN_COST // par >= LOCAL_BYTES_PER_TASK:
                continue  # full tasks (LOCAL_BYTES_PER_TASK) at any parallelism: about the first row's split
            proc = subprocess.run(
                [sys.executable, __file__, "--_probe_listing", str(root), "--_parallelism", str(par)],
                capture_output=True, text=True, check=True, env={**os.environ, **_THREAD_ENV},
            )  # fmt: skip
            local = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"n": n, "parallelism": par, **local})
            print(f"  listing n={n} parallelism={par}: {json.dumps(local)}", flush=True)
    pid = _jvm_pid(spark)
    hadoop: list[dict[str, Any]] = []
    from medimg_spark.io.listing import list_local

    for n in sizes:
        root = tiny_tree(n)
        heap0 = _jvm_heap_mb(spark)
        with timed(pid) as t_load:
            df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(f"file:{root}")
        heap1 = _jvm_heap_mb(spark)
        with timed(pid) as t_paths:
            n_listed = len(df.inputFiles())
        files = list(list_local([str(root)]).files.items())
        with timed(pid) as t_df:
            spark.createDataFrame(files, "path string, length long").count()
        row = {
            "n": n,
            "files": n_listed,
            "binaryfile_load": t_load,
            "input_files_to_python": t_paths,
            "listing_dataframe": t_df,
            "jvm_heap_growth_mb": round(heap1 - heap0, 1),
        }
        hadoop.append(row)
        print(f"  hadoop listing n={n}: {json.dumps(row)}", flush=True)
    return {"local": rows, "hadoop": hadoop}


# ------------------------------------------------------------------------------------------ checkpoint


class _Checkpoint:
    """One incremental checkpoint over a folder: medimg's commit protocol with a stage that writes no table."""

    SCHEMA = "path string, modificationTime timestamp, length long, content binary"

    def __init__(self, spark: Any, src: Path, out: Path) -> None:
        from medimg_spark.storage import get_storage

        self.spark, self.src, self.out = spark, src, out
        self.store = get_storage(spark)
        self.per_batch_s: list[float] = []
        self.read_log_s: list[float] = []
        self.logged: list[int] = []

    def stage(self, batch: Any, batch_id: int, staging: str) -> dict[str, Any]:
        """The micro-batch's files from the source log (what ingest's stage reads), timed."""
        from medimg_spark.io.commit import CHECKPOINT_DIR, batch_files

        t0 = time.perf_counter()
        files = batch_files(self.store, str(self.out / CHECKPOINT_DIR), 1, batch_id)
        self.read_log_s.append(time.perf_counter() - t0)
        self.logged.append(len(files))
        return {"files_seen": len(files)}

    def per_batch(self, batch: Any, batch_id: int) -> None:
        from medimg_spark.io.commit import commit_batch

        t0 = time.perf_counter()
        commit_batch(self.store, str(self.out), batch, batch_id, self.stage, tables=())
        self.per_batch_s.append(time.perf_counter() - t0)

    def run(self, max_files: int | None) -> None:
        """One ``availableNow`` run of the binaryFile stream over ``src`` (as incremental ingest reads)."""
        from medimg_spark.io.commit import run_available_now
        from medimg_spark.io.ingest import RAW_LOCAL_FS

        reader = self.spark.readStream.format("binaryFile").schema(self.SCHEMA).options(**RAW_LOCAL_FS)
        reader = reader.option("recursiveFileLookup", "true")
        if max_files:
            reader = reader.option("maxFilesPerTrigger", max_files)
        run_available_now(self.store, reader.load(f"file:{self.src}"), str(self.out), self.per_batch)


def checkpoint_row(spark: Any, n: int, batches: int, work: Path) -> dict[str, Any]:
    """Ingest n files in ``batches`` micro-batches, restart with nothing new, then with 10 new files."""
    from medimg_spark.io.commit import CHECKPOINT_DIR, COMMITS_DIR

    pid = _jvm_pid(spark)
    src, out = work / f"in-{n}", work / f"lake-{n}"
    for p in (src, out):
        if p.exists():
            shutil.rmtree(p)
    shutil.copytree(tiny_tree(n), src, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
    ck = _Checkpoint(spark, src, out)
    with timed(pid) as t_build:
        ck.run(-(-n // batches))
    assert sum(ck.logged) == n, f"the checkpoint logged {sum(ck.logged)} files, expected {n}"
    built = len(ck.per_batch_s)
    with timed(pid) as t_recover:
        ck.run(None)
    assert len(ck.per_batch_s) == built, "a restart over an unchanged folder ran a batch"
    (src / "new").mkdir()
    for i in range(10):
        (src / "new" / f"n{i}.dcm").write_bytes(b"\x01")
    with timed(pid) as t_new:
        ck.run(None)
    assert ck.logged[-1] == 10, ck.logged
    time.sleep(2)  # the stopped query's log writer may still be replacing the latest .compact
    sources = out / CHECKPOINT_DIR / "sources" / "0"
    compacts = [
        _dir_bytes(p)[1] for p in sorted(sources.glob("*.compact"), key=lambda p: int(p.name.split(".")[0]))
    ]
    n_log, b_log = _dir_bytes(sources)
    n_commit, b_commit = _dir_bytes(out / COMMITS_DIR)
    shutil.rmtree(src)
    shutil.rmtree(out)
    return {
        "done_ids": n,
        "batches": built,
        "build": t_build,
        "commit_batch_s_median": round(statistics.median(ck.per_batch_s[:built]), 4),
        "commit_batch_s_last": round(ck.per_batch_s[built - 1], 4),
        "batch_files_s_max": round(max(ck.read_log_s[:built]), 4),
        "recovery_noop_run": t_recover,
        "one_new_batch_run": t_new,
        "one_new_batch_commit_s": round(ck.per_batch_s[-1], 4),
        "source_log_files": n_log,
        "source_log_bytes": b_log,
        "last_compact_bytes": max(compacts, default=0),
        "commit_records": n_commit,
        "commit_records_bytes": b_commit,
    }


def section_checkpoint(spark: Any, sizes: tuple[int, ...], batches: int, work: Path) -> list[dict[str, Any]]:
    """:func:`checkpoint_row` per size."""
    rows = []
    for n in sizes:
        rows.append(checkpoint_row(spark, n, batches, work))
        print(f"  checkpoint n={n}: {json.dumps(rows[-1])}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ broadcast


def _broadcast_metrics(df: Any) -> dict[str, float]:
    """``dataSize``/``buildTime``/``collectTime`` of the first BroadcastExchange in ``df``'s executed plan."""
    stack = [df._jdf.queryExecution().executedPlan()]
    while stack:
        node = stack.pop()
        if node.nodeName() == "BroadcastExchange":
            metrics = node.metrics()
            return {k: float(metrics.apply(k).value()) for k in ("dataSize", "buildTime", "collectTime")}
        children = node.children()
        stack.extend(children.apply(i) for i in range(children.size()))
    raise LookupError("no BroadcastExchange in the plan: the done-set was not broadcast")


def section_broadcast(spark: Any, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """``todo.join(F.broadcast(done), "image_id", "left_anti")`` as preprocess skips done frames."""
    from pyspark.sql import functions as F

    # AQE off for this query only: the executed plan then holds the BroadcastExchange and its metrics.
    aqe = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    pid = _jvm_pid(spark)
    rows: list[dict[str, Any]] = []

    def ids(n: int, start: int = 0) -> Any:
        return spark.range(start, start + n, numPartitions=4).select(
            F.sha2(F.col("id").cast("string"), 256).alias("image_id")
        )

    try:
        todo = ids(2_000, start=0).persist()
        todo.count()
        for n in sizes:
            done = ids(n, start=1_000).distinct().persist()
            done.count()
            heap0 = _jvm_heap_mb(spark)
            with timed(pid) as t_join:
                left = todo.join(F.broadcast(done), "image_id", "left_anti")
                kept = len(left.collect())
            assert kept == min(1_000, 2_000), kept
            metrics = _broadcast_metrics(left)
            row = {
                "done_ids": n,
                "join": t_join,
                "broadcast_bytes": int(metrics["dataSize"]),
                "bytes_per_id": round(metrics["dataSize"] / n, 1),
                "build_ms": metrics["buildTime"],
                "collect_ms": metrics["collectTime"],
                "jvm_heap_after_mb": _jvm_heap_mb(spark),
                "jvm_heap_before_mb": heap0,
            }
            rows.append(row)
            print(f"  broadcast n={n}: {json.dumps(row)}", flush=True)
            done.unpersist()
        todo.unpersist()
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", aqe)
    return rows


# ------------------------------------------------------------------------------------------ model


def section_model(spark: Any, quick: bool) -> list[dict[str, Any]]:
    """Trained models as the driver ships them: pickled bytes, broadcast + one job reading it."""
    import numpy as np

    from medimg_spark.config_models import CnnConfig
    from medimg_spark.ml.cnn import CnnSpec, init_params
    from medimg_spark.ml.estimators import _sk_rf

    npz = REPO / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
    with np.load(npz) as d:
        x = d["train_images"].reshape(len(d["train_images"]), -1).astype(np.float32) / 255.0
        y = d["train_labels"].ravel()
    models: list[tuple[str, Any, dict[str, Any]]] = []
    trees = 10 if quick else 300
    rows_used = 500 if quick else len(x)
    rf = _sk_rf(None, 0, n_estimators=trees)
    with timed() as t_fit:
        rf.fit(x[:rows_used], y[:rows_used])
    models.append((f"sk_rf ({trees} trees, {rows_used} frames, 28² pixels)", rf, {"fit": t_fit}))
    for arch in ("cnn", "resnet"):
        spec = CnnSpec.from_config(CnnConfig(arch=arch), n_classes=2)
        weights = {k: np.asarray(v, dtype=np.float32) for k, v in init_params(spec, seed=0).items()}
        models.append((f"{arch} (default widths {list(spec.widths)}, float32)", weights, {}))
    pid = _jvm_pid(spark)
    sc = spark.sparkContext
    rows: list[dict[str, Any]] = []
    for name, model, extra in models:
        size = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        with timed(pid) as t_bc:
            bc = sc.broadcast(model)
            touched = sc.parallelize(range(4), 4).map(lambda _, bc=bc: type(bc.value).__name__).collect()
        assert len(touched) == 4
        bc.destroy()
        row = {"model": name, "pickled_bytes": size, "broadcast_and_read": t_bc, **extra}
        rows.append(row)
        print(f"  model {name}: {json.dumps(row)}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ cluster


def _bench_run() -> ModuleType:
    """``benchmarks/run.py`` as a module (its corpus, recipes and feature digests)."""
    spec = importlib.util.spec_from_file_location("medimg_bench_run", REPO / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def standalone_cluster(work: Path, workers: int = 2, cores: int = 1, memory: str = "2g") -> Iterator[str]:
    """A standalone master and ``workers`` workers on 127.0.0.1 (tests/test_cluster.py's way); always stopped."""
    from tests.test_cluster import SPARK_HOME, _free_port, _wait_port, _wait_worker

    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        **_THREAD_ENV,
    }
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port, ui = _free_port(), _free_port()
        with (work / "master.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                     "--port", str(port), "--webui-port", str(ui)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )
            )  # fmt: skip
        _wait_port(port)
        url = f"spark://127.0.0.1:{port}"
        for k in range(workers):
            wlog = work / f"worker{k}.log"
            with wlog.open("w") as log:
                procs.append(
                    subprocess.Popen(
                        [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                         "--cores", str(cores), "--memory", memory, "--webui-port", str(_free_port()),
                         "--work-dir", str(work / f"work{k}")],
                        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    )
                )  # fmt: skip
            _wait_worker(wlog)
        yield url
    finally:
        for p in procs[::-1]:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()


#: Executors of the cluster runs: one core each (one per worker), the worktree's code on their path.
CLUSTER_CONF = {"spark.executor.cores": "1", "spark.cores.max": "2", "spark.executor.memory": "1g"}
#: The cluster arms: executors with the JVM's defaults (G1, C2), and executors started with the options
#: ``local[2]``'s one JVM gets from the package's spark-defaults (``spark.driver.extraJavaOptions``).
EXECUTOR_JVM_ARMS = {"cluster": False, "cluster, executors with local's JVM options": True}


def local_java_options() -> str:
    """``spark.driver.extraJavaOptions`` of the package's spark-defaults: the options of ``local[2]``'s JVM."""
    from medimg_spark.session import defaults_file, read_spark_defaults

    return str(read_spark_defaults(defaults_file()).get("spark.driver.extraJavaOptions", ""))


def pipeline_run(master: str, corpus_dir: Path, out: Path, executor_java: str = "") -> dict[str, Any]:
    """In a fresh interpreter: ingest → preprocess (CT and X-ray recipes) → features, as benchmarks/run.py's
    spark mode; on a cluster, ``executor_java`` (when given) is the executors' extra JVM options."""
    from medimg_spark.features import compute_features
    from medimg_spark.io.ingest import ingest
    from medimg_spark.preprocess import preprocess

    bench = _bench_run()
    conf = dict(CLUSTER_CONF) if master.startswith("spark://") else {}
    if conf:
        conf["spark.executorEnv.PYTHONPATH"] = str(REPO)
        if executor_java:
            conf["spark.executor.extraJavaOptions"] = executor_java
        for k, v in _THREAD_ENV.items():
            conf[f"spark.executorEnv.{k}"] = v
    t0 = time.perf_counter()
    spark = _session(master, conf)
    spark.range(4, numPartitions=2).count()  # executors up before the clock starts
    stage_s: dict[str, float] = {}
    digests: dict[str, str] = {}
    seen: set[str] = set()
    t1 = time.perf_counter()
    ingest(spark, [str(corpus_dir)], str(out), deidentify=None)
    stage_s["ingest"] = time.perf_counter() - t1
    recipes = {
        "ct_lung": (bench.CT_RECIPE, "modality = 'CT'"),
        "xray_filters": (bench._xray_recipe_path(), "modality <> 'CT'"),
    }
    t = time.perf_counter()
    for path, where in recipes.values():
        preprocess(spark, str(out), str(path), where=where)
    stage_s["preprocess"] = time.perf_counter() - t
    stage_s["features"] = 0.0
    images = 0
    for name in recipes:  # features are per (image, recipe): one set per recipe
        t = time.perf_counter()
        images += int(
            compute_features(spark, str(out), source="processed", feature_set="shape", recipe=name)[
                "n_images"
            ]
        )
        stage_s["features"] += time.perf_counter() - t
        found = bench.feature_digests(out)  # not timed
        digests.update({f"{name}/{k}": v for k, v in found.items() if k not in seen})
        seen |= found.keys()
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
    spark.stop()
    return {
        "wall_s": round(sum(stage_s.values()), 2),
        "startup_s": round(t1 - t0, 2),
        "stage_s": {k: round(v, 2) for k, v in stage_s.items()},
        "images": images,
        "block_managers": int(executors),
        "feature_digests": digests,
    }


def _one_run(master: str, corpus_dir: Path, out: Path, executor_java: str = "") -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    result = out.parent / f"{out.name}.json"
    load = os.getloadavg()[0]
    subprocess.run(
        [sys.executable, __file__, "--_pipeline", master, "--_corpus", str(corpus_dir), "--out", str(out),
         "--_result", str(result), f"--_executor_java={executor_java}"],
        check=True, cwd=REPO,
        env={**os.environ, **_THREAD_ENV, "MEDIMG_SPARK_LOG_LEVEL": "ERROR", "SPARK_LOCAL_IP": "127.0.0.1"},
    )  # fmt: skip
    res: dict[str, Any] = json.loads(result.read_text())
    digests = res.pop("feature_digests")
    joined = "\n".join(f"{k} {v}" for k, v in sorted(digests.items()))
    import hashlib

    res["features_digest"] = hashlib.sha256(joined.encode()).hexdigest()[:16]
    res["feature_rows"] = len(digests)
    res["images_per_s"] = round(res["images"] / res["wall_s"], 3)
    res["load_avg_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    shutil.rmtree(out)
    return res


def section_cluster(n: int, repeats: int, work: Path) -> dict[str, Any]:
    """local[2] and a 2×1-core standalone cluster (both executor JVM arms), alternating ``repeats`` times;
    medians and digest equality."""
    corpus_dir = _bench_run().corpus(n, 2)
    java = local_java_options()
    arms = [("local[2]", "")] + [(m, java if same else "") for m, same in EXECUTOR_JVM_ARMS.items()]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m, _ in arms}
    with standalone_cluster(work / "cluster") as url:
        for r in range(repeats):
            for k, (mode, executor_java) in enumerate(arms):
                master = "local[2]" if mode == "local[2]" else url
                res = _one_run(master, corpus_dir, work / f"out-{k}-{r}", executor_java)
                runs[mode].append(res)
                print(f"  cluster section, {mode} run {r}: {json.dumps(res)}", flush=True)
    return summarise_cluster(n, runs, java)


def summarise_cluster(
    n: int, runs: dict[str, list[dict[str, Any]]], executor_java: str = ""
) -> dict[str, Any]:
    """Medians of each mode's runs, each cluster arm's throughput over local[2]'s and whether every run's
    features agree; ``executor_java``: the options of the arm whose executors run local[2]'s JVM options."""
    med = {
        m: {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "images_per_s")}
        for m, rs in runs.items()
    }
    digests = {x["features_digest"] for rs in runs.values() for x in rs}
    local = med["local[2]"]["images_per_s"]
    return {
        "n": n,
        "images": runs["local[2]"][0]["images"],
        "repeats": min(len(rs) for rs in runs.values()),
        "workers": "2 workers × 1 core, 1g executors (spark.executor.cores=1, spark.cores.max=2)",
        "executor_java_options": executor_java,
        "runs": runs,
        "median": med,
        "throughput_ratio": round(med["cluster"]["images_per_s"] / local, 3),
        "throughput_ratios": {
            m: round(v["images_per_s"] / local, 3) for m, v in med.items() if m != "local[2]"
        },
        "same_features": len(digests) == 1,
        "features_digest": sorted(digests),
    }


# ------------------------------------------------------------------------------------------ projection


def projections(report: dict[str, Any]) -> dict[str, Any]:
    """Fits of the measured growth and their values at :data:`PROJECT_FILES` files."""
    out: dict[str, Any] = {}
    at = PROJECT_FILES
    listing = report.get("listing")
    if listing:
        loc = [
            r for r in listing["local"] if r["parallelism"] == min(x["parallelism"] for x in listing["local"])
        ]
        ns = [r["n"] for r in loc]
        if len(ns) >= 2:
            out["list_local_cpu_s"] = fit_growth(ns, [r["list_local"]["cpu_s"] for r in loc], at)
            out["list_local_rss_mb"] = fit_growth(ns, [r["rss_growth_mb"] for r in loc], at)
            out["partitions_pickled_bytes"] = fit_growth(ns, [r["partitions_pickled_bytes"] for r in loc], at)
            out["read_command_bytes"] = fit_growth(ns, [r["read_command_bytes"] for r in loc], at)
            for par in sorted({r["parallelism"] for r in listing["local"]}):
                rs = [r for r in listing["local"] if r["parallelism"] == par]
                out[f"split_files_cpu_s_p{par}"] = fit_growth(
                    [r["n"] * r["tasks"] for r in rs], [r["split_files"]["cpu_s"] for r in rs], at * 100_000
                )
        had = listing["hadoop"]
        if len(had) >= 2:
            ns = [r["n"] for r in had]
            out["hadoop_listing_jvm_cpu_s"] = fit_growth(
                ns, [r["binaryfile_load"]["jvm_cpu_s"] for r in had], at
            )
            out["hadoop_listing_jvm_heap_mb"] = fit_growth(ns, [r["jvm_heap_growth_mb"] for r in had], at)
            out["input_files_to_python_cpu_s"] = fit_growth(
                ns, [r["input_files_to_python"]["cpu_s"] for r in had], at
            )
    ck = report.get("checkpoint")
    if ck and len(ck) >= 2:
        ns = [r["done_ids"] for r in ck]
        out["recovery_noop_jvm_cpu_s"] = fit_growth(ns, [r["recovery_noop_run"]["jvm_cpu_s"] for r in ck], at)
        out["one_new_batch_jvm_cpu_s"] = fit_growth(ns, [r["one_new_batch_run"]["jvm_cpu_s"] for r in ck], at)
        out["source_log_bytes"] = fit_growth(ns, [r["source_log_bytes"] for r in ck], at)
        out["batch_files_s_max"] = fit_growth(ns, [r["batch_files_s_max"] for r in ck], at)
    bc = report.get("broadcast")
    if bc and len(bc) >= 2:
        ns = [r["done_ids"] for r in bc]
        out["broadcast_bytes"] = fit_growth(ns, [r["broadcast_bytes"] for r in bc], at)
        out["broadcast_join_jvm_cpu_s"] = fit_growth(ns, [r["join"]["jvm_cpu_s"] for r in bc], at)
    return out


# ------------------------------------------------------------------------------------------ report


def _mb(b: float) -> str:
    return f"{b / 2**20:,.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (benchmarks/results/scaling.md)."""
    lines = [
        "# Scaling measurements (benchmarks/scaling.py)",
        "",
        f"Generated {report['generated']}{' (--quick)' if report.get('quick') else ''}; machine: "
        f"{report['machine']['cpus']} CPUs, load average when written {report['machine']['load_avg']}, "
        f"Python {report['machine']['python']}, pyspark {report['machine']['pyspark']}. Wall times are on a "
        "shared machine; CPU times are the process's own.",
        "",
    ]
    listing = report.get("listing")
    if listing:
        lines += [
            "## Listing (driver)",
            "",
            "Local inputs, fresh interpreter per row: `list_local` (walk + stat), `split_files` (task "
            "slicing, `balance_slices`), the partitions pickled for the JVM.",
            "",
            "| files | parallelism | list_local wall s | list_local CPU s | split_files CPU s | tasks | "
            "partitions pickled MB | read command MB (every task) | its unpickle s | driver RSS growth MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in listing["local"]:
            lines.append(
                f"| {r['n']:,} | {r['parallelism']} | {r['list_local']['wall_s']:.2f} "
                f"| {r['list_local']['cpu_s']:.2f} | {r['split_files']['cpu_s']:.2f} | {r['tasks']:,} "
                f"| {_mb(r['partitions_pickled_bytes'])} | {_mb(r['read_command_bytes'])} "
                f"| {r['read_command_unpickle']['cpu_s']:.3f} | {r['rss_growth_mb']:.1f} |"
            )
        lines += [
            "",
            "Hadoop listing (`binaryFile`, `recursiveFileLookup`: the driver JVM's `InMemoryFileIndex`) and the "
            "`path, length` DataFrame ingest built from the local listing until 0d04a9d:",
            "",
            "| files | load wall s | load JVM CPU s | JVM heap growth MB | inputFiles() to Python wall s | "
            "listing DataFrame wall s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in listing["hadoop"]:
            lines.append(
                f"| {r['n']:,} | {r['binaryfile_load']['wall_s']:.2f} | {r['binaryfile_load']['jvm_cpu_s']:.2f} "
                f"| {r['jvm_heap_growth_mb']:.1f} | {r['input_files_to_python']['wall_s']:.2f} "
                f"| {r['listing_dataframe']['wall_s']:.2f} |"
            )
        lines.append("")
    ck = report.get("checkpoint")
    if ck:
        lines += [
            "## Incremental checkpoint and commit records",
            "",
            f"n files ingested in {CHECKPOINT_BATCHES} micro-batches (`maxFilesPerTrigger`), then a restart "
            "with nothing new (recovery), then a run with 10 new files.",
            "",
            "| done ids | build wall s | commit_batch s (median) | batch_files s (max) | recovery run wall s | "
            "recovery JVM CPU s | +10 files run wall s | source log files | source log MB | last compact MB | "
            "commit records |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ck:
            lines.append(
                f"| {r['done_ids']:,} | {r['build']['wall_s']:.1f} | {r['commit_batch_s_median']:.3f} "
                f"| {r['batch_files_s_max']:.3f} | {r['recovery_noop_run']['wall_s']:.2f} "
                f"| {r['recovery_noop_run']['jvm_cpu_s']:.2f} | {r['one_new_batch_run']['wall_s']:.2f} "
                f"| {r['source_log_files']} | {_mb(r['source_log_bytes'])} | {_mb(r['last_compact_bytes'])} "
                f"| {r['commit_records']} |"
            )
        lines.append("")
    bc = report.get("broadcast")
    if bc:
        lines += [
            "## Done-id broadcast (preprocess's left-anti join)",
            "",
            "| done ids | broadcast MB | bytes/id | join wall s | join JVM CPU s | build ms | collect ms | "
            "JVM heap after MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in bc:
            lines.append(
                f"| {r['done_ids']:,} | {_mb(r['broadcast_bytes'])} | {r['bytes_per_id']} | {r['join']['wall_s']:.2f} "
                f"| {r['join']['jvm_cpu_s']:.2f} | {r['build_ms']:.0f} | {r['collect_ms']:.0f} "
                f"| {r['jvm_heap_after_mb']:.0f} |"
            )
        lines.append("")
    models = report.get("model")
    if models:
        lines += [
            "## Model broadcast",
            "",
            "| model | pickled MB | broadcast + 4 tasks read it, wall s |",
            "|---|---:|---:|",
        ]
        for r in models:
            lines.append(
                f"| {r['model']} | {_mb(r['pickled_bytes'])} | {r['broadcast_and_read']['wall_s']:.2f} |"
            )
        lines.append("")
    cl = report.get("cluster")
    if cl:
        lines += [
            "## Standalone cluster vs local[2]",
            "",
            f"benchmarks/run.py's corpus at N={cl['n']} ({cl['images']} images), ingest → preprocess → "
            f"features; {cl['workers']}; alternating local/cluster, {cl['repeats']} runs each, each in a fresh "
            "interpreter (session start excluded from the wall time)"
            + (
                f"; the second cluster arm starts its executors with `{cl['executor_java_options']}` "
                "(local[2]'s JVM options), the first with the JVM's defaults."
                if cl.get("executor_java_options")
                else "."
            ),
            "",
            "| run | mode | wall s | images/s | ingest s | preprocess s | features s | load avg (start, end) | "
            "features digest |",
            "|---:|---|---:|---:|---:|---:|---:|---|---|",
        ]
        order = [(i, m) for i in range(max(len(v) for v in cl["runs"].values())) for m in cl["runs"]]
        for i, mode in order:
            if i < len(cl["runs"][mode]):
                r = cl["runs"][mode][i]
                s = r["stage_s"]
                lines.append(
                    f"| {i} | {mode} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} | {s['ingest']:.1f} "
                    f"| {s['preprocess']:.1f} | {s['features']:.1f} | {r['load_avg_1m']} "
                    f"| {r['features_digest']} |"
                )
        med = cl["median"]
        ratios = cl.get("throughput_ratios") or {"cluster": cl["throughput_ratio"]}
        lines += [
            "",
            "Medians: "
            + "; ".join(f"{m} {v['wall_s']:.1f} s ({v['images_per_s']:.2f} images/s)" for m, v in med.items())
            + "; throughput / local[2]: "
            + ", ".join(f"{m} **{r:.3f}**" for m, r in ratios.items())
            + f"; same features: **{cl['same_features']}**.",
            "",
        ]
    proj = report.get("projection")
    if proj:
        lines += [
            f"## Fits, projected to {PROJECT_FILES:,} files",
            "",
            "`split_files` is fitted against files × tasks (its cost), projected to 10 M files × 100,000 tasks "
            "(the task cap).",
            "",
            "| quantity | model | a | b | R² | projected |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for k, f in proj.items():
            lines.append(
                f"| {k} | {f['model']} | {f['a']:.4g} | {f['b']:.4g} | {f['r2']:.4f} | {f['projected']:.4g} |"
            )
        lines.append("")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import pyspark

    return {
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "pyspark": pyspark.__version__,
    }


def write_report(report: dict[str, Any], out: Path, merge: bool, quick: bool) -> None:
    """Write ``out/scaling.{json,md}``; with ``merge`` the sections of an existing scaling.json not run now are kept.

    Read when writing (not at start), so that two ``--only`` runs into the same folder keep both.
    """
    path = out / "scaling.json"
    full = dict(report)
    if merge and path.exists():
        full = {**json.loads(path.read_text()), **report}
        full.setdefault("section_s", {}).update(report.get("section_s", {}))
    full["generated"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    full["quick"] = quick
    full["machine"] = machine()
    full["projection"] = projections(full)
    path.write_text(json.dumps(full, indent=1) + "\n")
    (out / "scaling.md").write_text(markdown(full))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, no cluster (< 1 min)")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--cluster-n", type=int, default=CLUSTER_N, help="benchmarks/run.py corpus size N")
    p.add_argument("--repeats", type=int, default=2, help="alternations local/cluster")
    p.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="SECTION=N,N",
        help="override a section's sizes, e.g. checkpoint=1000,10000 (listing, checkpoint, broadcast)",
    )
    p.add_argument("--_probe_listing", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_parallelism", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--_pipeline", help=argparse.SUPPRESS)
    p.add_argument("--_corpus", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_executor_java", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._probe_listing:
        print(json.dumps(probe_listing(args._probe_listing, args._parallelism)))
        return 0
    if args._pipeline:
        args._result.write_text(
            json.dumps(pipeline_run(args._pipeline, args._corpus, args.out, args._executor_java))
        )
        return 0
    # SIGTERM (a timeout, a scheduler) unwinds like Ctrl-C, so the cluster and the session are stopped in finally.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    sections = tuple(args.only or (s for s in SECTIONS if not (args.quick and s == "cluster")))
    if args.quick and "cluster" in sections:
        print("--quick runs no cluster; drop --only cluster", file=sys.stderr)
        return 2
    sizes = dict(QUICK if args.quick else FULL)
    for item in args.sizes:
        name, _, values = item.partition("=")
        if name not in sizes or not values:
            print(
                f"--sizes {item}: expected SECTION=N,N with SECTION one of {sorted(sizes)}", file=sys.stderr
            )
            return 2
        sizes[name] = tuple(int(v) for v in values.split(","))
    report: dict[str, Any] = {}
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=CACHE))  # checkpoints, lakes, the cluster's logs
    started = time.perf_counter()
    spark = None
    if any(s != "cluster" for s in sections):
        from pyspark.sql import SparkSession

        own = SparkSession.getActiveSession() is None  # a caller's session (the tests') is left running
        spark = _session()
    try:
        for section in sections:
            print(f"section {section} ...", flush=True)
            t0 = time.perf_counter()
            if section == "listing":
                report["listing"] = section_listing(
                    spark, sizes["listing"], (2,) if args.quick else (2, 1600)
                )
            elif section == "checkpoint":
                batches = QUICK_CHECKPOINT_BATCHES if args.quick else CHECKPOINT_BATCHES
                report["checkpoint"] = section_checkpoint(spark, sizes["checkpoint"], batches, work)
            elif section == "broadcast":
                report["broadcast"] = section_broadcast(spark, sizes["broadcast"])
            elif section == "model":
                report["model"] = section_model(spark, args.quick)
            else:
                report["cluster"] = section_cluster(args.cluster_n, args.repeats, work)
            report.setdefault("section_s", {})[section] = round(time.perf_counter() - t0, 1)
            write_report(report, out, merge=bool(args.only), quick=args.quick)  # a later crash keeps it
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if spark is not None and own:
            spark.stop()
    write_report(report, out, merge=bool(args.only), quick=args.quick)
    print(f"done in {time.perf_counter() - started:.0f} s: {out / 'scaling.json'} and {out / 'scaling.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
