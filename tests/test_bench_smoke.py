"""Smoke check of the performance benchmark: ``benchmarks/run.py --quick`` runs every mode on a tiny corpus.

Checks the shape of ``results.json`` and that every mode processed the same images with equal outputs
(equal per-image feature checksums between the plain-Python loop and each Spark/Pool mode).
"""

from __future__ import annotations

import importlib.util
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


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_against_head_and_profile(tmp_path: Path) -> None:
    """``--against HEAD`` (its sha, taken before the run): the loop runs again on a worktree of HEAD, beside
    the current code, and the two outputs compare equal (to the tolerance when the package has uncommitted
    edits); ``--profile`` writes the loop's top functions. The worktree is removed afterwards."""
    sha = _git("rev-parse", "HEAD")
    short = _git("rev-parse", "--short=7", sha)
    tree = REPO / "benchmarks" / ".cache" / "against" / sha
    created = not tree.exists()
    run_benchmark(
        "run.py", "--n", "4", "--modes", "loop", "--against", sha, "--profile", "6",
        "--out", str(tmp_path), "--work", str(tmp_path / "work"),
    )  # fmt: skip
    res = json.loads((tmp_path / "results.json").read_text())
    old = f"loop@{short}"
    assert set(res["modes"]) == {"loop", old}
    assert res["modes"][old]["package"] == str(tree / "medimg_spark")
    assert res["modes"]["loop"]["package"] == str(REPO / "medimg_spark")
    assert res["against_ref"] == {"ref": sha, "sha": sha, "short": short}
    cmp = res["against"][old]
    assert cmp["same_images"] and cmp["images"] == res["images_expected"] == 6
    clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "medimg_spark"], cwd=REPO).returncode == 0
    if clean:  # the same code: bit-identical outputs
        assert cmp["features_identical"] == 6 and cmp["features_max_rel_diff"] == 0
        assert cmp["quality_max_rel_diff"] == 0
    assert cmp["features_images_beyond_rtol"] == 0
    target = res["targets"][f"loop_cpu_per_image_vs_{short}_n4"]
    assert target["target"] == ">= 2.5" and target["ratio"] > 0
    assert res["targets"][f"loop_features_max_rel_diff_vs_{short}_n4"]["met"]
    profiles = res["profiles"]
    assert set(profiles) == {"current", short}
    for prof in profiles.values():
        assert prof["images"] == 6 and prof["cpu_s_per_image"] > 0
        assert len(prof["top"]) == 20
        assert "process_chunk" in prof["top"][0]["function"] and prof["top"][0]["cum_share"] > 0.9
        assert any("process_row" in r["function"] for r in prof["top"])
    md = (tmp_path / "results.md").read_text()
    assert f"| 4 | {old} |" in md and "Profile of the loop's per-image work (current" in md
    if created:
        assert not tree.exists() and str(tree) not in _git("worktree", "list", "--porcelain")


@pytest.fixture(scope="module")
def peer_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The loop and whichever of Ray Data and Daft is installed (the ``bench`` extra) on a tiny corpus."""
    peers = [m for m in ("ray", "daft") if importlib.util.find_spec(m) is not None]
    if not peers:
        pytest.skip("neither ray nor daft is installed (pip install -e '.[bench]')")
    out = tmp_path_factory.mktemp("bench_peers")
    run_benchmark(
        "run.py", "--n", "4", "--modes", "loop", *peers, "--out", str(out), "--work", str(out / "w")
    )
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("peer", ["ray", "daft"])
def test_peer_mode_same_outputs(peer: str, peer_results: dict) -> None:
    if importlib.util.find_spec(peer) is None:
        pytest.skip(f"{peer} is not installed (pip install -e '.[bench]')")
    stats = peer_results["modes"][peer]
    assert stats["images"] == peer_results["images_expected"] == 6
    assert stats["features_digest"] == peer_results["modes"]["loop"]["features_digest"]
    assert peer_results["outputs"][peer] == {"images": 6, "mismatches_vs_reference": 0}
    assert stats["cpu_s_per_image"] > 0 and stats["output_bytes"] > 0
    assert set(stats["output_bytes_by_table"]) == {"images", "instances", "processed", "features"}


def test_spark_stages_breakdown(tmp_path: Path) -> None:
    """``benchmarks/spark_stages.py``: every stage of the spark mode with its CPU by role and its jobs."""
    run_benchmark("spark_stages.py", "--n", "4", "--out", str(tmp_path), "--work", str(tmp_path / "w"))
    (found,) = tmp_path.glob("stages_*_n4.json")
    r = json.loads(found.read_text())
    names = [s["stage"] for s in r["stages"]]
    assert names == [
        "session",
        "ingest",
        "preprocess ct_lung",
        "preprocess xray_filters",
        "features ct_lung",
        "features xray_filters",
    ]
    assert r["cpu_s_total"]["jvm"] > 0 and r["cpu_s_total"]["worker"] > 0
    assert all(s["wall_s"] > 0 for s in r["stages"])
    ingest = r["stages"][1]
    assert ingest["cpu_s"]["worker"] > 0  # the files are decoded in Python workers
    assert any(k.startswith("Executor task") for k in ingest["jvm_threads_s"])
    assert r["jobs"] and all(j["tasks"] >= 0 for j in r["jobs"])
    assert r["longest_stages"] and r["longest_stages"][0]["tasks"] >= 1
    assert (tmp_path / found.name.replace(".json", ".md")).read_text().startswith("# Spark stages at N = 4")
    assert not (tmp_path / "w" / "stages_n4").exists()  # the tables are removed


def test_ingest_overhead_against_head(tmp_path: Path) -> None:
    """``benchmarks/ingest_overhead.py``: ingest alone, the current code and a ref alternated; the decoding job
    and the rest of the run timed apart, the same frames written by both arms, the scratch lakes removed."""
    work = tmp_path / "w"
    run_benchmark(
        "ingest_overhead.py",
        "--n",
        "4",
        "--repeats",
        "2",
        "--against",
        "HEAD",
        "--out",
        str(tmp_path),
        "--work",
        str(work),
    )
    (found,) = tmp_path.glob("ingest_overhead_*_n4.json")
    r = json.loads(found.read_text())
    assert set(r["arms"]) == {"current", r["against"]} and r["files"] == 6
    for name, runs in r["runs"].items():
        assert len(runs) == 2, name
        for run in runs:
            assert run["frames_written"] == 6  # 4 CT frames + 2 X-rays
            assert 0 < run["decode_s"] < run["total_s"]
            assert run["other_s"] == pytest.approx(run["total_s"] - run["decode_s"], abs=0.02)
    assert Path(r["runs"]["current"][0]["package"]) == REPO  # the current arm imported this checkout
    assert Path(r["runs"][r["against"]][0]["package"]) != REPO  # the ref's arm its worktree
    md = (tmp_path / found.name.replace(".json", ".md")).read_text()
    assert md.startswith("# Ingest outside its decoding job, N = 4") and "| current |" in md
    assert not work.exists()


def test_allocator_benchmark_smoke(tmp_path: Path) -> None:
    """``benchmarks/allocator.py``: both arms run the chain on the same images; the tuned arm faults less."""
    run_benchmark("allocator.py", "--n", "4", "--repeats", "1", "--modes", "loop", "--out", str(tmp_path))
    report = json.loads((tmp_path / "allocator.json").read_text())
    assert [r["arm"] for r in report["runs"]] == ["tuned", "glibc"]
    assert all(r["images"] == 6 for r in report["runs"])  # 4 CT frames + 2 X-rays in each arm
    tuned, glibc = report["runs"]
    assert tuned["minor_faults_per_image"] < glibc["minor_faults_per_image"], report["runs"]
    assert "| loop | tuned |" in (tmp_path / "allocator.md").read_text()
    assert not (tmp_path / "work").exists()


def test_profile_only_writes_its_report(tmp_path: Path) -> None:
    """``--profile-only`` runs no mode: its report (the profile alone) is still written, as ``bench_<stamp>``."""
    run_benchmark("run.py", "--profile", "6", "--profile-only", "--out", str(tmp_path))
    reports = sorted(tmp_path.glob("bench_*.md"))
    assert len(reports) == 1, sorted(p.name for p in tmp_path.iterdir())
    text = reports[0].read_text()
    assert "Profile of the loop's per-image work" in text and "process_row" in text
    data = json.loads(reports[0].with_suffix(".json").read_text())
    assert data["runs"] == [] and data["profiles"]["current"]["images"] == 6


def test_neighbour_benchmark_smoke(tmp_path: Path) -> None:
    """``benchmarks/neighbour.py``: Spark, the pool alone and the pool beside a neighbour that does the JVM's
    kind of work for the JVM's measured share of a core; same features in all three, the neighbour's CPU
    counted."""
    work = tmp_path / "w"
    run_benchmark("neighbour.py", "--n", "8", "--repeats", "1", "--out", str(tmp_path), "--work", str(work))
    (found,) = tmp_path.glob("neighbour_*_n8.json")
    r = json.loads(found.read_text())
    s = r["summary"]
    assert s["same_features"] and set(s["arms"]) == {"spark_fused", "pool", "pool+neighbour"}
    for arm in s["arms"].values():
        assert arm["images"] == [12] and arm["worker_cpu_s_per_image"] > 0
    (res,) = r["runs"]["pool+neighbour"]
    (spark,) = r["runs"]["spark_fused"]
    duty = spark["sampled_cpu_s_by_role"]["jvm"] / spark["process_s"]
    assert res["neighbour_duty"] == pytest.approx(min(1.0, duty), abs=1e-3)
    assert 0 < res["neighbour_cpu_s"] <= res["process_s"] * res["neighbour_duty"] + 2.0
    assert set(s["ratios"]) == {"spark_fused_workers_vs_pool", "pool+neighbour_workers_vs_pool"}
    assert "| pool+neighbour |" in (tmp_path / found.name.replace(".json", ".md")).read_text()
    assert not work.exists()


def test_neighbour_stream_does_the_work_it_is_given(tmp_path: Path) -> None:
    """The neighbour's loop compresses real corpus bytes and sleeps for the rest of its duty cycle."""
    import time

    spec = importlib.util.spec_from_file_location("neighbour", REPO / "benchmarks" / "neighbour.py")
    assert spec is not None and spec.loader is not None
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from pydicom.data import get_testdata_file

    (tmp_path / "a.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes() * 250)
    chunk = mod.pixel_chunk(tmp_path)
    assert len(chunk) == mod.CHUNK_BYTES
    cpu, wall = time.process_time(), time.perf_counter()
    assert mod.stream(chunk, 0.25, seconds=2.0) > 0
    share = (time.process_time() - cpu) / (time.perf_counter() - wall)
    assert 0.1 < share < 0.5
