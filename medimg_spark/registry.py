"""One small, typed registry of named things: ops, readers, estimators and pipeline stages.

A registry maps a name to an object plus a one-line help text and free metadata. Entries are
added next to the object they name (a decorator, or :meth:`Registry.register` after the fact), or
lazily as ``"package.module:attribute"`` so that listing names, help texts and choices never
imports a heavy module (Spark stages, scikit-learn): the object is imported on first :meth:`get`.

    OPS: Registry[type[Step]] = Registry("op", hint="add one with @register_step in medimg_spark/ops")

    @OPS.register("gaussian", help="Gaussian blur")
    class Gaussian(Step): ...

    OPS.get("gaussian")        # the class
    OPS.get("gausian")         # UnknownNameError: unknown op 'gausian'; choose from ...; add one with ...

Duplicate names are an error (:class:`DuplicateNameError`), so two modules cannot silently shadow
each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from medimg_spark.errors import ConfigError, MedimgError

T = TypeVar("T")


class RegistryError(MedimgError):
    """Base of registry errors."""


class DuplicateNameError(RegistryError):
    """A name was registered twice (a programming error: rename one of the two)."""


class UnknownNameError(RegistryError, ConfigError):
    """A name that is not registered; the message lists the registered names and how to add one."""


@dataclass
class Entry(Generic[T]):
    """One registered name.

    Attributes:
        name: the registered name.
        help: one line for ``--help``, error messages and the README.
        meta: free metadata (e.g. an estimator's ``kind``, a reader's formats).
        target: the object, or ``"module:attribute"`` until first loaded.
    """

    name: str
    help: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    target: T | str | None = None

    @property
    def loaded(self) -> bool:
        """Whether the object has been imported (always true for eagerly registered entries)."""
        return not isinstance(self.target, str)

    def load(self) -> T:
        """The registered object, importing its module on first use for lazy entries."""
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
            self.target = obj
        return self.target  # type: ignore[return-value]


class Registry(Generic[T]):
    """Name → object, in registration order.

    Args:
        kind: what the names are, for messages ("op", "reader", "model", "stage").
        hint: how to add one, appended to the unknown-name message.
        error: exception class raised by :meth:`get` for an unknown name (a subclass of
            :class:`UnknownNameError` or any exception taking one message).
    """

    def __init__(self, kind: str, hint: str = "", error: type[Exception] = UnknownNameError) -> None:
        self.kind = kind
        self.hint = hint
        self.error = error
        self._entries: dict[str, Entry[T]] = {}

    # --- adding ------------------------------------------------------------------------------------

    def _add(self, entry: Entry[T]) -> None:
        if entry.name in self._entries:
            raise DuplicateNameError(
                f"{self.kind} {entry.name!r} is registered twice; rename one of the two registrations"
            )
        self._entries[entry.name] = entry

    @overload
    def register(self, name: str, obj: None = None, *, help: str = "", **meta: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, help: str = "", **meta: Any) -> T: ...

    def register(self, name: str, obj: T | None = None, *, help: str = "", **meta: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does.

        Raises:
            DuplicateNameError: ``name`` is already registered.
        """
        if obj is not None:
            self._add(Entry(name, help, dict(meta), obj))
            return obj

        def decorate(target: T) -> T:
            self._add(Entry(name, help, dict(meta), target))
            return target

        return decorate

    def register_lazy(self, name: str, target: str, *, help: str = "", **meta: Any) -> None:
        """Register ``"package.module:attribute"`` under ``name``; imported on first :meth:`get`.

        Raises:
            DuplicateNameError: ``name`` is already registered.
            ValueError: ``target`` is not ``module:attribute``.
        """
        if ":" not in target:
            raise ValueError(f"lazy target {target!r} must look like 'package.module:attribute'")
        self._add(Entry(name, help, dict(meta), target))

    def unregister(self, name: str) -> Entry[T]:
        """Remove and return the entry of ``name`` (for plug-ins and tests that register temporarily).

        Raises:
            UnknownNameError: (or this registry's ``error`` class) naming the registered names.
        """
        entry = self.entry(name)
        del self._entries[name]
        return entry

    # --- reading -----------------------------------------------------------------------------------

    def unknown_message(self, name: object) -> str:
        """The message of an unknown ``name``: the registered names and how to add one."""
        text = f"unknown {self.kind} {name!r}; choose from {', '.join(self.names()) or '(none registered)'}"
        return f"{text}; {self.hint}" if self.hint else text

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``.

        Raises:
            UnknownNameError: (or this registry's ``error`` class) naming the registered names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        """The object registered under ``name`` (imported now for a lazy entry).

        Raises:
            UnknownNameError: (or this registry's ``error`` class) naming the registered names.
        """
        return self.entry(name).load()

    def names(self, **where: Any) -> tuple[str, ...]:
        """Registered names in registration order; ``where`` keeps entries whose metadata match."""
        return tuple(n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in where.items()))

    def entries(self) -> tuple[Entry[T], ...]:
        """Every entry, in registration order (nothing is imported)."""
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
