"""What several command groups share: error reporting, common options, opening a data set folder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mtbench import catalog
from mtbench.cli.render import print_error, print_interrupted
from mtbench.errors import ConfigError, MtbenchError

F = TypeVar("F", bound=Callable[..., Any])
#: what an interruption outside training leaves (mtbench writes every file atomically)
INTERRUPTED = (
    "interrupted; every file mtbench writes is replaced atomically, so what was there is intact; a run resumes "
    "from its last checkpoint when the same command is run again (--fresh starts over)"
)


def _layout_names() -> str:
    from mtbench.data.layouts import layouts

    return ", ".join(layouts().names())


PluginsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--plugins",
        help="A .py file or folder of plugins to load (repeatable): methods, readers, task kinds, tasks, data sets. "
        "Never implicit.",
    ),
]
DatasetArg = Annotated[
    str, typer.Argument(help=f"Data set name: {', '.join(catalog.datasets().names())} (`mtbench ls datasets`).")
]
LayoutOption = Annotated[
    str | None, typer.Option(help=f"On-disk layout, one of {_layout_names()}; detected when omitted.")
]


def reports_errors(command: F) -> F:
    """Turn mtbench's typed errors into a readable message and exit code 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MtbenchError as error:
            print_error(error)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as interrupt:  # Ctrl-C: say what was kept and how to go on, not a traceback
            print_interrupted(str(interrupt) or INTERRUPTED)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def open_dataset(dataset: str, root: Path, layout: str | None) -> Any:
    """The reader of ``root``; a synthetic data set's folder must hold its generator's manifest."""
    from mtbench.data.layouts import open_reader

    spec = catalog.dataset(dataset)
    reader = open_reader(spec.family, root, layout)
    synthetic = reader.synthetic_manifest() is not None
    if spec.synthetic and not synthetic:
        raise ConfigError(
            f"{root} holds no synthetic-data manifest, so it is not {dataset}",
            expected="a folder written by `mtbench data synth`",
            found="a folder without mtbench-synthetic.json",
            fix=f"name the real data set instead: {spec.family}",
        )
    return reader
