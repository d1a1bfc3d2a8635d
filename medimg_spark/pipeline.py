"""``medimg run``: the whole pipeline from one YAML file, stage by stage through Parquet tables."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from medimg_spark.config import MedimgConfig
from medimg_spark.config_models import (
    STAGES,
    FeaturesConfig,
    FeaturesRun,
    ModelRun,
    PipelineConfig,
    RecipeRun,
    RecognizeConfig,
    RecognizeRun,
)
from medimg_spark.errors import ConfigError
from medimg_spark.runlog import RunLog
from medimg_spark.storage import is_local, join

__all__ = [
    "STAGES",
    "FeaturesRun",
    "ModelRun",
    "PipelineConfig",
    "RecipeRun",
    "load_pipeline",
    "recipe_runs",
    "recognize_options",
    "resolve_input",
    "run_features",
    "run_pipeline",
    "train_options",
    "validate_recipes",
]


def resolve_input(item: str, base: Path) -> str:
    """Resolve ``pkg:module/sub/dir`` to an installed package's folder; relative paths against ``base``.

    Raises:
        ConfigError: when the package is not installed or the folder does not exist.
    """
    if item.startswith("pkg:"):
        module, _, sub = item[4:].partition("/")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"input {item}: package '{module}' is not installed (pip install it)") from None
        root = Path(mod.__file__ or "").resolve().parent
        target = root / sub if sub else root
        if not target.exists():
            raise ConfigError(f"input {item}: {target} does not exist in the installed package")
        return str(target)
    if not is_local(item) or item.startswith("file:"):  # URIs: hdfs://, s3a://, file:...
        return item
    p = Path(item)
    return str(p if p.is_absolute() else (base / p))


def load_pipeline(cfg: MedimgConfig, source: str) -> PipelineConfig:
    """The ``pipeline`` section (validated, stage names included, when the config was loaded)."""
    return cfg.pipeline


def recipe_runs(cfg: MedimgConfig, pc: PipelineConfig) -> list[RecipeRun]:
    """The preprocess stage's recipes: ``pipeline.recipes``, else ``preprocess.recipe``.

    A recipe run without its own ``where`` takes ``preprocess.where``.
    """
    runs = pc.recipes or ([RecipeRun(recipe=cfg.preprocess.recipe)] if cfg.preprocess.recipe else [])
    return [r if r.where is not None else r.model_copy(update={"where": cfg.preprocess.where}) for r in runs]


def run_features(cfg: MedimgConfig, pc: PipelineConfig) -> FeaturesConfig:
    """The features stage's options: the ``features`` section, with the keys set in ``pipeline.features``."""
    return cfg.features.model_copy(update=pc.features.model_dump(exclude_none=True))


def train_options(cfg: MedimgConfig, options: dict[str, Any]) -> dict[str, Any]:
    """One pipeline model's training options: the ``train`` section, with the model's own keys winning."""
    return {**cfg.train.model_dump(exclude_unset=True), **options}


def recognize_options(cfg: MedimgConfig, run: RecognizeRun) -> RecognizeConfig:
    """One recognize model's options: the ``recognize`` section, with the run's ``options`` winning.

    Raises:
        ConfigError: an option is unknown or invalid (names ``pipeline.recognize[<name>]``).
    """
    from pydantic import ValidationError

    merged = {**cfg.recognize.model_dump(exclude_unset=True), **run.options, "name": run.name}
    try:
        rcfg = RecognizeConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"pipeline.recognize[{run.name}].options: {err}") from None
    if rcfg.region_labels == "mask" and rcfg.source != "processed":
        raise ConfigError(
            f"pipeline.recognize[{run.name}]: region_labels: mask needs source: processed (the masks)"
        )
    return rcfg


def run_pipeline(
    spark: Any,
    cfg: MedimgConfig,
    pc: PipelineConfig,
    out: str,
    base: Path,
    deidentify: Any = None,
    run_id: str | None = None,
    log: RunLog | None = None,
    incremental: bool = False,
) -> dict[str, Any]:
    """Run the enabled stages in order and return their summaries.

    Args:
        deidentify: the ingest de-identification hook (None keeps identifiers).
        log: JSON-lines run log (stage start/end, counts, timings).
        incremental: ingest only new files (Structured Streaming checkpoint under ``out``).
    """
    from medimg_spark.io.ingest import ingest, ingest_incremental

    log = log or RunLog(None)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    log.event("pipeline_start", stages=pc.stages, out=out, run_id=run_id)
    if "ingest" in pc.stages:
        inputs = [resolve_input(i, base) for i in pc.inputs]
        labels = resolve_input(pc.labels, base) if pc.labels else None
        run = ingest_incremental if incremental else ingest
        with log.stage("ingest", incremental=incremental) as rec:
            results["ingest"] = run(
                spark, inputs, out, cfg.ingest, labels_csv=labels, deidentify=deidentify, run_id=run_id
            )
            rec.update(_counts(results["ingest"]))
    if "preprocess" in pc.stages:
        from medimg_spark.preprocess import preprocess

        results["preprocess"] = []
        for r in recipe_runs(cfg, pc):
            with log.stage("preprocess", recipe=r.recipe) as rec:
                results["preprocess"].append(
                    preprocess(spark, out, resolve_recipe_path(r.recipe, base), where=r.where)
                )
                rec.update(_counts(results["preprocess"][-1]))
    if "quality" in pc.stages:
        from medimg_spark.preprocess import quality_report

        with log.stage("quality"):
            results["quality"] = quality_report(spark, out)
    if "features" in pc.stages:
        from medimg_spark.features import compute_features

        fcfg = run_features(cfg, pc)
        with log.stage("features", set=fcfg.set) as rec:
            results["features"] = compute_features(
                spark, out, source=fcfg.source, feature_set=fcfg.set, use_mask=fcfg.use_mask
            )
            rec.update(_counts(results["features"]))
    ml_stages = [s for s in ("train", "predict", "evaluate") if s in pc.stages]
    if ml_stages:
        from medimg_spark.ml import evaluate, parse_train_config, predict, train

        for m in pc.models:
            model_dir = join(out, "models", m.name)
            if "train" in pc.stages:
                estimator, options = m.resolved(base)
                tcfg = parse_train_config(
                    {**train_options(cfg, options), "model_dir": model_dir, "name": m.name}
                )
                with log.stage("train", model=m.name) as rec:
                    results.setdefault("train", []).append(train(spark, out, estimator, tcfg))
                    rec.update(_counts(results["train"][-1]))
            if "predict" in pc.stages:
                with log.stage("predict", model=m.name) as rec:
                    results.setdefault("predict", []).append(
                        predict(spark, out, model_dir, split=pc.predict_split)
                    )
                    rec.update(_counts(results["predict"][-1]))
            if "evaluate" in pc.stages:
                for split in pc.evaluate_splits:
                    with log.stage("evaluate", model=m.name, split=split) as rec:
                        results.setdefault("evaluate", []).append(evaluate(spark, out, model_dir, split))
                        rec.update(_counts(results["evaluate"][-1]))
    if "localize" in pc.stages:
        from medimg_spark.ml import localize

        for method in pc.localize:
            with log.stage("localize", method=method) as rec:
                results.setdefault("localize", []).append(localize(spark, out, method, cfg.localize))
                rec.update(_counts(results["localize"][-1]))
    if "recognize" in pc.stages:
        from medimg_spark.ml.recognize import recognize

        for rr in pc.recognize:
            rcfg = recognize_options(cfg, rr)
            with log.stage("recognize", model=rr.name) as rec:
                results.setdefault("recognize", []).append(recognize(spark, out, rcfg, name=rr.name))
                rec.update(_counts(results["recognize"][-1]))
    if "report" in pc.stages:
        from medimg_spark.report import build_report

        with log.stage("report") as rec:
            results["report"] = build_report(spark, out, cfg.report)
            rec["path"] = results["report"].get("path")
    results["wall_time_s"] = round(time.perf_counter() - started, 3)
    log.event("pipeline_end", wall_time_s=results["wall_time_s"])
    return results


def _counts(summary: dict[str, Any]) -> dict[str, Any]:
    """The numeric fields of a stage summary (for the run log)."""
    return {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def resolve_recipe_path(name: str, base: Path) -> str:
    """A recipe path (relative to ``base``) or the name of a shipped recipe."""
    from medimg_spark.ops.recipe import resolve_recipe

    p = Path(name)
    if not p.is_absolute() and (base / p).is_file():
        return str(base / p)
    return resolve_recipe(name)


def validate_recipes(pc: PipelineConfig, base: Path, cfg: MedimgConfig | None = None) -> None:
    """Load every recipe, the feature set and the model options, so a bad one fails before Spark starts.

    ``cfg``: the whole config, whose ``preprocess``/``features``/``train`` sections fill in what
    ``pc`` leaves unset (as :func:`run_pipeline` does).
    """
    cfg = cfg or MedimgConfig(pipeline=pc)
    from medimg_spark.ops import load_recipe

    if any(s in pc.stages for s in ("train", "predict", "evaluate")) and not pc.models:
        raise ConfigError(
            "pipeline.stages has train/predict/evaluate but pipeline.models is empty; add a model"
        )
    if "features" in pc.stages:
        from medimg_spark.features import load_feature_set

        fset = run_features(cfg, pc).set
        try:
            load_feature_set(fset)
        except Exception as err:
            where = "features.set" if pc.features.set is None else "pipeline.features.set"
            raise ConfigError(f"{where}: {err}") from None
    if "train" in pc.stages:
        from medimg_spark.ml import parse_train_config
        from medimg_spark.ml.models import ESTIMATORS

        for m in pc.models:
            try:
                estimator, options = m.resolved(base)
            except ConfigError:
                raise
            except Exception as err:
                raise ConfigError(f"pipeline.models[{m.name}].experiment: {err}") from None
            if estimator not in ESTIMATORS:
                known = ", ".join(ESTIMATORS.names())
                raise ConfigError(
                    f"pipeline.models[{m.name}].model {estimator!r} is unknown; choose from {known}"
                )
            try:
                parse_train_config(train_options(cfg, options))
            except Exception as err:
                raise ConfigError(f"pipeline.models[{m.name}].train: {err}") from None

    if "recognize" in pc.stages:
        for rr in pc.recognize:
            recognize_options(cfg, rr)
    if "preprocess" in pc.stages:
        runs = recipe_runs(cfg, pc)
        if not runs:
            raise ConfigError(
                "pipeline.stages has 'preprocess' but pipeline.recipes is empty and preprocess.recipe is "
                "unset; add a recipe"
            )
        for r in runs:
            load_recipe(resolve_recipe_path(r.recipe, base))
