"""Method options from the command line: ``--set key=value`` parsed and checked against a config dataclass."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from mtbench.errors import ConfigError
from mtbench.options import check_config


def parse_value(name: str, text: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if text not in allowed:
            raise ConfigError(f"--set {name}: not an allowed value", expected=" | ".join(map(str, allowed)), found=text)
        return text
    if annotation is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--set {name}: not a boolean", expected="true or false", found=text)
        return lowered in ("true", "1", "yes")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ConfigError(
                f"--set {name}: not a valid {annotation.__name__}", expected=annotation.__name__, found=repr(text)
            ) from None
    raise ConfigError(f"--set {name}: cannot be set from the command line", found=str(annotation))


def build_config(config_cls: type, overrides: dict[str, str]) -> Any:
    """The method's config dataclass with ``--set key=value`` applied and type-checked."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    values = {}
    for key, text in overrides.items():
        if key not in names:
            raise ConfigError(
                f"unknown option --set {key}",
                expected=", ".join(names) or "no options for this method",
                found=key,
                fix="`mtbench ls methods` names the methods; their options are the "
                "fields of the config dataclass in the method's file",
            )
        values[key] = parse_value(key, text, hints[key])
    config = config_cls(**values)
    check_config(config)  # finite, and inside each option's declared range (`mtbench.options.bounded`)
    return config


def parse_set(items: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set takes key=value", expected="key=value", found=item)
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides
