"""Build ``DIR/report/index.html`` from the tables and JSON files that the stages wrote under ``DIR``.

Only aggregates, a handful of frames (Spark ``limit`` on image ids, then a filter on those ids) and a
bounded sample of quality-metric values reach the driver; whole tables of pixels never do.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medimg_spark.config_models import ReportConfig
from medimg_spark.errors import MedimgError
from medimg_spark.report import html as H
from medimg_spark.report import images as I
from medimg_spark.storage import Storage, StorageError, basename, get_storage, join
from medimg_spark.summaries import ReportSummary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REPORT_DIR = "report"
REPORT_FILE = "index.html"
MAX_REGIONS_PER_FRAME = 16
RUN_SKIP_KEYS = frozenset({"run_id", "stage", "wall_time_s", "inputs", "out", "path", "model_path"})
"""Run-summary keys not shown in the counts column (shown elsewhere, or paths and input lists)."""

SECTIONS = (
    ("dataset", "1. Dataset summary"),
    ("thumbnails", "2. Thumbnails before/after per recipe"),
    ("quality", "3. Quality metrics before/after"),
    ("models", "4. Models"),
    ("localize", "5. Clusters and regions"),
    ("runs", "6. Run history"),
)


class ReportError(MedimgError):
    """The report cannot be built: the output directory is missing or cannot be reached."""


@dataclass
class _Ctx:
    spark: SparkSession
    store: Storage
    out: str
    cfg: ReportConfig = field(default_factory=ReportConfig)
    n_images: int = 0
    n_thumbnails: int = 0
    warnings: list[str] = field(default_factory=list)

    def picture(self, uri: str, alt: str, css_class: str = "") -> str:
        self.n_images += 1
        return H.img(uri, alt, css_class)

    def warn(self, message: str) -> None:
        """Record a problem; it is shown at the end of the section being built and in the summary."""
        self.warnings.append(message)

    def path(self, *parts: str) -> str:
        """A path under the output directory."""
        return join(self.out, *parts)

    def table_path(self, name: str) -> str | None:
        path = self.path(name)
        if not self.store.is_dir(path):
            return None
        found = self.store.walk(path, dirs=False, pattern="*.parquet", include_hidden=False)
        return path if next(found, None) is not None else None

    def read(self, name: str, schema: Any = None) -> DataFrame | None:
        path = self.table_path(name)
        if path is None:
            return None
        reader = self.spark.read if schema is None else self.spark.read.schema(schema)
        return reader.parquet(path)

    def json_files(self, folder: str, pattern: str) -> list[str]:
        """Sorted paths of the files matching ``pattern`` in ``out/folder`` (none when it is missing)."""
        return self.store.list(self.path(folder), dirs=False, pattern=pattern, missing_ok=True)


def _out_dir(store: Storage, out_dir: str) -> str:
    try:
        found = store.is_dir(out_dir)
    except StorageError as err:
        raise ReportError(f"cannot read the output directory: {err}") from None
    if not found:
        raise ReportError(
            f"output directory {out_dir} does not exist; run medimg ingest --out {out_dir} first"
        )
    return out_dir


def _read_json(ctx: _Ctx, path: str) -> Any:
    """Parsed JSON, or None after recording a warning that names the file."""
    try:
        return ctx.store.read_json(path)
    except (StorageError, OSError, ValueError) as exc:
        rel = path[len(ctx.out) :].lstrip("/") if path.startswith(ctx.out) else path
        ctx.warn(f"could not read {rel}: {exc}")
        return None


def _ids_in(df: DataFrame, ids: list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    return df.where(F.col("image_id").isin(ids))


def _decode(row: Any) -> Any:
    from medimg_spark.io.pixels import decode

    return decode(row["pixels"], int(row["rows"]), int(row["cols"]), int(row["channels"]), str(row["dtype"]))


# ----------------------------------------------------------------------------- 1. dataset


def _dataset(ctx: _Ctx) -> tuple[bool, str]:
    from pyspark.sql import functions as F

    from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA

    images = ctx.read("images", IMAGES_SCHEMA)
    instances = ctx.read("instances", INSTANCES_SCHEMA)
    quarantine = ctx.read("quarantine", QUARANTINE_SCHEMA)
    if images is None and instances is None and quarantine is None:
        return False, H.not_run("DIR/images", "Run medimg ingest --out DIR first.")
    parts: list[str] = []
    if images is not None:
        rows = (
            images.groupBy("modality", "source_format")
            .agg(F.count(F.lit(1)).alias("frames"), F.countDistinct("file_sha256").alias("files"))
            .collect()
        )
        by_mod: dict[str, list[int]] = {}
        by_fmt: dict[str, list[int]] = {}
        for r in rows:
            for key, acc in ((r["modality"], by_mod), (r["source_format"], by_fmt)):
                tot = acc.setdefault(str(key), [0, 0])
                tot[0] += int(r["files"])
                tot[1] += int(r["frames"])
        files = sum(v[0] for v in by_mod.values())
        frames = sum(v[1] for v in by_mod.values())
        parts.append(H.kv_table({"files with frames": files, "frames": frames, "modalities": len(by_mod)}))
        parts.append("<h3>Per modality</h3>")
        parts.append(H.table(["modality", "files", "frames"], [(k, *v) for k, v in sorted(by_mod.items())]))
        parts.append("<h3>Per source format</h3>")
        parts.append(
            H.table(["source_format", "files", "frames"], [(k, *v) for k, v in sorted(by_fmt.items())])
        )
        labels = (
            images.groupBy("split", "label")
            .count()
            .orderBy(F.col("split").asc_nulls_first(), F.col("label").asc_nulls_first())
            .limit(ctx.cfg.max_table_rows)
            .collect()
        )
        parts.append("<h3>Frames per split and label</h3>")
        parts.append(
            H.table(["split", "label", "frames"], [(r["split"], r["label"], int(r["count"])) for r in labels])
        )
    else:
        parts.append(H.not_run("DIR/images", "Run medimg ingest --out DIR first."))
    if instances is not None:
        rows = (
            instances.groupBy("source_format")
            .agg(
                F.count(F.lit(1)).alias("files"),
                F.sum(F.col("has_pixels").cast("int")).alias("with_pixels"),
                F.sum(F.col("n_frames")).alias("frames"),
            )
            .orderBy("source_format")
            .collect()
        )
        parts.append("<h3>Files parsed (instances)</h3>")
        parts.append(
            H.table(
                ["source_format", "files", "with pixels", "metadata only", "declared frames"],
                [
                    (
                        r["source_format"],
                        int(r["files"]),
                        int(r["with_pixels"] or 0),
                        int(r["files"]) - int(r["with_pixels"] or 0),
                        int(r["frames"] or 0),
                    )
                    for r in rows
                ],
            )
        )
    parts.append("<h3>Quarantine by stage and error class</h3>")
    if quarantine is not None:
        rows = (
            quarantine.groupBy("stage", "error_class")
            .count()
            .orderBy("stage", "error_class")
            .limit(ctx.cfg.max_table_rows)
            .collect()
        )
        total = sum(int(r["count"]) for r in rows)
        parts.append(
            H.table(
                ["stage", "error_class", "count"],
                [*[(r["stage"], r["error_class"], int(r["count"])) for r in rows], ("total", "", total)],
                css_class="quarantine",
            )
        )
    else:
        parts.append('<p class="muted">No quarantine table: nothing has been quarantined.</p>')
    return True, "".join(parts)


# ----------------------------------------------------------------------------- 2. thumbnails


TRACE_COLUMN = "recipe_trace"
"""Optional ``processed`` column: the recipe's per-frame branch notes joined by "; " (null in older lakes)."""

DEGENERATE_ERROR = "DegenerateOutputError"
"""``error_class`` of the frames preprocess quarantined because the recipe's output was degenerate."""

_HASH_IN_MESSAGE = re.compile(r"recipe_hash=([0-9a-f]+)")
_MESSAGE_PREFIX = re.compile(r"^recipe \S+ recipe_hash=[0-9a-f]+: (?:step )?([^:]*): ")
_PSEUDONYM = re.compile(r"^(deid-[0-9a-f]{8})[0-9a-f]+$")
FILE_LABEL_MAX = 28
"""Longest file label of a thumbnail (characters); longer basenames are cut in the middle."""


@dataclass(frozen=True)
class _Pick:
    """One frame chosen for the thumbnails of a recipe, with what its label is made of."""

    recipe_hash: str
    image_id: str
    modality: str | None
    source_path: str | None
    frame_index: int | None
    n_frames: int | None


def file_label(source_path: str | None) -> str:
    """A short label of a frame's file: the basename of ``source_path``, shortened.

    In a de-identified lake ``source_path`` is already a pseudonym (``deid-<32 hex>.dcm``); it is cut to
    ``deid-<8 hex>…`` plus the extension. Other long basenames keep their start and extension. Folders are
    never shown. ``None`` or an empty path gives ``"?"``.
    """
    if not source_path:
        return "?"
    name = basename(source_path) or "?"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 5 or not ext.isalnum():
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    short = _PSEUDONYM.match(stem)
    if short:
        return f"{short.group(1)}…{suffix}"
    if len(name) <= FILE_LABEL_MAX:
        return name
    keep = max(FILE_LABEL_MAX - len(suffix) - 1, 4)
    return f"{stem[:keep]}…{suffix}"


def _processed(ctx: _Ctx) -> DataFrame | None:
    """``processed`` read with its schema plus :data:`TRACE_COLUMN` (null where the files lack it)."""
    from pyspark.sql.types import StringType, StructField, StructType

    from medimg_spark.preprocess import PROCESSED_SCHEMA

    schema = PROCESSED_SCHEMA
    if TRACE_COLUMN not in schema.fieldNames():
        schema = StructType([*schema.fields, StructField(TRACE_COLUMN, StringType(), True)])
    return ctx.read("processed", schema)


def _pick_frames(ctx: _Ctx, processed: DataFrame, images: DataFrame | None, hashes: list[str]) -> list[_Pick]:
    """Up to ``report.thumbs_per_recipe`` representative frames per recipe, in one job (ids only, no pixels).

    Real-size frames first: each source file's largest frame (rows × cols), the modalities taken in
    turn by their largest frame, then the files' next frames; ties by image id. A PneumoniaMNIST npz
    (thousands of 28×28 frames in one file) therefore shows several frames only after every other file.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cand = processed.where(F.col("recipe_hash").isin(hashes)).select(
        "recipe_hash", "image_id", "modality", (F.col("rows") * F.col("cols")).alias("_area")
    )
    if images is not None:
        files = images.select("image_id", "source_path", "file_sha256", "frame_index", "n_frames")
        cand = cand.join(files.dropDuplicates(["image_id"]), "image_id", "left")
    else:
        cand = cand.select(
            "*",
            *[
                F.lit(None).cast(t).alias(c)
                for c, t in (("source_path", "string"), ("file_sha256", "string"))
            ],
            *[F.lit(None).cast("int").alias(c) for c in ("frame_index", "n_frames")],
        )
    cand = cand.withColumn("_file", F.coalesce("file_sha256", "source_path", "image_id"))
    size = [F.col("_area").desc(), F.col("image_id")]
    per_file = Window.partitionBy("recipe_hash", "_file").orderBy(*size)
    per_modality = Window.partitionBy("recipe_hash", "modality", "_file_rank").orderBy(*size)
    per_recipe = Window.partitionBy("recipe_hash").orderBy("_file_rank", "_mod_rank", *size)
    rows = (
        cand.withColumn("_file_rank", F.row_number().over(per_file))
        .withColumn("_mod_rank", F.row_number().over(per_modality))
        .withColumn("_rank", F.row_number().over(per_recipe))
        .where(F.col("_rank") <= ctx.cfg.thumbs_per_recipe)
        .select("recipe_hash", "image_id", "modality", "source_path", "frame_index", "n_frames", "_rank")
        .orderBy("recipe_hash", "_rank")
        .collect()
    )
    return [
        _Pick(
            recipe_hash=r["recipe_hash"],
            image_id=r["image_id"],
            modality=r["modality"],
            source_path=r["source_path"],
            frame_index=r["frame_index"],
            n_frames=r["n_frames"],
        )
        for r in rows
    ]


@dataclass
class _Degenerate:
    """Frames preprocess quarantined as degenerate outputs, per recipe_hash: the count and a few rows."""

    counts: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[tuple[str, int | None, str, str]]] = field(default_factory=dict)


def _degenerate_outputs(ctx: _Ctx) -> _Degenerate:
    """Quarantined ``DegenerateOutputError`` frames (contract: preprocess, step ``check``), per recipe.

    The recipe is read from the quarantine message (``recipe NAME recipe_hash=H: ...``); only counts and
    at most ``report.max_table_rows`` rows (file label, frame, step, reason) reach the driver.
    """
    from pyspark.sql import functions as F

    from medimg_spark.schema import QUARANTINE_SCHEMA

    found = _Degenerate()
    q = ctx.read("quarantine", QUARANTINE_SCHEMA)
    if q is None:
        return found
    q = q.where((F.col("stage") == "preprocess") & (F.col("error_class") == DEGENERATE_ERROR)).withColumn(
        "_hash", F.regexp_extract("error_message", _HASH_IN_MESSAGE.pattern, 1)
    )
    for r in q.groupBy("_hash").count().collect():
        found.counts[str(r["_hash"])] = int(r["count"])
    if not found.counts:
        return found
    for r in (
        q.select("_hash", "source_path", "frame_index", "step", "error_message")
        .orderBy("_hash", "source_path", "frame_index")
        .limit(ctx.cfg.max_table_rows)
        .collect()
    ):
        message = str(r["error_message"])
        head = _MESSAGE_PREFIX.match(message)
        reason = message[head.end() :] if head else message
        step = str(r["step"] or (head.group(1) if head else ""))
        found.rows.setdefault(str(r["_hash"]), []).append(
            (file_label(r["source_path"]), r["frame_index"], step, reason)
        )
    return found


def _degenerate_block(found: _Degenerate, recipe_hash: str) -> str:
    """The flag and table of one recipe's degenerate outputs (empty when there are none)."""
    n = found.counts.get(recipe_hash, 0)
    if not n:
        return ""
    rows = found.rows.get(recipe_hash, [])
    more = f" (first {len(rows)} listed)" if len(rows) < n else ""
    return (
        f'<p class="flag">{n} frame{"s" if n != 1 else ""} quarantined as degenerate outputs '
        f"({DEGENERATE_ERROR}: constant, not finite or most information lost), never written as "
        f"images{more}:</p>" + H.table(["file", "frame", "step", "reason"], rows, css_class="degenerate")
    )


def _thumbnails(ctx: _Ctx) -> tuple[bool, str]:
    from functools import reduce

    from pyspark.sql import functions as F

    from medimg_spark.schema import IMAGES_SCHEMA

    processed = _processed(ctx)
    if processed is None:
        return False, H.not_run("DIR/processed", "Run medimg preprocess --out DIR --recipe NAME.")
    images = ctx.read("images", IMAGES_SCHEMA)
    recipes = (
        processed.groupBy("recipe_name", "recipe_hash")
        .count()
        .orderBy("recipe_name", "recipe_hash")
        .limit(ctx.cfg.max_recipes + 1)
        .collect()
    )
    parts = [
        f'<p class="muted">Up to {ctx.cfg.thumbs_per_recipe} frames per recipe, real-size first (the largest '
        "frame of each source file, modalities in turn), each scaled min-max to 8 bits; the orange outline "
        "is the recipe's mask. Labels: modality · recipe · file (de-identified name, shortened) · image id "
        "prefix. A red frame marks a constant or near-constant output.</p>"
    ]
    if len(recipes) > ctx.cfg.max_recipes:
        parts.append(f'<p class="muted">Showing the first {ctx.cfg.max_recipes} recipes by name.</p>')
    shown = recipes[: ctx.cfg.max_recipes]
    picks = _pick_frames(ctx, processed, images, [r["recipe_hash"] for r in shown])
    by_recipe: dict[str, list[_Pick]] = {}
    for p in picks:
        by_recipe.setdefault(p.recipe_hash, []).append(p)
    cols = ["image_id", "modality", "label", "rows", "cols", "channels", "dtype", "pixels"]
    after: dict[tuple[str, str], Any] = {}
    if by_recipe:
        exact = reduce(
            lambda x, y: x | y,
            [
                (F.col("recipe_hash") == h) & F.col("image_id").isin([p.image_id for p in ps])
                for h, ps in by_recipe.items()
            ],
        )
        for r in processed.where(exact).select("recipe_hash", *cols, "mask", TRACE_COLUMN).collect():
            after[(r["recipe_hash"], r["image_id"])] = r
    all_ids = sorted({p.image_id for p in picks})
    before = (
        {}
        if images is None or not all_ids
        else {r["image_id"]: r for r in _ids_in(images, all_ids).select(*cols).collect()}
    )
    degenerate = _degenerate_outputs(ctx)
    for rec in shown:
        h = rec["recipe_hash"]
        parts.append(
            f'<h3>{H.esc(rec["recipe_name"])} <span class="muted">recipe_hash {H.esc(h[:12])}'
            f" · {int(rec['count'])} frames</span></h3>"
        )
        parts.append(_degenerate_block(degenerate, h))
        parts.append('<div class="grid">')
        for p in by_recipe.get(h, []):
            parts.append(
                _thumb_pair(
                    ctx, str(rec["recipe_name"]), p, before.get(p.image_id), after.get((h, p.image_id))
                )
            )
        parts.append("</div>")
    names = {r["recipe_hash"]: r["recipe_name"] for r in shown}
    for h in sorted(set(degenerate.counts) - set(names)):
        parts.append(
            f'<h3>recipe_hash {H.esc(h[:12] or "?")} <span class="muted">no frame processed</span></h3>'
        )
        parts.append(_degenerate_block(degenerate, h))
    return True, "".join(parts)


def thumb_label(modality: Any, recipe: str, pick: _Pick) -> str:
    """``modality · recipe · file label [frame i/n] · id <12 hex>``: never the 64-character id alone."""
    parts = [str(modality or "?"), recipe, file_label(pick.source_path)]
    if pick.n_frames is not None and pick.n_frames > 1 and pick.frame_index is not None:
        parts[-1] += f" frame {pick.frame_index + 1}/{pick.n_frames}"
    parts.append(f"id {pick.image_id[:12]}")
    return " · ".join(parts)


def _thumb_pair(ctx: _Ctx, recipe: str, pick: _Pick, before: Any, after: Any) -> str:
    import numpy as np

    ref = after if after is not None else before
    label = thumb_label(ref["modality"] if ref is not None else pick.modality, recipe, pick)
    cells = []
    flagged: str | None = None
    for name, row in (("before", before), ("after", after)):
        if row is None:
            cells.append(f'<div class="muted">{name}: not found</div>')
            continue
        try:
            arr = _decode(row)
            mask = None
            if name == "after" and row["mask"] is not None:
                mask = np.frombuffer(row["mask"], dtype=np.uint8).reshape(int(row["rows"]), int(row["cols"]))
            reason = I.degenerate_reason(arr) if name == "after" else None
            uri = I.png_uri(I.thumbnail(arr, mask))
        except ValueError as exc:
            cells.append(f'<div class="muted">{name}: {H.esc(exc)}</div>')
            ctx.warn(f"thumbnail {name} of {label}: {exc}")
            continue
        ctx.n_thumbnails += 1
        shape = f"{row['rows']}×{row['cols']}×{row['channels']} {row['dtype']}"
        flag = ""
        if reason is not None:
            flagged = reason
            flag = f'<br><span class="flag">degenerate: {H.esc(reason)}</span>'
        cells.append(
            f"<div>{ctx.picture(uri, f'{name} {label}', 'thumb')}{H.esc(name)}<br>{H.esc(shape)}{flag}</div>"
        )
    body = f'<div class="pair">{"".join(cells)}</div>'
    trace = after[TRACE_COLUMN] if after is not None else None
    if trace:
        body += f'<div class="trace">trace: {H.esc(trace)}</div>'
    caption = label if ref is None else f"{label} · label {H.fmt(ref['label'])}"
    return H.figure(body, caption, "degenerate" if flagged else "")


# ----------------------------------------------------------------------------- 3. quality


_QUALITY_HEADERS = [
    "metric",
    "better",
    "count",
    "before p10",
    "before median",
    "before p90",
    "after p10",
    "after median",
    "after p90",
    "Δ median",
    "improved share",
]


def _quality(ctx: _Ctx) -> tuple[bool, str]:
    path = ctx.path("metrics", "quality.json")
    if not ctx.store.is_file(path):
        return False, H.not_run("DIR/metrics/quality.json", "Run medimg quality --out DIR after preprocess.")
    data = _read_json(ctx, path)
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        if data is not None:
            ctx.warn(f"metrics/{basename(path)} has no 'groups' list; re-run medimg quality --out DIR")
        return True, ""
    parts = [f'<p class="muted">quality.json generated {H.esc(data.get("generated_at"))}.</p>']
    parts.append(_harm_table(data["groups"]))
    samples = _metric_samples(ctx, data["groups"])
    for g in data["groups"]:
        metrics = g.get("metrics") or {}
        title = f"{g.get('recipe_name')} · {g.get('modality')} · {g.get('frames')} frames"
        parts.append(
            f'<h3>{H.esc(g.get("recipe_name"))} <span class="muted">recipe_hash '
            f"{H.esc(str(g.get('recipe_hash'))[:12])} · modality {H.esc(g.get('modality'))} · "
            f"{H.esc(g.get('frames'))} frames</span></h3>"
        )
        rows = []
        for name, m in metrics.items():
            b, a = m.get("before") or {}, m.get("after") or {}
            rows.append(
                (
                    name,
                    m.get("direction"),
                    m.get("count"),
                    b.get("p10"),
                    b.get("median"),
                    b.get("p90"),
                    a.get("p10"),
                    a.get("median"),
                    a.get("p90"),
                    m.get("delta_median"),
                    m.get("improved_share"),
                )
            )
        parts.append(H.table(_QUALITY_HEADERS, rows))
        if not metrics:
            continue
        sample = samples.get((str(g.get("recipe_hash")), str(g.get("modality"))))
        if sample is None:
            uri = I.quality_chart(metrics, title)
            caption = "bars: median before/after from quality.json; whiskers: p10-p90"
        else:
            before, after, n = sample
            uri = I.quality_chart(metrics, title, before, after)
            caption = (
                f"histograms of {n} frames' metric values sampled from DIR/processed; "
                "dashed lines: medians from quality.json"
            )
        parts.append(H.figure(ctx.picture(uri, f"quality metrics {title}"), caption))
    return True, "".join(parts)


HARM_METRICS = (("noise_sigma", "noise σ", "lower"), ("cnr", "CNR", "higher"))
"""The do-no-harm metrics of the quality section's summary: key in quality.json, label, better direction
(used when a group's metric has no ``direction``)."""


@dataclass(frozen=True)
class HarmCell:
    """One metric of one quality.json group: medians before/after, whether the median got worse, shares."""

    before: float | None
    after: float | None
    worse: bool | None
    improved_share: float | None
    no_worse_share: float | None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def harm_cell(metric: Any, default_direction: str) -> HarmCell:
    """Read one metric of a quality.json group defensively (missing keys give None).

    ``worse``: the after median is on the wrong side of the before median for the metric's direction.
    ``no_worse_share``: the first numeric key naming a "no worse"/"not worse" share, if the file has one.
    """
    m = metric if isinstance(metric, Mapping) else {}
    b = _num((m.get("before") or {}).get("median")) if isinstance(m.get("before"), Mapping) else None
    a = _num((m.get("after") or {}).get("median")) if isinstance(m.get("after"), Mapping) else None
    direction = m.get("direction") if m.get("direction") in ("higher", "lower") else default_direction
    worse = None if a is None or b is None else (a > b if direction == "lower" else a < b)
    no_worse = next(
        (_num(v) for k, v in m.items() if "worse" in str(k) and "share" in str(k) and _num(v) is not None),
        None,
    )
    return HarmCell(b, a, worse, _num(m.get("improved_share")), no_worse)


def _harm_table(groups: list[Any]) -> str:
    """Per recipe and modality: median noise σ and CNR before → after and whether they got worse."""
    headers = ["recipe", "modality", "frames"]
    for _, label, _direction in HARM_METRICS:
        headers += [
            f"{label} before",
            f"{label} after",
            f"{label} worse?",
            f"{label} improved share",
            f"{label} no-worse share",
        ]
    rows: list[list[Any]] = []
    worse_groups: list[str] = []
    compared = 0
    for g in groups:
        if not isinstance(g, Mapping):
            continue
        found = g.get("metrics")
        metrics: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        row: list[Any] = [g.get("recipe_name"), g.get("modality"), g.get("frames")]
        bad = []
        for key, label, direction in HARM_METRICS:
            c = harm_cell(metrics.get(key), direction)
            row += [c.before, c.after, "WORSE" if c.worse else c.worse, c.improved_share, c.no_worse_share]
            if c.worse:
                bad.append(label)
            compared += c.worse is not None
        if bad:
            worse_groups.append(f"{g.get('recipe_name')} · {g.get('modality')} ({', '.join(bad)})")
        rows.append(row)
    intro = (
        "<h3>Do no harm: noise σ (lower is better) and CNR (higher is better), medians before → after</h3>"
    )
    verdict = (
        f'<p class="flag">Worse after the recipe (median): {H.esc("; ".join(worse_groups))}</p>'
        if worse_groups
        else '<p class="muted">No recipe worsened the median noise σ or CNR of its frames.</p>'
        if compared
        else '<p class="muted">quality.json has no noise σ or CNR medians to compare.</p>'
    )
    return intro + H.table(headers, rows, css_class="harm") + verdict


Sample = tuple[dict[str, list[float]], dict[str, list[float]], int]


def _metric_samples(ctx: _Ctx, groups: list[dict[str, Any]]) -> dict[tuple[str, str], Sample]:
    """Up to ``report.hist_sample`` frames' metric values (never pixels) per quality.json group, in one job.

    Returns ``{(recipe_hash, modality): (before, after, n)}`` with ``before``/``after`` metric → values.
    """
    from pyspark.sql import functions as F

    from medimg_spark.preprocess import PROCESSED_SCHEMA, QUALITY_STRUCT

    processed = ctx.read("processed", PROCESSED_SCHEMA)
    if processed is None or not groups:
        return {}
    known = list(QUALITY_STRUCT.fieldNames())
    fractions = {
        f"{g.get('recipe_hash')}|{g.get('modality')}": min(
            1.0, 1.2 * ctx.cfg.hist_sample / max(int(g.get("frames") or 0), 1)
        )
        for g in groups
    }
    key = F.concat_ws("|", F.col("recipe_hash"), F.col("modality"))
    df = processed.select(
        key.alias("_key"),
        *[F.col(f"quality_before.{n}").alias(f"b_{n}") for n in known],
        *[F.col(f"quality_after.{n}").alias(f"a_{n}") for n in known],
    ).where(F.col("_key").isin(list(fractions)))
    if any(f < 1.0 for f in fractions.values()):
        df = df.sampleBy("_key", fractions, seed=0)
    rows_by_key: dict[str, list[Any]] = {}
    for r in df.limit(2 * ctx.cfg.hist_sample * len(fractions)).collect():  # a bound; sampleBy keeps ~1.2x
        got = rows_by_key.setdefault(r["_key"], [])
        if len(got) < ctx.cfg.hist_sample:
            got.append(r)
    out: dict[tuple[str, str], Sample] = {}
    for k, rows in rows_by_key.items():
        h, _, modality = k.partition("|")
        before = {n: [float(r[f"b_{n}"]) for r in rows if r[f"b_{n}"] is not None] for n in known}
        after = {n: [float(r[f"a_{n}"]) for r in rows if r[f"a_{n}"] is not None] for n in known}
        out[(h, modality)] = (before, after, len(rows))
    return out


# ----------------------------------------------------------------------------- 4. models

_MODEL_KEYS = (
    "n",
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "f1",
    "sensitivity",
    "specificity",
    "precision",
    "threshold",
    "macro_f1",
)


def _models(ctx: _Ctx) -> tuple[bool, str]:
    files = ctx.json_files("metrics", "eval_*.json")
    if not files:
        return False, H.not_run(
            "DIR/metrics/eval_<model>_<split>.json",
            "Run medimg train, then medimg evaluate --out DIR --model MODEL --split val.",
        )
    evals = []
    parts: list[str] = []
    for path in files:
        data = _read_json(ctx, path)
        if not isinstance(data, dict):
            continue
        model = str(data.get("model") or basename(path).removesuffix(".json").removeprefix("eval_"))
        evals.append((path, model, str(data.get("split") or ""), data))
    summary = H.table(
        ["model", "split", *_MODEL_KEYS],
        [(m, s, *[d.get(k) for k in _MODEL_KEYS]) for _, m, s, d in evals],
        css_class="models",
    )
    parts = [summary]
    for path, model, split, d in evals:
        parts.append(
            f'<h3>{H.esc(model)} on {H.esc(split)} <span class="muted">{H.esc(basename(path))}</span></h3>'
        )
        scalars = {
            k: v
            for k, v in d.items()
            if k not in ("confusion_matrix", "roc_curve", "path") and not isinstance(v, list | dict)
        }
        for k in ("classes", "support", "recall_per_class"):
            if k in d:
                scalars[k] = d[k]
        per_class = d.get("per_class")
        figs = [H.figure(H.kv_table(scalars), "metrics")]
        if isinstance(per_class, dict) and per_class and len(per_class) > 2:
            figs.append(H.figure(_per_class_table(per_class), "per-class metrics (one-vs-rest AUC)"))
        cm, classes = d.get("confusion_matrix"), d.get("classes")
        if isinstance(cm, list) and isinstance(classes, list) and cm:
            uri = I.confusion_chart(cm, [str(c) for c in classes], f"{model} · {split}")
            cm_table = H.table(
                ["true \\ predicted", *[str(c) for c in classes]],
                [(str(c), *[int(v) for v in row]) for c, row in zip(classes, cm, strict=False)],
            )
            figs.append(
                H.figure(ctx.picture(uri, f"confusion matrix {model} {split}") + cm_table, "confusion matrix")
            )
        roc = d.get("roc_curve")
        if isinstance(roc, dict) and roc.get("fpr") and roc.get("tpr"):
            auc = d.get("roc_auc")
            uri = I.roc_chart(
                roc["fpr"],
                roc["tpr"],
                float(auc) if isinstance(auc, int | float) else None,
                f"ROC {model} · {split} (positive {d.get('positive')})",
            )
            figs.append(H.figure(ctx.picture(uri, f"ROC curve {model} {split}"), "ROC curve"))
        curves = d.get("roc_curves")
        if isinstance(curves, dict) and curves:
            auc_of = per_class if isinstance(per_class, dict) else {}
            lines = {
                str(c): (
                    cur["fpr"],
                    cur["tpr"],
                    _float_or_none((auc_of.get(c) or {}).get("roc_auc_ovr")),
                )
                for c, cur in curves.items()
                if isinstance(cur, dict) and cur.get("fpr") and cur.get("tpr")
            }
            if lines:
                uri = I.roc_curves_chart(lines, f"ROC one-vs-rest {model} · {split}")
                figs.append(
                    H.figure(
                        ctx.picture(uri, f"per-class ROC curves {model} {split}"),
                        "per-class ROC curves (one vs rest): " + ", ".join(lines),
                    )
                )
        parts.append(f'<div class="grid">{"".join(figs)}</div>')
    return True, "".join(parts)


_PER_CLASS_KEYS = ("precision", "recall", "f1", "support", "roc_auc_ovr")


def _per_class_table(per_class: Mapping[str, Any]) -> str:
    """Per-class precision, recall, F1, support and one-vs-rest AUC, one row per class name."""
    rows = [
        (str(c), *[(m or {}).get(k) for k in _PER_CLASS_KEYS])
        for c, m in per_class.items()
        if isinstance(m, dict) or m is None
    ]
    return H.table(["class", *_PER_CLASS_KEYS], rows, css_class="per-class")


def _float_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


# ----------------------------------------------------------------------------- 5. clusters / regions


def _localize(ctx: _Ctx) -> tuple[bool, str]:
    regions_path = ctx.table_path("regions")
    clusters_path = ctx.table_path("clusters")
    if regions_path is None and clusters_path is None:
        return False, H.not_run(
            "DIR/regions and DIR/clusters",
            "Run medimg localize --out DIR --method kmeans (regions) or --method mllib_kmeans (clusters).",
        )
    parts = ["<h3>Regions (per frame)</h3>"]
    if regions_path is not None:
        parts.append(_regions(ctx))
    else:
        parts.append(H.not_run("DIR/regions", "Run medimg localize --out DIR --method kmeans."))
    parts.append("<h3>Clusters (dataset)</h3>")
    if clusters_path is not None:
        parts.append(_clusters(ctx))
    else:
        parts.append(H.not_run("DIR/clusters", "Run medimg localize --out DIR --method mllib_kmeans."))
    return True, "".join(parts)


def _regions(ctx: _Ctx) -> str:
    from pyspark.sql import functions as F

    from medimg_spark.preprocess import PROCESSED_SCHEMA
    from medimg_spark.schema import IMAGES_SCHEMA

    reg = ctx.read("regions")
    assert reg is not None
    stats = (
        reg.groupBy("method")
        .agg(
            F.count(F.lit(1)).alias("regions"),
            F.countDistinct("image_id").alias("frames"),
            F.avg("area").alias("mean_area"),
            F.max("region").alias("max_rank"),
        )
        .orderBy("method")
        .collect()
    )
    parts = [
        H.table(
            ["method", "regions", "frames", "regions per frame", "mean area (px)"],
            [
                (
                    r["method"],
                    int(r["regions"]),
                    int(r["frames"]),
                    int(r["regions"]) / max(int(r["frames"]), 1),
                    float(r["mean_area"] or 0.0),
                )
                for r in stats
            ],
        )
    ]
    # per method, the first frames with their boxes (each method drawn on its own: lungs, kmeans...)
    methods = [str(r["method"]) for r in stats]
    has_recipe = "recipe" in reg.columns
    picks: list[tuple[str, str, str | None]] = []  # (method, image_id, recipe)
    for method in methods:
        keys = ["image_id", "recipe"] if has_recipe else ["image_id"]
        for r in (
            reg.where(F.col("method") == method)
            .select(*keys)
            .distinct()
            .orderBy(*keys)
            .limit(ctx.cfg.region_frames)
            .collect()
        ):
            picks.append((method, r["image_id"], r["recipe"] if has_recipe else None))
    ids = sorted({p[1] for p in picks})
    boxes: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for r in (
        _ids_in(reg, ids)
        .orderBy("method", "image_id", "region")
        .limit(len(picks) * MAX_REGIONS_PER_FRAME)
        .collect()
    ):
        d = r.asDict()
        boxes.setdefault((d["method"], d["image_id"], d.get("recipe")), []).append(d)
    frame_cols = ["image_id", "rows", "cols", "channels", "dtype", "pixels"]
    candidates: dict[str, list[tuple[str, str | None, Any]]] = {}
    processed = ctx.read("processed", PROCESSED_SCHEMA)
    if processed is not None:
        rows = (
            _ids_in(processed, ids)
            .select(*frame_cols, "recipe_name", "recipe_hash")
            .orderBy("image_id", "recipe_name", "recipe_hash")
            .limit(len(ids) * 4)
            .collect()
        )
        for r in rows:
            candidates.setdefault(r["image_id"], []).append(
                (f"processed ({r['recipe_name']})", r["recipe_name"], r)
            )
    images = ctx.read("images", IMAGES_SCHEMA)
    if images is not None:
        for r in _ids_in(images, ids).select(*frame_cols).collect():
            candidates.setdefault(r["image_id"], []).append(("images", None, r))
    figs = []
    for method, image_id, recipe in picks:
        regs = boxes.get((method, image_id, recipe), [])
        max_r = max((int(b["bbox_max_row"]) for b in regs), default=0)
        max_c = max((int(b["bbox_max_col"]) for b in regs), default=0)
        fits = [
            (src, r)
            for src, rec, r in candidates.get(image_id, [])
            if r["rows"] > max_r and r["cols"] > max_c and (not has_recipe or rec == recipe)
        ]
        if not fits:
            figs.append(H.figure('<div class="muted">frame not found</div>', f"{image_id} · {method}"))
            continue
        src, row = fits[0]
        try:
            uri = I.png_uri(I.boxes_overlay(_decode(row), regs))
        except ValueError as exc:
            ctx.warn(f"region overlay of {image_id}: {exc}")
            figs.append(H.figure(f'<div class="muted">{H.esc(exc)}</div>', image_id))
            continue
        figs.append(
            H.figure(
                ctx.picture(uri, f"regions {method} {image_id}", "thumb"),
                f"{image_id} · {method} · {len(regs)} regions · {src}",
            )
        )
    parts.append(f'<div class="grid">{"".join(figs)}</div>')
    return "".join(parts)


def _clusters(ctx: _Ctx) -> str:
    parts = []
    summary_path = ctx.path("clusters", "_summary.json")
    if ctx.store.is_file(summary_path):
        data = _read_json(ctx, summary_path)
        if isinstance(data, dict):
            parts.append(H.kv_table({k: v for k, v in data.items() if k not in ("path",)}))
    cl = ctx.read("clusters")
    assert cl is not None
    if "label" in cl.columns:
        rows = (
            cl.groupBy("cluster", "label")
            .count()
            .orderBy("cluster", "label")
            .limit(ctx.cfg.max_table_rows)
            .collect()
        )
        labels = sorted({str(r["label"]) for r in rows})
        grid: dict[int, dict[str, int]] = {}
        for r in rows:
            grid.setdefault(int(r["cluster"]), {})[str(r["label"])] = int(r["count"])
        parts.append(
            H.table(
                ["cluster", *[f"label {lb}" for lb in labels], "total"],
                [(c, *[g.get(lb, 0) for lb in labels], sum(g.values())) for c, g in sorted(grid.items())],
            )
        )
    else:
        rows = cl.groupBy("cluster").count().orderBy("cluster").limit(ctx.cfg.max_table_rows).collect()
        parts.append(H.table(["cluster", "frames"], [(int(r["cluster"]), int(r["count"])) for r in rows]))
    return "".join(parts)


# ----------------------------------------------------------------------------- 6. runs


def _runs(ctx: _Ctx) -> tuple[bool, str]:
    files = ctx.json_files("runs", "*.json")
    if not files:
        return False, H.not_run("DIR/runs/*.json", "Run any stage (medimg ingest --out DIR writes one).")
    records = []
    for path in files:
        data = _read_json(ctx, path)
        if isinstance(data, dict):
            records.append((str(data.get("run_id") or basename(path).removesuffix(".json")), data))
    records.sort(key=lambda t: t[0])
    rows = []
    for run_id, d in records:
        counts = "; ".join(
            f"{k}={H.fmt(v)}"
            for k, v in d.items()
            if k not in RUN_SKIP_KEYS and not isinstance(v, list | dict)
        )
        breakdown = "; ".join(
            f"{k}: {H.fmt(v) or '—'}" for k, v in d.items() if k not in RUN_SKIP_KEYS and isinstance(v, dict)
        )
        rows.append((run_id, d.get("stage"), d.get("wall_time_s"), counts, breakdown))
    return True, H.table(["run_id", "stage", "wall_time_s", "counts", "breakdowns"], rows, css_class="runs")


# ----------------------------------------------------------------------------- entry point


def build_report(spark: SparkSession, out_dir: str, config: ReportConfig | None = None) -> ReportSummary:
    """Write ``out_dir/report/index.html``: one self-contained page (inline CSS, PNG data URIs, no scripts).

    Sections (each says "Not run yet" when its input is missing): dataset summary, thumbnails
    before/after per recipe, quality metrics before/after, models, clusters/regions, run history.

    Args:
        spark: the session (tables are aggregated with Spark; only a few frames reach the driver).
        out_dir: the ``--out`` directory of the other stages (local path or URI: tables and JSON
            files are read, and the page written, through :mod:`medimg_spark.storage`).
        config: the config's ``report`` section (title, how many thumbnails, frames and rows).

    Returns:
        Summary: ``path``, ``bytes``, ``sections`` (name → present), ``sections_present``,
        ``sections_total``, ``images`` (embedded PNGs), ``thumbnails``, ``warnings``, ``seconds``.

    Raises:
        ReportError: ``out_dir`` does not exist or cannot be reached.
    """
    started = time.perf_counter()
    store = get_storage(spark)
    out = _out_dir(store, out_dir)
    ctx = _Ctx(spark=spark, store=store, out=out, cfg=config or ReportConfig())
    builders: dict[str, Callable[[_Ctx], tuple[bool, str]]] = {
        "dataset": _dataset,
        "thumbnails": _thumbnails,
        "quality": _quality,
        "models": _models,
        "localize": _localize,
        "runs": _runs,
    }
    present: dict[str, bool] = {}
    body: list[str] = []
    if store.exists(ctx.path("IDENTIFIED")):
        body.append(
            '<p class="warn">This output is IDENTIFIED (ingested with --keep-phi): its tables hold original '
            "patient identifiers. Do not share this report outside the approved environment.</p>"
        )
    for anchor, title in SECTIONS:
        seen = len(ctx.warnings)
        ok, html_text = builders[anchor](ctx)
        present[anchor] = ok
        notes = "".join(f'<p class="warn">{H.esc(w)}</p>' for w in ctx.warnings[seen:])
        body.append(H.section(anchor, title, html_text + notes))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    document = H.page(
        ctx.cfg.title,
        f"{out} · generated {now} · {sum(present.values())}/{len(SECTIONS)} sections",
        [(a, t.split(". ", 1)[-1]) for a, t in SECTIONS],
        "".join(body),
    )
    dest = store.write_text(ctx.path(REPORT_DIR, REPORT_FILE), document)  # atomic: temporary sibling, rename
    return {
        "path": dest,
        "bytes": len(document.encode("utf-8")),
        "sections": present,
        "sections_present": sum(present.values()),
        "sections_total": len(SECTIONS),
        "images": ctx.n_images,
        "thumbnails": ctx.n_thumbnails,
        "warnings": list(ctx.warnings),
        "seconds": round(time.perf_counter() - started, 3),
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """A human-readable summary of :func:`build_report` for the command line."""
    missing = [k for k, ok in summary["sections"].items() if not ok]
    lines = [
        f"report → {summary['path']} ({summary['bytes'] / 1e6:.2f} MB)",
        f"  sections   {summary['sections_present']}/{summary['sections_total']}"
        + (f" (not run yet: {', '.join(missing)})" if missing else ""),
        f"  images     {summary['images']} ({summary['thumbnails']} thumbnails)",
        f"  seconds    {summary['seconds']}",
    ]
    lines += [f"  warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)
