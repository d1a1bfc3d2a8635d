"""The ``quality`` stage: quality before/after preprocessing, aggregated per recipe, modality and metric.

Reads ``out_dir/processed`` (written by :func:`medimg_spark.preprocess.preprocess`) and writes
``out_dir/metrics/quality.json``. The per-frame metrics themselves are :mod:`medimg_spark.quality`
(numpy, no Spark).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from medimg_spark.preprocess import PROCESSED_SCHEMA
from medimg_spark.quality import METRIC_DIRECTION, QUALITY_KEYS
from medimg_spark.storage import get_storage, join, spark_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

QUALITY_FILE = "metrics/quality.json"


class Percentiles(TypedDict):
    """``percentile_approx`` of one metric over a group's frames."""

    p10: float | None
    median: float | None
    p90: float | None


class MetricSummary(TypedDict):
    """One metric of one group."""

    count: int
    direction: str | None
    before: Percentiles
    after: Percentiles
    delta_median: float | None
    improved_share: float | None


class DoNoHarm(TypedDict):
    """The issue-16 goal per group: frames whose noise σ did not rise and whose CNR did not fall.

    Both measures are scale-free, so they judge a recipe that changes units (window, to_float) like one that
    does not: noise is ``noise_sigma / dynamic_range`` (σ relative to the frame's 1st-99th percentile span),
    CNR is a ratio already.
    """

    count: int
    """Frames where both measures are defined before and after (dynamic_range > 0, cnr defined)."""
    noise_not_raised: float | None
    """Share of those frames with relative noise after <= before (within 1e-5 relative: float32 rounding)."""
    cnr_not_lowered: float | None
    """Share with ``cnr`` after >= before."""
    both: float | None
    """Share with both: the frames the recipe did no harm to by these two measures."""


class QualityGroup(TypedDict):
    """The frames of one recipe (name and hash) and modality."""

    recipe_name: str
    recipe_hash: str
    modality: str
    frames: int
    metrics: dict[str, MetricSummary]
    do_no_harm: DoNoHarm
    branches: dict[str, int]
    """Frames per step branch of the recipe trace (:func:`branch_key`), e.g. ``{"4:clahe: skipped": 3}``."""


class QualityReport(TypedDict):
    """The ``quality`` stage's summary, as written to ``metrics/quality.json``."""

    generated_at: str
    groups: list[QualityGroup]


_SAME = 1e-5
"""Relative tolerance of the do-no-harm comparisons: an unchanged frame converted to float32 (to_float) moves
its metrics by ~1e-7."""

_BRANCH_HEAD = r"^(\d+:[^:]+): ([^(:]*)"
"""A trace note ``"<index>:<op>: <note>"``: the step and the note's text before its first ``(`` or ``:``."""


def branch_key(note: str) -> str | None:
    """The branch of one trace note: ``"<index>:<op>: "`` plus the note's words before its first ``(`` or ``:``,
    without the words holding measured values (with ``=``, a decimal number or a ×/σ value).

    ``"4:clahe: fallback 1 clip_limit=1 (noise ×1.10, ...)"`` → ``"4:clahe: fallback 1"``;
    ``"2:denoise: gaussian σ=12.1 → dct σ_eff=9.8"`` → ``"2:denoise: gaussian → dct"``. (Plain Python twin
    of the Spark expression :func:`quality_report` uses; None when the note is not of that form.)
    """
    import re

    m = re.match(_BRANCH_HEAD, note)
    if m is None:
        return None
    words = [w for w in m.group(2).split() if not re.search(_VALUE_WORD, w)]
    return f"{m.group(1)}: {' '.join(words)}".rstrip()


_VALUE_WORD = r"=|\d\.\d|[×σ]"
"""Words of a note that carry a measured value (left out of :func:`branch_key`)."""


def _branch_counts(df: Any) -> dict[tuple[str, str, str], dict[str, int]]:
    """Frames per (recipe_name, recipe_hash, modality) and trace branch, in Spark (no pixels are read)."""
    from pyspark.sql import functions as F

    keys = ["recipe_name", "recipe_hash", "modality"]
    notes = df.where(F.col("recipe_trace").isNotNull()).select(
        *keys, F.explode(F.split(F.col("recipe_trace"), "; ")).alias("note")
    )
    words = F.split(F.trim(F.regexp_extract("note", _BRANCH_HEAD, 2)), r"\s+")
    kept = F.filter(words, lambda w: ~w.rlike(_VALUE_WORD) & (w != ""))
    step = F.regexp_extract("note", _BRANCH_HEAD, 1)
    branch = F.rtrim(F.concat(step, F.lit(": "), F.array_join(kept, " ")))
    rows = (
        notes.where(step != "")
        .select(*keys, branch.alias("branch"))
        .groupBy(*keys, "branch")
        .count()
        .collect()
    )
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in rows:
        out.setdefault((r["recipe_name"], r["recipe_hash"], r["modality"]), {})[r["branch"]] = int(r["count"])
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def quality_report(spark: SparkSession, out_dir: str) -> QualityReport:
    """Aggregate quality before/after per recipe (name and hash), modality and metric.

    For each metric: ``count`` (frames where both values are defined), ``before``/``after``
    ``{p10, median, p90}`` (``percentile_approx``), ``delta_median`` (median of after - before) and
    ``improved_share``: the share of frames where the metric moved in its better direction by more than
    1e-5 relative (float32 rounding; :data:`~medimg_spark.quality.METRIC_DIRECTION`; null for metrics
    without one: mean, std).
    NaN values (undefined metrics) are left out. Per group also ``do_no_harm`` (the shares of frames whose
    noise σ relative to the robust range did not rise, whose CNR did not fall, and both: :class:`DoNoHarm`) and ``branches`` (frames per
    step branch of ``recipe_trace``; empty for recipes without notes and tables written before the column).
    Written to ``out_dir/metrics/quality.json``.

    Returns:
        ``{"groups": [{"recipe_name", "recipe_hash", "modality", "frames", "metrics": {name: {...}}}]}``.
    """
    from pyspark.sql import functions as F

    from medimg_spark.errors import ConfigError

    out = spark_path(out_dir)
    if not get_storage(spark).exists(join(out, "processed")):
        raise ConfigError(f"no processed table at {out}/processed; run preprocess first")
    df = spark.read.schema(PROCESSED_SCHEMA).parquet(join(out, "processed"))

    def clean(col: Any) -> Any:
        return F.when(F.isnan(col), None).otherwise(col)

    aggs = [F.count(F.lit(1)).alias("frames")]
    for k in QUALITY_KEYS:
        b = clean(F.col(f"quality_before.{k}"))
        a = clean(F.col(f"quality_after.{k}"))
        both = b.isNotNull() & a.isNotNull()
        aggs.append(F.count(F.when(both, 1)).alias(f"{k}__count"))
        aggs.append(F.percentile_approx(b, [0.1, 0.5, 0.9], 10000).alias(f"{k}__before"))
        aggs.append(F.percentile_approx(a, [0.1, 0.5, 0.9], 10000).alias(f"{k}__after"))
        aggs.append(F.percentile_approx(F.when(both, a - b), 0.5, 10000).alias(f"{k}__delta"))
        direction = METRIC_DIRECTION[k]
        if direction:
            # moved beyond float32 rounding (an unchanged frame written as float32 moves by ~1e-7)
            margin = F.abs(b) * _SAME
            better = (a > b + margin) if direction > 0 else (a < b - margin)
            aggs.append(F.avg(F.when(both, better.cast("double"))).alias(f"{k}__improved"))

    # noise relative to the frame's robust range (noise_sigma / dynamic_range): the same in any affine scale,
    # so a recipe that only changes units (to_float, a window inside the range) neither raises nor lowers it
    def rel_noise(side: str) -> Any:
        dr = clean(F.col(f"{side}.dynamic_range"))
        return F.when(dr > 0, clean(F.col(f"{side}.noise_sigma")) / dr)

    nb, na = rel_noise("quality_before"), rel_noise("quality_after")
    cb, ca = clean(F.col("quality_before.cnr")), clean(F.col("quality_after.cnr"))
    defined = nb.isNotNull() & na.isNotNull() & cb.isNotNull() & ca.isNotNull()
    aggs.append(F.count(F.when(defined, 1)).alias("harm__count"))
    noise_ok = na <= nb * (1 + _SAME)
    cnr_ok = ca >= cb * (1 - _SAME)
    aggs.append(F.avg(F.when(defined, noise_ok.cast("double"))).alias("harm__noise"))
    aggs.append(F.avg(F.when(defined, cnr_ok.cast("double"))).alias("harm__cnr"))
    aggs.append(F.avg(F.when(defined, (noise_ok & cnr_ok).cast("double"))).alias("harm__both"))
    rows = df.groupBy("recipe_name", "recipe_hash", "modality").agg(*aggs).collect()
    branches = _branch_counts(df)

    def num(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)

    def pct(v: Any) -> Percentiles:
        vals = list(v) if v is not None else [None, None, None]
        return {"p10": num(vals[0]), "median": num(vals[1]), "p90": num(vals[2])}

    groups: list[QualityGroup] = []
    for r in sorted(rows, key=lambda r: (r["recipe_name"], r["recipe_hash"], r["modality"])):
        metrics: dict[str, MetricSummary] = {}
        for k in QUALITY_KEYS:
            metrics[k] = {
                "count": int(r[f"{k}__count"]),
                "direction": {1: "higher", -1: "lower", 0: None}[METRIC_DIRECTION[k]],
                "before": pct(r[f"{k}__before"]),
                "after": pct(r[f"{k}__after"]),
                "delta_median": num(r[f"{k}__delta"]),
                "improved_share": num(r[f"{k}__improved"]) if METRIC_DIRECTION[k] else None,
            }
        groups.append(
            {
                "recipe_name": r["recipe_name"],
                "recipe_hash": r["recipe_hash"],
                "modality": r["modality"],
                "frames": int(r["frames"]),
                "metrics": metrics,
                "do_no_harm": {
                    "count": int(r["harm__count"]),
                    "noise_not_raised": num(r["harm__noise"]),
                    "cnr_not_lowered": num(r["harm__cnr"]),
                    "both": num(r["harm__both"]),
                },
                "branches": branches.get((r["recipe_name"], r["recipe_hash"], r["modality"]), {}),
            }
        )
    report: QualityReport = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "groups": groups,
    }
    get_storage(spark).write_json(join(out, QUALITY_FILE), report)
    return report


def format_quality_table(report: QualityReport | Mapping[str, Any]) -> str:
    """Render :func:`quality_report` output as a fixed-width text table (one block per group)."""

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    header = f"{'metric':<14}{'better':>7}{'n':>6}{'before p50':>12}{'after p50':>12}{'after p10':>11}{'after p90':>11}{'Δ p50':>11}{'improved':>10}"
    lines: list[str] = []
    for g in report.get("groups", []):
        lines.append(
            f"{g['recipe_name']} [{g['recipe_hash'][:12]}]  modality={g['modality']}  frames={g['frames']}"
        )
        lines.append(header)
        lines.append("-" * len(header))
        for k, m in g["metrics"].items():
            share = m["improved_share"]
            lines.append(
                f"{k:<14}{m['direction'] or '':>7}{m['count']:>6}{f(m['before']['median']):>12}"
                f"{f(m['after']['median']):>12}{f(m['after']['p10']):>11}{f(m['after']['p90']):>11}"
                f"{f(m['delta_median']):>11}{'-' if share is None else f'{share:.0%}':>10}"
            )
        harm = g.get("do_no_harm")
        if harm:
            lines.append(
                f"do no harm (n={harm['count']}): noise σ not raised {pct(harm['noise_not_raised'])}, "
                f"CNR not lowered {pct(harm['cnr_not_lowered'])}, both {pct(harm['both'])}"
            )
        for branch, n in (g.get("branches") or {}).items():
            lines.append(f"  branch {branch}: {n} frames")
        lines.append("")
    return "\n".join(lines) if lines else "no processed frames"
