"""Files shipped inside the package: recipes, feature sets, privacy tables, Spark defaults.

Everything is read through :func:`importlib.resources.files`, so it works from a source checkout, an
installed wheel, and a wheel or zip on ``sys.path`` (``spark-submit --py-files medimg_spark-*.whl``)::

    recipes/<name>.yaml           preprocessing recipes (``medimg preprocess --recipe <name>``)
    features/<name>.yaml          feature sets (``medimg features --set <name>``)
    privacy/pixel_rules.yaml      default burned-in-text rules (Clean Pixel Data)
    privacy/confidentiality_profile_attributes.json   DICOM PS3.15 Table E.1-1 (see privacy/README.md)
    spark-defaults.conf           Spark settings for ``medimg`` runs outside ``spark-submit``

:func:`resolve` turns "a name or a path" into one file: an existing path wins, then
``./conf/<kind>/<name>.yaml`` in the working directory, then the shipped file. No pyspark here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal, get_args

from medimg_spark.errors import ConfigError

Kind = Literal["recipes", "features"]
"""The kinds of YAML file a user names on the command line or in a config."""

KINDS: tuple[Kind, ...] = get_args(Kind)
SPARK_DEFAULTS = "spark-defaults.conf"
PIXEL_RULES = "privacy/pixel_rules.yaml"
PROFILE_TABLE = "privacy/confidentiality_profile_attributes.json"

_FLAG = {"recipes": "--recipe", "features": "--set"}
_NOUN = {"recipes": "recipe", "features": "feature set"}


class ResourceNotFoundError(ConfigError):
    """A shipped file is missing: the package is incomplete (reinstall it)."""


@dataclass(frozen=True)
class Resource:
    """One resolved file: a user's path, a ``./conf/<kind>/`` file or a shipped one.

    Attributes:
        kind: ``recipes`` or ``features``.
        name: the file's stem (``ct_lung``).
        origin: ``path`` (given as a path), ``cwd`` (``./conf/<kind>/<name>.yaml``) or ``shipped``.
        location: where it was found, for messages and run records (a filesystem path, or
            ``medimg_spark/resources/<kind>/<name>.yaml`` for a shipped file).
    """

    kind: str
    name: str
    origin: Literal["path", "cwd", "shipped"]
    location: str
    file: Traversable

    def read_text(self) -> str:
        """The file's text (UTF-8)."""
        return self.file.read_text(encoding="utf-8")


def root() -> Traversable:
    """The ``medimg_spark/resources`` folder (a directory, or a folder inside a zip/wheel)."""
    return resources.files(__name__)


def shipped(relative: str) -> Traversable:
    """A shipped file by its path under ``medimg_spark/resources`` (e.g. ``privacy/pixel_rules.yaml``).

    Raises:
        ResourceNotFoundError: the package does not hold it.
    """
    node = root()
    for part in relative.split("/"):
        node = node.joinpath(part)
    if not node.is_file():
        raise ResourceNotFoundError(
            f"packaged file medimg_spark/resources/{relative} is missing; reinstall medimg-spark "
            "(or rebuild the wheel with `make dist`)"
        )
    return node


def read_shipped(relative: str) -> str:
    """The text of a shipped file (see :func:`shipped`)."""
    return shipped(relative).read_text(encoding="utf-8")


def shipped_names(kind: Kind) -> list[str]:
    """The names (file stems) of the shipped YAML files of ``kind``, sorted."""
    folder = root().joinpath(kind)
    if not folder.is_dir():
        return []
    return sorted(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))


def shipped_file(kind: Kind, name: str) -> Traversable:
    """The shipped YAML file ``<kind>/<name>.yaml``.

    Raises:
        ResourceNotFoundError: no shipped file has that name.
    """
    if name not in shipped_names(kind):
        raise ResourceNotFoundError(
            f"no shipped {kind} file named {name!r}; shipped: {', '.join(shipped_names(kind)) or 'none'}"
        )
    return root().joinpath(kind).joinpath(f"{name}.yaml")


def _as_name(spec: str) -> str | None:
    """The bare name in ``spec`` (``ct_lung`` or ``ct_lung.yaml``), or None when it is a path."""
    p = Path(spec)
    if len(p.parts) != 1 or p.suffix not in ("", ".yaml"):
        return None
    return p.stem if p.suffix == ".yaml" else spec


def resolve(kind: Kind, spec: str | Path, error: type[ConfigError] = ConfigError) -> Resource:
    """Resolve a user's "name or path" of ``kind``.

    Order: an existing file at ``spec``; ``./conf/<kind>/<name>.yaml`` in the working directory;
    the shipped ``<kind>/<name>.yaml``.

    Args:
        kind: ``recipes`` or ``features``.
        spec: a YAML path, or a name (``ct_lung``, ``ct_lung.yaml``).
        error: the :class:`ConfigError` subclass raised when nothing matches.

    Raises:
        ConfigError: (as ``error``) the path does not exist, or the name is neither in ``./conf/<kind>``
            nor shipped; the message lists the shipped names.
    """
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return Resource(kind, path.stem, "path", str(path), path)
    shipped_list = ", ".join(shipped_names(kind))
    name = _as_name(text)
    if name is None:
        raise error(
            f"{_NOUN[kind]} file {text} not found; give an existing YAML path or a shipped name "
            f"({shipped_list})"
        )
    local = Path.cwd() / "conf" / kind / f"{name}.yaml"
    if local.is_file():
        return Resource(kind, name, "cwd", str(local), local)
    if name in shipped_names(kind):
        return Resource(
            kind, name, "shipped", f"medimg_spark/resources/{kind}/{name}.yaml", shipped_file(kind, name)
        )
    raise error(
        f"{_NOUN[kind]} {text!r} not found: not a file, not in ./conf/{kind}/, and not shipped; "
        f"use a shipped name ({shipped_list}), a YAML path, or add ./conf/{kind}/{name}.yaml "
        f"(list them with `medimg {'preprocess' if kind == 'recipes' else 'features'} --help`; "
        f"{_FLAG[kind]} takes either)"
    )


__all__ = [
    "KINDS",
    "PIXEL_RULES",
    "PROFILE_TABLE",
    "SPARK_DEFAULTS",
    "Kind",
    "Resource",
    "ResourceNotFoundError",
    "read_shipped",
    "resolve",
    "root",
    "shipped",
    "shipped_file",
    "shipped_names",
]
