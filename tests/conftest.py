"""Shared fixtures: one local[2] SparkSession for the whole test session, and real test data."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
