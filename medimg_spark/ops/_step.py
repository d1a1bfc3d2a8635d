"""The recipe step base class and the op registry every op module registers its steps in.

An op is a numpy function plus one :class:`Step` model in the same module, registered with
:func:`register_step`; :mod:`medimg_spark.ops.recipe` builds the recipe's discriminated union, its
validation and its error messages from :data:`STEPS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict

from medimg_spark.ops._common import Array, RecipeConfigError
from medimg_spark.registry import Registry, UnknownNameError

Meta = Mapping[str, Any]

StepKind = Literal["image", "segment", "mask", "geometry"]


class UnknownOpError(UnknownNameError, RecipeConfigError):
    """An op name that no module registered."""


STEPS: Registry[type[Step]] = Registry(
    "op",
    hint="add one as a function plus a @register_step Step model in a module of medimg_spark/ops "
    "(a new module goes in medimg_spark/ops/recipe.py's import of the op modules)",
    error=UnknownOpError,
)
"""Op name → step model, in the order the op modules register them."""


def meta_value(meta: Meta | None, key: str) -> Any:
    """``meta[key]``, or None when missing, None or a non-finite float."""
    if meta is None:
        return None
    value = meta.get(key)
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def odd_positive(value: int) -> int:
    """``value`` when it is a positive odd integer (a kernel size).

    Raises:
        ValueError: otherwise (pydantic turns it into a parameter error).
    """
    if value < 1 or value % 2 == 0:
        raise ValueError(f"must be a positive odd integer such as 3, 5 or 7, got {value}")
    return value


class Step(BaseModel):
    """Base of every step model. ``kind`` says what the step reads and writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[StepKind] = "image"
    omit_when_none: ClassVar[frozenset[str]] = frozenset()
    """Optional parameters left out of :meth:`canonical_params` while None (added after recipes were
    hashed: a recipe that does not set them keeps its hash)."""
    op: str

    def canonical_params(self) -> dict[str, Any]:
        """Every parameter (defaults included) as JSON values, but :attr:`omit_when_none` fields that are None."""
        body = self.model_dump(mode="json")
        for key in self.omit_when_none:
            if body.get(key) is None:
                body.pop(key, None)
        return body

    def image_op(self, image: Array, meta: Meta | None) -> Array:
        """Transform the image (``kind == "image"``)."""
        raise RecipeConfigError(f"op '{self.op}' has no image transform")

    def run(self, image: Array, mask: Array | None, meta: Meta | None) -> tuple[Array, Array | None]:
        """Apply this step to the ``(image, mask)`` state."""
        return self.image_op(image, meta), mask

    def explain(
        self, image: Array, mask: Array | None, meta: Meta | None
    ) -> tuple[Array, Array | None, str | None]:
        """Apply this step and say which branch it took on this frame.

        Returns:
            ``(image, mask, note)``: the :meth:`run` result and a short, PHI-free note such as
            ``"skipped (noise x1.31 > 1.15)"``, or None when there is nothing to say (this base
            implementation). :func:`~medimg_spark.ops.recipe.apply_recipe` records the notes in its trace.
        """
        image, mask = self.run(image, mask, meta)
        return image, mask, None

    def changes_units(self) -> bool:
        """Whether this step maps values to other units (HU, [0, 1], a display range) rather than keeping them.

        Decides the fixed scale of the before/after quality metrics (:func:`medimg_spark.quality.paired_metrics`):
        the ops in :data:`UNIT_CHANGING_OPS`, and ``to_float`` unless ``scale: none``.
        """
        if self.op == "to_float":
            return getattr(self, "scale", "none") != "none"
        return self.op in UNIT_CHANGING_OPS


UNIT_CHANGING_OPS: frozenset[str] = frozenset(
    {
        "rescale",
        "window",
        "minmax",
        "zscore",
        "percentile_scale",
        "contrast_stretch",
        "equalize",
        "clahe",
    }
)
"""Ops whose output is in other units than their input (physical units, [0, 1] or the dtype's display range).

Filters, denoising, sharpening, gamma (on the image's own range), clipping, geometry and mask ops keep units.
"""

S = TypeVar("S", bound=type[Step])


def op_name(model: type[Step]) -> str:
    """The op name of a step model: the single value of its ``op: Literal[...]`` field."""
    args = get_args(model.model_fields["op"].annotation)
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{model.__name__}.op must be annotated Literal['<op name>'], got {args}")
    return args[0]


def register_step(model: S) -> S:
    """Class decorator: register a step model in :data:`STEPS` under its ``op`` literal.

    The help text is the first line of the class docstring; ``kind`` is kept as metadata.
    """
    doc = (model.__doc__ or "").strip().splitlines()
    STEPS.register(op_name(model), model, help=doc[0] if doc else "", kind=model.kind)
    return model
