"""How library calls talk to their caller while they work: notices (one line each) and progress bars."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

#: says one line to the user (the CLI prints it; a sweep collects it into the cell's log)
Notice = Callable[[str], None]
#: ``progress(description)`` opens a bar; the bar is called as ``update(done, total, fields)``
ProgressFactory = Callable[[str], AbstractContextManager[Callable[..., None]]]
