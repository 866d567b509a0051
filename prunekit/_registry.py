"""Name -> object registries with validation and closest-match errors (one implementation for all)."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def closest(name: str, choices) -> str | None:
    """The registered name closest to ``name``, or None when nothing is close."""
    hits = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return hits[0] if hits else None


def unknown_name_message(kind: str, name: object, choices, argument: str | None = None) -> str:
    choices = sorted(str(c) for c in choices)
    arg = f"{argument}=" if argument else ""
    msg = f"unknown {kind} {arg}{name!r}"
    hint = closest(str(name), choices)
    if hint is not None:
        msg += f"; did you mean {hint!r}?"
    shown = ", ".join(choices[:60]) + (", ..." if len(choices) > 60 else "")
    return msg + f" Registered {kind}s: {shown}"


class Registry(Generic[T]):
    """A registry keyed by name, filled by decorator.

    Example:
        >>> r = Registry("criterion")
        >>> @r.register("double")
        ... def double(x):
        ...     return 2 * x
        >>> r.get("double")(3)
        6
    """

    def __init__(self, kind: str, validate: Callable[[str, T], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._validate = validate

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def deco(obj: T) -> T:
            if name in self._items and not overwrite:
                raise ConfigError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            if self._validate is not None:
                self._validate(name, obj)
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str, argument: str | None = None) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ConfigError(unknown_name_message(self.kind, name, self._items, argument)) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:  # an unhashable value (a list given as a name) is no name of the registry
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self):
        return sorted(self._items.items())
