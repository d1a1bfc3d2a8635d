"""The stage registry: every ``medimg VERB`` with its help, its arguments and its run function.

The argparse subcommands (``medimg --help``), the pipeline's ``stages:`` validation and order, and
the ``jobs/*.py`` spark-submit entry points are all derived from :data:`STAGES`. A stage's
argument and run functions are named as ``"module:function"`` and imported on first use, so this
module imports nothing heavy and neither ``cli`` nor ``pipeline`` imports the other to list stages.

Adding a stage (verb): a ``register_stage(...)`` line here, its ``add_args``/``run`` functions
(``cmd_<verb>`` in :mod:`medimg_spark.cli`), a ``jobs/<verb>.py`` entry point, and a test; with
``pipeline=True`` also its step in :func:`medimg_spark.pipeline.run_pipeline`.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medimg_spark.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class Stage:
    """One ``medimg`` verb.

    Attributes:
        name: the verb.
        help: one line for ``medimg --help``.
        add_args: ``"module:function"`` adding the verb's arguments to its subparser.
        run: ``"module:function"`` taking the parsed arguments and returning the exit code.
        pipeline: whether ``medimg run`` can run it as a ``pipeline.stages`` entry (registration
            order is pipeline order; each reads only tables of the stages before it).
        job: the ``jobs/<job>.py`` spark-submit entry point (default: the verb).
    """

    name: str
    help: str
    add_args: str
    run: str
    pipeline: bool = False
    job: str = ""

    @property
    def job_file(self) -> str:
        """``jobs/<job>.py``."""
        return f"jobs/{self.job or self.name}.py"

    def load_add_args(self) -> Callable[[argparse.ArgumentParser], None]:
        """The function adding this verb's arguments (its module is imported now)."""
        fn: Callable[[argparse.ArgumentParser], None] = _load(self.add_args)
        return fn

    def load_run(self) -> Callable[[argparse.Namespace], int]:
        """The verb's run function (its module is imported now)."""
        fn: Callable[[argparse.Namespace], int] = _load(self.run)
        return fn


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class UnknownStageError(UnknownNameError):
    """No stage is registered under that name (a ConfigError: exit code 2)."""


STAGES: Registry[Stage] = Registry(
    "stage", hint="add one with register_stage in medimg_spark/stages.py", error=UnknownStageError
)


def register_stage(
    name: str, help: str, add_args: str, run: str, *, pipeline: bool = False, job: str = ""
) -> Stage:
    """Register a verb; ``add_args``/``run`` are ``"module:function"``."""
    stage = Stage(name, help, add_args, run, pipeline, job)
    return STAGES.register(name, stage, help=help, pipeline=pipeline)


def pipeline_stages() -> tuple[str, ...]:
    """The stages ``medimg run`` can run, in pipeline order."""
    return STAGES.names(pipeline=True)


_CLI = "medimg_spark.cli"


def _verb(name: str, help: str, *, pipeline: bool = False, job: str = "") -> None:
    register_stage(name, help, f"{_CLI}:_add_{name}", f"{_CLI}:cmd_{name}", pipeline=pipeline, job=job)


_verb("ingest", "read image files into images/instances/quarantine Parquet tables", pipeline=True)
_verb("deid", "write de-identified DICOM files plus an audit table")
_verb("reidentify", "look a pseudonym up in the encrypted vault")
_verb("access", "access control enforced by keys: policy, KMS, encrypted tables, audit log (ACTION --help)")
_verb("preprocess", "apply a recipe to DIR/images, writing DIR/processed", pipeline=True)
_verb("volumes", "assemble series into 3-D volumes (LPS geometry, checks) → DIR/volumes", pipeline=True)
_verb("quality", "aggregate quality before/after into DIR/metrics/quality.json", pipeline=True)
_verb("features", "compute a feature set per frame into DIR/features", pipeline=True)
_verb("train", "train a classifier on DIR/features (train split; choices on val)", pipeline=True)
_verb("predict", "batch prediction of DIR/features into DIR/predictions", pipeline=True)
_verb(
    "evaluate", "metrics of a saved model on a split → DIR/metrics/eval_<model>_<split>.json", pipeline=True
)
_verb("localize", "regions per frame (kmeans|dbscan|gmm) or dataset clusters (mllib_*)", pipeline=True)
_verb(
    "recognize",
    "superpixel regions per frame, a region softmax trained from image labels (MIL) → DIR/region_predictions",
    pipeline=True,
)
_verb("report", "write DIR/report/index.html: one self-contained HTML report", pipeline=True)
register_stage(
    "export",
    "write a table's frames/volumes/masks as NIfTI, NRRD, DICOM, DICOM-SEG, PNG or JPEG under "
    "DIR/exports (+ a manifest table)",
    "medimg_spark.export.stage:add_args",
    "medimg_spark.export.stage:run",
)
_verb("run", "run the pipeline stages listed in a YAML config", job="pipeline")
