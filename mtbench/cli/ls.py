"""``mtbench ls``: list tasks, task kinds, data sets, layouts or methods."""

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
    kinds = "kinds"
    datasets = "datasets"
    layouts = "layouts"
    methods = "methods"


@reports_errors
def ls(
    kind: Annotated[Listing, typer.Argument(help="What to list.")],
    pattern: Annotated[str | None, typer.Argument(help="Glob or substring filter on names.")] = None,
    plugins: PluginsOption = None,
) -> None:
    """List tasks, task kinds, data sets, on-disk layouts or methods (built-in, installed, and from --plugins).

    Examples: `mtbench ls tasks`, `mtbench ls tasks depth`, `mtbench ls layouts nyuv2`,
    `mtbench ls methods --plugins my_method.py`
    """
    from mtbench.methods import methods

    if plugins or kind is Listing.methods:  # a plugin file may register any of the listed things
        methods(plugins or ())
    if kind is Listing.tasks:
        from mtbench.registry import matches

        specs = [s for _, s in catalog.tasks().items() if matches(s.key, pattern) or matches(s.name, pattern)]
        table = render.tasks_table(specs)
    elif kind is Listing.kinds:
        kinds = catalog.kinds()
        table = render.kinds_table(kinds, kinds.names(pattern))
    elif kind is Listing.datasets:
        from mtbench.data.cache import find_prepared

        datasets = catalog.datasets()
        names = datasets.names(pattern)
        table = render.datasets_table([datasets.get(n) for n in names], {n: find_prepared(n) for n in names})
    elif kind is Listing.layouts:
        from mtbench.data.layouts import layouts

        table = render.layouts_table(layouts(), layouts().names(pattern))
    else:
        registry = methods()
        table = render.methods_table(registry, registry.names(pattern))
    console.print(table)
    if not table.row_count:
        console.print(f"no {kind.value} match {pattern!r}" if pattern else f"no {kind.value} registered")
