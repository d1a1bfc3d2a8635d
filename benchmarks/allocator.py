"""What :func:`medimg_spark.worker.configure_worker`'s allocator thresholds save: the same chain with and without.

    python benchmarks/allocator.py --n 200 --repeats 3 --out DIR     # → DIR/allocator.json and DIR/allocator.md

The benchmark chain (``benchmarks/run.py``'s ``process_chunk``: decode → recipe → quality before/after →
features → Parquet) over the cached corpus of size ``N`` (``1.5 N`` images), in a ``Pool(cores)`` (fork,
as ``run.py``'s pool mode) and in one process (``loop``), each ``--repeats`` times with the arms
alternated: ``tuned`` (what the package's per-partition functions do) and ``glibc`` (one OpenCV thread
only, glibc's allocator as it starts). Measured in every worker with ``getrusage``: user and system CPU
seconds and minor page faults per image, and the arm's images/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as bench  # noqa: E402  (benchmarks/run.py: corpus, chain, machine info)

ARMS = ("tuned", "glibc")


def _init(arm: str) -> None:
    import medimg_spark.worker as worker

    if arm == "tuned":
        setup = worker.configure_worker()
        if setup.allocator != "tuned":
            raise SystemExit(f"allocator not tuned in this process: {setup}")
    else:  # what run_chain's configure_process would do, minus the allocator
        import cv2

        cv2.setNumThreads(1)
        worker._setup = worker.WorkerSetup(opencv_threads=1, allocator="glibc (benchmark arm)")


def _chunk(args: tuple[int, list[str], str]) -> tuple[int, float, float, int]:
    i, paths, out = args
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    res = bench.process_chunk(i, paths, out, "shape", "allocator")
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return res["images"], r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def run_arm(arm: str, mode: str, files: list[Path], cores: int, out: Path) -> dict[str, Any]:
    """One arm in a fresh process tree (the loop runs in a one-process pool, so every arm forks the same)."""
    jobs = [(i, c, str(out / f"{arm}-{mode}")) for i, c in enumerate(bench._chunks(files))]
    procs = cores if mode == "pool" else 1
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(procs, initializer=_init, initargs=(arm,)) as pool:
        results = pool.map(_chunk, jobs, chunksize=1)
    wall = time.perf_counter() - t0
    n = sum(r[0] for r in results)
    user, system, faults = (sum(r[k] for r in results) for k in (1, 2, 3))
    return {
        "arm": arm,
        "mode": mode,
        "images": n,
        "images_per_s": round(n / wall, 3),
        "user_s_per_image": round(user / n, 4),
        "system_s_per_image": round(system / n, 4),
        "cpu_s_per_image": round((user + system) / n, 4),
        "minor_faults_per_image": round(faults / n),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        by_arm = {a: [r for r in runs if r["mode"] == mode and r["arm"] == a] for a in ARMS}
        med = {
            a: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("arm", "mode", "images")}
            for a, rs in by_arm.items()
            if rs
        }
        pairs = list(zip(by_arm["tuned"], by_arm["glibc"], strict=False))
        rows.append(
            {
                "mode": mode,
                "median": med,
                "throughput_ratio_pairs": [round(t["images_per_s"] / g["images_per_s"], 3) for t, g in pairs],
                "cpu_ratio_pairs": [round(t["cpu_s_per_image"] / g["cpu_s_per_image"], 3) for t, g in pairs],
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Allocator thresholds: tuned vs glibc's defaults ({report['started_at']})",
        "",
        bench.machine_line(m, commit=True),
        f"N={report['n']} ({report['images']} images), {report['cores']} cores, "
        f"{report['repeats']} alternations per mode. Command: `{report['command']}`.",
        "",
        "| mode | arm | images/s | user s/image | system s/image | CPU s/image | minor faults/image |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["summary"]:
        for arm, med in row["median"].items():
            lines.append(
                f"| {row['mode']} | {arm} | {med['images_per_s']:.2f} | {med['user_s_per_image']:.4f} | "
                f"{med['system_s_per_image']:.4f} | {med['cpu_s_per_image']:.4f} | {med['minor_faults_per_image']:.0f} |"
            )
    lines += ["", "Medians of the runs. Per alternation (tuned / glibc):", ""]
    for row in report["summary"]:
        lines.append(
            f"- {row['mode']}: throughput {row['throughput_ratio_pairs']}, CPU per image {row['cpu_ratio_pairs']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="corpus size N (1.5 N images)")
    ap.add_argument("--repeats", type=int, default=3, help="alternations per mode")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--modes", nargs="+", choices=("pool", "loop"), default=["pool", "loop"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    os.environ.update(bench._THREAD_ENV)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    files = bench.corpus_files(bench.corpus(args.n, args.cores))
    work = args.out / "work"
    runs = []
    for mode in args.modes:
        for k in range(args.repeats):
            for arm in ARMS if k % 2 == 0 else ARMS[::-1]:
                r = run_arm(arm, mode, files, args.cores, work)
                print(json.dumps(r), flush=True)
                runs.append(r)
    shutil.rmtree(work, ignore_errors=True)
    report = {
        "started_at": started,
        "machine": bench.machine_info(),
        "n": args.n,
        "images": runs[0]["images"] if runs else 0,
        "cores": args.cores,
        "repeats": args.repeats,
        "command": "python benchmarks/allocator.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "runs": runs,
        "summary": summarise(runs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "allocator.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "allocator.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
