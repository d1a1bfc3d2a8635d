"""``medimg run``: the whole pipeline from one YAML file, stage by stage through Parquet tables."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from medimg_spark.config import MedimgConfig, StrictModel, validate_section
from medimg_spark.errors import ConfigError

#: Stages in pipeline order; each reads only tables written by the stages before it.
STAGES = ("ingest",)


class PipelineConfig(StrictModel):
    """The ``pipeline`` section."""

    out: str | None = Field(None, description="Output directory (the --out flag overrides it).")
    inputs: list[str] = Field(
        default_factory=list, description="Files/folders; 'pkg:MODULE/SUBDIR' = package data."
    )
    labels: str | None = None
    stages: list[str] = Field(default_factory=lambda: list(STAGES))


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
    if "://" in item:
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


def run_pipeline(spark: Any, cfg: MedimgConfig, pc: PipelineConfig, out: str, base: Path) -> dict[str, Any]:
    """Run the enabled stages in order and return their summaries."""
    from medimg_spark.io.ingest import ingest

    started = time.perf_counter()
    results: dict[str, Any] = {}
    if "ingest" in pc.stages:
        inputs = [resolve_input(i, base) for i in pc.inputs]
        labels = resolve_input(pc.labels, base) if pc.labels else None
        results["ingest"] = ingest(spark, inputs, out, cfg.ingest, labels_csv=labels)
    results["wall_time_s"] = round(time.perf_counter() - started, 3)
    return results
