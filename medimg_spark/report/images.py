"""Pictures of the report: thumbnails with mask contours or region boxes, and matplotlib charts.

Every picture becomes a ``data:image/png;base64,...`` URI. Charts use matplotlib's Agg canvas on a
:class:`~matplotlib.figure.Figure` (no pyplot, no display, no global figure state).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

THUMB_MAX = 160
"""Largest side of a thumbnail in pixels."""

BOX_COLOURS = ((0, 200, 255), (255, 120, 0), (60, 220, 60), (220, 60, 220), (40, 40, 255), (255, 255, 0))
"""BGR colours of region boxes, by region rank."""

BEFORE_COLOUR = "#8da0cb"
AFTER_COLOUR = "#fc8d62"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scale a frame of any dtype to uint8 for display.

    Returns a 2-D grey array, or a 3-D BGR array for frames with 3 or more channels (the first three
    are taken as RGB). Non-finite values take the minimum; a constant frame becomes black.
    """
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3] if a.shape[2] >= 3 else a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D or 3-D frame, got shape {a.shape}")
    f = a.astype(np.float64)
    finite = np.isfinite(f)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo = float(f[finite].min())
    hi = float(f[finite].max())
    f = np.where(finite, f, lo)
    scaled = (f - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(f)
    u8: np.ndarray = np.rint(scaled).clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_RGB2BGR) if u8.ndim == 3 else u8


DEGENERATE_SAMPLES = 65536
"""Pixels sampled (a regular stride) for the near-constant test of :func:`degenerate_reason`."""


def degenerate_reason(image: np.ndarray) -> str | None:
    """Why a frame is not worth showing as an image, or None: a cheap check of a recipe's output.

    ``"all values non-finite"``; ``"constant (v)"`` (every finite value equal); ``"near-constant"``
    when the 1st and 99th percentiles of a strided sample of at most :data:`DEGENERATE_SAMPLES` pixels
    are equal (98 % of the frame is one value, which min-max display would hide by stretching the rest);
    ``"N % of values non-finite"`` when more than half are NaN or infinite.
    """
    a = np.asarray(image)
    if a.size == 0:
        return "empty frame"
    finite = np.isfinite(a) if a.dtype.kind == "f" else None
    if finite is not None and not finite.any():
        return "all values non-finite"
    vals = a[finite] if finite is not None else a
    lo, hi = vals.min(), vals.max()
    if lo == hi:
        return f"constant ({float(lo):g})"
    if finite is not None and (bad := 1.0 - float(finite.mean())) > 0.5:
        return f"{bad:.0%} of values non-finite"
    step = max(1, math.ceil(math.sqrt(a.shape[0] * a.shape[1] / DEGENERATE_SAMPLES)))
    sample = a[::step, ::step].astype(np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size:
        p1, p99 = np.percentile(sample, [1, 99])
        if p1 == p99:
            return f"near-constant (98 % of pixels = {p1:g})"
    return None


def _fit(u8: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Resize to at most ``max_side``: area-downscale large frames, integer nearest-upscale tiny ones."""
    h, w = u8.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return cv2.resize(u8, size, interpolation=cv2.INTER_AREA), scale
    factor = int(scale)
    if factor >= 2:
        return cv2.resize(u8, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST), float(factor)
    return u8, 1.0


def _bgr(u8: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR) if u8.ndim == 2 else u8


def thumbnail(image: np.ndarray, mask: np.ndarray | None = None, max_side: int = THUMB_MAX) -> np.ndarray:
    """A BGR uint8 thumbnail (largest side ≤ ``max_side``) with the mask's outline drawn in orange."""
    small, _ = _fit(to_uint8(image), max_side)
    out = _bgr(small)
    if mask is not None:
        m = (np.asarray(mask).reshape(image.shape[:2]) != 0).astype(np.uint8)
        m = cv2.resize(m, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (0, 140, 255), 1)
    return out


def boxes_overlay(
    image: np.ndarray, regions: Sequence[Mapping[str, Any]], max_side: int = THUMB_MAX
) -> np.ndarray:
    """A BGR thumbnail with each region's bounding box (inclusive pixel bounds) and rank drawn on it."""
    small, scale = _fit(to_uint8(image), max_side)
    out = _bgr(small)
    for reg in regions:
        rank = int(reg.get("region") or 0)
        colour = BOX_COLOURS[rank % len(BOX_COLOURS)]
        x0 = math.floor(int(reg["bbox_min_col"]) * scale)
        y0 = math.floor(int(reg["bbox_min_row"]) * scale)
        x1 = math.ceil((int(reg["bbox_max_col"]) + 1) * scale) - 1
        y1 = math.ceil((int(reg["bbox_max_row"]) + 1) * scale) - 1
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, 1)
        cv2.putText(out, str(rank), (x0 + 2, y0 + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1, cv2.LINE_AA)
    return out


def png_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of a uint8 grey or BGR array."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} array as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_uri(fig: Any) -> str:
    """Render a matplotlib figure to a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else math.nan


def _metric_values(values: Sequence[float] | None) -> np.ndarray:
    return np.asarray([v for v in values or () if v is not None and math.isfinite(v)], dtype=np.float64)


def quality_chart(
    metrics: Mapping[str, Mapping[str, Any]],
    title: str,
    before: Mapping[str, Sequence[float]] | None = None,
    after: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """Small multiples of one ``quality.json`` group, one panel per metric.

    With sampled per-frame values (``before``/``after``: metric → values) a panel overlays the two
    histograms and marks the medians from ``quality.json`` with dashed lines; without, it shows the
    before/after medians as bars with p10-p90 whiskers.
    """
    names = list(metrics)
    cols = 5
    rows = max(1, math.ceil(len(names) / cols))
    fig = _new_figure(2.1 * cols, 1.75 * rows + 0.45)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        m = metrics[name]
        b = _metric_values(None if before is None else before.get(name))
        a = _metric_values(None if after is None else after.get(name))
        both = np.concatenate([b, a])
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
            ax.hist(b, bins=bins, color=BEFORE_COLOUR, alpha=0.75, label="before")
            ax.hist(a, bins=bins, color=AFTER_COLOUR, alpha=0.75, label="after")
            for key, colour in (("before", BEFORE_COLOUR), ("after", AFTER_COLOUR)):
                med = _finite((m.get(key) or {}).get("median"))
                if not math.isnan(med):
                    ax.axvline(med, color=colour, linestyle="--", linewidth=1.2)
        else:
            for x, key, colour in ((0, "before", BEFORE_COLOUR), (1, "after", AFTER_COLOUR)):
                p = m.get(key) or {}
                med, p10, p90 = _finite(p.get("median")), _finite(p.get("p10")), _finite(p.get("p90"))
                if math.isnan(med):
                    continue
                ax.bar(x, med, color=colour, width=0.6, label=key)
                if not (math.isnan(p10) or math.isnan(p90)):
                    err = [[max(med - p10, 0.0)], [max(p90 - med, 0.0)]]
                    ax.errorbar(x, med, yerr=err, color="#333", capsize=3)
            ax.set_xticks([0, 1], ["before", "after"])
        arrow = {"higher": " (higher better)", "lower": " (lower better)"}.get(str(m.get("direction")), "")
        ax.set_title(f"{name}{arrow}", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(
        left=0.05, right=0.98, top=1 - 0.5 / (1.75 * rows + 0.45), bottom=0.08, wspace=0.4, hspace=0.55
    )
    return figure_uri(fig)


def roc_chart(fpr: Sequence[float], tpr: Sequence[float], auc: float | None, title: str) -> str:
    """ROC curve with the chance diagonal."""
    fig = _new_figure(3.6, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999", linewidth=1)
    label = f"AUC = {auc:.3f}" if auc is not None and math.isfinite(auc) else "ROC"
    ax.plot(list(fpr), list(tpr), color="#1f3b5c", linewidth=2, label=label, drawstyle="default")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)", fontsize=8)
    ax.set_ylabel("true positive rate (sensitivity)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    fig.tight_layout()
    return figure_uri(fig)


def roc_curves_chart(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], float | None]], title: str
) -> str:
    """One-vs-rest ROC curves of a K-class model, one line per class (legend: class and its AUC)."""
    import matplotlib

    fig = _new_figure(4.2, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999", linewidth=1)
    cmap = matplotlib.colormaps["tab10"]
    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        label = f"{name} (AUC {auc:.3f})" if auc is not None and math.isfinite(auc) else str(name)
        ax.plot(list(fpr), list(tpr), color=cmap(i % 10), linewidth=1.6, label=label)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (one vs rest)", fontsize=8)
    ax.set_ylabel("true positive rate (recall of the class)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_aspect("equal")
    fig.tight_layout()
    return figure_uri(fig)


def confusion_chart(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> str:
    """Confusion matrix heat map (rows: true class, columns: predicted) with the counts written in."""
    cm = np.asarray(matrix, dtype=np.float64)
    n = len(classes)
    side = 2.2 + 0.45 * n
    fig = _new_figure(side + 0.6, side)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(float(cm.max()), 1.0))
    for r in range(cm.shape[0]):
        for c in range(cm.shape[1]):
            dark = cm[r, c] > cm.max() / 2
            ax.text(
                c,
                r,
                f"{int(cm[r, c])}",
                ha="center",
                va="center",
                color="white" if dark else "black",
                fontsize=9,
            )
    ax.set_xticks(range(n), [str(c) for c in classes], fontsize=8)
    ax.set_yticks(range(n), [str(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_uri(fig)
