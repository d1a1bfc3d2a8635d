"""Why Spark's Python workers spend more CPU than the pool's on the same per-image functions.

    python benchmarks/neighbour.py --n 2000 --repeats 1
    python benchmarks/neighbour.py --n 8 --repeats 1 --out DIR          # smoke run

``benchmarks/run.py`` finds Spark local[2]'s Python workers spending 6-11 % more CPU than ``Pool(2)``'s
workers at N = 8,000, running the same functions on the same corpus. A ``perf`` profile of both (N = 300,
the worker processes only) showed no new code in the difference: every library took longer, numpy by 12 %,
OpenBLAS by 17 %, OpenCV by 15 %, libc by 16 %. That is what a busy neighbour does to a process on a
2-core machine: the JVM beside the workers (Arrow, Parquet, zstd) evicts their caches and takes their cores.

This script tests that explanation without Spark in the measured arm. Each round runs three arms, each in a
fresh subprocess through ``run.py``'s harness (same corpus, same CPU sampling):

* ``spark_fused``: run.py's mode; the JVM's CPU per second of the run sets the neighbour's duty cycle;
* ``pool``: ``Pool(cores)`` alone;
* ``pool+neighbour``: ``Pool(cores)`` beside a process doing the JVM's kind of work on the corpus's bytes
  (zstd level 1, a copy, a CRC-32: :func:`stream`) for that share of one core.

If the pool's workers slow down beside the neighbour as Spark's do beside the JVM, the workers' extra CPU
belongs to the JVM's pixel traffic, not to Spark's Python side. Results: ``--out`` (default
``benchmarks/results``) ``neighbour_<stamp>_n<N>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # benchmarks/run.py: corpus, modes, CPU sampling, machine info, stamped results

ARMS = ("spark_fused", "pool", "pool+neighbour")
CHUNK_BYTES = 8 << 20


def pixel_chunk(corpus_dir: Path) -> bytes:
    """The first 8 MB of the corpus's DICOM files, concatenated: the bytes the JVM moves."""
    out = bytearray()
    for f in sorted(corpus_dir.rglob("*.dcm")):
        out += f.read_bytes()
        if len(out) >= CHUNK_BYTES:
            break
    return bytes(out[:CHUNK_BYTES])


def stream(chunk: bytes, duty: float, seconds: float | None = None) -> int:
    """The JVM's kind of work on ``chunk`` for ``duty`` of one core (0 < duty <= 1); the loop count.

    Each loop compresses the chunk with zstd level 1 (the pixel columns' codec), copies it and takes its
    CRC-32, as the JVM does with pixel pages: about 0.5 GB per busy second here, where a bare copy streams
    about 10 GB/s. Runs until killed, or for ``seconds``.
    """
    import pyarrow as pa

    codec = pa.Codec("zstd", compression_level=1)
    loops = 0
    end = None if seconds is None else time.monotonic() + seconds
    while end is None or time.monotonic() < end:
        t0, c0 = time.perf_counter(), time.process_time()
        codec.compress(chunk, asbytes=False)
        zlib.crc32(bytearray(chunk))
        # CPU time, not wall time: preempted by the workers, the loop would otherwise take less than its share
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        loops += 1
        if duty < 1:
            time.sleep(max(0.0, cpu / duty - wall))
    return loops


class Neighbour:
    """The streaming process, started on enter and killed on exit; ``cpu_s`` is its CPU time."""

    def __init__(self, duty: float, corpus_dir: Path) -> None:
        self.duty = duty
        self.corpus_dir = corpus_dir
        self.cpu_s = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Neighbour:
        cmd = [sys.executable, __file__, "--_stream", str(self.duty), "--_corpus", str(self.corpus_dir)]
        self._proc = subprocess.Popen(cmd)
        return self

    def __exit__(self, *exc: object) -> None:
        import psutil

        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"the neighbour process exited early (exit code {self._proc.returncode})")
        times = psutil.Process(self._proc.pid).cpu_times()
        self.cpu_s = times.user + times.system
        self._proc.kill()
        self._proc.wait()


def worker_cpu_per_image(res: dict[str, Any]) -> float:
    """The Python workers' CPU seconds per image of one run.py mode result."""
    return float(res["sampled_cpu_s_by_role"]["worker"]) / max(int(res["images"]), 1)


def jvm_duty(res: dict[str, Any]) -> float:
    """The JVM's CPU per second of a Spark run: the share of one core the neighbour takes (at most 1)."""
    return min(1.0, float(res["sampled_cpu_s_by_role"]["jvm"]) / max(float(res["process_s"]), 1e-9))


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per arm: medians of images/s, CPU-s per image and the workers' CPU-s per image; the ratios."""
    arms: dict[str, Any] = {}
    for arm, rs in runs.items():
        arms[arm] = {
            "images": sorted({r["images"] for r in rs}),
            "images_per_s": round(statistics.median(r["images_per_s"] for r in rs), 3),
            "cpu_s_per_image": round(statistics.median(r["cpu_s_per_image"] for r in rs), 4),
            "worker_cpu_s_per_image": round(statistics.median(worker_cpu_per_image(r) for r in rs), 4),
            "worker_cpu_s_per_image_runs": [round(worker_cpu_per_image(r), 4) for r in rs],
            "features_digests": sorted({r["features_digest"] for r in rs}),
        }
        neighbour = [r["neighbour_cpu_s"] for r in rs if "neighbour_cpu_s" in r]
        if neighbour:
            arms[arm]["neighbour_cpu_s"] = [round(c, 1) for c in neighbour]
            arms[arm]["neighbour_duty"] = [r["neighbour_duty"] for r in rs]
        jvm = [float(r["sampled_cpu_s_by_role"]["jvm"]) for r in rs]
        if any(jvm):
            arms[arm]["jvm_cpu_s"] = [round(c, 1) for c in jvm]
    alone = arms["pool"]["worker_cpu_s_per_image"]
    ratios = {
        f"{arm}_workers_vs_pool": round(arms[arm]["worker_cpu_s_per_image"] / alone, 3)
        for arm in ("spark_fused", "pool+neighbour")
        if alone
    }
    digests = {d for a in arms.values() for d in a["features_digests"]}
    return {"arms": arms, "ratios": ratios, "same_features": len(digests) == 1}


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# Python workers beside a neighbour, N = {result['n']} (local[{result['cores']}] / Pool({result['cores']}))",
        "",
        bench.machine_line(result["machine"], commit=True),
        f"Command: `python benchmarks/neighbour.py --n {result['n']} --repeats {result['repeats']}`; "
        "each round Spark first (its JVM's CPU per second sets the neighbour's duty), then the pool alone "
        "and beside the neighbour; medians (every run's worker CPU in brackets).",
        "",
        "| arm | images | images/s | CPU-s/image | workers' CPU-s/image | JVM CPU-s | neighbour CPU-s (duty) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, a in s["arms"].items():
        runs = ", ".join(str(v) for v in a["worker_cpu_s_per_image_runs"])
        neighbour = (
            ", ".join(f"{c} ({d})" for c, d in zip(a["neighbour_cpu_s"], a["neighbour_duty"], strict=True))
            if "neighbour_cpu_s" in a
            else "-"
        )
        lines.append(
            f"| {arm} | {', '.join(map(str, a['images']))} | {a['images_per_s']} | {a['cpu_s_per_image']} | "
            f"{a['worker_cpu_s_per_image']} ({runs}) | {', '.join(map(str, a.get('jvm_cpu_s', ['-'])))} | "
            f"{neighbour} |"
        )
    lines += [
        "",
        "Workers' CPU per image over the pool's alone: "
        + ", ".join(f"{k.removesuffix('_workers_vs_pool')} {v}x" for k, v in s["ratios"].items())
        + f". Same features in every run: {'yes' if s['same_features'] else 'NO'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="corpus size N (N CT + N/2 PNG), as benchmarks/run.py")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local[cores] and Pool(cores)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the three arms")
    p.add_argument(
        "--duty", type=float, default=None, help="neighbour's share of one core (default: the JVM's)"
    )
    p.add_argument("--out", default=str(bench.REPO / "benchmarks" / "results"), help="where results go")
    p.add_argument("--work", default=str(bench.CACHE / "runs" / "neighbour"), help="scratch folder")
    p.add_argument("--_stream", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_corpus", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._stream is not None:
        stream(pixel_chunk(Path(args._corpus)), args._stream)
        return 0
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.duty is not None and not 0 < args.duty <= 1:
        p.error("--duty must be in (0, 1]")
    bench._become_subreaper()  # pyspark's exited workers are reaped here, as in run.py
    machine = bench.machine_info()
    corpus_dir = bench.corpus(args.n, args.cores)
    bench.prepare_jvm()
    fs_name, conf_map = (
        "shape",
        dict[str, str](),
    )  # run.py's defaults: its feature set, no extra Spark settings
    work = Path(args.work)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for k in range(args.repeats):
        duty = args.duty
        for arm in ARMS:
            out = work / arm.replace("+", "_")
            if arm == "pool+neighbour":
                used = duty if duty is not None else 0.3
                with Neighbour(used, corpus_dir) as nb:
                    res = bench.run_mode("pool", corpus_dir, out, fs_name, args.cores, conf_map)
                res = {**res, "neighbour_cpu_s": nb.cpu_s, "neighbour_duty": round(used, 3)}
            else:
                res = bench.run_mode(arm, corpus_dir, out, fs_name, args.cores, conf_map)
                if arm == "spark_fused" and args.duty is None:
                    duty = jvm_duty(res)
            res.pop("feature_digests", None)
            print(
                f"round {k + 1}/{args.repeats} {arm}: {res['images_per_s']} images/s, workers "
                f"{worker_cpu_per_image(res):.4f} CPU-s/image",
                flush=True,
            )
            runs[arm].append(res)
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "n": args.n,
        "cores": args.cores,
        "repeats": args.repeats,
        "summary": summarise(runs),
        "runs": runs,
        "machine": machine,
    }
    bench.write_stamped(Path(args.out), "neighbour", f"n{args.n}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
