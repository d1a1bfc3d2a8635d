"""Smoke check of the performance benchmark: ``benchmarks/run.py --quick`` runs every mode on a tiny corpus.

Checks the shape of ``results.json`` and that every mode processed the same images with equal outputs
(equal per-image feature checksums between the plain-Python loop and each Spark/Pool mode).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# ~2.5 min on 2 cores (both benchmark scripts end to end): run by `make integration`, not `make test`.
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
MODES = ("loop", "pool", "spark", "spark_row_udf")
PER_MODE_KEYS = ("images_per_s", "cpu_s_per_image", "driver_peak_rss_mb", "workers_peak_rss_mb")


def run_benchmark(script: str, *args: str) -> None:
    """Run ``benchmarks/<script>`` with ``args`` in a fresh interpreter; fail with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    run_benchmark("run.py", "--quick", "--out", str(out))
    assert (out / "results.md").is_file()
    return json.loads((out / "results.json").read_text())


def test_results_shape(quick_results: dict) -> None:
    assert isinstance(quick_results["n"], int) and quick_results["n"] > 0
    assert set(MODES) <= set(quick_results["modes"])
    for mode in MODES:
        stats = quick_results["modes"][mode]
        for key in PER_MODE_KEYS:
            assert isinstance(stats[key], (int, float)), (mode, key, stats.get(key))
            # the single-process loop has no worker processes
            assert stats[key] >= 0 if (mode, key) == ("loop", "workers_peak_rss_mb") else stats[key] > 0
    machine = quick_results["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0
    assert machine["versions"]["pyspark"] != "missing"


def test_every_mode_same_images_and_outputs(quick_results: dict) -> None:
    expected = quick_results["images_expected"]
    modes = quick_results["modes"]
    assert {m: modes[m]["images"] for m in MODES} == dict.fromkeys(MODES, expected)
    digests = {m: modes[m]["features_digest"] for m in MODES}
    assert len(set(digests.values())) == 1, digests
    outputs = quick_results["outputs"]
    assert outputs["reference"] == "loop" and outputs["all_equal"]
    for mode in MODES:
        assert outputs[mode] == {"images": expected, "mismatches_vs_reference": 0}


def test_transport_benchmark_smoke(tmp_path: Path) -> None:
    """``benchmarks/transport.py``: every execution path returns every pixel row unchanged (checked by CRC)."""
    run_benchmark(
        "transport.py", "--n", "8", "--repeats", "1", "--cores", "1", "--out", str(tmp_path),
        "--work", str(tmp_path / "work"),
    )  # fmt: skip
    report = json.loads((tmp_path / "transport.json").read_text())
    assert report["images"] == 12  # 8 CT frames + 4 X-rays
    assert report["checksum"][0] == 12
    for mode, stats in report["modes"].items():  # rows and pixel CRCs came back unchanged
        assert stats["checksums"] == [report["checksum"]], mode
    assert set(report["modes"]) == {"baseline", "map_in_arrow", "map_in_pandas", "arrow_udf", "row_udf"}
    for mode, stats in report["modes"].items():
        assert stats["images_per_s"] > 0 and stats["cpu_ms_per_image"] > 0, (mode, stats)
    assert set(report["vs_row_udf"]) == {"map_in_arrow", "map_in_pandas", "arrow_udf"}
    assert "| row_udf |" in (tmp_path / "transport.md").read_text()
