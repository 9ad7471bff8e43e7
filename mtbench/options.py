"""Method options with their allowed ranges, declared where the option is (the method's config dataclass).

    from mtbench.options import bounded

    @dataclass
    class MyConfig:
        lam: float = bounded(1e-2, above=0)          # λ > 0
        fraction: float = bounded(0.2, above=0, below=1)   # 0 < fraction < 1
        steps: int = bounded(1, at_least=1)           # steps ≥ 1

`check_config` checks every field of a config, built-in or plugin, before anything is trained: every float
must be finite (NaN and ±∞ are refused everywhere), and a bounded field must lie in its range. The error
says the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mtbench.errors import ConfigError

BOUNDS = "mtbench.bounds"  # the field-metadata key


@dataclass(frozen=True)
class Bounds:
    """An interval: each end open (``above``/``below``: strict) or closed (``at_least``/``at_most``) or absent."""

    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None

    def __post_init__(self) -> None:
        if self.above is not None and self.at_least is not None or self.below is not None and self.at_most is not None:
            raise ValueError("give each end of a range once: above or at_least, below or at_most")

    def contains(self, value: float) -> bool:
        return (
            (self.above is None or value > self.above)
            and (self.at_least is None or value >= self.at_least)
            and (self.below is None or value < self.below)
            and (self.at_most is None or value <= self.at_most)
        )

    def text(self, name: str) -> str:
        """``0 < name < 1``, ``name ≥ 1``, …"""
        low = high = ""
        if self.above is not None or self.at_least is not None:
            low = f"{self.above:g} < " if self.above is not None else f"{self.at_least:g} ≤ "
        if self.below is not None or self.at_most is not None:
            high = f" < {self.below:g}" if self.below is not None else f" ≤ {self.at_most:g}"
        return f"{low}{name}{high}"


def bounded(
    default: float,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> Any:
    """A dataclass field with ``default`` and an allowed range (see the module docstring)."""
    bounds = Bounds(above, at_least, below, at_most)
    if not bounds.contains(default):
        raise ValueError(f"the default {default} lies outside its own range {bounds.text('value')}")
    return dataclasses.field(default=default, metadata={BOUNDS: bounds})


def check_value(name: str, value: Any, bounds: Bounds | None = None) -> None:
    """Refuse a non-finite float, or a number outside ``bounds``, with a `ConfigError` naming the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    allowed = bounds.text(name) if bounds is not None else f"{name} a finite number"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            f"option {name} is {value}: not a finite number",
            expected=allowed,
            found=repr(value),
            fix=f"pass --set {name}=<a finite number>",
        )
    if bounds is not None and not bounds.contains(value):
        raise ConfigError(
            f"option {name} = {value} is outside its range",
            expected=allowed,
            found=repr(value),
            fix=f"pass --set {name}=<a value with {allowed}>",
        )


def check_config(config: Any) -> None:
    """Check every field of a config dataclass: finite floats, and values inside their declared `bounded` range."""
    if not dataclasses.is_dataclass(config):
        return
    for spec in dataclasses.fields(config):
        check_value(spec.name, getattr(config, spec.name), spec.metadata.get(BOUNDS))


def bounds_of(config_cls: type, name: str) -> Bounds | None:
    """The declared range of a config field, or None."""
    for spec in dataclasses.fields(config_cls):
        if spec.name == name:
            return spec.metadata.get(BOUNDS)
    return None
