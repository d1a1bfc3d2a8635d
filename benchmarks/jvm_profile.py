"""Where the JVM's CPU goes, native code included: Linux ``perf`` over one ``benchmarks/spark_stages.py`` run.

    python benchmarks/jvm_profile.py --n 500 --fused     # the spark_fused mode's stages, sampled at 499 Hz
    python benchmarks/jvm_profile.py --n 200 --keep      # keep perf.data and the JIT symbol map

``spark_stages.py`` says how many CPU seconds the JVM spends per stage and thread; Java Flight Recorder sees
only the part spent in Java frames (under a fifth of the executor threads' time: the rest is zstd, memory
copies and the kernel). This script samples every thread of the run with ``perf record`` (the JVM started
with ``-XX:+DumpPerfMapAtExit``, so JIT-compiled Java methods get names) and reports:

* CPU samples by process kind (the Python processes, the JVM, others) and by JVM thread group;
* for the tasks' JVM threads (``Executor task launch worker``: Arrow to and from Python, Parquet read and
  write), the share of each kind of code: JIT-compiled Java, the interpreter, JVM stubs (intrinsic array
  copies and CRC32), ``libzstd-jni`` (Parquet's zstd), the kernel (socket and file copies, page faults),
  ``libjvm`` (allocation, GC barriers, class loading), ``libc`` (memset/memcpy) and the rest;
* their top symbols.

Needs ``perf`` and permission to sample (root, or ``kernel.perf_event_paranoid`` <= 1); exits 2 naming
what is missing. Results: ``--out`` (default ``benchmarks/results``) ``jvm_profile_<stamp>_n<N>.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # benchmarks/run.py: machine_info, machine_line

#: Thread names (perf's ``comm``, 15 characters) only a JVM has: a process with one of them is the JVM.
JVM_THREADS = (
    "java",
    "Executor task l",
    "VM Thread",
    "C1 CompilerThre",
    "C2 CompilerThre",
    "dag-scheduler-e",
)
#: Kinds of code of the JVM's samples, by the sample's DSO (and JIT symbol), in report order.
KINDS = ("JIT-compiled Java", "interpreter", "JVM stubs", "zstd", "kernel", "libjvm", "libc", "other")
#: A line of ``perf script -F comm,pid,tid,ip,sym,dso``: ``comm pid/tid ip symbol (dso)``; a symbol may hold
#: parentheses (``StubRoutines (2)``, a Java signature), a DSO path does not.
SAMPLE = re.compile(
    r"^\s*(?P<comm>.*?)\s+(?P<pid>\d+)/(?P<tid>\d+)\s+[0-9a-f]+\s+(?P<sym>.*)\s+\((?P<dso>[^()]*)\)\s*$"
)


class Sample(NamedTuple):
    """One perf sample: thread name, process id, symbol and DSO."""

    comm: str
    pid: int
    sym: str
    dso: str


def parse(lines: Iterable[str]) -> list[Sample]:
    """The samples of ``perf script -F comm,pid,tid,ip,sym,dso`` output (other lines skipped)."""
    out = []
    for line in lines:
        m = SAMPLE.match(line)
        if m:
            out.append(Sample(m["comm"].strip(), int(m["pid"]), m["sym"].strip(), m["dso"]))
    return out


def kind(sample: Sample) -> str:
    """The kind of code (:data:`KINDS`) a JVM sample ran."""
    dso = sample.dso.rsplit("/", 1)[-1]
    if dso.startswith("perf-") and dso.endswith(".map"):  # the JIT's code cache, named by the perf map
        if sample.sym == "Interpreter":
            return "interpreter"
        if (
            sample.sym.startswith("StubRoutines")
            or sample.sym.startswith("I2C/C2I")
            or sample.sym == "vtable chunks"
        ):
            return "JVM stubs"
        return "JIT-compiled Java"
    if "zstd" in dso:
        return "zstd"
    if dso == "[kernel.kallsyms]":
        return "kernel"
    if dso == "libjvm.so":
        return "libjvm"
    if dso.startswith("libc.so") or dso.startswith("libc-"):
        return "libc"
    return "other"


def group(comm: str) -> str:
    """A thread name with its digits folded (``Executor task launch worker-3`` → ``...worker-N``)."""
    return re.sub(r"\d+", "N", comm)


def summarise(samples: list[Sample], top: int = 25) -> dict[str, Any]:
    """Shares of the samples by process kind, JVM thread group, and the executor threads' code kinds and
    top symbols (the symbol of a JIT address the map does not name is ``[unknown]``)."""
    jvm_pids = {s.pid for s in samples if s.comm in JVM_THREADS}
    total = len(samples) or 1
    by_process: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    symbols: collections.Counter[str] = collections.Counter()
    for s in samples:
        if s.pid in jvm_pids:
            by_process["jvm"] += 1
            threads[group(s.comm)] += 1
            if s.comm.startswith("Executor task"):
                k = kind(s)
                kinds[k] += 1
                symbols[f"{k}: {s.sym}"] += 1
        elif s.comm.startswith("python"):
            by_process["python"] += 1
        elif s.comm == "swapper":
            by_process["idle"] += 1
        else:
            by_process["other"] += 1
    executor = sum(kinds.values()) or 1
    return {
        "samples": len(samples),
        "by_process": {k: round(v / total, 4) for k, v in by_process.most_common()},
        "jvm_threads": {k: round(v / total, 4) for k, v in threads.most_common(12)},
        "executor_samples": sum(kinds.values()),
        "executor_kinds": {k: round(kinds[k] / executor, 4) for k in KINDS if kinds[k]},
        "executor_top_symbols": [[name, round(v / executor, 4)] for name, v in symbols.most_common(top)],
    }


def markdown(r: dict[str, Any]) -> str:
    """The report: shares of all samples, then of the executor threads' samples."""

    def pct(x: float) -> str:
        return f"{100 * x:.1f} %"

    s = r["summary"]
    lines = [
        f"# JVM profile (perf, {r['frequency_hz']} Hz) of spark_stages.py at N = {r['n']}"
        f"{' (fused)' if r['fused'] else ''}",
        "",
        bench.machine_line(r["machine"], commit=True),
        f"Command: `{r['command']}`. Samples: {s['samples']} (every thread of the run: driver, JVM, Python workers).",
        "",
        "| process | share of samples |",
        "|---|---:|",
        *[f"| {k} | {pct(v)} |" for k, v in s["by_process"].items()],
        "",
        "| JVM thread group | share of samples |",
        "|---|---:|",
        *[f"| {k} | {pct(v)} |" for k, v in s["jvm_threads"].items()],
        "",
        f"Executor task threads ({s['executor_samples']} samples): kind of code.",
        "",
        "| kind | share |",
        "|---|---:|",
        *[f"| {k} | {pct(v)} |" for k, v in s["executor_kinds"].items()],
        "",
        "| top symbols of the executor task threads | share |",
        "|---|---:|",
        *[f"| {name.replace('|', '/')} | {pct(v)} |" for name, v in s["executor_top_symbols"]],
    ]
    return "\n".join(lines) + "\n"


def java_options() -> str:
    """The packaged ``spark.driver.extraJavaOptions`` plus the perf map dump of the JIT's symbols."""
    from medimg_spark.session import defaults_file, read_spark_defaults

    packaged = read_spark_defaults(defaults_file()).get("spark.driver.extraJavaOptions", "")
    return f"{packaged} -XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit".strip()


def check_perf() -> str | None:
    """Why ``perf`` cannot sample here, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: apt-get install linux-perf)"
    try:
        paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        paranoid = 2
    if os.geteuid() != 0 and paranoid > 1:
        return f"kernel.perf_event_paranoid is {paranoid}: run as root or set it to 1 (sysctl)"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="corpus size N, as benchmarks/run.py")
    p.add_argument("--fused", action="store_true", help="features computed in the recipes' pass")
    p.add_argument("--frequency", type=int, default=499, help="samples per second and CPU (default 499)")
    p.add_argument("--out", default=str(bench.REPO / "benchmarks" / "results"), help="where results go")
    p.add_argument("--keep", action="store_true", help="keep perf.data and the stage breakdown's files")
    args = p.parse_args(argv)
    why = check_perf()
    if why:
        print(f"jvm_profile: {why}", file=sys.stderr)
        return 2
    machine = bench.machine_info()
    work = Path(tempfile.mkdtemp(prefix="jvm_profile_"))
    data = work / "perf.data"
    stages = [
        sys.executable,
        str(Path(__file__).resolve().parent / "spark_stages.py"),
        "--n",
        str(args.n),
        "--out",
        str(work),
        "--conf",
        f"spark.driver.extraJavaOptions={java_options()}",
        *(["--fused"] if args.fused else []),
    ]
    # perf follows the children (the JVM, its Python workers); the JVM writes /tmp/perf-<pid>.map at exit
    subprocess.run(["perf", "record", "-F", str(args.frequency), "-o", str(data), "--", *stages], check=True)
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,pid,tid,ip,sym,dso"],
        check=True,
        capture_output=True,
        text=True,
    )
    samples = parse(script.stdout.splitlines())
    summary = summarise(samples)
    for pid in {s.pid for s in samples if s.comm in JVM_THREADS}:  # the JIT symbol maps the JVM wrote
        Path(f"/tmp/perf-{pid}.map").unlink(missing_ok=True)
    result = {
        "n": args.n,
        "fused": args.fused,
        "frequency_hz": args.frequency,
        "command": " ".join(["python", "benchmarks/jvm_profile.py", *(argv or sys.argv[1:])]),
        "machine": machine,
        "summary": summary,
    }
    suffix = f"n{args.n}{'_fused' if args.fused else ''}"
    bench.write_stamped(Path(args.out), "jvm_profile", suffix, result, markdown(result))
    if args.keep:
        print(f"perf.data and the stage breakdown kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
