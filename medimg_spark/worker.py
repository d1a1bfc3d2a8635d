"""Per-process set-up of a process that runs per-image work: a Spark Python worker, a pool process, a loop.

Every per-partition function of the package calls :func:`configure_worker` first (it is idempotent and
costs nothing after the first call), and so should a user's own ``multiprocessing`` worker or loop over
the core functions. It does two things:

* **One OpenCV thread.** Spark runs one task per core; OpenCV's own thread pool would oversubscribe them.
* **glibc's allocator keeps large blocks.** Frames are 0.25-8 MB arrays, and every op allocates a few of
  them. glibc serves blocks above its mmap threshold with fresh ``mmap`` pages and returns them on
  ``free`` (and trims the heap top above its trim threshold), so the kernel zero-fills and faults in the
  same megabytes for every frame. Measured with ``benchmarks/allocator.py`` (the benchmark's chain: decode →
  recipe → quality → features, 300 real-size CT/X-ray images, arms alternated; medians in
  ``benchmarks/results/allocator.md``): in ``Pool(2)``, 11,922 → 448 minor page faults and 0.044 → 0.009 s
  of system CPU per image, 0.298 → 0.253 CPU-s per image, 6.31 → 7.57 images/s; in one process 0.269 →
  0.246 CPU-s per image. Peak RSS of one process: 525-553 MB with either setting. Blocks above
  :data:`MMAP_THRESHOLD_BYTES` (volumes, hostile headers) are still mapped and unmapped as before, so a
  worker's address-space limit (``spark.executor.pyspark.memory``) still turns them into ``MemoryError``.

A process whose environment sets glibc's own malloc variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``)
keeps them; on a C library without ``mallopt`` (musl, macOS) the allocator is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "WorkerSetup", "configure_worker"]

#: Blocks up to this size come from the heap and are reused: the ceiling glibc's own adjustment of the
#: threshold stops at on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``), above a processed 1024² X-ray
#: in float64 (8 MB).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory kept at the top of the heap before it is returned to the OS (glibc's own rule: twice the
#: mmap threshold, which it applies only while it adjusts the threshold itself).
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@dataclass(frozen=True)
class WorkerSetup:
    """What :func:`configure_worker` did in this process.

    Attributes:
        opencv_threads: OpenCV's thread count afterwards (None without OpenCV).
        allocator: ``"tuned"``, ``"environment"`` (the process's glibc variables were kept) or
            ``"unavailable"`` (no glibc ``mallopt``, or it refused the values).
    """

    opencv_threads: int | None
    allocator: str


_setup: WorkerSetup | None = None


def _tune_allocator() -> str:
    if any(k in os.environ for k in _GLIBC_ENV) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "environment"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "unavailable"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either one stops glibc's own adjustment of both.
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and ok
    return "tuned" if ok else "unavailable"


def configure_worker() -> WorkerSetup:
    """Set this process up for per-image work (once per process; later calls return the first result).

    A process forked from a configured one (a pool worker, PySpark's daemon's workers) inherits both
    settings.

    Returns:
        What was set (see :class:`WorkerSetup`).
    """
    global _setup
    if _setup is not None:
        return _setup
    threads: int | None
    try:
        import cv2

        cv2.setNumThreads(1)  # one task per core: OpenCV's own threads would oversubscribe
        threads = int(cv2.getNumThreads())
    except ImportError:
        threads = None
    _setup = WorkerSetup(opencv_threads=threads, allocator=_tune_allocator())
    return _setup
