"""PEP 562 lazy exports: a package names its public objects without importing their modules.

``import medimg_spark.ops`` must not import pyspark, so package ``__init__`` files map each public
name to ``"module:attribute"`` and import it on first attribute access::

    __getattr__, __dir__ = lazy_exports(__name__, {"ingest": "medimg_spark.io.ingest:ingest"})
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose exported names win over same-named submodules.

    ``medimg_spark.ml.train`` is both a submodule and the exported function; the import system
    binds a submodule on its package when it is first imported, which would shadow the function.
    Eagerly importing packages rebound the function afterwards; this keeps that outcome lazily.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        exports: Mapping[str, str] = self.__dict__.get("_EXPORTS", {})
        if (
            name in exports
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            return  # the submodule stays reachable through sys.modules and `from pkg.sub import x`
        super().__setattr__(name, value)


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` resolving ``exports`` (name → ``"module:attr"``) lazily.

    A resolved object is cached in the package's namespace, so each is imported once. The package
    must define ``_EXPORTS = exports`` (used to keep submodules from shadowing exported names).
    """
    sys.modules[package].__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
