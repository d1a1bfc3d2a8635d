"""The Spark stage that writes the ``features`` table.

:func:`compute_features` runs a feature set over the ``images`` or ``processed`` table
and writes ``out_dir/features/`` (image_id, recipe, label, split, features) where ``features``
is a :class:`pyspark.ml.linalg.Vector` column whose ML attribute metadata names every slot.
Rows are per (image, recipe): from ``processed`` one recipe is selected (``recipe``), from
``images`` the ``recipe`` column is null.

Feature sets live side by side. ``out_dir/features/`` holds the latest one and its
``_feature_set.json`` records what it is: the feature set, the source table, the recipe, whether
masks were used and the SHA-256 of those (``sha256``; the set id is ``<name>-<sha256[:8]>``).
Computing a different set moves the previous table to ``out_dir/feature_sets/<set id>/``
(a rename), so a model whose card names that set still finds it (:func:`locate_feature_set`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medimg_spark.errors import ConfigError, MedimgError
from medimg_spark.features.extract import FeatureError
from medimg_spark.features.spec import FeatureSet, load_feature_set
from medimg_spark.storage import Storage, get_storage, join
from medimg_spark.summaries import FeaturesSummary

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

#: The feature set a features table was computed with, recorded next to its Parquet files.
FEATURE_SET_FILE = "_feature_set.json"
#: Folder (under the run folder) of the feature sets superseded in ``features/``, one folder per set id.
FEATURE_SETS_DIR = "feature_sets"


class FeatureRecipeError(FeatureError, ConfigError):
    """The ``processed`` table holds several recipes (or not the one named): choose one with ``recipe``."""


class FeatureSetNotFoundError(FeatureError):
    """The feature set a model was trained on is in neither ``features/`` nor ``feature_sets/``."""


def feature_set_identity(
    fs: FeatureSet, source: str, recipe_hash: str | None, use_mask: bool
) -> tuple[str, str]:
    """``(set id, sha256)`` of a feature table: what determines its vectors, hashed.

    The id is ``<name>-<sha256[:8]>`` (the name reduced to letters, digits, ``_``, ``.``, ``-``).
    """
    ident = {
        "feature_set": json.loads(fs.model_dump_json()),
        "source": source,
        "recipe_hash": recipe_hash,
        "use_mask": bool(use_mask),
    }
    sha = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", fs.name).strip("._") or "set"
    return f"{safe}-{sha[:8]}", sha


def read_feature_set_record(store: Storage, table: str) -> dict[str, Any] | None:
    """The parsed ``_feature_set.json`` of a features table folder (None when absent)."""
    rec = join(table, FEATURE_SET_FILE)
    if not store.is_file(rec):
        return None
    data = store.read_json(rec)
    return data if isinstance(data, dict) else None


def list_feature_sets(
    store: Storage, out_dir: str | Path, features_dir: str = "features"
) -> list[dict[str, Any]]:
    """Records of every feature set of a run: ``features_dir`` (the latest) first, then ``feature_sets/*``.

    Each record is its ``_feature_set.json`` plus ``path`` (the table folder) and ``current``.
    """
    found: list[dict[str, Any]] = []
    latest = join(out_dir, features_dir)
    rec = read_feature_set_record(store, latest)
    if rec is not None or store.is_dir(latest):
        found.append({**(rec or {}), "path": latest, "current": True})
    for folder in store.list(join(out_dir, FEATURE_SETS_DIR), files=False, missing_ok=True):
        r = read_feature_set_record(store, folder)
        if r is not None:
            found.append({**r, "path": folder, "current": False})
    return found


def locate_feature_set(
    store: Storage,
    out_dir: str | Path,
    features_dir: str = "features",
    sha256: str | None = None,
    set_id: str | None = None,
    name: str | None = None,
    n_features: int | None = None,
) -> str:
    """The folder of the features table a model reads.

    With ``sha256`` (the model card's ``feature_set_sha256``): ``features_dir`` when its recorded
    ``sha256`` matches (or it records none: a table written before sets were recorded), else the
    set of ``feature_sets/`` with that ``sha256``. Without it (a card written before sets were
    recorded, or no model): ``features_dir``, unless that holds another feature set than ``name``
    and ``feature_sets/`` holds one named ``name`` with ``n_features`` values (the newest).

    Raises:
        FeatureSetNotFoundError: the card's set is in neither place.
    """
    latest = join(out_dir, features_dir)
    rec = read_feature_set_record(store, latest)
    if sha256 is None:
        if name is None or rec is None or rec.get("feature_set", {}).get("name") == name:
            return latest
        same = [
            r
            for r in list_feature_sets(store, out_dir, features_dir)
            if r.get("feature_set", {}).get("name") == name
            and (n_features is None or r.get("n_features") in (None, n_features))
        ]
        if not same:
            return latest
        return str(max(same, key=lambda r: str(r.get("created_at") or ""))["path"])
    if rec is not None and rec.get("sha256") in (None, sha256):
        return latest
    if rec is None and store.exists(latest):
        return latest  # a table written before sets were recorded: the width check decides
    sets = list_feature_sets(store, out_dir, features_dir)
    for r in sets:
        if r.get("sha256") == sha256:
            return str(r["path"])
    have = ", ".join(str(r.get("set_id")) for r in sets) or "none"
    raise FeatureSetNotFoundError(
        f"feature set {set_id or sha256[:8]} (sha256 {sha256[:12]}...) is in neither {latest} nor "
        f"{join(out_dir, FEATURE_SETS_DIR)} (sets of this run: {have}); recompute it with medimg features "
        "(the model card's feature_set, feature_set_source and feature_set_recipe name it)"
    )


# ----------------------------------------------------------------------------- Spark stage


def vector_metadata(names: Sequence[str]) -> dict[str, Any]:
    """ML attribute metadata naming each slot of a vector column (read by VectorAssembler & co)."""
    return {
        "ml_attr": {
            "attrs": {"numeric": [{"idx": i, "name": n} for i, n in enumerate(names)]},
            "num_attrs": len(names),
        }
    }


def feature_names_of(df: DataFrame, column: str = "features") -> list[str]:
    """Names stored in the ML attribute metadata of a vector column (empty if none)."""
    meta = df.schema[column].metadata.get("ml_attr", {})
    attrs = meta.get("attrs", {})
    slots = sorted((a["idx"], a.get("name", f"f{a['idx']}")) for group in attrs.values() for a in group)
    return [n for _, n in slots]


def _computed_schema() -> StructType:
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

    return StructType(
        [
            StructField("image_id", StringType(), False),
            StructField("recipe", StringType(), True),
            StructField("label", StringType(), True),
            StructField("split", StringType(), True),
            StructField("values", ArrayType(DoubleType()), True),
            StructField("error", StringType(), True),
        ]
    )


#: Per-frame rows of a feature computation: the values, or the error (``"<class>: <message>"``).
COMPUTED_SCHEMA = _computed_schema()


def frame_features(
    fs: FeatureSet, row: Mapping[Any, Any], use_mask: bool
) -> tuple[list[float] | None, str | None]:
    """``(values, None)`` of one ``images``/``processed`` row, or ``(None, "<class>: <message>")``."""
    try:
        img, msk = decode_row(row, use_mask)
        v, _ = fs.extract(img, msk)
        return v.tolist(), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _decode_mask(mask: Any, rows: int, cols: int) -> np.ndarray | None:
    if mask is None or (isinstance(mask, float) and np.isnan(mask)):
        return None
    buf = bytes(mask)
    if len(buf) != rows * cols:
        raise FeatureError(
            f"mask holds {len(buf)} bytes but the frame is {rows}x{cols}; masks must be uint8 0/1 of the frame shape"
        )
    return np.frombuffer(buf, dtype=np.uint8).reshape(rows, cols)


def _feature_partitions(
    fs_json: str, use_mask: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        from medimg_spark.worker import configure_worker

        configure_worker()  # one OpenCV thread per task, the allocator keeps frame-sized blocks
        fs = FeatureSet.model_validate_json(fs_json)
        for pdf in batches:
            feats: list[list[float] | None] = []
            errors: list[str | None] = []
            for row in pdf.to_dict("records"):
                values, error = frame_features(fs, row, use_mask)
                feats.append(values)
                errors.append(error)
            yield pd.DataFrame(
                {
                    "image_id": pdf["image_id"].to_numpy(),
                    "recipe": pdf["recipe"].to_numpy(),
                    "label": pdf["label"].to_numpy(),
                    "split": pdf["split"].to_numpy(),
                    "values": feats,
                    "error": errors,
                }
            )

    return run


def decode_row(row: Mapping[Any, Any], use_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(frame, mask)`` of an ``images``/``processed`` row (mask None when absent or ``use_mask`` is false)."""
    from medimg_spark.io.pixels import decode

    rows, cols = int(row["rows"]), int(row["cols"])
    img = decode(bytes(row["pixels"]), rows, cols, int(row["channels"]), str(row["dtype"]))
    msk = _decode_mask(row.get("mask"), rows, cols) if use_mask else None
    return img, msk


def _names_for(fs: FeatureSet, first: Mapping[Any, Any], use_mask: bool) -> list[str]:
    img, msk = decode_row(first, use_mask)
    return fs.extract(img, msk)[1]


def feature_names(fs: FeatureSet, first: Mapping[Any, Any], use_mask: bool, src: str) -> list[str]:
    """The feature names of ``fs``, from one frame of the source table ``src``.

    Raises:
        FeatureError: the feature set fails on that frame.
    """
    try:
        return _names_for(fs, first, use_mask)
    except MedimgError:
        raise
    except Exception as exc:
        raise FeatureError(f"feature set {fs.name!r} failed on frame {first['image_id']}: {exc}") from exc


def select_recipe(df: DataFrame, recipe: str | None, src: str = "processed") -> tuple[str, str]:
    """``(recipe_name, recipe_hash)`` of the ``processed`` rows to use.

    ``recipe``: a recipe name, a ``recipe_hash`` or a prefix of one (8+ characters); None picks
    the only recipe of the table. Only the two recipe columns are read.

    Raises:
        FeatureRecipeError: several recipes and none named, or the named one is not in the table.
    """
    found = sorted(
        (str(r["recipe_name"]), str(r["recipe_hash"]), int(r["count"]))
        for r in df.groupBy("recipe_name", "recipe_hash").count().collect()
    )
    listing = "; ".join(f"{n} (recipe_hash {h[:12]}, {c} frames)" for n, h, c in found)
    if recipe is None:
        if len(found) == 1:
            return found[0][0], found[0][1]
        raise FeatureRecipeError(
            f"{src} holds {len(found)} recipes: {listing}; features are per (image, recipe): choose one "
            "with --recipe NAME (features.recipe / pipeline.features.recipe)"
        )
    by_hash = [f for f in found if len(recipe) >= 8 and f[1].startswith(recipe)]
    by_name = [f for f in found if f[0] == recipe]
    match = by_hash or by_name
    if len(match) == 1:
        return match[0][0], match[0][1]
    if not match:
        raise FeatureRecipeError(f"recipe {recipe!r} is not in {src}; it holds {listing or 'no frames'}")
    raise FeatureRecipeError(
        f"recipe name {recipe!r} has {len(match)} versions in {src} ({listing}); name one by its recipe_hash"
    )


def _archive_previous(store: Storage, out_dir: str | Path, dest: str, set_id: str, sha: str) -> str | None:
    """Move the table in ``dest`` to ``feature_sets/<its id>`` when it is another set (returns where).

    A copy of the set computed now left in ``feature_sets/`` is deleted (superseded).
    """
    stale = join(out_dir, FEATURE_SETS_DIR, set_id)
    if store.exists(stale):
        store.delete(stale, recursive=True)  # superseded by the table computed now
    if not store.exists(dest):
        return None
    rec = read_feature_set_record(store, dest)
    if rec is None or not isinstance(rec.get("feature_set"), dict) or rec.get("sha256") == sha:
        return None  # the same set, or a table nothing describes: replaced in place
    prev_id = rec.get("set_id")
    if not prev_id:  # written before sets were recorded: keep it under a name from its feature set
        fs_json = json.dumps(rec["feature_set"], sort_keys=True).encode()
        safe = (
            re.sub(r"[^A-Za-z0-9_.-]+", "_", str(rec["feature_set"].get("name", "set"))).strip("._") or "set"
        )
        prev_id = f"{safe}-legacy-{hashlib.sha256(fs_json).hexdigest()[:8]}"
        rec = {**rec, "set_id": prev_id, "created_at": ""}
        store.write_text(join(dest, FEATURE_SET_FILE), json.dumps(rec))
    return store.rename(dest, join(out_dir, FEATURE_SETS_DIR, str(prev_id)), overwrite=True)


def compute_features(
    spark: SparkSession,
    out_dir: str | Path,
    source: Literal["images", "processed"] = "images",
    feature_set: str | Path | FeatureSet | dict[str, Any] = "texture",
    use_mask: bool = True,
    recipe: str | None = None,
) -> FeaturesSummary:
    """Compute a feature set for every frame of ``out_dir/<source>`` and write ``out_dir/features/``.

    Args:
        spark: active session.
        out_dir: the run's output folder holding ``images/`` or ``processed/`` (local path or URI,
            reached through :mod:`medimg_spark.storage`).
        source: ``images`` (schema :data:`medimg_spark.schema.IMAGES_SCHEMA`) or ``processed``
            (image_id, recipe_name, recipe_hash, pixels, dtype, rows, cols, channels, mask, label,
            split); ``processed`` masks are passed to the extractors.
        feature_set: feature-set name (shipped, or ``./conf/features/<name>.yaml``), YAML path, mapping or
            :class:`FeatureSet`.
        use_mask: pass the ``processed`` table's masks to the extractors; ``False`` computes every
            feature on the whole frame (the config's ``features.use_mask``).
        recipe: ``processed`` source: the recipe whose frames are used (name or recipe_hash; None:
            the table's only recipe), see :func:`select_recipe`. Ignored for ``images``.

    Returns:
        Summary: path, feature_set, set_id, sha256, source, recipe, recipe_hash, n_features,
        feature_names, n_images, n_failed, failures (up to 20 ``{image_id, error}``), seconds,
        archived (where the previous, different set was moved, or None).

    Raises:
        FeatureError: the source table is missing, empty, or every frame failed.
        FeatureRecipeError: several recipes in ``processed`` and none (or an absent one) named.
    """
    from pyspark.sql import functions as F

    t0 = time.time()
    if source not in ("images", "processed"):
        raise FeatureError(f"source={source!r} is not supported; use 'images' or 'processed'")
    fs = load_feature_set(feature_set)
    store = get_storage(spark)
    src = join(out_dir, source)
    if not store.exists(src):
        raise FeatureError(f"{src} does not exist; run the stage that writes the {source} table first")
    df = spark.read.parquet(src)
    use_mask = use_mask and "mask" in df.columns
    cols = ["image_id", "pixels", "rows", "cols", "channels", "dtype", "label", "split"]
    missing = [c for c in cols if c not in df.columns and c not in ("label", "split")]
    if missing:
        raise FeatureError(f"{src} lacks columns {missing}; it must follow the {source} table schema")
    recipe_name: str | None = None
    recipe_hash: str | None = None
    if source == "processed" and "recipe_name" in df.columns and "recipe_hash" in df.columns:
        recipe_name, recipe_hash = select_recipe(df, recipe, src)
        df = df.where((F.col("recipe_name") == recipe_name) & (F.col("recipe_hash") == recipe_hash))
    sel = [F.col(c) if c in df.columns else F.lit(None).cast("string").alias(c) for c in cols]
    sel.append(F.lit(recipe_name).cast("string").alias("recipe"))
    if use_mask:
        sel.append(F.col("mask"))
    df = df.select(*sel)
    first_rows = df.limit(1).collect()
    if not first_rows:
        raise FeatureError(f"{src} holds no frames; nothing to compute")
    names = feature_names(fs, first_rows[0].asDict(), use_mask, src)
    from medimg_spark.preprocess import frame_splits

    fn = _feature_partitions(fs.model_dump_json(), use_mask)
    computed = df.mapInPandas(fn, COMPUTED_SCHEMA).cache()
    try:
        # every core gets several tasks of frames (the cache is made here); splits up to the session's size
        with frame_splits(spark, max_split_bytes=None):
            return write_features(
                spark,
                out_dir,
                computed,
                fs,
                names,
                source=source,
                recipe_name=recipe_name,
                recipe_hash=recipe_hash,
                use_mask=use_mask,
                src=src,
                started=t0,
            )
    finally:
        computed.unpersist()


def write_features(
    spark: SparkSession,
    out_dir: str | Path,
    computed: DataFrame,
    fs: FeatureSet,
    names: list[str],
    *,
    source: str,
    recipe_name: str | None,
    recipe_hash: str | None,
    use_mask: bool,
    src: str,
    started: float,
) -> FeaturesSummary:
    """Write ``out_dir/features/`` from per-frame feature rows and record the set; returns the summary.

    Args:
        computed: rows of :data:`COMPUTED_SCHEMA` (one per frame: its values, or the error), read
            several times (counts, failures, the write): cached or small.
        names: the feature names (the vector metadata); a row whose values differ in length failed.
        src: the source table's path (messages).
        started: ``time.time()`` when the stage started (the summary's seconds).

    Raises:
        FeatureError: every frame failed.
    """
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    store = get_storage(spark)
    set_id, sha = feature_set_identity(fs, source, recipe_hash, use_mask)
    dest = join(out_dir, "features")
    n_images = computed.count()
    fails = computed.where(F.col("error").isNotNull() | (F.size("values") != len(names)))
    n_failed = fails.count()
    failures = [
        {"image_id": r["image_id"], "error": r["error"] or f"feature count differs from {len(names)}"}
        for r in fails.limit(20).collect()
    ]
    if n_failed == n_images:
        raise FeatureError(
            f"every frame of {src} failed feature set {fs.name!r}; first error: {failures[0]['error']}"
        )
    ok = computed.where(F.col("error").isNull() & (F.size("values") == len(names)))
    out = ok.select(
        "image_id",
        "recipe",
        "label",
        "split",
        array_to_vector(F.col("values")).alias("features", metadata=vector_metadata(names)),
    )
    archived = _archive_previous(store, out_dir, dest, set_id, sha)
    out.write.mode("overwrite").parquet(dest)
    summary: FeaturesSummary = {
        "path": dest,
        "feature_set": fs.name,
        "set_id": set_id,
        "sha256": sha,
        "source": source,
        "recipe": recipe_name,
        "recipe_hash": recipe_hash,
        "n_features": len(names),
        "feature_names": names,
        "n_images": int(n_images - n_failed),
        "n_failed": int(n_failed),
        "failures": failures,
        "archived": archived,
        "seconds": round(time.time() - started, 3),
    }
    record = {
        "feature_set": json.loads(fs.model_dump_json()),
        "set_id": set_id,
        "sha256": sha,
        "source": source,
        "recipe": recipe_name,
        "recipe_hash": recipe_hash,
        "use_mask": bool(use_mask),
        "n_features": len(names),
        "n_images": int(n_images - n_failed),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store.write_text(join(dest, FEATURE_SET_FILE), json.dumps(record))
    return summary
