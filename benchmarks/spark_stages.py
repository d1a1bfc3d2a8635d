"""Where the Spark mode's time goes: per stage, CPU by process role and JVM thread, and the Spark jobs.

    python benchmarks/spark_stages.py --n 2000              # the spark mode's stages, benchmarks/run.py's corpus
    python benchmarks/spark_stages.py --n 500 --fused       # preprocess computes the features (spark_fused)
    python benchmarks/spark_stages.py --n 200 --conf spark.driver.extraJavaOptions=-XX:+UseSerialGC

Runs what ``benchmarks/run.py``'s ``spark`` mode runs (``ingest``, ``preprocess`` per recipe, then
``compute_features`` per recipe; with ``--fused`` the features in the recipes' pass) in ``local[cores]``, on
the same cached corpus, and records at every stage boundary:

* wall seconds, and the CPU seconds since the last boundary of the driver (this Python process), the JVM
  and the Python workers (every process under this one, sampled every 0.2 s as run.py does; a worker that
  exits between two samples loses its last 0.2 s), and the cores they kept busy;
* the JVM's CPU by thread group (``/proc/<jvm>/task/*``: ``Executor task launch worker`` = the tasks'
  JVM side: Arrow to and from Python, Parquet read and write; ``Thread-N`` = the py4j thread that plans
  the queries; ``VM Thread`` = garbage collection; ``C1 CompilerThread``); threads that ended are missed;
* every Spark job (submitted, seconds, tasks, call site) from the UI's REST API, and for the longest
  stages the task durations and the tail: how long the last task ran after the one before it ended.

It answers "which stage, which process, which job" in one run; ``benchmarks/run.py`` stays the judge of
throughput (this script's sampling and REST calls add a little). Results: ``--out`` (default
``benchmarks/results``) ``stages_<stamp>_n<N>.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import glob
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # benchmarks/run.py: corpus, recipes, session, sampler

ROLES = ("driver", "jvm", "worker")


def jvm_threads(sampler: bench.TreeSampler) -> collections.Counter[str]:
    """CPU seconds of the JVM's live threads, by name with digits folded (``Executor task launch worker``)."""
    tick = os.sysconf("SC_CLK_TCK")
    by_group: collections.Counter[str] = collections.Counter()
    for pid, role in list(sampler.role_by_pid.items()):
        if role != "jvm":
            continue
        for task in glob.glob(f"/proc/{pid}/task/*"):
            try:
                with open(f"{task}/comm") as fh:
                    name = fh.read().strip()
                with open(f"{task}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            by_group[re.sub(r"[0-9]+", "N", name)] += (int(fields[11]) + int(fields[12])) / tick
    return by_group


class Marks:
    """CPU by role and JVM thread at each stage boundary."""

    def __init__(self, sampler: bench.TreeSampler) -> None:
        self.sampler = sampler
        self.t0 = time.time()
        self.rows: list[dict[str, Any]] = []
        self._last = self._snap("start")

    def _snap(self, name: str) -> dict[str, Any]:
        self.sampler.sample()
        cpu = dict.fromkeys(ROLES, 0.0)
        for pid, c in self.sampler.cpu_by_pid.items():
            cpu[self.sampler.role_by_pid.get(pid, "worker")] += c
        return {"name": name, "t": time.time() - self.t0, "cpu": cpu, "threads": jvm_threads(self.sampler)}

    def mark(self, name: str) -> None:
        now = self._snap(name)
        last = self._last
        wall = now["t"] - last["t"]
        cpu = {r: round(now["cpu"][r] - last["cpu"][r], 2) for r in ROLES}
        threads = now["threads"].copy()
        threads.subtract(last["threads"])
        self.rows.append(
            {
                "stage": name,
                "start_s": round(last["t"], 2),
                "wall_s": round(wall, 2),
                "cpu_s": cpu,
                "cores": round(sum(cpu.values()) / wall, 2) if wall > 0 else None,
                "jvm_threads_s": {k: round(v, 2) for k, v in threads.most_common(6) if v >= 0.05},
            }
        )
        self._last = now


def spark_jobs(spark: Any, t0: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The jobs and the four longest stages (task durations, tail) from the UI's REST API."""
    sc = spark.sparkContext
    base = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"

    def get(path: str) -> Any:
        with urllib.request.urlopen(f"{base}/{path}", timeout=60) as resp:
            return json.load(resp)

    def ts(text: str) -> float:
        return dt.datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() - t0

    jobs = []
    for j in sorted(get("jobs"), key=lambda j: j["jobId"]):
        start = ts(j["submissionTime"])
        end = ts(j["completionTime"]) if j.get("completionTime") else start
        jobs.append(
            {
                "job": j["jobId"],
                "start_s": round(start, 2),
                "wall_s": round(end - start, 2),
                "tasks": j["numTasks"],
                "name": j["name"][:80],
            }
        )
    stages = []
    for s in sorted(get("stages"), key=lambda s: -s.get("executorRunTime", 0))[:4]:
        tasks = get(f"stages/{s['stageId']}/{s['attemptId']}/taskList?length=100000")
        ends = sorted(ts(t["launchTime"]) + t["duration"] / 1000 for t in tasks)
        durs = sorted(t["duration"] / 1000 for t in tasks)
        stages.append(
            {
                "stage": s["stageId"],
                "tasks": len(tasks),
                "task_s_min_median_max": [
                    round(durs[0], 2),
                    round(durs[len(durs) // 2], 2),
                    round(durs[-1], 2),
                ],
                "tail_s": round(ends[-1] - ends[-2], 2) if len(ends) > 1 else 0.0,
                "name": s["name"][:60],
            }
        )
    return jobs, stages


def run_stages(n: int, cores: int, fused: bool, conf: dict[str, str], work: Path) -> dict[str, Any]:
    os.environ.update(bench._THREAD_ENV)
    corpus = bench.corpus(n, cores)
    bench.prepare_jvm()  # the JVM class archive, made before the measured session
    out = work / f"stages_n{n}"
    shutil.rmtree(out, ignore_errors=True)
    bench._become_subreaper()
    with bench.TreeSampler(os.getpid()) as sampler:
        marks = Marks(sampler)
        spark = bench._session(f"local[{cores}]", {"spark.ui.enabled": "true", **conf})
        marks.mark("session")
        bench.spark_stages(spark, corpus, str(out), "shape", fused, mark=marks.mark)
        jobs, stages = spark_jobs(spark, marks.t0)
        spark.stop()
    shutil.rmtree(out, ignore_errors=True)
    totals = {r: round(sum(row["cpu_s"][r] for row in marks.rows), 2) for r in ROLES}
    return {
        "n": n,
        "images": n + n // 2,
        "fused": fused,
        "cores": cores,
        "conf": conf,
        "stages": marks.rows,
        "cpu_s_total": totals,
        "wall_s_total": round(sum(row["wall_s"] for row in marks.rows), 2),
        "jobs": jobs,
        "longest_stages": stages,
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Spark stages at N = {r['n']} ({r['images']} images, local[{r['cores']}]"
        f"{', fused features' if r['fused'] else ''})",
        "",
        bench.machine_line(r["machine"], commit=True),
        f"Extra Spark settings: {r['conf'] or 'none'}.",
        "",
        "| stage | wall s | driver CPU s | JVM CPU s | Python workers CPU s | cores busy | JVM threads (CPU s) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["stages"]:
        threads = ", ".join(f"{k} {v}" for k, v in row["jvm_threads_s"].items())
        c = row["cpu_s"]
        lines.append(
            f"| {row['stage']} | {row['wall_s']} | {c['driver']} | {c['jvm']} | {c['worker']} | "
            f"{row['cores']} | {threads} |"
        )
    t = r["cpu_s_total"]
    lines += [
        f"| **total** | {r['wall_s_total']} | {t['driver']} | {t['jvm']} | {t['worker']} | | |",
        "",
        "| job | start s | wall s | tasks | call site |",
        "|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {j['job']} | {j['start_s']} | {j['wall_s']} | {j['tasks']} | {j['name']} |" for j in r["jobs"]
    ]
    lines += [
        "",
        "| stage | tasks | task s (min / median / max) | tail s | name |",
        "|---:|---:|---|---:|---|",
    ]
    for s in r["longest_stages"]:
        lo, med, hi = s["task_s_min_median_max"]
        lines.append(f"| {s['stage']} | {s['tasks']} | {lo} / {med} / {hi} | {s['tail_s']} | {s['name']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="corpus size N (N CT + N/2 PNG), as benchmarks/run.py")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local[cores]")
    p.add_argument("--fused", action="store_true", help="features computed in the recipes' pass")
    p.add_argument("--conf", action="append", default=[], help="extra Spark setting key=value (repeatable)")
    p.add_argument("--out", default=str(bench.REPO / "benchmarks" / "results"), help="where results go")
    p.add_argument("--work", default=str(bench.CACHE / "runs"), help="scratch folder for the tables")
    args = p.parse_args(argv)
    conf = dict(kv.split("=", 1) for kv in args.conf)
    machine = bench.machine_info()  # before the run: its load average is the one at the start
    result = run_stages(args.n, args.cores, args.fused, conf, Path(args.work))
    result["machine"] = machine
    suffix = f"n{args.n}{'_fused' if args.fused else ''}"
    bench.write_stamped(Path(args.out), "stages", suffix, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
