"""One schema, both directions: dataclasses read from JSON and written back, checked against their own type hints.

A typed record (`mtbench.result.RunResult` and its parts) declares its fields once, as a dataclass; `decode`
checks a JSON value against those type hints while it builds the record, and `encode` writes it back. The
hints understood: ``str``, ``int``, ``float`` (an integer is a number too), ``bool``, ``None``, ``Any``,
unions (``X | None``), ``Literal[...]``, ``Mapping[str, X]``/``dict[str, X]``, ``tuple[X, ...]``, fixed
``tuple[X, Y]``, ``list[X]``/``Sequence[X]`` and nested dataclasses. What a type cannot say (a finite number, a
name safe in file names, a non-empty string) is a `Rule` declared next to the field, in the hint itself:
``value: Annotated[float, FINITE]`` (a module gives such hints short names, e.g. ``Finite``).

The JSON shape of a field, where it is not one key holding the field's value, is declared with `json_field`:
another key (``lambda`` for ``lam``), a key left out while None (``omit_none``; a record may keep the keys it
read as an explicit null in a ``nulls`` field), every key starting with a prefix (``loss/<task>``), or every
key no other field claims (``rest``: nothing read is lost). A problem is a `SchemaViolation` naming the dotted
path (``tasks.semseg.metrics.mIoU.value``, ``protocol.seen[0]``), what was expected and what was found; the
caller turns it into its own error (`mtbench.errors.ResultFileError`, `mtbench.errors.SweepSpecError`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()  #: a key that is absent (not null)


_WRONG = "has the wrong type or value"


class SchemaViolation(Exception):
    """A JSON value that does not fit the schema: where (`path`, dotted), what was expected, what was found.

    ``found`` is the JSON value (`MISSING`: the key is absent); ``found_text`` replaces its description;
    ``problem`` replaces the default (``is missing`` / ``has the wrong type or value``); ``fix`` says what to do.
    ``at``: the key or index where it is, relative to the value being read; each enclosing object or list adds
    its own as the violation passes through it (`inside`).
    """

    def __init__(
        self,
        expected: str,
        found: Any = MISSING,
        *,
        at: str | int | None = None,
        problem: str | None = None,
        found_text: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.expected, self.found, self.found_text, self.fix = expected, found, found_text, fix
        self.problem = problem or ("is missing" if found is MISSING else _WRONG)
        self._parts: list[str] = []
        if at is not None:
            self.inside(at)
        super().__init__(expected)

    def inside(self, key: str | int) -> SchemaViolation:
        """Say that the violation is under ``key`` (an object's entry) or ``[key]`` (a list's item)."""
        self._parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        return self

    @property
    def path(self) -> str:
        """The dotted path (``tasks.semseg.metrics.mIoU.value``, ``protocol.seen[0]``); "" for the value itself."""
        return "".join(reversed(self._parts)).removeprefix(".")

    @property
    def mismatch(self) -> bool:
        """Whether the value is of the wrong type (or fails a rule that has no words of its own)."""
        return self.problem == _WRONG

    @property
    def relative(self) -> bool:
        """Whether it lies inside the value read (not at the value itself)."""
        return bool(self._parts)

    def __str__(self) -> str:
        return f"{self.path or '(top level)'} {self.problem}: expected {self.expected}"


@dataclass(frozen=True)
class Rule:
    """A check a type cannot express: ``test(value)`` must hold (after the type matched).

    ``expected`` says what the rule asks; ``describes``: it describes the whole value (``a finite number``), so a
    value of the wrong type is reported with it too (else with the type's own description); ``key``: the rule
    checks one entry of a free-form object (``identity.fingerprint``), which must be there; ``problem``: the
    words for a value that fails it (default: ``has the wrong type or value``).
    """

    test: Callable[[Any], bool]
    expected: str
    describes: bool = False
    key: str | None = None
    problem: str | None = None

    def check(self, value: Any) -> None:
        if self.key is not None:
            value = value.get(self.key, MISSING)
        if value is MISSING or not self.test(value):
            raise SchemaViolation(self.expected, value, at=self.key, problem=None if value is MISSING else self.problem)


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


FINITE = Rule(_finite, "a finite number", describes=True)
NON_EMPTY = Rule(bool, "a non-empty string", describes=True)
POSITIVE = Rule(lambda value: value > 0, "a positive integer", describes=True)


def json_field(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    key: str | None = None,
    omit_none: bool = False,
    prefix: str | None = None,
    rest: bool = False,
    nulls: bool = False,
) -> Any:
    """A dataclass field with its JSON shape (see the module docstring).

    ``key``: the JSON key when it differs from the field name; ``omit_none``: the key is left out while the value
    is None; ``prefix``: a ``Mapping[str, X]`` gathered from the keys ``prefix + name``; ``rest``: a
    ``Mapping[str, Any]`` of every key no other field claims; ``nulls``: a ``frozenset[str]`` (not in JSON) of the
    ``omit_none`` fields that were read as an explicit null, and are written so again.
    """
    metadata = {"key": key, "omit_none": omit_none, "prefix": prefix, "rest": rest, "nulls": nulls}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


R = TypeVar("R", bound="Record")


class Record:
    """A typed record (a dataclass deriving from this): ``to_json`` writes its JSON form, ``from_json`` checks
    and reads one back (a `SchemaViolation` names the offending field)."""

    def to_json(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_json(cls: type[R], payload: Any) -> R:
        return decode(cls, payload)


# --- the plan of a record ----------------------------------------------------------------------------------

Reader = Callable[[Any], Any]


@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    hint: Any
    required: bool
    null_is_default: bool  #: a null where the type has none reads as the default (as an absent key)
    omit_none: bool
    prefix: str | None
    rest: bool
    nulls: bool


@functools.cache
def _plan(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    plan = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        plan.append(
            _Field(
                name=f.name,
                key=meta.get("key") or f.name,
                hint=hints[f.name],
                required=required,
                null_is_default=not required and not admits_none(hints[f.name]),
                omit_none=bool(meta.get("omit_none")),
                prefix=meta.get("prefix"),
                rest=bool(meta.get("rest")),
                nulls=bool(meta.get("nulls")),
            )
        )
    return tuple(plan)


def _strip(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """The type inside ``Annotated[...]`` and the rules declared with it."""
    if typing.get_origin(hint) is Annotated:
        inner, *rules = typing.get_args(hint)
        return inner, tuple(rules)
    return hint, ()


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(hint)
    return typing.get_args(hint) if origin in (Union, types.UnionType) else None


def _is_mapping(hint: Any) -> bool:
    return typing.get_origin(hint) in (dict, Mapping) or hint in (dict, Mapping)


def _is_sequence(hint: Any) -> bool:
    return typing.get_origin(hint) in (tuple, list, Sequence) or hint in (tuple, list, Sequence)


def admits_none(hint: Any) -> bool:
    """Whether null is a value of ``hint``."""
    inner, _ = _strip(hint)
    args = _union_args(inner)
    return inner is Any or inner is type(None) or (args is not None and any(admits_none(a) for a in args))


def describe(hint: Any) -> str:
    """What a value of ``hint`` is, in words (``a finite number``, ``null or a list of strings``)."""
    inner, rules = _strip(hint)
    whole = _whole(rules)
    if whole is not None:
        return whole
    args = _union_args(inner)
    if args is not None:
        words = [describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            words.insert(0, "null")
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    if inner is Any:
        return "any JSON value"
    if inner is type(None):
        return "null"
    if typing.get_origin(inner) is Literal:
        return " or ".join(json.dumps(a) for a in typing.get_args(inner))
    if dataclasses.is_dataclass(inner) or _is_mapping(inner):
        return "a JSON object"
    if _is_sequence(inner):
        args = typing.get_args(inner)
        if typing.get_origin(inner) is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} items"
        return f"a list of {_plural(args[0])}" if args and args[0] is not Any else "a list"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(inner, str(inner))


def _whole(rules: tuple[Any, ...]) -> str | None:
    """The description of a value that a rule gives (`Rule.describes`), if one does."""
    return next((rule.expected for rule in rules if getattr(rule, "describes", False)), None)


def _plural(hint: Any) -> str:
    word = describe(hint)
    for article in ("a ", "an "):
        if word.startswith(article):
            word = word[len(article) :]
            return word if word.endswith("s") else word + "s"
    return word


# --- reading ------------------------------------------------------------------------------------------------


def decode(hint: Any, value: Any, path: str = "", *, strict: bool = False) -> Any:
    """``value`` (parsed JSON) as ``hint`` says, checked on the way; a `SchemaViolation` at the first problem.

    ``path``: where ``value`` is (prefixed to the violation's path); ``strict``: a key that no field of a record
    claims is a violation (else it is left out, as in an older file that a newer schema reads).
    """
    try:
        return _reader(hint, strict)(value)
    except SchemaViolation as violation:
        if path:
            violation._parts.append(path if path.startswith("[") else "." + path)
        raise


def _same(value: Any) -> Any:
    return value


@functools.cache
def _reader(hint: Any, strict: bool) -> Reader:
    """The function that checks and reads a JSON value of ``hint`` (built once per type)."""
    inner, rules = _strip(hint)
    read = _build(inner, strict, _whole(rules) or describe(inner))
    if not rules:
        return read

    def checked(value: Any) -> Any:
        out = read(value)
        if out is not None:
            for rule in rules:
                rule.check(value)
        return out

    return checked


def _build(hint: Any, strict: bool, expected: str) -> Reader:
    if hint is Any:
        return _same
    args = _union_args(hint)
    if args is not None:
        return _union(args, strict, expected)
    if hint is type(None) or hint in (str, int, float, bool) or typing.get_origin(hint) is Literal:
        return _scalar(hint, expected)
    if dataclasses.is_dataclass(hint):
        return _record(hint, strict, expected)
    if _is_mapping(hint):
        _, item_hint = typing.get_args(hint) or (str, Any)
        item = _reader(item_hint, strict)

        def mapping(value: Any) -> Any:
            if not isinstance(value, dict):
                raise SchemaViolation(expected, value)
            if item is _same:
                return dict(value)
            out = {}
            for key, entry in value.items():
                try:
                    out[key] = item(entry)
                except SchemaViolation as violation:
                    raise violation.inside(key) from None
            return out

        return mapping
    if _is_sequence(hint):
        return _sequence(hint, strict, expected)
    raise TypeError(f"the schema cannot read type {hint!r}")


def _scalar(hint: Any, expected: str) -> Reader:
    """A reader of one JSON scalar (an integer is a number too; a boolean is neither)."""
    if hint in (int, float):
        kinds = (int, float) if hint is float else int

        def number(value: Any) -> Any:
            if value.__class__ is bool or not isinstance(value, kinds):
                raise SchemaViolation(expected, value)
            return value

        return number
    if hint in (str, bool):

        def exact(value: Any) -> Any:
            if not isinstance(value, hint):
                raise SchemaViolation(expected, value)
            return value

        return exact
    options = (None,) if hint is type(None) else typing.get_args(hint)  # Literal

    def one_of(value: Any) -> Any:
        if not any(value == option and type(value) is type(option) for option in options):
            raise SchemaViolation(expected, value)
        return value

    return one_of


def _sequence(hint: Any, strict: bool, expected: str) -> Reader:
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint) or (Any, Ellipsis)
    fixed = origin is tuple and args[-1] is not Ellipsis
    items = [_reader(a, strict) for a in (args if fixed else args[:1])]
    make = tuple if origin is tuple else list

    def sequence(value: Any) -> Any:
        if not isinstance(value, list) or (fixed and len(value) != len(items)):
            raise SchemaViolation(expected, value)
        if not fixed and items[0] is _same:
            return make(value)
        out = []
        for index, entry in enumerate(value):
            try:
                out.append((items[index] if fixed else items[0])(entry))
            except SchemaViolation as violation:
                raise violation.inside(index) from None
        return make(out)

    return sequence


def _union(args: tuple[Any, ...], strict: bool, expected: str) -> Reader:
    nullable = type(None) in args
    members = [_reader(a, strict) for a in args if a is not type(None)]
    if nullable and len(members) == 1:  # X | None
        member = members[0]
        mismatch = describe(next(a for a in args if a is not type(None)))

        def optional(value: Any) -> Any:
            if value is None:
                return None
            try:
                return member(value)
            except SchemaViolation as violation:
                if violation.relative or violation.expected != mismatch or violation.problem != _WRONG:
                    raise  # inside the value, or a rule of its own
                raise SchemaViolation(expected, value) from None  # the wrong type: say that null would do

        return optional

    def union(value: Any) -> Any:
        if value is None and nullable:
            return None
        inner: SchemaViolation | None = None
        for member in members:
            try:
                return member(value)
            except SchemaViolation as violation:  # one inside the value: that member's shape matched
                if violation.relative and inner is None:
                    inner = violation
        raise inner if inner is not None else SchemaViolation(expected, value)

    return union


def _record(cls: type, strict: bool, expected: str) -> Reader:
    read: Reader | None = None  # built at the first read: the hints may name classes defined later

    def record(value: Any) -> Any:
        nonlocal read
        if not isinstance(value, dict):
            raise SchemaViolation(expected, value)
        if read is None:
            read = _record_reader(cls, strict)
        return read(value)

    return record


def _record_reader(cls: type, strict: bool) -> Reader:
    plan = _plan(cls)
    named = {f.key: (f, _reader(f.hint, strict)) for f in plan if not (f.prefix or f.rest or f.nulls)}
    required = [f for f in plan if f.required]
    prefixed = [(f.prefix, f.name, _reader(_item_hint(f.hint), strict)) for f in plan if f.prefix]
    rest = next(((f.name, _reader(_item_hint(f.hint), strict)) for f in plan if f.rest), None)
    gathered = [name for _, name, _ in prefixed] + ([rest[0]] if rest else [])
    keeper = next((f.name for f in plan if f.nulls), None)

    def read(value: Mapping[str, Any]) -> Any:
        values: dict[str, Any] = {name: {} for name in gathered} if gathered else {}
        nulls = []
        for key, raw in value.items():  # one pass over the keys: each goes to the field that claims it
            try:
                if key in named:
                    f, item = named[key]
                    if raw is None and f.null_is_default:
                        continue  # null where the type has none: the field's default
                    if raw is None and f.omit_none:
                        nulls.append(f.name)
                    values[f.name] = item(raw)
                    continue
                for prefix, name, item in prefixed:
                    if key.startswith(prefix):
                        values[name][key[len(prefix) :]] = item(raw)
                        break
                else:
                    if rest is not None:
                        values[rest[0]][key] = rest[1](raw)
                    elif strict:
                        raise SchemaViolation(
                            "one of " + ", ".join(named), key, problem="is an unknown key", found_text=key,
                            fix="remove it or correct its spelling",
                        )
            except SchemaViolation as violation:
                raise violation.inside(key) from None
        for f in required:
            if f.name not in values:
                raise SchemaViolation(describe(f.hint), value.get(f.key, MISSING), at=f.key)
        if keeper is not None:
            values[keeper] = frozenset(nulls)
        return cls(**values)

    return read


def _item_hint(hint: Any) -> Any:
    """``X`` of a ``Mapping[str, X]`` (``Any`` for a bare mapping)."""
    args = typing.get_args(_strip(hint)[0])
    return args[1] if args else Any


# --- writing ------------------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """The JSON form of ``value``: records as their declared shape (other dataclasses as their fields), mappings
    as objects, tuples as lists."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, Record):
        return _writer(type(value))(value)
    if isinstance(value, Mapping):
        return {str(key): encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(dataclasses.asdict(value))
    return value


Writer = Callable[[Any], Any]


def _scalar_hint(hint: Any) -> bool:
    """Whether every value of ``hint`` is a JSON scalar (written as it is)."""
    inner, _ = _strip(hint)
    args = _union_args(inner)
    if args is not None:
        return all(_scalar_hint(a) for a in args)
    return inner in (str, int, float, bool, type(None)) or typing.get_origin(inner) is Literal


@functools.cache
def _writer(hint: Any) -> Writer:
    """The function that writes a value of ``hint`` as JSON (built once per type)."""
    inner, _ = _strip(hint)
    if _scalar_hint(inner):
        return _same
    args = _union_args(inner)
    if args is not None and type(None) in args and len(args) == 2:
        member = _writer(next(a for a in args if a is not type(None)))
        return lambda value: None if value is None else member(value)
    if isinstance(inner, type) and issubclass(inner, Record):
        return _record_writer(inner)
    if _is_mapping(inner):
        args = typing.get_args(inner)
        if args and _scalar_hint(args[1]):
            return lambda value: {str(key): item for key, item in value.items()}
        item = _writer(args[1]) if args else encode
        return lambda value: {str(key): item(entry) for key, entry in value.items()}
    if _is_sequence(inner):
        args = typing.get_args(inner)
        if args and args[-1] is Ellipsis or typing.get_origin(inner) in (list, Sequence):
            if _scalar_hint(args[0]):
                return list
            item = _writer(args[0])
            return lambda value: [item(entry) for entry in value]
    return encode


def _record_writer(cls: type) -> Writer:
    write: Writer | None = None  # built at the first write: the hints may name classes defined later

    def record(value: Any) -> Any:
        nonlocal write
        if write is None:
            write = _build_record_writer(cls)
        return write(value)

    return record


def _build_record_writer(cls: type) -> Writer:
    plan = _plan(cls)
    keeper = next((f.name for f in plan if f.nulls), None)
    fields = [(f, _writer(_item_hint(f.hint) if f.prefix or f.rest else f.hint)) for f in plan if not f.nulls]

    def write(record: Any) -> dict[str, Any]:
        nulls = getattr(record, keeper) if keeper is not None else ()
        out: dict[str, Any] = {}
        for f, item in fields:
            value = getattr(record, f.name)
            if f.prefix:
                for key, entry in value.items():
                    out[f.prefix + key] = item(entry)
            elif f.rest:
                for key, entry in value.items():
                    out.setdefault(key, item(entry))
            elif value is None and f.omit_none and f.name not in nulls:
                continue
            else:
                out[f.key] = item(value)
        return out

    return write
