"""benchmarks/scaling.py: its quick mode end to end (on the tests' session), and its growth fits."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scaling() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medimg_scaling", REPO / "benchmarks" / "scaling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fit_growth_tells_linear_from_n_log_n(scaling: ModuleType) -> None:
    ns = [1_000, 10_000, 100_000]
    linear = scaling.fit_growth(ns, [0.5 + 2e-6 * n for n in ns], 10_000_000)
    assert linear["model"] == "linear" and linear["r2"] == pytest.approx(1.0)
    assert linear["projected"] == pytest.approx(0.5 + 20.0)
    nlogn = scaling.fit_growth(ns, [1e-7 * n * math.log2(n) for n in ns], 10_000_000)
    assert nlogn["model"] == "n log n"
    assert nlogn["projected"] == pytest.approx(1e-7 * 1e7 * math.log2(1e7), rel=1e-6)
    with pytest.raises(ValueError, match="two sizes"):
        scaling.fit_growth([5], [1.0], 10)


@pytest.mark.integration  # benchmark scripts run in make integration (~35 s here), like tests/test_bench_smoke.py
def test_quick_mode_measures_every_driver_quantity(spark, scaling: ModuleType, tmp_path: Path) -> None:
    assert scaling.main(["--quick", "--out", str(tmp_path)]) == 0
    assert not spark.sparkContext._jsc.sc().isStopped()  # the caller's session is left running
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert report["quick"] is True and "cluster" not in report

    local = report["listing"]["local"]
    assert [r["n"] for r in local] == list(scaling.QUICK["listing"])
    for r in local:
        assert r["files"] == r["n"] and r["tasks"] >= 2
        assert r["list_local"]["cpu_s"] > 0 and r["rss_growth_mb"] >= 0
    assert local[1]["partitions_pickled_bytes"] > 3 * local[0]["partitions_pickled_bytes"]
    assert [r["files"] for r in report["listing"]["hadoop"]] == list(scaling.QUICK["listing"])

    for r in report["checkpoint"]:
        assert r["batches"] == scaling.QUICK_CHECKPOINT_BATCHES
        assert r["commit_records"] == r["batches"] + 1  # the run with 10 new files committed one batch
        assert r["recovery_noop_run"]["wall_s"] > 0
    small, large = report["checkpoint"]
    assert large["source_log_bytes"] > 2 * small["source_log_bytes"]  # every done file is logged

    small, large = report["broadcast"]
    assert large["done_ids"] == 10 * small["done_ids"]
    assert large["broadcast_bytes"] >= small["broadcast_bytes"] > 0

    models = {r["model"].split()[0]: r for r in report["model"]}
    assert set(models) == {"sk_rf", "cnn", "resnet"}
    assert models["resnet"]["pickled_bytes"] > models["cnn"]["pickled_bytes"] > 100_000

    proj = report["projection"]
    assert {"list_local_cpu_s", "source_log_bytes", "broadcast_bytes"} <= set(proj)
    assert all(f["at_n"] in (scaling.PROJECT_FILES, scaling.PROJECT_FILES * 100_000) for f in proj.values())
    md = (tmp_path / "scaling.md").read_text()
    for title in ("## Listing", "## Incremental checkpoint", "## Done-id broadcast", "## Model broadcast"):
        assert title in md


def test_cluster_summary_reports_every_arm_against_local(scaling: ModuleType) -> None:
    """Three arms (local[2], the cluster with the JVM's defaults and with local's JVM options): medians per
    arm, each arm's throughput over local[2]'s, one row per run in the table, digests compared."""

    def run(wall: float, digest: str = "d1") -> dict[str, object]:
        stages = {"ingest": wall / 4, "preprocess": wall / 2, "features": wall / 4}
        return {"wall_s": wall, "images_per_s": 450 / wall, "images": 450, "stage_s": stages,
                "load_avg_1m": [0.5, 1.0], "features_digest": digest}  # fmt: skip

    arms = list(scaling.EXECUTOR_JVM_ARMS)
    runs = {
        "local[2]": [run(100.0), run(110.0)],
        arms[0]: [run(150.0), run(140.0)],
        arms[1]: [run(120.0), run(110.0)],
    }
    cl = scaling.summarise_cluster(300, runs, scaling.local_java_options())
    assert cl["median"]["local[2]"]["wall_s"] == 105.0 and cl["repeats"] == 2
    expected = {m: round(statistics.median(450 / r["wall_s"] for r in rs) / statistics.median([450 / 100, 450 / 110]), 3)
                for m, rs in runs.items() if m != "local[2]"}  # fmt: skip
    assert cl["throughput_ratios"] == expected and cl["throughput_ratio"] == expected["cluster"]
    assert cl["same_features"] and "-XX:+UseSerialGC" in cl["executor_java_options"]
    machine = {"cpus": 2, "load_avg": 1.0, "python": "3.11", "pyspark": "4"}
    md = scaling.markdown({"generated": "now", "machine": machine, "cluster": cl})
    assert sum(line.startswith("| 0 |") or line.startswith("| 1 |") for line in md.splitlines()) == 6
    assert f"{arms[1]} **{expected[arms[1]]:.3f}**" in md and "UseSerialGC" in md
    runs[arms[1]][1] = run(115.0, digest="d2")
    assert not scaling.summarise_cluster(300, runs)["same_features"]
