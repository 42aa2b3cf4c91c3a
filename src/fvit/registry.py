"""A tiny name -> object registry used for methods, attacks, denoisers, timestep mappings.

Names are case-insensitive and treat '-' and '_' alike, so the CLI's `--method attribution-rollout`
and the API's `"attribution_rollout"` find the same entry.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from fvit.errors import UnknownNameError

T = TypeVar("T")


def canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()):
        """Register `obj` under `name`; usable as a decorator when `obj` is omitted."""

        def add(o: T) -> T:
            key = canonical(name)
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[key] = o
            for a in aliases:
                self._aliases[canonical(a)] = key
            return o

        if obj is not None:
            return add(obj)
        return add

    def resolve(self, name: str) -> str:
        key = canonical(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            )
        return key

    def get(self, name: str) -> T:
        return self._items[self.resolve(name)]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def __contains__(self, name: str) -> bool:
        key = canonical(name)
        return key in self._items or key in self._aliases

    def __len__(self) -> int:
        return len(self._items)
