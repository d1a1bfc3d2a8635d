"""Recipes: an ordered list of typed op steps, loaded from YAML and validated before any Spark work.

A recipe file::

    name: ct_lung
    description: HU -> lung window -> denoise -> CLAHE
    steps:
      - op: rescale
      - op: window
        preset: lung
      - op: clahe
        clip_limit: 2.0

Every op has one pydantic model (``extra="forbid"``, typed parameters) next to its function in
its op module, registered by op name in :data:`~medimg_spark.ops._step.STEPS`; the step list is a
discriminated union on ``op`` built from that registry, so a bad recipe fails in :func:`load_recipe` with a
:class:`RecipeConfigError` naming the step index, the op, the parameter and the fix.

Running a recipe (:func:`apply_recipe`) threads ``(image, mask)`` through the steps, MONAI-``Compose``
style: image ops replace the image, segmentation ops replace (or combine into) the mask, mask ops
post-process the mask, and geometric ops (resize, crop) move image and mask together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medimg_spark import resources as shipped_resources
from medimg_spark.errors import ConfigError

# The op modules: importing one registers its steps in STEPS. A new op module is added here.
from medimg_spark.ops import (  # noqa: F401
    clean,
    convert,
    denoise,
    enhance,
    filters,
    morphology,
    normalize,
    segment,
)
from medimg_spark.ops._common import (
    Array,
    RecipeConfigError,
    RecipeStepError,
    as_supported,
    check_output,
)
from medimg_spark.ops._step import STEPS, Meta, Step

RECIPES_DIR = shipped_resources.root().joinpath("recipes")
"""The shipped recipes (``medimg_spark/resources/recipes``; a folder inside the wheel when zipped)."""


class RecipeFileError(RecipeConfigError, ConfigError):
    """The recipe file is missing, is not YAML or is invalid (a :class:`~medimg_spark.errors.ConfigError`)."""


STEP_MODELS: dict[str, type[Step]] = {name: STEPS.get(name) for name in STEPS}
"""Op name → step model (a snapshot of :data:`~medimg_spark.ops._step.STEPS`)."""

if TYPE_CHECKING:
    AnyStep = Step
else:
    AnyStep = Annotated[Union[tuple(STEP_MODELS.values())], Field(discriminator="op")]  # noqa: UP007


def _segment_ops() -> str:
    return ", ".join(STEPS.names(kind="segment"))


class Recipe(BaseModel):
    """A named, ordered list of steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str | None = None
    steps: list[AnyStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _mask_order(self) -> Recipe:
        has_mask = False
        for i, step in enumerate(self.steps):
            if step.kind == "segment":
                has_mask = True
            elif step.kind == "mask" and not has_mask:
                raise ValueError(
                    f"step {i} (op '{step.op}') needs a mask: put a segmentation step "
                    f"({_segment_ops()}) before it"
                )
        return self

    @property
    def segments(self) -> bool:
        """Whether the recipe produces a mask."""
        return any(s.kind == "segment" for s in self.steps)

    @property
    def keeps_units(self) -> bool:
        """Whether the output is in the input's units: no step changes them (:meth:`Step.changes_units`)."""
        return not any(s.changes_units() for s in self.steps)

    def canonical_json(self) -> str:
        """Canonical JSON of ``name`` and the steps with every parameter (defaults included), sorted keys.

        The description is documentation and not part of it; optional parameters added later (such as an
        enhancement's ``guard``) are left out while unset (:meth:`Step.canonical_params`).
        """
        body = {"name": self.name, "steps": [s.canonical_params() for s in self.steps]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @property
    def hash(self) -> str:
        """sha256 hex digest of :meth:`canonical_json`: equal for recipes that process frames identically."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def __call__(
        self, image: Array, meta: Meta | None = None, trace: list[str] | None = None
    ) -> tuple[Array, Array | None]:
        return apply_recipe(self, image, meta, trace)


def _describe(err: Mapping[str, Any], data: Any) -> str:
    loc = list(err.get("loc", ()))
    typ = str(err.get("type", ""))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if not loc or loc[0] != "steps" or len(loc) < 2 or not isinstance(loc[1], int):
        where = ".".join(str(p) for p in loc) or "recipe"
        if typ == "extra_forbidden":
            return f"{where}: unknown field; a recipe has name, description and steps"
        return f"{where}: {msg}"
    index = loc[1]
    raw = data.get("steps", [])[index] if isinstance(data, Mapping) else None
    op = raw.get("op") if isinstance(raw, Mapping) else None
    head = f"step {index}" + (f" (op '{op}')" if op else "")
    if typ == "union_tag_invalid":
        return f"{head}: unknown op '{op}'; valid ops: {', '.join(sorted(STEP_MODELS))}"
    if typ == "union_tag_not_found":
        return f"{head}: missing 'op'; every step needs one of: {', '.join(sorted(STEP_MODELS))}"
    if typ == "model_type" or typ == "model_attributes_type":
        return f"{head}: a step must be a mapping like {{op: gaussian, sigma: 1.0}}, got {err.get('input')!r}"
    params = loc[3:] if len(loc) > 3 else []
    if not params:
        return f"{head}: {msg}"
    param = ".".join(str(p) for p in params)
    if typ == "extra_forbidden" and op in STEP_MODELS:
        valid = [f for f in STEP_MODELS[op].model_fields if f != "op"]
        return (
            f"{head}, parameter '{param}': unknown parameter; valid parameters of '{op}': "
            f"{', '.join(valid) or '(none)'}"
        )
    if typ == "missing":
        return f"{head}, parameter '{param}': required parameter is missing"
    if typ == "value_error":
        return f"{head}, parameter '{param}': {msg}"
    return f"{head}, parameter '{param}': {msg} (got {err.get('input')!r})"


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping (e.g. parsed YAML).

    Raises:
        RecipeFileError: with one line per problem, each naming the step index, op and parameter.
    """
    if not isinstance(data, Mapping):
        raise RecipeFileError(
            f"recipe {source}: expected a mapping with name and steps, got {type(data).__name__}"
        )
    try:
        return Recipe.model_validate(dict(data))
    except ValidationError as exc:
        lines = [_describe(e, data) for e in exc.errors()]
        raise RecipeFileError(f"invalid recipe {source}:\n  " + "\n  ".join(lines)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a recipe YAML file.

    ``path`` may also be the name of a recipe: ``./conf/recipes/<name>.yaml`` in the working directory,
    else the shipped ``medimg_spark/resources/recipes/<name>.yaml`` (``"ct_lung"``); an existing path wins.

    Raises:
        RecipeFileError: file missing or unreadable, invalid YAML, or invalid recipe.
    """
    import yaml

    found = shipped_resources.resolve("recipes", path, RecipeFileError)
    try:
        data = yaml.safe_load(found.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeFileError(f"recipe {found.location} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise RecipeFileError(f"recipe file {found.location} cannot be read: {exc}") from None
    return parse_recipe(data, found.location)


def resolve_recipe(name: str) -> str:
    """An existing recipe path, ``./conf/recipes/<name>.yaml``, or the name of a shipped recipe as given.

    A shipped recipe is returned by name (it may live inside a wheel, with no filesystem path);
    :func:`load_recipe` resolves it the same way. (Here rather than in ``cli`` so the pipeline
    resolves recipes without importing the command line.)

    Raises:
        ConfigError: neither a file nor a known name; the message lists the shipped recipes.
    """
    found = shipped_resources.resolve("recipes", name)
    return found.name if found.origin == "shipped" else found.location


def apply_recipe(
    recipe: Recipe, image: Array, meta: Meta | None = None, trace: list[str] | None = None
) -> tuple[Array, Array | None]:
    """Run ``recipe`` on one frame in plain Python, then check the output is not degenerate.

    Args:
        recipe: a validated recipe.
        image: (rows, cols) or (rows, cols, 3) array; converted by :func:`as_supported` first.
        meta: header values keyed like the ``images`` columns (``rescale_slope``, ``rescale_intercept``,
            ``window_center``, ``window_width``, ``photometric``, ``pixel_spacing``, ...); may be None.
        trace: when a list, ``"<index>:<op>: <note>"`` is appended for every step whose
            :meth:`~medimg_spark.ops._step.Step.explain` has a note (the branch it took on this frame).

    Returns:
        ``(image, mask)``; ``mask`` is a uint8 0/1 (rows, cols) array, or None if no step segments.

    Raises:
        RecipeStepError: a step failed; ``step_index``/``op``/``cause`` say which and why.
        DegenerateOutputError: the output is constant, (mostly) non-finite or lost most of the input's
            information (:func:`~medimg_spark.ops._common.check_output`); the trace holds every step's note.
    """
    try:
        img = as_supported(image)
    except Exception as exc:
        raise RecipeStepError(-1, "input", exc) from exc
    source = img
    mask: Array | None = None
    for i, step in enumerate(recipe.steps):
        try:
            img, mask, note = step.explain(img, mask, meta)
        except Exception as exc:
            raise RecipeStepError(i, step.op, exc) from exc
        if note is not None and trace is not None:
            trace.append(f"{i}:{step.op}: {note}")
    check_output(source, img)
    return img, mask
