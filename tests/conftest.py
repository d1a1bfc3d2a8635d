"""Shared fixtures: one local[2] SparkSession for the whole test session, and real test data."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NPZ = REPO / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"


@pytest.fixture(scope="session")
def spark() -> Iterator:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", __import__("sys").executable))
    session = (
        SparkSession.builder.master("local[2]")
        .appName("medimg-spark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _pkg_dir(module: str) -> Path:
    import importlib

    mod = importlib.import_module(module)
    return Path(mod.__file__).resolve().parent  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def dicom_corpus_dirs() -> list[Path]:
    """The folders of real DICOM (and other) files shipped by pydicom, pydicom-data and deid-data."""
    return [
        _pkg_dir("pydicom") / "data",
        _pkg_dir("data_store") / "data",
        _pkg_dir("deid_data") / "data",
    ]


@pytest.fixture(scope="session")
def sample_npz() -> Path:
    return SAMPLE_NPZ


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel `make dist` builds (pip wheel of this checkout)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(REPO)],
        check=True,
        timeout=600,
    )
    (found,) = out.glob("medimg_spark-*.whl")
    return found


@dataclass(frozen=True)
class WheelVenv:
    """A fresh venv outside the checkout holding only the wheel (third-party packages via a ``.pth``)."""

    root: Path
    python: Path
    site_packages: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment without PYTHONPATH, with the venv first on PATH."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(self.root), **extra)
        return env


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory, wheel: Path) -> WheelVenv:
    """``python -m venv`` in a tmp folder, the wheel installed with ``--no-deps``.

    The dependencies come from this test run's venv: its site-packages path, computed from the running
    interpreter, is a plain line in a ``.pth`` file. A plain path line does not run that venv's own
    ``.pth`` files (the editable-install finder of the checkout), so the checkout is not importable.
    """
    root = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.strip()
    site = Path(purelib)
    (site / "medimg_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return WheelVenv(root=root, python=python, site_packages=site)
