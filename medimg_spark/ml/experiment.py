"""An experiment file (e.g. ``conf/pneumonia.yaml``): feature set + shipped model (+ its members) + baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medimg_spark.features import FeatureSet, load_feature_set
from medimg_spark.ml.errors import ModelConfigError
from medimg_spark.ml.train import TrainConfig


class ModelSpec(BaseModel):
    """A model to train: registry name, display name and its train config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    name: str | None = Field(None, description="name used for files and tables (default: model)")
    train: TrainConfig = TrainConfig()

    @property
    def label(self) -> str:
        """The display / file name."""
        return self.name or self.model


class ExperimentConfig(BaseModel):
    """The shipped configuration of a task, plus baselines to benchmark it against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    feature_set: str | dict[str, Any]
    members: list[ModelSpec] = Field(
        [], description="models trained before the shipped one (the members a shipped `vote` names)"
    )
    shipped: ModelSpec
    baselines: list[ModelSpec] = []

    def shipped_runs(self) -> list[ModelSpec]:
        """The members, then the shipped model: what training the shipped configuration takes, in order."""
        return [*self.members, self.shipped]

    def features(self) -> FeatureSet:
        """The resolved feature set."""
        return load_feature_set(self.feature_set)


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML.

    Raises:
        ModelConfigError: missing file or invalid content.
    """
    p = Path(path)
    if not p.exists():
        raise ModelConfigError(f"experiment file {p} does not exist; pass e.g. conf/pneumonia.yaml")
    try:
        return ExperimentConfig.model_validate(yaml.safe_load(p.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"invalid experiment file {p}: {exc}") from exc
