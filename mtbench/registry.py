"""One generic registry used for tasks, data sets, layouts and methods."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator
from typing import Generic, TypeVar

from mtbench.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


def matches(name: str, pattern: str | None) -> bool:
    """Case-insensitive glob match; a pattern without wildcards matches as a substring."""
    if not pattern:
        return True
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return fnmatch.fnmatch(name.lower(), glob.lower())


class Registry(Generic[T]):
    """A name -> object mapping that refuses duplicates and suggests close matches.

    Args:
        kind: what is registered (``"task"``, ``"method"`` ...), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}

    def register(self, name: str, item: T, *, source: str = "builtin") -> T:
        """Add ``item`` under ``name``; ``source`` says where it came from."""
        if name in self._items:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice",
                expected=f"one {self.kind} per name",
                found=f"{name!r} from {self._sources[name]} and again from {source}",
                fix=f"rename one of the two {self.kind}s",
            )
        self._items[name] = item
        self._sources[name] = source
        return item

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by plugin reloading)."""
        self._items.pop(name, None)
        self._sources.pop(name, None)

    def get(self, name: str) -> T:
        """The item registered under ``name``; raises `UnknownNameError` listing close matches."""
        try:
            return self._items[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: str) -> UnknownNameError:
        """The error for an unknown ``name``, with close matches."""
        close = difflib.get_close_matches(name, list(self._items), n=5, cutoff=0.5)
        close += [n for n in self._items if name.lower() in n.lower() and n not in close]
        hint = (
            f"did you mean {', '.join(repr(c) for c in close[:5])}?"
            if close
            else f"`mtbench ls {self.kind}s` lists them"
        )
        return UnknownNameError(
            f"unknown {self.kind} {name!r}",
            expected=f"one of {len(self._items)} registered {self.kind}s",
            found=repr(name),
            fix=hint,
        )

    def source(self, name: str) -> str:
        """Where ``name`` came from (``builtin``, ``entry point ...``, a file path ...)."""
        self.get(name)
        return self._sources[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names in registration order, optionally filtered by a glob or substring."""
        return [n for n in self._items if matches(n, pattern)]

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
