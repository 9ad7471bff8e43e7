"""One generic registry used for tasks, task kinds, data sets, layouts and methods.

Where an entry comes from (``builtin``, an entry point, a plugin file) is recorded with it. Code that imports
a module whose definitions register themselves (a plugin file, an entry point) names the origin once with
`registering_from`; every registration made meanwhile without an explicit ``source`` records it.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import fnmatch
import re
import weakref
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from mtbench.errors import DuplicateNameError, UnknownNameError, UnsafeNameError

T = TypeVar("T")

SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
SAFE_NAME_MAX_LENGTH = 64
SAFE_NAME_RULE = (
    f"1 to {SAFE_NAME_MAX_LENGTH} characters from a-z 0-9 . _ -, starting with a letter or digit, without '..'"
)
# Kinds whose names become file and folder names (runs/, results/, leaderboard/): only safe names register.
PATH_NAME_KINDS = frozenset({"method", "dataset"})
BUILTIN = "builtin"
#: the origin recorded by a registration that names none (see `registering_from`)
_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("mtbench_registry_source", default=BUILTIN)
#: every registry made, so that what one plugin registered can be found (and undone) in all of them
_REGISTRIES: weakref.WeakSet[Registry[Any]] = weakref.WeakSet()


@contextlib.contextmanager
def registering_from(source: str) -> Iterator[None]:
    """Record ``source`` as the origin of every registration made inside the block without one."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def registered_from(source: str) -> dict[str, list[str]]:
    """What every registry holds from ``source``: registry kind -> names (registries with none left out)."""
    found: dict[str, list[str]] = {}
    for registry in list(_REGISTRIES):
        names = registry.from_source(source)
        if names:
            found.setdefault(registry.kind, []).extend(n for n in names if n not in found.get(registry.kind, ()))
    return found


def unregister_source(source: str) -> None:
    """Remove everything registered from ``source`` from every registry (a plugin that failed half way)."""
    for registry in list(_REGISTRIES):
        for name in registry.from_source(source):
            registry.unregister(name)


def _unsafe_because(name: object) -> str | None:
    """Why ``name`` is not a safe file or folder name, or None when it is."""
    if not isinstance(name, str):
        return f"a {type(name).__name__}, not a string"
    if not name:
        return "an empty name"
    if len(name) > SAFE_NAME_MAX_LENGTH:
        return f"{len(name)} characters"
    if "/" in name or "\\" in name:
        return "a path separator ('/' or '\\')"
    if ".." in name:
        return "'..'"
    if name.startswith("."):
        return "a leading '.'"
    if name != name.lower():
        return "upper-case letters"
    if not SAFE_NAME.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[a-z0-9._-]", c)})
        return "the character(s) " + " ".join(repr(c) for c in bad) if bad else "a leading '-' or '_'"
    return None


def safe_name(kind: str, name: object, *, where: str | None = None) -> str:
    """``name`` unchanged if it can be used as a file or folder name as is; an `UnsafeNameError` otherwise.

    One rule for every name that ends up in a path: ``[a-z0-9][a-z0-9._-]*``, at most 64 characters, no
    ``..`` (so no ``/``, no ``..`` component, no hidden file, nothing that differs only in case).

    Args:
        kind: what the name names (``"method"``, ``"dataset"`` ...), for the message.
        name: the name to check.
        where: where the name came from (a plugin file, a result file), for the message.
    """
    reason = _unsafe_because(name)
    if reason is None:
        return name  # type: ignore[return-value]  # _unsafe_because returned None, so it is a str
    origin = f" (from {where})" if where else ""
    raise UnsafeNameError(
        f"{kind} name {name!r}{origin} cannot be used in a file or folder name",
        expected=SAFE_NAME_RULE,
        found=f"{name!r}: {reason}",
        fix=f"rename the {kind}, e.g. {_suggest(name)!r}",
    )


def _suggest(name: object) -> str:
    """A safe name close to ``name`` (for the fix line)."""
    text = re.sub(r"[^a-z0-9._-]+", "-", str(name).lower()).replace("..", ".").strip(".-_")
    return text[:SAFE_NAME_MAX_LENGTH] or "my-name"


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
        listing: the ``mtbench ls`` argument that lists them (default: ``kind`` + ``s``).
    """

    def __init__(self, kind: str, *, listing: str | None = None) -> None:
        self.kind = kind
        self.listing = listing or f"{kind}s"
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        _REGISTRIES.add(self)

    def register(self, name: str, item: T, *, source: str | None = None) -> T:
        """Add ``item`` under ``name``; ``source`` says where it came from (default: the `registering_from`
        block's origin, else ``builtin``).

        A method or data-set name must be a `safe_name`: it becomes part of run, result and table paths.
        """
        source = source or _SOURCE.get()
        if self.kind in PATH_NAME_KINDS:
            safe_name(self.kind, name, where=source)
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
            else f"`mtbench ls {self.listing}` lists them"
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

    def from_source(self, source: str) -> list[str]:
        """Names registered from ``source``, in registration order."""
        return [name for name, origin in self._sources.items() if origin == source]

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
