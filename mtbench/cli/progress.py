"""The one progress bar every command shows: rich Progress with done/total, elapsed time and ETA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mtbench.cli.render import err_console

Fields = Callable[[dict[str, Any]], str]


@contextmanager
def progress_bar(description: str, fields: Fields | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields ``update(done, total, info=None)``.

    With ``fields``, a column after the count shows ``fields(info)`` (e.g. the latest loss).
    """
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fields is not None:
        columns.append(TextColumn("{task.fields[info]}"))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=None, info="")

        def update(done: int, total: int, info: dict[str, Any] | None = None) -> None:
            extra = {} if fields is None else {"info": fields(info or {})}
            progress.update(task, completed=done, total=total, **extra)

        yield update
