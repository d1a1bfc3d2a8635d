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
    values: Array, q: Sequence[float], binned: tuple[Array, Array] | None = None, bins: int = 4096
) -> Array:
    """``np.percentile(values, q)`` (its default ``linear`` method), bit-equal, without partitioning the array.

    The order statistics the percentiles need are located in a histogram whose bin index is monotone in the
    value (``bins`` bins over the values' own range, or ``binned = (index per value, counts)`` given by the
    caller, e.g. the 256-bin histogram the quality metrics already have), and selected from those bins only;
    numpy's interpolation (virtual index ``(n - 1) q / 100``, its two-sided lerp) is then applied to the same
    order statistics, so the result is the same float. Non-finite values fall back to :func:`numpy.percentile`.
    """
    x = np.asarray(values).ravel()
    qs = np.true_divide(np.asarray(q, dtype=np.float64), 100)
    n = x.size
    if n == 0 or x.dtype != np.float64 or not np.isfinite(x).all():
        return np.asarray(np.percentile(x, q), dtype=np.float64)
    virtual = (n - 1) * qs
    prev = np.floor(virtual)
    prev[virtual >= n - 1] = n - 1
    prev_i = prev.astype(np.intp)
    next_i = np.minimum(prev_i + 1, n - 1)
    gamma = virtual - prev_i
    ranks = np.unique(np.concatenate([prev_i, next_i]))
    lo, hi = float(x.min()), float(x.max())
    stats: dict[int, float] = {}
    if lo == hi:
        stats = {int(r): lo for r in ranks}
    else:
        if binned is None:
            scale = bins / (hi - lo)
            if not math.isfinite(scale) or scale <= 0:
                return np.asarray(np.percentile(x, q), dtype=np.float64)
            idx = ((x - lo) * scale).astype(np.intp)
            np.minimum(idx, bins - 1, out=idx)
            counts = np.bincount(idx, minlength=bins)
        else:
            idx, counts = binned[0].ravel(), binned[1]
        cum = np.cumsum(counts)
        where = np.searchsorted(cum, ranks, side="right")
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
