"""Noise-aware, do-no-harm denoising: estimate the frame's noise, stabilise it, shrink it, invert.

Three parts, all numpy/OpenCV (no Spark, no BM3D, whose licence is non-commercial only):

* :func:`estimate_noise` measures the noise of a real frame in its own units: the finest Haar diagonal
  detail of 2x2 blocks, restricted to unclipped, low-gradient blocks, binned by intensity into a
  noise-level function ``σ²(x)`` that is fitted by three models — ``gaussian`` (``σ² = b``),
  ``poisson_gaussian`` (``σ² = a·x + b``: X-ray quanta, low-dose CT) and ``multiplicative``
  (``σ² = c·x² + b``: ultrasound speckle) — and the simplest model that explains it is kept.
  MR magnitude (Rician) noise is Gaussian at moderate SNR and is treated so (no bias correction).
* A variance-stabilising transform chosen from the model makes the noise unit Gaussian: identity (scaled),
  the generalised Anscombe transform, or ``asinh`` (the stabiliser of ``σ² = c·x² + b``); each has an exact
  algebraic inverse.
* The Gaussian core :func:`multiscale_dct_denoise` is sliding-window 8x8 DCT shrinkage over every block
  position (BM3D without block matching: a hard-threshold stage gives a pilot, an empirical Wiener stage
  uses it) on a 2x2-mean pyramid whose coarse levels remove the low-frequency noise of flat regions.
  ``method: nlm`` (OpenCV fast non-local means on 16 bits) is the runner-up (weaker and slower).
  Frames under 64 px a side (28x28 thumbnails) average 8x8 and 4x4 estimates and add two Wiener passes.
* The algebraic inverse of the speckle VST (asinh ~ log) is biased low (the core estimates the mean of the
  stabilised values); the input's mean is restored afterwards (:func:`_restore_mean`). Speckle is shrunk
  with 1.1x the stabilised σ (its log is skewed and heavy-tailed).
* Real CT: the padding outside the scan field (solid regions at the frame's exact minimum,
  :func:`padding_mask`) is filled with the nearest local mean of the scan field before the core and
  restored bit for bit after it (no step edge to ring, no VST clamp); reconstructed CT noise is spatially
  correlated, so σ is raised by :func:`noise_colour` when the coarser scales show it (white noise: 1).

Do no harm: only the noise above a floor is removed, ``σ_eff = strength · sqrt(max(0, σ² − floor²))`` with
``floor`` a fraction of the robust range p1..p99 (default 1.5 %, above the inherent noise of the real
CT/MR/CR/US frames of the test corpora, 0.02..1.5 %); when ``σ_eff <= floor / 2`` (``σ <= 1.12 floor``)
the frame is returned unchanged (the same array), and so is a frame whose "noise" is a quarter of its range or
more (the estimate is then structure, not noise). ``floor: 0`` removes all the estimated noise.
Output dtype = input dtype (rounded and saturated like the filters). Non-finite pixels are kept where they
are (the rest is denoised around them). Three-channel frames are denoised jointly in an orthonormal
opponent colour space (luma + two chroma channels) with the luma's noise estimate. Large frames are
processed in row strips, so memory stays bounded (~50 MB of work arrays) whatever the frame size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from medimg_spark.ops._common import Array, cast_like, check_image, luma
from medimg_spark.ops._step import Meta, Step, register_step

NoiseModel = Literal["gaussian", "poisson_gaussian", "multiplicative"]
ModelChoice = Literal["auto", "gaussian", "poisson_gaussian", "multiplicative"]
Method = Literal["dct", "nlm"]

BLOCK = 8
"""Side of the DCT blocks of the core."""

HARD_THRESHOLD = 2.7
"""Stage-1 hard threshold in units of σ."""

DEFAULT_FLOOR = 0.015
"""Default noise floor, a fraction of the robust range p1..p99 (see :func:`denoise`)."""

_STRIP_PATCHES = 1 << 16
"""Block positions per row strip of the DCT core (64 coefficient maps of this size: ~17 MB each)."""

MAX_RELATIVE_SIGMA = 0.25
"""An estimated σ above this fraction of the robust range is structure, not noise: the frame is left alone."""


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise of one frame, in its own intensity units.

    The noise-level function is ``σ²(x) = b + a·x + c·x²`` with the coefficients of the chosen ``model``
    (the others are 0).

    Attributes:
        model: ``gaussian``, ``poisson_gaussian`` or ``multiplicative``.
        sigma: noise standard deviation at the median intensity ``median``.
        a: linear coefficient of ``σ²(x)`` (``poisson_gaussian``).
        b: constant term of ``σ²(x)``.
        c: quadratic coefficient of ``σ²(x)`` (``multiplicative``).
        median: median intensity of the measured blocks (where ``sigma`` is given).
        low: 1st percentile of the finite pixels.
        high: 99th percentile of the finite pixels.
        blocks: number of 2x2 blocks the estimate uses.
    """

    model: NoiseModel
    sigma: float
    a: float
    b: float
    c: float
    median: float
    low: float
    high: float
    blocks: int

    @property
    def range(self) -> float:
        """The robust range ``high - low`` (p99 − p1), at least a tiny positive number."""
        return max(self.high - self.low, 1e-12)

    @property
    def relative_sigma(self) -> float:
        """``sigma / (p99 − p1)``: the noise as a fraction of the robust range."""
        return self.sigma / self.range

    def variance_at(self, x: Array | float) -> Array:
        """``σ²(x)``, clamped to ≥ 0."""
        xv = np.asarray(x, dtype=np.float64)
        return np.maximum(self.b + self.a * xv + self.c * xv * xv, 0.0)

    def describe(self) -> str:
        """A one-line summary such as ``"gaussian σ=0.012 (0.6 % of range)"``."""
        return f"{self.model} σ={_fmt(self.sigma)} ({100 * self.relative_sigma:.2g} % of range)"


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# --- noise estimation ----------------------------------------------------------------------------------


def _blocks(g: Array) -> tuple[Array, Array, Array]:
    """Means, Haar diagonal details and validity of the disjoint 2x2 blocks of a float64 frame."""
    rows, cols = (g.shape[0] // 2) * 2, (g.shape[1] // 2) * 2
    g = g[:rows, :cols]
    p00, p01, p10, p11 = g[0::2, 0::2], g[0::2, 1::2], g[1::2, 0::2], g[1::2, 1::2]
    mean = (p00 + p01 + p10 + p11) / 4.0
    hh = (p00 - p01 - p10 + p11) / 2.0
    finite = np.isfinite(g)
    if finite.all():
        ok = np.ones(mean.shape, dtype=bool)
        lo, hi = float(g.min()), float(g.max())
    else:
        ok = finite[0::2, 0::2] & finite[0::2, 1::2] & finite[1::2, 0::2] & finite[1::2, 1::2]
        if not ok.any():
            return mean, hh, ok
        lo = float(np.min(g, where=finite, initial=np.inf))
        hi = float(np.max(g, where=finite, initial=-np.inf))
    for p in (p00, p01, p10, p11):
        ok &= p > lo
        ok &= p < hi  # clipped air, saturation and padding carry no noise
    return mean, hh, ok


def _gradient(mean: Array) -> Array:
    """Gradient magnitude of the block means (smoothed 3x3 first), NaN-safe."""
    import cv2

    m: Array = cv2.blur(np.where(np.isfinite(mean), mean, 0.0).astype(np.float32), (3, 3))
    gx = cv2.Sobel(m, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(m, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(np.hypot(gx, gy), dtype=np.float64)


_MAD = 0.6744897501960817
_MAX_BLOCKS = 300_000


def _median(x: Array) -> float:
    """``np.median`` of a finite 1-D float64 array (the same value: one partition, no checks)."""
    half = x.size // 2
    if x.size % 2:
        return float(np.partition(x, half)[half])
    part = np.partition(x, (half - 1, half))
    return float((part[half - 1] + part[half]) / 2.0)


def _rank_bins(values: Array, nbins: int) -> list[Array]:
    """The index sets of ``np.array_split(np.argsort(values, kind="stable"), nbins)``, cheaper.

    Bin ``k`` holds the ranks ``[b_k, b_{k+1})`` of the stable order: a value above the boundary value
    ``v_k`` (the value of rank ``b_k``) is past it, one below is before it, and a run of values equal to a
    boundary value is split by index (the stable sort's order) where a boundary falls inside it. The
    indices of a bin are in increasing order (the callers only use the sets).
    """
    n = values.size
    sizes = np.full(nbins, n // nbins)
    sizes[: n % nbins] += 1
    bounds = np.cumsum(sizes)[:-1]
    if bounds.size == 0:
        return [np.arange(n)]
    ordered = np.sort(values)
    edges = ordered[bounds]
    label = np.searchsorted(edges, values, side="right")
    for v in np.unique(edges):
        lo, hi = np.searchsorted(ordered, v, side="left"), np.searchsorted(ordered, v, side="right")
        first, last = np.searchsorted(bounds, (lo, hi - 1), side="right")
        if first != last:  # a boundary inside the run of ties: split it by index
            tied = np.flatnonzero(values == v)
            label[tied] = np.searchsorted(bounds, lo + np.arange(tied.size), side="right")
    order = np.argsort(label.astype(np.uint8), kind="stable")
    return np.split(order, np.cumsum(np.bincount(label, minlength=nbins))[:-1])


def _level_points(g: Array, bins: int = 16, min_blocks: int = 64) -> tuple[Array, Array, Array, Array]:
    """Binned noise-level points: intensity, σ², block count per bin, and the means of all used blocks."""
    mean, hh, ok = _blocks(g)
    grad = _gradient(mean)
    m, d, gr = mean[ok], np.abs(hh[ok]), grad[ok]
    step = max(1, m.size // _MAX_BLOCKS)  # a regular subsample keeps large frames fast
    m, d, gr = m[::step], d[::step], gr[::step]
    if m.size < min_blocks:
        empty = np.zeros(0)
        return empty, empty, empty, m
    nbins = int(max(1, min(bins, m.size // (4 * min_blocks))))
    xs, vs, ns = [], [], []
    for chunk in _rank_bins(m, nbins):  # equal-count intensity bins
        # the flattest half of the bin: Haar HH is orthogonal to the block mean, so selecting on the
        # gradient of the means does not bias the noise of flat regions, and drops edges and texture
        flat = gr[chunk]
        keep = chunk[flat <= _median(flat)]
        if keep.size < min_blocks // 2:
            continue
        xs.append(_median(m[keep]))
        vs.append((_median(d[keep]) / _MAD) ** 2)
        ns.append(float(keep.size))
    return np.asarray(xs), np.asarray(vs), np.asarray(ns), m


def _nnls(design: Array, target: Array) -> Array:
    """Non-negative least squares for one or two columns (clamp and refit: exact for two)."""
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    if np.all(coef >= 0):
        return np.asarray(coef)
    best = np.zeros(design.shape[1])
    best_err = float(np.sum(target**2))
    for k in range(design.shape[1]):
        col = design[:, k]
        c = max(float(col @ target) / max(float(col @ col), 1e-300), 0.0)
        err = float(np.sum((target - c * col) ** 2))
        if err < best_err:
            best, best_err = np.zeros(design.shape[1]), err
            best[k] = c
    return best


def _fit(model: NoiseModel, x: Array, v: Array, n: Array) -> tuple[tuple[float, float, float], float]:
    """Weighted non-negative least squares of ``σ²`` on one model: ``((a, b, c), chi²)``."""
    scale = max(float(np.median(v)), 1e-300)
    w = np.sqrt(n) / np.maximum(v, scale * 1e-3)  # var(σ̂²) ∝ σ⁴ / n
    ones = np.ones_like(x)
    xs = max(float(np.max(np.abs(x))), 1e-12)
    if model == "gaussian":
        cols = [ones]
    elif model == "poisson_gaussian":
        cols = [ones, x / xs]
    else:
        cols = [ones, (x / xs) ** 2]
    basis = np.stack(cols, axis=1)
    coef = _nnls(basis * w[:, None], v * w)
    b = float(coef[0])
    a = float(coef[1] / xs) if model == "poisson_gaussian" else 0.0
    c = float(coef[1] / xs**2) if model == "multiplicative" else 0.0
    if model == "poisson_gaussian" and a > 0:
        # the constant may be negative (an intensity offset): refit it freely with the slope fixed
        b = float(np.sum(w**2 * (v - a * x)) / np.sum(w**2))
    if model == "gaussian":
        b = float(np.median(v))  # the bins hold equal counts: robust to a mismatched model
    pred = b + a * x + c * x * x
    chi2 = float(np.sum(((v - pred) * w) ** 2) / max(len(v), 1))
    return (a, b, c), chi2


def estimate_noise(image: Array, model: ModelChoice = "auto") -> NoiseEstimate:
    """Estimate the noise of a frame and the model of its noise-level function.

    Args:
        image: (rows, cols) or (rows, cols, 3) frame (3 channels: measured on the BT.601 luma).
        model: ``auto`` chooses the model; a model name fits that model only.

    Returns:
        The :class:`NoiseEstimate` (``sigma`` 0 for frames without measurable noise).
    """
    g = luma(np.asarray(image))
    stride = max(1, int(np.sqrt(g.size / 1_000_000)))  # percentiles on <= 1 M pixels
    sample = g[::stride, ::stride].ravel()
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return NoiseEstimate("gaussian", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    low, high = (float(q) for q in np.percentile(finite, (1, 99)))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    x, v, n, used = _level_points(g)
    if x.size == 0:
        med = float(np.median(finite))
        return NoiseEstimate("gaussian", 0.0, 0.0, 0.0, 0.0, med, low, high, int(used.size))
    med = float(np.median(used))
    fits = {m: _fit(m, x, v, n) for m in ("gaussian", "poisson_gaussian", "multiplicative")}
    chosen: NoiseModel = "gaussian"
    if model != "auto":
        chosen = model
    elif x.size >= 4:
        chi_g = fits["gaussian"][1]
        best = min(("poisson_gaussian", "multiplicative"), key=lambda k: fits[k][1])
        a, b, c = fits[best][0]
        lo_x, hi_x = float(x.min()), float(x.max())
        s_lo = np.sqrt(max(b + a * lo_x + c * lo_x**2, 1e-300))
        s_hi = np.sqrt(max(b + a * hi_x + c * hi_x**2, 1e-300))
        # a signal-dependent model must explain clearly more and vary σ visibly over the frame
        if fits[best][1] < 0.5 * chi_g and s_hi > 1.25 * s_lo:
            chosen = best  # type: ignore[assignment]
    (a, b, c), _ = fits[chosen]
    est = NoiseEstimate(chosen, 0.0, a, b, c, med, low, high, int(used.size))
    sigma = float(np.sqrt(est.variance_at(med)))
    return NoiseEstimate(chosen, sigma, a, b, c, med, low, high, int(used.size))


# --- variance stabilisation ----------------------------------------------------------------------------


def _stabilise(x: Array, est: NoiseEstimate) -> Array:
    """Map image values so the noise becomes unit-variance (float64)."""
    if est.model == "poisson_gaussian" and est.a > 0:
        a = est.a
        return 2.0 / a * np.sqrt(np.maximum(a * x + est.b + 0.375 * a * a, 0.0))
    if est.model == "multiplicative" and est.c > 0:
        rc = np.sqrt(est.c)
        rb = np.sqrt(max(est.b, 1e-12 * est.range**2))
        return np.asarray(np.arcsinh(rc * x / rb) / rc)
    return x / max(est.sigma, 1e-300)


def _unstabilise(y: Array, est: NoiseEstimate) -> Array:
    """The algebraic inverse of :func:`_stabilise`."""
    if est.model == "poisson_gaussian" and est.a > 0:
        a = est.a
        return (a * a * y * y / 4.0 - est.b - 0.375 * a * a) / a
    if est.model == "multiplicative" and est.c > 0:
        rc = np.sqrt(est.c)
        rb = np.sqrt(max(est.b, 1e-12 * est.range**2))
        return np.asarray(rb / rc * np.sinh(rc * y))
    return y * est.sigma


# --- the Gaussian core -----------------------------------------------------------------------------------


def _dct_matrix(n: int) -> Array:
    k = np.arange(n)
    d = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT: dict[int, Array] = {n: _dct_matrix(n).astype(np.float32) for n in (4, 8, 16)}


_DCT_T: dict[int, Array] = {n: np.ascontiguousarray(d.T) for n, d in _DCT.items()}

_BLOCK_ROW_UINT: dict[int, type[np.unsignedinteger]] = {4: np.uint32, 8: np.uint64, 16: np.uint64}
"""Unsigned type as wide as a block row of a boolean mask (n bytes; 16 = two 8-byte words)."""


def _row_blocks(src: Array, n: int, pm: int) -> Array:
    """``src`` zero-padded to ``(pm + 1) n`` rows, as ``(pm + 1, n, cols)`` (row ``n p + k`` at ``[p, k]``)."""
    out = np.zeros(((pm + 1) * n, src.shape[1]), dtype=np.float32)
    out[: src.shape[0]] = src
    return out.reshape(pm + 1, n, -1)


def _polyphase(src4: Array, t: int, qn: int, n: int, pm: int, dst: Array) -> None:
    """``dst[k, p, :] = src[n p + k, t : t + qn]`` for ``k < 2n − 1`` (``src4`` from :func:`_row_blocks`).

    Row ``k`` of this layout holds row ``a = k − s`` of the blocks at vertical shift ``s`` (top-left rows
    ``s, s + n, …``), so the n rows ``s .. s + n − 1`` are one strided (n, pm·qn) matrix per shift.
    """
    np.copyto(dst[:n], src4[:pm, :, t : t + qn].transpose(1, 0, 2))
    np.copyto(dst[n:], src4[1 : pm + 1, : n - 1, t : t + qn].transpose(1, 0, 2))


def _dct_strip(noisy: Array, pilot: Array | None, sigma: float, n: int) -> tuple[Array, Array]:
    """Numerator and denominator of the weighted overlap-add of one strip (every whole n x n block).

    The n² block positions are grouped by shift ``(s, t)`` (top-left ``(s + n p, t + n q)``): the blocks
    of one shift tile the strip, so their DCTs are two small matrix products on a polyphase layout
    (``D @ X @ Dᵀ``: the row transform once per ``t``, the column transform per shift), shrunk, weighted,
    inverse-transformed and accumulated without leaving the cache. Equal to the per-block definition
    (``dctn`` of every block, threshold or Wiener gain, ``idctn``, weighted average) up to float32 rounding.
    """
    rows, cols = noisy.shape
    d, dt = _DCT[n], _DCT_T[n]
    var = np.float32(sigma * sigma)
    thr = np.float32(HARD_THRESHOLD * sigma)
    nb_r, nb_c = rows - n + 1, cols - n + 1  # whole block positions
    pm, qmax = (nb_r - 1) // n + 1, (nb_c - 1) // n + 1
    kk = 2 * n - 1
    num = np.zeros((pm + 1, n, cols), dtype=np.float32)  # row n p + k at [p, k]
    wimg = np.zeros((rows, cols), dtype=np.float32)
    src_n = _row_blocks(noisy, n, pm)
    src_p = None if pilot is None else _row_blocks(pilot, n, pm)
    plane = pm * qmax * n
    seg = np.empty(kk * plane, dtype=np.float32)
    rn = np.empty(kk * plane, dtype=np.float32)
    rp = np.empty(kk * plane, dtype=np.float32)
    acc = np.empty(kk * plane, dtype=np.float32)
    cbuf = np.empty(n * plane, dtype=np.float32)
    gbuf = np.empty(n * plane, dtype=np.float32)
    hbuf = np.empty(n * plane, dtype=np.float32)
    mbuf = np.empty(n * plane, dtype=bool)
    ones = np.ones(n, dtype=np.float32)
    word = _BLOCK_ROW_UINT[n]
    for t in range(n):
        q = (nb_c - 1 - t) // n + 1
        qn = q * n
        size = kk * pm * qn
        seg_t = seg[:size].reshape(kk, pm, qn)
        rn_t = rn[:size].reshape(kk, pm, qn)
        acc_t = acc[:size].reshape(kk, pm, qn)
        _polyphase(src_n, t, qn, n, pm, seg_t)
        np.matmul(seg_t.reshape(-1, n), dt, out=rn_t.reshape(-1, n))  # row DCT of every block row
        rp_t = rp[:size].reshape(kk, pm, qn)
        if src_p is not None:
            _polyphase(src_p, t, qn, n, pm, seg_t)
            np.matmul(seg_t.reshape(-1, n), dt, out=rp_t.reshape(-1, n))
        acc_t[...] = 0.0
        for s in range(n):
            p = (nb_r - 1 - s) // n + 1
            csize = n * p * qn
            c = cbuf[:csize].reshape(n, p * qn)  # c[u, (p, q, v)]
            g = gbuf[:csize].reshape(n, p * qn)
            np.matmul(d, rn_t[s : s + n, :p].reshape(n, p * qn), out=c)
            if pilot is None:
                m = mbuf[:csize].reshape(n, p * qn)
                np.abs(c, out=g)
                np.greater(g, thr, out=m)
                m[0].reshape(-1, n)[:, 0] = True  # the DC coefficient: always kept, counted once
                kept = np.add.reduce(np.bitwise_count(m.view(word)), axis=0, dtype=np.float32)
                total = kept.reshape(p, -1, 2).sum(axis=2) if n == 16 else kept.reshape(p, q)
                np.multiply(c, m, out=c)
            else:
                h = hbuf[:csize].reshape(n, p * qn)
                np.matmul(d, rp_t[s : s + n, :p].reshape(n, p * qn), out=g)
                np.square(g, out=g)
                np.add(g, var, out=h)
                np.divide(g, h, out=g)  # the empirical Wiener gain
                g[0].reshape(-1, n)[:, 0] = 1.0  # DC: gain 1
                np.multiply(c, g, out=c)
                np.square(g, out=g)
                gain2 = np.add.reduce(g, axis=0)
                total = (gain2.reshape(-1, n) @ ones).reshape(p, q)
                # 1 / (Σ gain²)²: a sharper preference than BM3D's 1 / Σ gain² for blocks off strong
                # edges (measured on real CT: +0.3..1 dB at step edges, neutral on MR, CR and US)
                total *= total
            w = np.float32(1.0) / total
            np.multiply(c, np.repeat(w.reshape(-1), n).reshape(1, -1), out=c)
            np.matmul(dt, c, out=g)  # inverse column DCT
            dst = acc_t[s : s + n, :p]
            np.add(dst, g.reshape(n, p, qn), out=dst)
            wimg[s : s + n * p : n, t : t + qn : n] = w
        np.matmul(acc_t.reshape(-1, n), d, out=seg_t.reshape(-1, n))  # inverse row DCT
        view = num[:pm, :, t : t + qn]  # num[n p + k] += seg_t[k, p], k < n
        np.add(view, seg_t[:n].transpose(1, 0, 2), out=view)
        view = num[1:, : n - 1, t : t + qn]  # rows n (p + 1) + (k − n), k >= n
        np.add(view, seg_t[n:].transpose(1, 0, 2), out=view)
    import cv2

    den = cv2.boxFilter(
        wimg, cv2.CV_32F, (n, n), anchor=(n - 1, n - 1), normalize=False, borderType=cv2.BORDER_CONSTANT
    )
    return num.reshape(-1, cols)[:rows], np.asarray(den)


_BLAS: list[object] = []
"""The process's threadpoolctl controller, created on first use (inspecting the loaded libraries: ~30 ms)."""


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """Numpy's BLAS limited to one thread while the core runs.

    The core's matrix products are small (8 x 8 by 8 x ~10⁴); a multi-threaded OpenBLAS splits them and
    its idle threads spin: 15x the CPU time of one thread on a 2-core machine. Frames are parallel
    across tasks, never within one.
    """
    from threadpoolctl import ThreadpoolController

    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    controller = _BLAS[0]
    assert isinstance(controller, ThreadpoolController)
    return controller.limit(limits=1, user_api="blas")


def _dct_stage(
    noisy: Array, pilot: Array | None, sigma: float, n: int = BLOCK, strip_patches: int = _STRIP_PATCHES
) -> Array:
    """One pass over the (already padded by n-1) frame: hard threshold (``pilot`` None) or Wiener.

    Every whole n x n block is transformed (orthonormal 2-D DCT), shrunk and transformed back; the
    estimates are averaged with per-block weights. Stage 1 keeps the coefficients above ``2.7 σ`` (and
    the DC) with weight 1 / kept; stage 2 multiplies them by the Wiener gain ``p² / (p² + σ²)`` of the
    pilot's coefficients ``p`` (DC gain 1) with weight ``1 / (Σ gain²)²``. Row strips bound the memory
    (and keep the work arrays in the cache); the result does not depend on them.
    """
    rows, cols = noisy.shape
    pad = n - 1
    out_rows = rows - 2 * pad
    strip = max(1, (strip_patches * 64 // (n * n)) // max(cols, 1))
    out = np.empty((out_rows, cols - 2 * pad), dtype=np.float32)
    with _one_blas_thread():
        for r0 in range(0, out_rows, strip):
            r1 = min(out_rows, r0 + strip)
            sub = np.ascontiguousarray(noisy[r0 : r1 + 2 * pad], dtype=np.float32)
            ref = None if pilot is None else np.ascontiguousarray(pilot[r0 : r1 + 2 * pad], dtype=np.float32)
            num, den = _dct_strip(sub, ref, sigma, n)
            out[r0:r1] = (num / den)[pad : pad + (r1 - r0), pad:-pad]
    return out


def dct_denoise(
    image: Array, sigma: float, stages: int = 2, n: int = BLOCK, strip_patches: int = _STRIP_PATCHES
) -> Array:
    """Sliding-window 8x8 DCT denoising of a 2-D frame with additive Gaussian noise of std ``sigma``.

    Stage 1 hard-thresholds the DCT coefficients of every 8x8 block position at ``2.7 σ`` and averages the
    overlapping estimates (weights 1 / kept coefficients); stage 2 shrinks the noisy coefficients by the
    empirical Wiener gain of the stage-1 pilot. Borders are mirrored.

    Args:
        image: 2-D float array (no NaN).
        sigma: noise standard deviation in the image's units (``<= 0``: returned as float32 copy).
        stages: 1 (hard threshold only) or 2.
        n: block side (4, 8 or 16).
        strip_patches: block positions per row strip (bounds memory; the result does not depend on it).

    Returns:
        The float32 estimate, same shape.
    """
    arr = np.asarray(image, dtype=np.float32)
    if sigma <= 0 or min(arr.shape) < 2:
        return arr.copy()
    pad = n - 1
    mode: Literal["reflect", "symmetric"] = "reflect" if min(arr.shape) > pad else "symmetric"
    padded = np.pad(arr, pad, mode=mode)
    basic = _dct_stage(padded, None, sigma, n, strip_patches)
    if stages < 2:
        return basic
    return _dct_stage(padded, np.pad(basic, pad, mode=mode), sigma, n, strip_patches)


def _down(img: Array) -> Array:
    import cv2

    rows, cols = img.shape[0] // 2, img.shape[1] // 2
    return np.asarray(cv2.resize(img[: 2 * rows, : 2 * cols], (cols, rows), interpolation=cv2.INTER_AREA))


def _up(img: Array, shape: tuple[int, ...]) -> Array:
    import cv2

    return np.asarray(cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR))


SMALL_SIDE = 64
"""Frames with a side below this average the 8x8 and 4x4 DCT estimates (see :func:`multiscale_dct_denoise`)."""

SMALL_PASSES = 2
"""Extra Wiener passes of the small-frame core."""


def _wiener(arr: Array, pilot: Array, sigma: float, n: int) -> Array:
    """One empirical-Wiener DCT stage of ``arr`` (float32, 2-D) with the given pilot, borders mirrored."""
    pad = n - 1
    mode: Literal["reflect", "symmetric"] = "reflect" if min(arr.shape) > pad else "symmetric"
    return _dct_stage(np.pad(arr, pad, mode=mode), np.pad(pilot, pad, mode=mode), sigma, n, _STRIP_PATCHES)


_GATE = 0.5
"""Width of the multi-scale correction gate, in units of the level's σ."""


def multiscale_dct_denoise(image: Array, sigma: float, levels: int = 2) -> Array:
    """:func:`dct_denoise` on a 2x2-mean pyramid: each coarser level (noise σ/2) replaces the low frequencies.

    ``fused = fine + g(up(coarse − down(fine)))``, recursively for ``levels`` levels (stopping at 64
    pixels); it removes the low-frequency noise that 8x8 blocks leave in flat regions. The gate
    ``g(d) = d · exp(−(d / (0.5 σ))²)`` drops the large corrections that the 2x resampling makes at strong
    edges (measured on real CT: +0.1..0.2 dB; flat regions keep their small corrections).
    """
    arr = np.asarray(image, dtype=np.float32)
    fine = dct_denoise(arr, sigma)
    if min(arr.shape) < SMALL_SIDE:
        # tiny frames (28x28 thumbnails): most 8x8 blocks touch the mirrored border; averaging with the
        # 4x4 estimate, then two more Wiener passes (8x8 and 4x4 averaged) piloted by the previous
        # estimate measured +0.3..0.75 dB on PneumoniaMNIST (the 4x4 average loses 0.1..0.4 dB on 128²
        # MR/CR tiles, so larger frames keep the 8x8 core)
        fine = (fine + dct_denoise(arr, sigma, n=4)) * np.float32(0.5)
        for _ in range(SMALL_PASSES):
            fine = (_wiener(arr, fine, sigma, BLOCK) + _wiener(arr, fine, sigma, 4)) * np.float32(0.5)
        return fine
    if levels <= 0 or min(arr.shape) < 128:
        return fine
    small = _down(arr)
    coarse = multiscale_dct_denoise(small, sigma / 2.0, levels - 1)
    correction = _up(coarse - _down(fine), (small.shape[0] * 2, small.shape[1] * 2))
    gate = np.float32(_GATE * sigma)
    correction *= np.exp(-np.square(correction / gate))
    fused = fine.copy()
    fused[: correction.shape[0], : correction.shape[1]] += correction
    return fused


def nlm_denoise(image: Array, sigma: float) -> Array:
    """OpenCV fast non-local means (7x7 patches, 21x21 search, L1 on 16 bits) with ``h = 0.8 σ``."""
    import cv2

    arr = np.asarray(image, dtype=np.float64)
    if sigma <= 0:
        return arr.astype(np.float32)
    lsb = sigma / 40.0  # 40 grey levels per σ: fine enough, far from the uint16 limits for |z| < 800 σ
    lo = float(arr.min())
    span = (float(arr.max()) - lo) / lsb
    if span > 65000:
        lsb = (float(arr.max()) - lo) / 65000.0
    u = np.clip(np.rint((arr - lo) / lsb), 0, 65535).astype(np.uint16)
    out = cv2.fastNlMeansDenoising(
        u, h=[0.8 * sigma / lsb], templateWindowSize=7, searchWindowSize=21, normType=cv2.NORM_L1
    )
    return np.asarray(out, dtype=np.float32) * np.float32(lsb) + np.float32(lo)


_OPPONENT = np.array(
    [
        [1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3)],
        [1 / np.sqrt(2), 0.0, -1 / np.sqrt(2)],
        [1 / np.sqrt(6), -2 / np.sqrt(6), 1 / np.sqrt(6)],
    ]
)
"""Orthonormal RGB → (luma, chroma 1, chroma 2): i.i.d. channel noise keeps its σ in every channel."""

PADDING_FRACTION = 0.005
"""A region at the frame's exact minimum covering at least this fraction of a 2-D frame is padding."""

_PAD_OPEN = 5
"""Side of the opening that keeps only solid padding regions (scattered clipped pixels are not padding)."""


def padding_mask(image: Array) -> Array | None:
    """The padding of a 2-D frame: solid regions at its exact minimum (DICOM PixelPaddingValue, the
    −2000/−3024 circle outside a CT scan field), or None when there is none.

    Padding carries no anatomy and no noise (a low-dose or quantum degradation leaves it untouched), but
    its step edge to the scan field is the strongest edge of the frame and makes 8x8 DCT shrinkage ring.
    Only pixels equal to the minimum, in regions that survive a 5x5 opening and cover at least
    :data:`PADDING_FRACTION` of the frame, count: clipped noisy pixels scattered in dark tissue do not.
    """
    import cv2

    arr = np.asarray(image)
    if arr.ndim != 2 or min(arr.shape) < 4 * _PAD_OPEN:
        return None
    finite = np.isfinite(arr)
    if not finite.any():
        return None
    low = arr[finite].min()
    at_min = (arr == low).astype(np.uint8)
    min_pixels = PADDING_FRACTION * arr.size
    if int(at_min.sum()) < min_pixels:
        return None
    kernel = np.ones((_PAD_OPEN, _PAD_OPEN), np.uint8)
    solid = cv2.morphologyEx(at_min, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REPLICATE)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    big = np.zeros(count, dtype=bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    if not big.any():
        return None
    # every pixel at the minimum connected to a solid region (thin slivers where a scan circle meets the
    # frame's border included)
    count, raw = cv2.connectedComponents(at_min, connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[np.unique(raw[big[labels]])] = True
    keep[0] = False
    return np.asarray(keep[raw])


def _fill_padding(values: Array, mask: Array) -> Array:
    """``values`` with the padding replaced by the nearest local mean of the scan field (no edge left)."""
    import cv2
    from scipy import ndimage

    valid = (~mask).astype(np.float32)
    x = np.where(mask, 0.0, values).astype(np.float32)
    num = cv2.blur(x, (9, 9), borderType=cv2.BORDER_REFLECT)
    den = cv2.blur(valid, (9, 9), borderType=cv2.BORDER_REFLECT)
    source = (den >= 0.5) & ~mask
    if not source.any():
        return values
    smooth = num / np.maximum(den, 1e-6)
    idx = ndimage.distance_transform_edt(~source, return_distances=False, return_indices=True)
    filled = smooth[idx[0], idx[1]].astype(np.float64)
    return np.asarray(np.where(mask, filled, values))


def _gaussian_sigma(plane: Array) -> float:
    """``estimate_noise(plane, "gaussian").sigma`` of a 2-D frame, without the percentiles it also
    computes (the constant of the noise-level function: the median of the binned variances)."""
    _, v, _, _ = _level_points(np.asarray(plane, dtype=np.float64))
    if v.size == 0:
        return 0.0
    return float(np.sqrt(max(float(np.median(v)), 0.0)))


MIN_COLOUR = 1.26
"""Correlated-noise factors below this are left at 1 (white noise plus a little texture reads 1.0..1.24 on
128² tiles of real MR/CR; reconstructed CT noise 1.4..1.6)."""

MAX_COLOUR = 2.0
"""Cap of the correlated-noise factor of :func:`noise_colour`."""

_WHITE_SCALES = 1.25
"""The noise of the two coarser scales must agree within this factor for a correlated-noise correction."""


def noise_colour(plane: Array) -> float:
    """How much a 2-D frame's noise exceeds its finest-scale estimate because it is spatially correlated.

    The Haar diagonal estimator sees the finest frequency band only. White noise halves its σ at each 2x2
    mean; reconstructed CT noise (filtered back-projection of Poisson line integrals, including the
    project's ``ct_low_dose``) has relatively more power at lower frequencies, so the σ of the 2x2 means is
    more than half. With ``r1 = 2 σ(level 2) / σ(level 1)`` and ``r2 = 4 σ(level 3) / σ(level 1)`` the
    factor is ``r1`` (at most 2) when ``r1 >= 1.26`` and ``r2 <= 1.25 r1`` — noise that is white below the finest band
    — and 1 otherwise: texture leaking into the coarse estimates grows from scale to scale (MR) and must not
    be read as noise. Measured on real CT with ``ct_low_dose``: 1.4..1.6 (pixel σ / Haar σ ≈ 1.7), white
    Gaussian/Poisson on CT/MR/CR/US: 1.0.
    """
    arr = np.asarray(plane, dtype=np.float32)
    if min(arr.shape) < 128:
        return 1.0
    half = _down(arr)
    s1 = _gaussian_sigma(arr)
    s2 = _gaussian_sigma(half)
    s3 = _gaussian_sigma(_down(half))
    if s1 <= 0 or s2 <= 0 or s3 <= 0:
        return 1.0
    r1, r2 = 2.0 * s2 / s1, 4.0 * s3 / s1
    if r1 < MIN_COLOUR or r2 > _WHITE_SCALES * r1:
        return 1.0
    return float(min(r1, MAX_COLOUR))


MIN_FRACTION = 0.5
"""``σ_eff <= MIN_FRACTION x floor`` leaves the frame unchanged: noise under ``1.12 x floor`` is inherent."""


MULTIPLICATIVE_GAIN = 1.1
"""σ factor of the multiplicative model (the asinh/log of speckle is skewed, heavier-tailed than Gaussian)."""

MEAN_CORRECTION = True
"""Restore the input mean after a signal-dependent VST inverse (see :func:`_restore_mean`)."""


def _restore_mean(result: Array, original: Array, where: Array, est: NoiseEstimate) -> Array:
    """Undo the bias of the algebraic VST inverse: the denoiser estimates the mean of the stabilised
    values, whose inverse is below the mean of the data for a concave stabiliser (log/asinh: ~8 % at
    2-look speckle). A ``multiplicative`` model's output gets the input's mean back (over ``where``) by a
    factor. ``poisson_gaussian`` is left alone: a global offset measured −2.5 dB on whole low-dose CT frames
    (its bias is signal-dependent), and the generalised Anscombe inverse is nearly unbiased at these counts.
    """
    if est.model != "multiplicative" or not where.any():
        return result
    sel = where if result.ndim == 2 else where[..., None] & np.ones(result.shape, dtype=bool)
    m_in = float(np.mean(np.asarray(original, dtype=np.float64)[sel]))
    m_out = float(np.mean(result[sel]))
    if m_out > 0 and m_in > 0:
        return result * (m_in / m_out)
    return result


def _core(plane: Array, sigma: float, method: Method) -> Array:
    if float(np.ptp(plane)) == 0.0:
        return plane.astype(np.float32)
    if method == "nlm":
        return nlm_denoise(plane, sigma)
    return multiscale_dct_denoise(plane, sigma)


def denoise(
    image: Array,
    *,
    model: ModelChoice = "auto",
    method: Method = "dct",
    floor: float = DEFAULT_FLOOR,
    strength: float = 1.0,
    max_sigma: float | None = None,
    estimate: NoiseEstimate | None = None,
    correlated: bool = True,
) -> tuple[Array, str]:
    """Remove the frame's noise above a floor; returns ``(result, note)``.

    The noise is estimated (:func:`estimate_noise`, or ``estimate`` when given), stabilised to unit
    Gaussian noise, shrunk by ``method`` with ``σ_eff / σ`` and mapped back.

    Args:
        image: (rows, cols) or (rows, cols, 3) frame of a supported dtype.
        model: noise model, or ``auto`` to choose it from the frame.
        method: ``dct`` (multi-scale sliding-window DCT, two stages) or ``nlm`` (OpenCV non-local means).
        floor: noise left alone, as a fraction of the robust range p1..p99: ``σ_eff = strength ·
            sqrt(max(0, σ² − (floor · range)²))``; the frame is left unchanged when ``σ_eff <= floor ·
            range / 2``. Inherent noise of real frames sits below it; 0 removes all the estimated noise.
        strength: multiplies ``σ_eff``.
        max_sigma: cap on ``σ_eff`` as a fraction of the robust range (None: no cap).
        estimate: a precomputed estimate (skips the estimation).
        correlated: raise σ by :func:`noise_colour` when the noise is spatially correlated (reconstructed
            CT); ``False`` takes the noise as white (MR magnitude images, where texture can read as
            correlation: +1.6x on one MR frame, which oversmoothed it).

    Returns:
        The denoised frame (same dtype and shape; the input itself, unchanged, when skipped) and a short
        PHI-free note of the branch taken, e.g. ``"gaussian σ=12.1 → dct σ_eff=9.8"`` or
        ``"skipped: σ=3.1 below floor 8.2"``.

    Raises:
        UnsupportedImageError: unsupported dtype or shape.
        ValueError: negative ``floor``, ``strength`` or ``max_sigma``.
    """
    arr = check_image(image)
    if floor < 0 or strength < 0 or (max_sigma is not None and max_sigma < 0):
        raise ValueError(f"floor, strength and max_sigma must be >= 0, got {floor}, {strength}, {max_sigma}")
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if not finite.any():
        return arr, "skipped: no finite pixels"
    if min(arr.shape[:2]) < BLOCK:
        return arr, f"skipped: frame smaller than {BLOCK}x{BLOCK}"
    if not all_finite:
        values = np.where(finite, values, float(np.median(values[finite])))
    est = estimate if estimate is not None else estimate_noise(values, model)
    if float(np.ptp(values)) == 0.0:
        return arr, "skipped: constant frame"
    if est.relative_sigma > MAX_RELATIVE_SIGMA:
        return arr, (
            f"skipped: σ={_fmt(est.sigma)} is {100 * est.relative_sigma:.0f} % of the range, "
            "structure rather than noise"
        )
    floor_abs = floor * est.range
    sigma_eff = strength * float(np.sqrt(max(0.0, est.sigma**2 - floor_abs**2)))
    if max_sigma is not None:
        sigma_eff = min(sigma_eff, max_sigma * est.range)
    if est.sigma <= 0 or sigma_eff <= MIN_FRACTION * floor_abs or sigma_eff <= 0:
        return arr, f"skipped: σ={_fmt(est.sigma)} below floor {_fmt(floor_abs)}"
    ratio = sigma_eff / est.sigma
    if est.model == "multiplicative":
        ratio *= MULTIPLICATIVE_GAIN
    padding = padding_mask(values) if values.ndim == 2 else None
    if padding is not None:
        values = _fill_padding(values, padding)
    stable = _stabilise(values, est)
    colour = noise_colour(stable if stable.ndim == 2 else stable @ _OPPONENT[0]) if correlated else 1.0
    ratio *= colour
    if stable.ndim == 2:
        out = _core(stable, ratio, method).astype(np.float64)
    else:
        opp = stable @ _OPPONENT.T
        den = np.stack([_core(opp[..., k], ratio, method) for k in range(3)], axis=-1)
        out = den.astype(np.float64) @ _OPPONENT
    result = _unstabilise(out, est)
    if MEAN_CORRECTION:
        result = _restore_mean(result, arr, finite if padding is None else finite & ~padding, est)
    if padding is not None:
        result = np.where(padding, arr, result)
    if not all_finite:
        result = np.where(finite, result, arr)
    note = f"{est.model} σ={_fmt(est.sigma)} → {method} σ_eff={_fmt(sigma_eff)}"
    if colour > 1.0:
        note += f", correlated noise ×{colour:.2f}"
    if padding is not None:
        note += f", padding {100 * padding.mean():.0f} % kept"
    return cast_like(result, arr.dtype), note


# --- recipe step ---------------------------------------------------------------------------------------


@register_step
class Denoise(Step):
    """Noise-aware denoising: estimate σ and the noise model, remove only the noise above ``floor``."""

    op: Literal["denoise"]
    model: ModelChoice = "auto"
    method: Method = "dct"
    floor: float = Field(DEFAULT_FLOOR, ge=0, le=0.5)
    strength: float = Field(1.0, gt=0, le=4)
    max_sigma: float | None = Field(None, gt=0, le=1)
    correlated: bool = True
    """Look for spatially correlated noise (reconstructed CT) and raise σ for it; ``false`` for modalities
    whose noise is white in the image (MR magnitude images), where texture can read as correlation."""

    def _apply(self, image: Array) -> tuple[Array, str]:
        return denoise(
            image,
            model=self.model,
            method=self.method,
            floor=self.floor,
            strength=self.strength,
            max_sigma=self.max_sigma,
            correlated=self.correlated,
        )

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        return self._apply(image)[0]

    def explain(
        self, image: Array, mask: Array | None, meta: Meta | None
    ) -> tuple[Array, Array | None, str | None]:
        """Run the step and return the note of the branch taken (model, σ, σ_eff, method, or skipped)."""
        out, note = self._apply(image)
        return out, mask, note
