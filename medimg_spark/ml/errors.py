"""Errors of the ML stages."""

from __future__ import annotations

from medimg_spark.errors import ConfigError, MedimgError


class ModelError(MedimgError):
    """Base class of errors raised by ``medimg_spark.ml``."""


class ModelConfigError(ConfigError, ModelError):
    """A training/localisation config or model name is invalid."""


class ModelDataError(ModelError):
    """The input table is missing, empty, lacks a split/label, or does not match the model."""


class ModelLoadError(ModelError):
    """A saved model folder is missing, incomplete or was written by an incompatible version."""


class BinaryOnlyModelError(ModelConfigError):
    """A binary-only estimator (``mllib_gbt``, ``mllib_linear_svc``) was asked to fit K > 2 classes."""


class ThresholdOnMulticlassError(ModelConfigError):
    """A decision-threshold rule was set explicitly for a task with more than two classes."""
