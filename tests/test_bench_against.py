"""``benchmarks/run.py``'s side-by-side comparison (``--against``) and its targets, on real benchmark files.

Three corpus files (two CT DICOM, one PNG X-ray, made as the benchmark makes them) go through the loop's
per-image chain; the comparison of their features and quality metrics must find no difference against
itself and find (and localise) the differences planted in a copy. Fast: no Spark, no subprocess.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def chain(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two CT files and one X-ray through :func:`process_chunk`; its outputs and their snapshot."""
    tmp = tmp_path_factory.mktemp("bench_against")
    files = tmp / "files"
    files.mkdir()
    bench._generate("ct", [0, 1], str(files))
    bench._generate("xray", [0], str(files))
    paths = [str(p) for p in sorted(files.iterdir())]
    out = tmp / "out"
    res = bench.process_chunk(0, paths, str(out), "shape", "test-against")
    snap = tmp / "snap"
    bench.snapshot(out, snap)
    return {"tmp": tmp, "paths": paths, "out": out, "snap": snap, "res": res}


def _copy_with(src: Path, dest: Path, features: Any = None, quality: Any = None) -> Path:
    """A copy of snapshot ``src`` whose feature lists / quality rows are edited in place by the callables."""
    shutil.copytree(src, dest)
    f = pq.read_table(dest / "features.parquet").to_pylist()
    q = pq.read_table(dest / "quality.parquet")
    rows = q.to_pylist()
    if features:
        features(f)
    if quality:
        quality(rows)
    pq.write_table(
        pa.Table.from_pylist(f, schema=pq.read_schema(src / "features.parquet")), dest / "features.parquet"
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=q.schema), dest / "quality.parquet")
    return dest


def test_chain_counts_per_file_and_names(bench: ModuleType, chain: dict[str, Any]) -> None:
    res = chain["res"]
    assert res["images"] == 3 and res["failed"] == 0
    from medimg_spark.features import load_feature_set

    names = load_feature_set("shape").extract(np.zeros((16, 16), np.float32) + 0.5)[1]
    assert res["feature_names"] == list(names)
    out = bench.run_chain(
        [("file:" + p, Path(p).read_bytes()) for p in chain["paths"]], "shape", "test-against"
    )
    assert out.per_file == [1, 1, 1]
    assert len(out.images) == len(out.processed) == len(out.features) == 3


def test_snapshot_identical_against_itself(bench: ModuleType, chain: dict[str, Any]) -> None:
    cmp = bench.compare_against(chain["snap"], chain["snap"], chain["res"]["feature_names"])
    assert cmp["same_images"] and cmp["images"] == cmp["images_against"] == 3
    assert cmp["features_identical"] == 3
    assert cmp["features_max_rel_diff"] == 0.0 and cmp["features_images_beyond_rtol"] == 0
    assert cmp["quality_max_rel_diff"] == 0.0 and cmp["quality_images_beyond_rtol"] == 0
    # every metric of both sides was compared
    assert {k.split(".")[0] for k in cmp["quality_max_rel_diff_by_metric"]} == {"before", "after"}
    assert len(cmp["quality_max_rel_diff_by_metric"]) >= 10


def test_comparison_finds_planted_differences(bench: ModuleType, chain: dict[str, Any]) -> None:
    names = chain["res"]["feature_names"]
    target = 2  # a feature with a value well away from zero in the first image
    first: dict[str, Any] = {}

    def nudge_feature(rows: list[dict[str, Any]]) -> None:
        first.update(rows[0])
        rows[0]["features"][target] = rows[0]["features"][target] * (1 + 5e-4)

    def move_metric(rows: list[dict[str, Any]]) -> None:
        rows[1]["quality_after"]["snr"] = rows[1]["quality_after"]["snr"] * 1.05

    other = _copy_with(chain["snap"], chain["tmp"] / "other", nudge_feature, move_metric)
    cmp = bench.compare_against(chain["snap"], other, names)
    assert cmp["same_images"] and cmp["features_identical"] == 2
    assert math.isclose(cmp["features_max_rel_diff"], 5e-4 / (1 + 5e-4), rel_tol=1e-6)
    assert cmp["features_images_beyond_rtol"] == 0  # 5e-4 is within FEATURE_RTOL
    worst = cmp["features_worst"]
    assert worst["feature"] == names[target] and worst["image_id"] == first["image_id"]
    assert math.isclose(
        cmp["quality_max_rel_diff_by_metric"]["after.snr"], 0.05 / 1.05, rel_tol=1e-2
    )  # 3 digits
    assert cmp["quality_images_beyond_rtol"] == 1 and cmp["quality_max_rel_diff"] > bench.QUALITY_RTOL


def test_comparison_reports_missing_images(bench: ModuleType, chain: dict[str, Any]) -> None:
    def drop(rows: list[dict[str, Any]]) -> None:
        del rows[0]

    fewer = _copy_with(chain["snap"], chain["tmp"] / "fewer", drop, drop)
    cmp = bench.compare_against(chain["snap"], fewer, chain["res"]["feature_names"])
    assert not cmp["same_images"] and (cmp["images"], cmp["images_against"]) == (3, 2)
    assert cmp["features_identical"] == 2 and cmp["features_max_rel_diff"] == 0.0


def test_rel_diff_nan_and_floor(bench: ModuleType) -> None:
    a = np.array([1.0, np.nan, np.nan, 0.0, 1e-9, 100.0])
    b = np.array([1.1, np.nan, 2.0, 0.0, 2e-9, 100.0])
    d = bench._rel_diff(a, b)
    assert math.isclose(d[0], 0.1 / 1.1)
    assert d[1] == 0.0 and math.isinf(d[2]) and d[3] == 0.0
    # below REL_FLOOR x the column's largest magnitude (100): compared against that floor, not each other
    assert math.isclose(d[4], 1e-9 / (100 * bench.REL_FLOOR))
    assert d[5] == 0.0


def test_targets_of_the_issue(bench: ModuleType) -> None:
    def mode(ips: float, cpu: float, rss: float = 500.0) -> dict[str, Any]:
        return {"images_per_s": ips, "cpu_s_per_image": cpu, "driver_peak_rss_mb": rss}

    cmp = {"features_max_rel_diff": 2e-4, "quality_max_rel_diff": 0.02}
    runs = [
        {
            "n": 2000,
            "modes": {
                "loop": mode(5.0, 0.2),
                "loop@f73b140": mode(1.8, 0.6),
                "pool": mode(10.0, 0.2),
                "spark": mode(9.1, 0.22),
                "spark_fused": mode(9.6, 0.2),
                "ray": mode(9.0, 0.25),
                "daft": mode(9.5, 0.21),
            },
            "against": {"loop@f73b140": cmp},
        },
        {"n": 8000, "modes": {"pool": mode(10.0, 0.2), "spark": mode(9.4, 0.21, 540.0)}},
    ]
    t = bench.targets(runs)
    assert t["loop_cpu_per_image_vs_f73b140_n2000"] == {"ratio": 3.0, "target": ">= 2.5", "met": True}
    assert t["spark_vs_pool_throughput_n2000"] == {"ratio": 0.91, "target": ">= 0.9", "met": True}
    assert t["spark_vs_pool_throughput_n8000"] == {"ratio": 0.94, "target": ">= 0.95", "met": False}
    assert t["spark_vs_loop_cpu_per_image_n2000"]["target"] == "<= 1.15"
    assert t["spark_vs_loop_cpu_per_image_n2000"]["met"]
    assert t["spark_vs_ray_throughput_n2000"]["met"] and not t["spark_vs_daft_throughput_n2000"]["met"]
    assert t["driver_rss_n8000_vs_n2000"] == {"ratio": 1.08, "target": "<= 1.1", "met": True}
    assert t["spark_fused_vs_pool_throughput_n2000"] == {"ratio": 0.96, "target": ">= 0.9", "met": True}
    assert t["spark_fused_vs_daft_throughput_n2000"]["met"]
    assert "spark_fused_vs_pool_throughput_n8000" not in t  # not measured there
    assert t["loop_features_max_rel_diff_vs_f73b140_n2000"]["met"]
    assert not t["loop_quality_max_rel_diff_vs_f73b140_n2000"]["met"]


def test_against_modes_are_not_counted_as_mismatches(bench: ModuleType) -> None:
    modes: dict[str, dict[str, Any]] = {"loop": {}, "pool": {}, "loop@f73b140": {}}
    digests = {
        "loop": {"a": "1", "b": "2"},
        "pool": {"a": "1", "b": "2"},
        "loop@f73b140": {"a": "1", "b": "3"},
    }
    out = bench.compare_outputs(modes, digests)
    assert out["all_equal"] and out["loop@f73b140"]["mismatches_vs_reference"] == 1
    digests["pool"] = {"a": "1"}
    assert not bench.compare_outputs(modes, digests)["all_equal"]
    assert bench.base_mode("loop@f73b140") == "loop" and bench.base_mode("spark+tuned") == "spark"
