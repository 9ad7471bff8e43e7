"""The one progress display every command shows: on a terminal a rich bar with done/total, elapsed time and
ETA; elsewhere (a log file, a cluster job, ``nohup``, CI) a plain line at a steady interval, so logs show life."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mtbench.cli.render import err_console

Fields = Callable[[dict[str, Any]], str]
#: seconds between two plain progress lines on a non-terminal (``MTBENCH_PROGRESS_SECONDS`` overrides)
PLAIN_EVERY = 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@contextmanager
def progress_bar(description: str, fields: Fields | None = None) -> Iterator[Callable[..., None]]:
    """A progress display on stderr; yields ``update(done, total, info=None)``.

    With ``fields``, the display shows ``fields(info)`` after the count (e.g. the latest loss).
    """
    if not err_console.is_terminal:
        with plain_progress(description, fields) as update:
            yield update
        return
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


@contextmanager
def plain_progress(
    description: str,
    fields: Fields | None = None,
    every: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[..., None]]:
    """Plain ``description: done/total (pct) · fields · rate · elapsed · eta`` lines: the first update, then
    at most one every ``every`` seconds (default `PLAIN_EVERY`), and the last one."""
    every = float(os.environ.get("MTBENCH_PROGRESS_SECONDS", PLAIN_EVERY)) if every is None else every
    start = clock()
    state: dict[str, Any] = {"printed": -float("inf"), "first": None, "first_at": None}

    def line(done: int, total: int, info: dict[str, Any] | None) -> str:
        now = clock()
        elapsed = now - start
        since = now - state["first_at"]  # the rate from the first update on (a resumed run starts mid-way)
        rate = (done - state["first"]) / since if since > 0 and done > state["first"] else None
        parts = [f"{description}: {done}/{total}" + (f" ({100 * done / total:.0f} %)" if total else "")]
        if fields is not None and info:
            parts.append(fields(info))
        if rate:
            parts.append(f"{rate:.3g}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if rate and total and done < total:
            parts.append(f"eta {_duration((total - done) / rate)}")
        return " · ".join(parts)

    def update(done: int, total: int, info: dict[str, Any] | None = None) -> None:
        now = clock()
        if state["first"] is None:
            state["first"], state["first_at"] = done, now
        if now - state["printed"] >= every or (total and done >= total):
            err_console.print(line(done, total, info), highlight=False, markup=False, soft_wrap=True)
            state["printed"] = now

    yield update
