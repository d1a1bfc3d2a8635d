"""Ingest's fixed cost: the time of an ingest run outside its decoding job, side by side with a git ref.

    python benchmarks/ingest_overhead.py --n 500 --repeats 3 --against 700e4d2
    python benchmarks/ingest_overhead.py --n 4 --repeats 1 --against HEAD --out DIR     # smoke run

Ingest is one job that decodes every file (and writes the pixels once), framed by driver work and small
jobs: before it the listing and the read's planning, after it the deduplication counts, the instance and
quarantine tables, the file moves. That frame does not shrink with fewer files, so it is what an
``--incremental`` micro-batch or a small run pays on top of the decoding; ``benchmarks/run.py`` cannot
resolve it at N = 2,000 (about 1 % of a run, under that run's noise).

Each run is a fresh interpreter and session in ``local[cores]`` ingesting ``benchmarks/run.py``'s cached
corpus of size N into a fresh folder; the current code and ``--against REF`` (a worktree, as
``run.py --against``: its package imported through ``MEDIMG_BENCH_CODE``/``PYTHONPATH``) alternate, REF
first in odd repeats. Measured per run: the wall time of :func:`medimg_spark.io.ingest.ingest`, of its
decoding write (``_retry_worker_start``, which both codes call around it) and the difference, ``other``.
Results: ``--out`` (default ``benchmarks/results``) ``ingest_overhead_<stamp>_n<N>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # benchmarks/run.py: corpus, session, worktrees, machine info, stamped results

RESULT = "INGEST_OVERHEAD "


def worker(n: int, cores: int, out: Path) -> dict[str, Any]:
    """One ingest of the size-``n`` corpus into ``out`` with the package ``bench`` imports; its timings."""
    import medimg_spark.io.ingest as ingest_mod

    shutil.rmtree(out, ignore_errors=True)
    corpus = bench.corpus(n, cores)
    spark = bench._session(f"local[{cores}]", {})
    decode: list[float] = []
    original = ingest_mod._retry_worker_start

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            decode.append(time.perf_counter() - t)

    ingest_mod._retry_worker_start = timed  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        summary = ingest_mod.ingest(spark, [str(corpus)], str(out), deidentify=None)
        total = time.perf_counter() - t0
    finally:
        ingest_mod._retry_worker_start = original
        spark.stop()
    return {
        "package": str(Path(ingest_mod.__file__).resolve().parents[2]),
        "total_s": round(total, 2),
        "decode_s": round(sum(decode), 2),
        "other_s": round(total - sum(decode), 2),
        "frames_written": summary["frames_written"],
        "files_seen": summary["files_seen"],
    }


def run_one(code: Path, n: int, cores: int, work: Path) -> dict[str, Any]:
    """:func:`worker` in a subprocess importing the package at ``code``."""
    env = {**os.environ, bench.CODE_ENV: str(code), "PYTHONPATH": str(code)}
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--cores", str(cores), "--work", str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"ingest run with {code} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len(RESULT) :]))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and every run's values of one arm."""
    keys = ("total_s", "decode_s", "other_s")
    return {
        **{f"median_{k}": round(statistics.median(r[k] for r in runs), 2) for k in keys},
        **{k: [r[k] for r in runs] for k in keys},
        "frames_written": sorted({r["frames_written"] for r in runs}),
    }


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "-"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Ingest outside its decoding job, N = {result['n']} ({result['files']} files, local[{result['cores']}])",
        "",
        bench.machine_line(m, commit=True),
        f"Command: `python benchmarks/ingest_overhead.py --n {result['n']} --repeats {result['repeats']} "
        f"--against {result['against']}`. Medians over alternated runs, every run in brackets.",
        "",
        "| code | ingest s | decoding write s | other s | frames written |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, arm in result["arms"].items():
        cells = [
            f"{arm[f'median_{k}']} ({', '.join(str(v) for v in arm[k])})"
            for k in ("total_s", "decode_s", "other_s")
        ]
        lines.append(f"| {name} | {' | '.join(cells)} | {', '.join(map(str, arm['frames_written']))} |")
    cur, old = result["arms"]["current"], result["arms"][result["against"]]
    lines += [
        "",
        f"Current / {result['against']}, medians: ingest {_ratio(cur['median_total_s'], old['median_total_s'])}, "
        f"decoding write {_ratio(cur['median_decode_s'], old['median_decode_s'])}, "
        f"other {_ratio(cur['median_other_s'], old['median_other_s'])}. The decoding write is "
        "`_retry_worker_start`: the read's planning on the driver and the decoding job.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="corpus size N (N CT + N/2 PNG), as benchmarks/run.py")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local[cores]")
    p.add_argument("--repeats", type=int, default=3, help="runs of each arm, alternated")
    p.add_argument("--against", required="--worker" not in (argv or sys.argv), help="git ref to compare with")
    p.add_argument("--out", default=str(bench.REPO / "benchmarks" / "results"), help="where results go")
    p.add_argument("--work", default=str(bench.CACHE / "runs" / "ingest_overhead"), help="scratch folder")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.worker:
        print(RESULT + json.dumps(worker(args.n, args.cores, work / "lake")), flush=True)
        return 0
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    machine = bench.machine_info()  # before the runs: its load average is the one at the start
    bench.corpus(args.n, args.cores)  # generated (or found) once, outside the timed runs
    bench.prepare_jvm()  # the current package's JVM class archive, made outside the timed runs
    runs: dict[str, list[dict[str, Any]]] = {}
    with bench.AgainstTree(args.against) as tree:
        arms = {"current": bench.REPO, tree.short: tree.path}
        for k in range(args.repeats):
            order = list(arms) if k % 2 else list(arms)[::-1]
            for name in order:
                res = run_one(arms[name], args.n, args.cores, work)
                print(f"repeat {k + 1}/{args.repeats} {name}: {json.dumps(res)}", flush=True)
                runs.setdefault(name, []).append(res)
        against = tree.short
    shutil.rmtree(work, ignore_errors=True)
    arms_summary = {name: summarise(rs) for name, rs in runs.items()}
    result = {
        "n": args.n,
        "files": runs["current"][0]["files_seen"],
        "cores": args.cores,
        "repeats": args.repeats,
        "against": against,
        "arms": arms_summary,
        "runs": runs,
        "machine": machine,
    }
    bench.write_stamped(Path(args.out), "ingest_overhead", f"n{args.n}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
