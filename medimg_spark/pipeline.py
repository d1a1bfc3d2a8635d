"""``medimg run``: the whole pipeline from one YAML file, stage by stage through Parquet tables."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medimg_spark.config import MedimgConfig, StrictModel, validate_section
from medimg_spark.errors import ConfigError
from medimg_spark.runlog import RunLog
from medimg_spark.stages import pipeline_stages
from medimg_spark.storage import is_local, join

#: Stages in pipeline order (the ``pipeline=True`` entries of :data:`medimg_spark.stages.STAGES`);
#: each reads only tables written by the stages before it.
STAGES: tuple[str, ...] = pipeline_stages()


class RecipeRun(StrictModel):
    """One recipe applied by the preprocess stage."""

    recipe: str = Field(
        description="Recipe YAML path, or a recipe name (./conf/recipes/ or shipped; `medimg preprocess --help` lists them)."
    )
    where: str | None = Field(None, description="SQL filter on the images table.")


class FeaturesRun(StrictModel):
    """The feature set computed by the features stage."""

    source: Literal["images", "processed"] = "images"
    set: str = Field(
        "texture",
        description="Feature set name (./conf/features/ or shipped; `medimg features --help` lists them) or YAML path.",
    )


class ModelRun(StrictModel):
    """One model trained (or, without the train stage, loaded) by the pipeline.

    Either ``model`` (+ ``train``) or ``experiment``: the shipped model of an experiment file such as
    ``conf/pneumonia.yaml`` (its estimator and training options, so they are written down once).
    """

    name: str = Field(description="Saved under DIR/models/<name>; names the metrics files.")
    model: str | None = Field(
        None, description="Estimator: sk_svc, sk_rf, sk_hgb, sk_logreg, sk_ensemble, mllib_*."
    )
    train: dict[str, Any] = Field(default_factory=dict, description="Training options (TrainConfig).")
    experiment: str | None = Field(None, description="Experiment YAML whose shipped model to use.")

    def resolved(self, base: Path) -> tuple[str, dict[str, Any]]:
        """``(estimator, train options)``, from the experiment file when one is named."""
        if self.experiment is None:
            if self.model is None:
                raise ConfigError(f"pipeline.models[{self.name}]: set 'model' or 'experiment'")
            return self.model, dict(self.train)
        if self.model is not None or self.train:
            raise ConfigError(
                f"pipeline.models[{self.name}]: 'experiment' replaces 'model' and 'train'; drop them"
            )
        from medimg_spark.ml.experiment import load_experiment

        path = Path(self.experiment)
        exp = load_experiment(path if path.is_absolute() else base / path)
        return exp.shipped.model, exp.shipped.train.model_dump(exclude_unset=True)


class PipelineConfig(StrictModel):
    """The ``pipeline`` section."""

    out: str | None = Field(None, description="Output directory (the --out flag overrides it).")
    inputs: list[str] = Field(
        default_factory=list, description="Files/folders; 'pkg:MODULE/SUBDIR' = package data."
    )
    labels: str | None = None
    stages: list[str] = Field(default_factory=lambda: list(STAGES))
    recipes: list[RecipeRun] = Field(default_factory=list, description="Recipes of the preprocess stage.")
    features: FeaturesRun = Field(default_factory=FeaturesRun)
    models: list[ModelRun] = Field(
        default_factory=list, description="Models of the train/predict/evaluate stages."
    )
    evaluate_splits: list[str] = Field(default_factory=lambda: ["val"])
    predict_split: str | None = Field(None, description="Split the predict stage scores (default: all rows).")
    localize: list[Literal["kmeans", "dbscan", "gmm", "mllib_kmeans", "mllib_gmm"]] = Field(
        default_factory=list
    )


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
    """Validate the ``pipeline`` section and its stage names."""
    pc: PipelineConfig = validate_section(
        PipelineConfig, cfg.extra_sections.get("pipeline"), f"{source}: pipeline"
    )
    unknown = [s for s in pc.stages if s not in STAGES]
    if unknown:
        raise ConfigError(
            f"{source}: pipeline.stages has unknown stage(s) {unknown}; choose from {list(STAGES)}"
        )
    return pc


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
        for r in pc.recipes:
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

        with log.stage("features", set=pc.features.set) as rec:
            results["features"] = compute_features(
                spark, out, source=pc.features.source, feature_set=pc.features.set
            )
            rec.update(_counts(results["features"]))
    ml_stages = [s for s in ("train", "predict", "evaluate") if s in pc.stages]
    if ml_stages:
        from medimg_spark.ml import evaluate, parse_train_config, predict, train

        for m in pc.models:
            model_dir = join(out, "models", m.name)
            if "train" in pc.stages:
                estimator, options = m.resolved(base)
                tcfg = parse_train_config({**options, "model_dir": model_dir, "name": m.name})
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
                results.setdefault("localize", []).append(localize(spark, out, method))
                rec.update(_counts(results["localize"][-1]))
    if "report" in pc.stages:
        from medimg_spark.report import build_report

        with log.stage("report") as rec:
            results["report"] = build_report(spark, out)
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


def validate_recipes(pc: PipelineConfig, base: Path) -> None:
    """Load every recipe, the feature set and the model options, so a bad one fails before Spark starts."""
    from medimg_spark.ops import load_recipe

    if any(s in pc.stages for s in ("train", "predict", "evaluate")) and not pc.models:
        raise ConfigError(
            "pipeline.stages has train/predict/evaluate but pipeline.models is empty; add a model"
        )
    if "features" in pc.stages:
        from medimg_spark.features import load_feature_set

        try:
            load_feature_set(pc.features.set)
        except Exception as err:
            raise ConfigError(f"pipeline.features.set: {err}") from None
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
                parse_train_config(options)
            except Exception as err:
                raise ConfigError(f"pipeline.models[{m.name}].train: {err}") from None

    if "preprocess" in pc.stages:
        if not pc.recipes:
            raise ConfigError("pipeline.stages has 'preprocess' but pipeline.recipes is empty; add a recipe")
        for r in pc.recipes:
            load_recipe(resolve_recipe_path(r.recipe, base))
