"""Exact order statistics without sorting whole frames: the percentiles and selections the quality metrics
and features use, bit-equal to numpy's (pure numpy, no Spark, no op-layer imports)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def select(values: Array, keep: Array) -> Array:
    """``values[keep]`` for a boolean ``keep`` of the same shape, flat: the same values in the same order,
    by :func:`numpy.compress` (several times faster than boolean indexing)."""
    return np.compress(np.asarray(keep).ravel(), np.asarray(values).ravel())


def exact_percentiles(
    values: Array,
    q: Sequence[float],
    binned: tuple[Array, Array] | None = None,
    bins: int = 4096,
    finite: bool = False,
) -> Array:
    """``np.percentile(values, q)`` (its default ``linear`` method), bit-equal, without partitioning the array.

    The order statistics the percentiles need are located in a histogram whose bin index is monotone in the
    value (``bins`` bins over the values' own range, or ``binned = (index per value, counts)`` given by the
    caller, e.g. the 256-bin histogram the quality metrics already have), and selected from those bins only;
    numpy's interpolation (virtual index ``(n - 1) q / 100``, its two-sided lerp) is then applied to the same
    order statistics, so the result is the same float. Non-float64 or non-finite values fall back to
    :func:`numpy.percentile`; ``finite=True``: the caller knows every value is finite (not checked again).
    """
    x = np.asarray(values).ravel()
    qs = np.true_divide(np.asarray(q, dtype=np.float64), 100)
    n = x.size
    if n == 0 or x.dtype != np.float64 or not (finite or bool(np.isfinite(x).all())):
        return np.asarray(np.percentile(x, q), dtype=np.float64)
    virtual = (n - 1) * qs
    prev = np.floor(virtual)
    prev[virtual >= n - 1] = n - 1
    prev_i = prev.astype(np.intp)
    next_i = np.minimum(prev_i + 1, n - 1)
    gamma = virtual - prev_i
    ranks = np.unique(np.concatenate([prev_i, next_i]))
    if binned is None:
        located = _bin(x, bins)
        if located is None:  # a constant array (or a range too small or too large to bin)
            lo = float(x.min())
            if lo != float(x.max()):
                return np.asarray(np.percentile(x, q), dtype=np.float64)
            located = np.zeros(n, dtype=np.uint8), np.array([n], dtype=np.int64)
        idx, counts = located
    else:
        idx, counts = binned[0].ravel(), binned[1]
    cum = np.cumsum(counts)
    where = np.searchsorted(cum, ranks, side="right")
    stats: dict[int, float] = {}
    for b in np.unique(where):
        in_bin = ranks[where == b]
        offsets = in_bin - (cum[b] - counts[b])
        part = np.partition(np.compress(idx == b, x), offsets)
        stats.update(zip((int(r) for r in in_bin), (float(v) for v in part[offsets]), strict=True))
    a = np.array([stats[int(r)] for r in prev_i], dtype=np.float64)
    b_ = np.array([stats[int(r)] for r in next_i], dtype=np.float64)
    diff = b_ - a
    out = a + diff * gamma
    np.subtract(b_, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


def _bin(x: Array, bins: int) -> tuple[Array, Array] | None:
    """``(uint16 bin index, counts)`` of finite float64 ``x`` in ``bins`` (<= 65536) equal bins over its own
    range: ``floor(min((x - lo) * bins / (hi - lo), bins - 1))``, monotone in ``x`` (IEEE subtraction and
    multiplication by a positive constant are). None for a constant ``x`` or an unusable range."""
    lo, hi = float(x.min()), float(x.max())
    scale = bins / (hi - lo) if hi > lo else 0.0
    if not (math.isfinite(scale) and scale > 0):
        return None
    t = x - lo
    t *= scale
    np.minimum(t, bins - 1, out=t)
    idx = t.astype(np.uint16)
    if idx.size < 1 << 24:
        import cv2

        counts = cv2.calcHist([idx.reshape(1, -1)], [0], None, [bins], [0, bins]).ravel().astype(np.int64)
    else:
        counts = np.bincount(idx, minlength=bins)
    return idx, counts
