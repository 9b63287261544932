"""A small name -> object registry that fails helpfully (an unknown name lists the valid ones)."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for an unknown registry name; the message lists the valid names and the closest match."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects. `kind` names what is registered (used in error messages)."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or (kind + "es" if kind.endswith(("s", "x", "ch", "sh")) else kind + "s")
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """`reg.register("x", obj)` or as a decorator `@reg.register("x")`."""

        def _add(o: T) -> T:
            if name in self._items and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._items[name] = o
            return o

        if obj is None:
            return _add
        return _add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        valid = sorted(self._items)
        msg = f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(valid) if valid else '(none registered)'}"
        close = difflib.get_close_matches(name, valid, n=1)
        if close:
            msg += f". Did you mean {close[0]!r}?"
        return msg

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def lazy(factory: Callable[[], T]) -> Callable[[], T]:
    """Mark a registry entry as a zero-argument factory resolved on first use."""
    cache: list[T] = []

    def _get() -> T:
        if not cache:
            cache.append(factory())
        return cache[0]

    return _get
