"""``mtbench ls``: list tasks, data sets or methods."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from mtbench import catalog
from mtbench.cli import render
from mtbench.cli.common import PluginsOption, reports_errors
from mtbench.cli.render import console


class Listing(str, Enum):
    tasks = "tasks"
    datasets = "datasets"
    methods = "methods"


@reports_errors
def ls(
    kind: Annotated[Listing, typer.Argument(help="What to list.")],
    pattern: Annotated[str | None, typer.Argument(help="Glob or substring filter on names.")] = None,
    plugins: PluginsOption = None,
) -> None:
    """List tasks, data sets or methods.

    Examples: `mtbench ls tasks`, `mtbench ls tasks depth`, `mtbench ls methods --plugins my_method.py`
    """
    if kind is Listing.tasks:
        from mtbench.registry import matches

        specs = [s for _, s in catalog.tasks().items() if matches(s.key, pattern) or matches(s.name, pattern)]
        table = render.tasks_table(specs)
    elif kind is Listing.datasets:
        from mtbench.data.cache import find_prepared

        registry = catalog.datasets()
        names = registry.names(pattern)
        table = render.datasets_table([registry.get(n) for n in names], {n: find_prepared(n) for n in names})
    else:
        from mtbench.methods import methods

        registry = methods(plugins or ())
        table = render.methods_table(registry, registry.names(pattern))
    console.print(table)
    if not table.row_count:
        console.print(f"no {kind.value} match {pattern!r}" if pattern else f"no {kind.value} registered")
