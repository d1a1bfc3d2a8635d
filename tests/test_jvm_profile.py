"""``benchmarks/jvm_profile.py``'s reading of ``perf script`` output, on lines of a real run.

The lines are ``perf script -F comm,pid,tid,ip,sym,dso`` output of ``jvm_profile.py --n 500 --fused`` on the
2-core benchmark machine (JVM 20854, its JIT symbols named by ``-XX:+DumpPerfMapAtExit``; a Python worker
20977 in OpenCV; the driver 20809). Fast: no Spark, no perf.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]

PERF_LINES = """\
 Executor task l 20854/20971      7fc995437cec StubRoutines (2) (/tmp/perf-20854.map)
 Executor task l 20854/20972      7fc995412a51 Interpreter (/tmp/perf-20854.map)
 Executor task l 20854/20972      7fc9106abda4 [unknown] (/tmp/libzstd-jni-1.5.7-717229624076399236011.so)
 Executor task l 20854/20972      7fc9106abda4 [unknown] (/tmp/libzstd-jni-1.5.7-717229624076399236011.so)
 Executor task l 20854/20971  ffffffff81448342 __futex_hash ([kernel.kallsyms])
 Executor task l 20854/20971      7fc996282806 int org.apache.parquet.io.api.Binary$ByteArrayBackedBinary.hashCode() (/tmp/perf-20854.map)
 Executor task l 20854/20971      7fc9a6c04b91 InstanceKlass::link_class_impl (/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so)
 Executor task l 20854/20972      7fc9a7a2254a __memset_avx2_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)
 Executor task l 20854/20972      7fc9954f8564 vtable chunks (/tmp/perf-20854.map)
 Executor task l 20854/20971      7fc996361114 [unknown] (/tmp/perf-20854.map)
          python 20809/20835      7f92716fcb01 _PyEval_EvalFrameDefault (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)
          python 20977/20977      7f3c1eafeaac [unknown] (/work/main/.venv/lib/python3.11/site-packages/cv2/cv2.abi3.so)
          python 20977/20977      7f3c1eafeaac [unknown] (/work/main/.venv/lib/python3.11/site-packages/cv2/cv2.abi3.so)
       VM Thread 20854/20886  ffffffff8226e979 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
         swapper     0/0      ffffffff822601ab pv_native_safe_halt ([kernel.kallsyms])
        Thread-3 20854/20903      7fc9a69f1cd5 ConstMethod::allocate (/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so)
       perf-exec 20862/20862  ffffffff815fab3c unmap_page_range ([kernel.kallsyms])
not a sample line
"""


@pytest.fixture(scope="module")
def prof() -> ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))  # jvm_profile imports benchmarks/run.py as ``run``
    spec = importlib.util.spec_from_file_location("jvm_profile", REPO / "benchmarks" / "jvm_profile.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parse_keeps_symbols_with_parentheses(prof: ModuleType) -> None:
    samples = prof.parse(PERF_LINES.splitlines())
    assert len(samples) == 17  # the last line is not a sample
    stub = samples[0]
    assert (stub.comm, stub.pid, stub.sym, stub.dso) == (
        "Executor task l",
        20854,
        "StubRoutines (2)",
        "/tmp/perf-20854.map",
    )
    assert samples[5].sym == "int org.apache.parquet.io.api.Binary$ByteArrayBackedBinary.hashCode()"
    assert samples[14].comm == "swapper" and samples[14].pid == 0


def test_kinds_of_code(prof: ModuleType) -> None:
    samples = prof.parse(PERF_LINES.splitlines())
    kinds = [prof.kind(s) for s in samples[:10]]
    assert kinds == [
        "JVM stubs",
        "interpreter",
        "zstd",
        "zstd",
        "kernel",
        "JIT-compiled Java",
        "libjvm",
        "libc",
        "JVM stubs",
        "JIT-compiled Java",  # an address of the code cache the map does not name
    ]


def test_summary_shares(prof: ModuleType) -> None:
    s = prof.summarise(prof.parse(PERF_LINES.splitlines()), top=3)
    assert s["samples"] == 17
    # JVM: every thread of pid 20854 (executor, VM Thread, Thread-3); python: driver and worker
    assert s["by_process"] == {
        "jvm": round(12 / 17, 4),
        "python": round(3 / 17, 4),
        "idle": round(1 / 17, 4),
        "other": round(1 / 17, 4),
    }
    assert s["jvm_threads"]["Executor task l"] == round(10 / 17, 4)
    assert s["jvm_threads"]["Thread-N"] == round(1 / 17, 4)
    assert s["executor_samples"] == 10
    assert s["executor_kinds"]["zstd"] == 0.2 and s["executor_kinds"]["JVM stubs"] == 0.2
    assert sum(s["executor_kinds"].values()) == pytest.approx(1.0)
    assert s["executor_top_symbols"][0] == ["zstd: [unknown]", 0.2]
    assert len(s["executor_top_symbols"]) == 3
    machine = {"cores": 2, "cpu_model": "AMD EPYC", "memory_gib": 23.5, "platform": "Linux"}
    machine |= {"load_avg_at_start": [0.2, 1.2, 1.6], "versions": {"medimg_spark_commit": "bb40f96"}}
    report = {"n": 500, "fused": True, "frequency_hz": 499, "command": "x", "machine": machine, "summary": s}
    md = prof.markdown(report)
    assert md.startswith("# JVM profile (perf, 499 Hz) of spark_stages.py at N = 500 (fused)")
    assert "| zstd | 20.0 % |" in md and "| JVM stubs: StubRoutines (2) | 10.0 % |" in md
    assert "commit bb40f96." in md
