"""``medimg run``: the whole pipeline from one YAML file, stage by stage through Parquet tables."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medimg_spark.config import MedimgConfig
from medimg_spark.config_models import (
    STAGES,
    FeaturesConfig,
    FeaturesRun,
    LocalizeConfig,
    LocalizeRun,
    ModelRun,
    PipelineConfig,
    RecipeRun,
    RecognizeConfig,
    RecognizeRun,
)
from medimg_spark.errors import ConfigError
from medimg_spark.runlog import RunLog
from medimg_spark.storage import is_local, join
from medimg_spark.summaries import FeaturesSummary

__all__ = [
    "STAGES",
    "FeaturesRun",
    "LocalizeRun",
    "ModelRun",
    "PipelineConfig",
    "RecipeRun",
    "StageOutcome",
    "format_progress",
    "load_pipeline",
    "localize_runs",
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


def run_features(cfg: MedimgConfig, pc: PipelineConfig, base: Path | None = None) -> FeaturesConfig:
    """The features stage's options: the ``features`` section, with the keys set in ``pipeline.features``.

    From ``processed`` without a recipe named, and with ``base`` given, the recipe is the
    pipeline's own when its preprocess stage runs exactly one (by its ``recipe_hash``).
    """
    fcfg = cfg.features.model_copy(update=pc.features.model_dump(exclude_none=True))
    if base is not None and fcfg.source == "processed" and fcfg.recipe is None and "preprocess" in pc.stages:
        runs = recipe_runs(cfg, pc)
        if len(runs) == 1:
            from medimg_spark.ops import load_recipe

            fcfg = fcfg.model_copy(
                update={"recipe": load_recipe(resolve_recipe_path(runs[0].recipe, base)).hash}
            )
    return fcfg


def localize_runs(cfg: MedimgConfig, pc: PipelineConfig) -> list[tuple[str, LocalizeConfig]]:
    """``(method, options)`` of every ``pipeline.localize`` entry: the ``localize`` section, with an
    entry's own ``options`` winning.

    Raises:
        ConfigError: an entry's options are not valid localize options.
    """
    out: list[tuple[str, LocalizeConfig]] = []
    for i, item in enumerate(pc.localize):
        if isinstance(item, str):
            out.append((item, cfg.localize))
            continue
        data = {**cfg.localize.model_dump(exclude_unset=True), **item.options}
        try:
            out.append((item.method, LocalizeConfig.model_validate(data)))
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise ConfigError(
                f"pipeline.localize[{i}].options ({item.method}): {bad}; use LocalizeConfig keys "
                f"({', '.join(LocalizeConfig.model_fields)})"
            ) from None
    return out


@dataclass
class StageOutcome:
    """One stage run of ``medimg run``: what it was, whether it finished, where its output is."""

    stage: str
    detail: dict[str, Any]
    status: str  # "finished" | "failed"
    seconds: float
    path: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def line(self) -> str:
        """One human-readable line (stderr on failure)."""
        what = " ".join(f"{k}={v}" for k, v in self.detail.items() if v is not None)
        head = f"  {self.status:8s} {self.stage}{(' ' + what) if what else ''} ({self.seconds:.1f} s)"
        if self.status == "failed":
            return f"{head}: {self.error}"
        shown = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return head + (f" → {self.path}" if self.path else "") + (f" [{shown}]" if shown else "")


class _Progress:
    """Records every stage of a run (finished or failed) next to the run log's events."""

    def __init__(self, log: RunLog, outcomes: list[StageOutcome]) -> None:
        self.log = log
        self.outcomes = outcomes

    @contextmanager
    def stage(self, name: str, **detail: Any) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        with self.log.stage(name, **detail) as rec:
            try:
                yield rec
            except BaseException as exc:
                self.outcomes.append(
                    StageOutcome(
                        name,
                        detail,
                        "failed",
                        round(time.perf_counter() - started, 3),
                        error=f"{type(exc).__name__}: {str(exc)[:500]}",
                    )
                )
                raise
        counts = {k: v for k, v in rec.items() if k != "path"}
        self.outcomes.append(
            StageOutcome(
                name, detail, "finished", round(time.perf_counter() - started, 3), rec.get("path"), counts
            )
        )


def format_progress(outcomes: list[StageOutcome]) -> str:
    """The stages of a run, one line each (what ``medimg run`` prints to stderr when it fails)."""
    done = [o for o in outcomes if o.status == "finished"]
    failed = [o for o in outcomes if o.status == "failed"]
    lines = [f"medimg run: {len(done)} stage run(s) finished, {len(failed)} failed:"]
    lines += [o.line() for o in outcomes]
    if not outcomes:
        lines.append("  (no stage started)")
    return "\n".join(lines)


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
    outcomes: list[StageOutcome] | None = None,
) -> dict[str, Any]:
    """Run the enabled stages in order and return their summaries.

    Args:
        deidentify: the ingest de-identification hook (None keeps identifiers).
        log: JSON-lines run log (stage start/end, counts, timings).
        incremental: ingest only new files (Structured Streaming checkpoint under ``out``).
        outcomes: filled with one :class:`StageOutcome` per stage run, also when a stage fails
            (then a ``pipeline_failed`` event lists them in the run log and the error is re-raised).
    """
    log = log or RunLog(None)
    outcomes = outcomes if outcomes is not None else []
    started = time.perf_counter()
    log.event("pipeline_start", stages=pc.stages, out=out, run_id=run_id)
    try:
        results = _run_stages(
            spark, cfg, pc, out, base, deidentify, run_id, _Progress(log, outcomes), incremental
        )
    except BaseException as exc:
        log.event(
            "pipeline_failed",
            error_class=type(exc).__name__,
            error=str(exc)[:2000],
            failed=[asdict(o) for o in outcomes if o.status == "failed"],
            finished=[asdict(o) for o in outcomes if o.status == "finished"],
            wall_time_s=round(time.perf_counter() - started, 3),
        )
        raise
    results["wall_time_s"] = round(time.perf_counter() - started, 3)
    log.event("pipeline_end", wall_time_s=results["wall_time_s"])
    return results


def _run_stages(
    spark: Any,
    cfg: MedimgConfig,
    pc: PipelineConfig,
    out: str,
    base: Path,
    deidentify: Any,
    run_id: str | None,
    log: _Progress,
    incremental: bool,
) -> dict[str, Any]:
    from medimg_spark.io.ingest import ingest, ingest_incremental

    results: dict[str, Any] = {}
    if "ingest" in pc.stages:
        inputs = [resolve_input(i, base) for i in pc.inputs]
        labels = resolve_input(pc.labels, base) if pc.labels else None
        run = ingest_incremental if incremental else ingest
        with log.stage("ingest", incremental=incremental) as rec:
            results["ingest"] = run(
                spark, inputs, out, cfg.ingest, labels_csv=labels, deidentify=deidentify, run_id=run_id
            )
            rec.update(_counts(results["ingest"]), path=out)
    fused: FeaturesSummary | None = None
    if "preprocess" in pc.stages:
        from medimg_spark.preprocess import RecipePass, preprocess_passes

        fuse = fused_recipe(cfg, pc, base)
        fcfg = run_features(cfg, pc, base)
        runs = recipe_runs(cfg, pc)
        passes = []
        for r in runs:
            path = resolve_recipe_path(r.recipe, base)
            fs = fcfg.set if fuse is not None and path == fuse else None
            passes.append(RecipePass(path, r.where, fs))
        results["preprocess"] = []
        if passes:
            # every recipe in one pass over the frames (one Spark job, see preprocess_passes)
            with log.stage("preprocess", recipes=",".join(r.recipe for r in runs)) as rec:
                summaries = preprocess_passes(spark, out, passes, use_mask=fcfg.use_mask)
                for summary in summaries:
                    fused = summary.pop("features", None) or fused
                results["preprocess"] = summaries
                rec.update(summed_counts(summaries), path=join(out, "processed"))
    if "volumes" in pc.stages:
        from medimg_spark.volumes.stage import run_volumes

        with log.stage("volumes", table=cfg.volumes.source) as rec:
            volumes = run_volumes(spark, out, cfg.volumes)
            results["volumes"] = volumes["assemble"]
            for step in ("filters", "localize"):
                if volumes[step] is not None:
                    results[f"volumes_{step}"] = volumes[step]
            rec.update(_counts(dict(volumes["assemble"])), path=join(out, "volumes"))
    if "quality" in pc.stages:
        from medimg_spark.preprocess import quality_report

        with log.stage("quality") as rec:
            results["quality"] = quality_report(spark, out)
            rec["path"] = join(out, "metrics")
    if "features" in pc.stages:
        from medimg_spark.features import compute_features

        fcfg = run_features(cfg, pc, base)
        with log.stage("features", set=fcfg.set, recipe=fcfg.recipe) as rec:
            # computed in the preprocess stage's pass over the frames (fused_recipe), else here
            results["features"] = fused or compute_features(
                spark,
                out,
                source=fcfg.source,
                feature_set=fcfg.set,
                use_mask=fcfg.use_mask,
                recipe=fcfg.recipe,
            )
            rec.update(_counts(results["features"]), path=results["features"]["path"])
    ml_stages = [s for s in ("train", "predict", "evaluate") if s in pc.stages]
    if ml_stages:
        from medimg_spark.ml import evaluate, parse_train_config, predict, train

        for name, estimator, options in (run for m in pc.models for run in m.runs(base)):
            model_dir = join(out, "models", name)
            if "train" in pc.stages:
                tcfg = parse_train_config(
                    {**train_options(cfg, options), "model_dir": model_dir, "name": name}
                )
                with log.stage("train", model=name) as rec:
                    results.setdefault("train", []).append(train(spark, out, estimator, tcfg))
                    rec.update(_counts(results["train"][-1]), path=model_dir)
            if "predict" in pc.stages:
                with log.stage("predict", model=name) as rec:
                    results.setdefault("predict", []).append(
                        predict(spark, out, model_dir, split=pc.predict_split)
                    )
                    rec.update(_counts(results["predict"][-1]), path=results["predict"][-1].get("partition"))
            if "evaluate" in pc.stages:
                for split in pc.evaluate_splits:
                    with log.stage("evaluate", model=name, split=split) as rec:
                        results.setdefault("evaluate", []).append(evaluate(spark, out, model_dir, split))
                        rec.update(_counts(results["evaluate"][-1]), path=results["evaluate"][-1].get("path"))
    if "localize" in pc.stages:
        from medimg_spark.ml import localize

        for method, lcfg in localize_runs(cfg, pc):
            with log.stage("localize", method=method) as rec:
                results.setdefault("localize", []).append(localize(spark, out, method, lcfg))
                summary = results["localize"][-1]
                rec.update(_counts(summary), path=summary.get("partition", summary.get("path")))
                rec["k"] = lcfg.k
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
    return results


def fused_recipe(cfg: MedimgConfig, pc: PipelineConfig, base: Path) -> str | None:
    """The recipe path whose preprocess run also computes the features stage's table, or None.

    ``medimg run`` fuses the two stages (one pass over the frames: no write and re-read of the
    processed pixels) when both run, the features come from ``processed`` and their recipe is one of
    the preprocess stage's recipes named by its ``recipe_hash`` (as :func:`run_features` names the
    pipeline's only recipe). A recipe named by name is left to the features stage, which checks that
    ``processed`` holds one version of it.
    """
    if not {"preprocess", "features"} <= set(pc.stages):
        return None
    fcfg = run_features(cfg, pc, base)
    if fcfg.source != "processed" or fcfg.recipe is None or len(fcfg.recipe) < 8:
        return None
    from medimg_spark.ops import load_recipe

    found = []
    for r in recipe_runs(cfg, pc):
        path = resolve_recipe_path(r.recipe, base)
        if load_recipe(path).hash.startswith(fcfg.recipe):
            found.append(path)
    return found[0] if len(set(found)) == 1 and len(found) == 1 else None


def summed_counts(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The numeric fields of several summaries of one stage run, added up (``seconds``: the largest)."""
    total: dict[str, Any] = {}
    for summary in summaries:
        for k, v in _counts(dict(summary)).items():
            total[k] = max(total.get(k, v), v) if k == "seconds" else total.get(k, 0) + v
    return total


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
    if "localize" in pc.stages:
        localize_runs(cfg, pc)
    if "features" in pc.stages:
        from medimg_spark.features import load_feature_set

        fcfg = run_features(cfg, pc)
        runs = recipe_runs(cfg, pc) if "preprocess" in pc.stages else []
        if fcfg.source == "processed" and fcfg.recipe is None and len(runs) > 1:
            names = ", ".join(r.recipe for r in runs)
            raise ConfigError(
                f"pipeline.features: the preprocess stage runs {len(runs)} recipes ({names}) and features are "
                "per (image, recipe): set pipeline.features.recipe (or features.recipe) to one of them"
            )
        fset = fcfg.set
        try:
            load_feature_set(fset)
        except Exception as err:
            where = "features.set" if pc.features.set is None else "pipeline.features.set"
            raise ConfigError(f"{where}: {err}") from None
    if "train" in pc.stages:
        from medimg_spark.ml import parse_train_config
        from medimg_spark.ml.models import ESTIMATORS, check_model_options

        for m in pc.models:
            try:
                model_runs = m.runs(base)
            except ConfigError:
                raise
            except Exception as err:
                raise ConfigError(f"pipeline.models[{m.name}].experiment: {err}") from None
            for name, estimator, options in model_runs:
                where = f"pipeline.models[{m.name}]" + ("" if name == m.name else f" (member {name})")
                if estimator not in ESTIMATORS:
                    known = ", ".join(ESTIMATORS.names())
                    raise ConfigError(f"{where}.model {estimator!r} is unknown; choose from {known}")
                try:
                    check_model_options(estimator, parse_train_config(train_options(cfg, options)))
                except Exception as err:
                    raise ConfigError(f"{where}.train: {err}") from None

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
