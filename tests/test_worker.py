"""configure_worker: one OpenCV thread, and glibc's allocator reusing frame-sized blocks (page faults measured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from medimg_spark.worker import MMAP_THRESHOLD_BYTES, configure_worker

# Frame-sized work: 8 MB float64 and 4 MB float32 temporaries, allocated and freed twenty times, the way an
# op chain does per frame; prints the minor page faults of the second round (the first warms the heap).
_PROBE = """
import json, os, resource, sys
import numpy as np
setup = None
if sys.argv[1] == "configure":
    from medimg_spark.worker import configure_worker
    setup = configure_worker().allocator
def work():
    a = np.random.default_rng(0).random((1024, 1024))
    for _ in range(20):
        b = a * 2.0
        c = (b + 1).astype(np.float32)
        d = np.pad(c, 40)
        e = np.sort(d, axis=None)
        del b, c, d, e
work()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
work()
RESULT = {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0, "allocator": setup}
"""

_GLIBC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def _probe(arg: str, **env: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k not in _GLIBC}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE + "print(json.dumps(RESULT))", arg],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_configured_process_reuses_frame_sized_blocks() -> None:
    default = _probe("default")
    tuned = _probe("configure")
    assert tuned["allocator"] == "tuned"
    # glibc's defaults map and unmap these blocks: ~44,000 faults (4 KB pages) on the development machine.
    assert int(default["faults"]) > 5_000, default
    assert int(tuned["faults"]) * 20 < int(default["faults"]), (tuned, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_glibc_environment_is_kept() -> None:
    kept = _probe("configure", MALLOC_MMAP_THRESHOLD_="131072")
    assert kept["allocator"] == "environment"
    assert int(kept["faults"]) > 5_000, kept  # the user's small threshold stays in force
    assert _probe("configure", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["allocator"] == "environment"


def test_configure_worker_is_idempotent_and_sets_one_opencv_thread() -> None:
    import cv2

    first = configure_worker()
    assert first.opencv_threads == 1 == cv2.getNumThreads()
    assert configure_worker() is first
    assert MMAP_THRESHOLD_BYTES >= 8 * 1024 * 1024  # a 1024² float64 frame fits under it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_spark_python_workers_are_configured(spark) -> None:  # type: ignore[no-untyped-def]
    """In a Spark task (a worker forked by PySpark's daemon), the same work faults no more than in a
    configured process."""
    import pandas as pd

    probe = _PROBE.replace("sys.argv[1]", '"configure"')

    def run(batches):  # type: ignore[no-untyped-def]
        scope: dict[str, object] = {}
        for _ in batches:
            exec(probe, scope)  # the probe above, run in the task's process
            yield pd.DataFrame([{"result": json.dumps(scope["RESULT"])}])

    rows = spark.range(2, numPartitions=2).mapInPandas(run, "result string").collect()
    results = [json.loads(r.result) for r in rows]
    assert all(r["allocator"] in ("tuned", "environment") for r in results), results
    assert all(int(r["faults"]) < 2_000 for r in results if r["allocator"] == "tuned"), results
