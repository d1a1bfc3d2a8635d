"""The pipeline job on a real Spark standalone cluster (master + worker on 127.0.0.1) equals local[2]."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyspark
import pytest
from pydicom.data import get_testdata_file
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

if TYPE_CHECKING:
    from tests.conftest import WheelVenv

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).parent
KEY = "7e" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _wait_worker(log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and "Successfully registered with master" in log.read_text(errors="ignore"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"worker did not register: {log.read_text(errors='ignore')[-2000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A standalone master and one worker (2 cores) from the pyspark package, stopped even on failure."""
    tmp = tmp_path_factory.mktemp("cluster")
    port, ui, wui = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
    }
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    procs: list[subprocess.Popen] = []
    try:
        with (tmp / "master.log").open("w") as mlog:
            procs.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.master.Master",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--webui-port",
                        str(ui),
                    ],
                    stdout=mlog,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        _wait_port(port)
        url = f"spark://127.0.0.1:{port}"
        with (tmp / "worker.log").open("w") as wlog:
            procs.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        url,
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "2",
                        "--memory",
                        "3g",
                        "--webui-port",
                        str(wui),
                        "--work-dir",
                        str(tmp / "work"),
                    ],
                    stdout=wlog,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        _wait_worker(tmp / "worker.log")
        yield {"url": url, "work": tmp / "work"}
    finally:
        for p in procs[::-1]:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)


@pytest.fixture(scope="module")
def pipeline_config(tmp_path_factory, sample_npz: Path) -> Path:
    tmp = tmp_path_factory.mktemp("pipe")
    src = tmp / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"):
        shutil.copy(get_testdata_file(name), src / name)
    ref = np.load(sample_npz)
    buf = io.BytesIO()
    np.savez(
        buf,
        train_images=ref["train_images"][:80],
        train_labels=ref["train_labels"][:80],
        val_images=ref["val_images"][:40],
        val_labels=ref["val_labels"][:40],
    )
    (src / "small.npz").write_bytes(buf.getvalue())
    (src / "empty.dcm").write_bytes(b"")
    cfg = tmp / "pipeline.yaml"
    cfg.write_text(f"""
spark:
  conf:
    spark.ui.enabled: false
pipeline:
  inputs: ["{src}"]
  stages: [ingest, preprocess, quality]
  recipes:
    - recipe: classify
      where: "source_format = 'npz'"
    - recipe: ct_lung
      where: "modality = 'CT'"
""")
    return cfg


def _submit(
    venv: WheelVenv,
    master: str,
    cfg: Path,
    out: str,
    cwd: Path,
    extra: list[str],
    job_args: tuple[str, ...] = (),
) -> tuple[float, str]:
    """spark-submit jobs/pipeline.py with the wheel venv's Python as driver and worker Python.

    The driver runs in ``cwd`` (outside the checkout) with no PYTHONPATH: medimg_spark can only come
    from the wheel. A wrapper prints where it was imported from, then runs jobs/pipeline.py unchanged.
    """
    job = cwd / "pipeline_job.py"
    job.write_text(
        "import runpy, sys\n"
        "import medimg_spark\n"
        "sys.stderr.write(f'MEDIMG_SPARK_FILE={medimg_spark.__file__}\\n')\n"
        f"runpy.run_path({str(REPO / 'jobs' / 'pipeline.py')!r}, run_name='__main__')\n"
    )
    env = venv.env(
        PYSPARK_PYTHON=str(venv.python),
        PYSPARK_DRIVER_PYTHON=str(venv.python),
        MEDIMG_DEID_KEY=KEY,
        SPARK_LOCAL_IP="127.0.0.1",
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [
            str(SPARK_HOME / "bin" / "spark-submit"),
            "--master",
            master,
            *extra,
            str(job),
            "--config",
            str(cfg),
            "--out",
            out,
            *job_args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # spark-submit's PythonRunner merges the driver's stderr into its own stdout.
    output = (proc.stdout + proc.stderr).splitlines()
    (found,) = [ln.split("=", 1)[1] for ln in output if ln.startswith("MEDIMG_SPARK_FILE=")]
    return time.perf_counter() - started, found


@pytest.mark.integration
def test_pipeline_on_standalone_cluster_equals_local(
    spark, cluster, wheel, wheel_venv, pipeline_config, tmp_path
) -> None:
    """Only the wheel (on --py-files, in a fresh venv) on the driver and executors; --out on viewfs://."""
    driver_cwd = tmp_path / "driver"
    driver_cwd.mkdir()
    real = tmp_path / "lake"  # viewfs://cluster/lake is linked to this local folder
    real.mkdir()
    cluster_out, local_out = real / "run", tmp_path / "local"
    t_cluster, imported = _submit(
        wheel_venv,
        cluster["url"],
        pipeline_config,
        "viewfs://cluster/lake/run",
        driver_cwd,
        [
            "--py-files",
            str(wheel),
            "--total-executor-cores",
            "2",
            "--executor-memory",
            "2g",
            "--conf",
            f"spark.hadoop.fs.viewfs.mounttable.cluster.link./lake={real.as_uri()}",
        ],
    )
    assert not Path(imported).is_relative_to(REPO), imported
    assert wheel.name in imported or Path(imported).is_relative_to(wheel_venv.site_packages), imported
    # Executors ran in the worker's work dir (not the driver's cwd) and left nothing outside the lake.
    apps = [p for p in cluster["work"].iterdir() if p.name.startswith("app-")]
    assert apps and all((app / "0").is_dir() for app in apps)
    assert sorted(p.name for p in driver_cwd.iterdir()) == ["pipeline_job.py"]
    assert not list(driver_cwd.rglob("viewfs*")) and not list(cluster["work"].rglob("viewfs*"))

    log = tmp_path / "run.jsonl"
    t_local, _ = _submit(
        wheel_venv, "local[2]", pipeline_config, str(local_out), driver_cwd, [], ("--log-json", str(log))
    )
    print(f"pipeline wall time: cluster {t_cluster:.1f} s, local[2] {t_local:.1f} s")

    def images(out: Path):
        return spark.read.parquet(str(out / "images")).select(
            "image_id",
            "modality",
            "frame_index",
            "rows",
            "cols",
            "dtype",
            "label",
            "split",
            "patient_id",
            "study_instance_uid",
            "sop_instance_uid",
            F.sha2("pixels", 256).alias("pixels"),
        )

    def processed(out: Path):
        return spark.read.parquet(str(out / "processed")).select(
            "image_id", "recipe_hash", "dtype", F.sha2("pixels", 256).alias("pixels"), "quality_after"
        )

    def quarantine(out: Path):
        return spark.read.parquet(str(out / "quarantine")).select("file_sha256", "stage", "error_class")

    for read in (images, processed, quarantine):
        expected = read(local_out)
        assert expected.count() > 0
        assertDataFrameEqual(read(cluster_out), expected)
    assert (cluster_out / "metrics" / "quality.json").is_file()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    ends = [e for e in events if e["event"] == "stage_end"]
    assert [e["stage"] for e in ends] == ["ingest", "preprocess", "quality"]  # both recipes in one pass
    assert ends[0]["frames_written"] == images(local_out).count() and ends[0]["duration_s"] > 0
    assert events[0]["event"] == "pipeline_start" and events[-1]["event"] == "pipeline_end"
    # De-identified on the executors with the same key: pseudonyms agree between the two runs.
    assert images(cluster_out).where("modality = 'CT'").first()["study_instance_uid"].startswith("2.25.")
