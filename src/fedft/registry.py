"""One small generic registry: methods, strategies, tasks and run parts register themselves by name (a decorator),
and `discover` imports every module of a package so that registration needs no hand-kept import list."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from fedft.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, key: str) -> T:
        """The item called `name`; `key` is the config key that named it, for the error message."""
        if name not in self._items:
            raise UsageError(f"{key} = {name!r}: unknown {self.kind}; choose one of {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


def discover(package: str) -> None:
    """Import every module of `package` (a dotted name), so each registers itself: a new method, strategy, task or
    hook is one file in its package, with no import list to keep by hand."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")
