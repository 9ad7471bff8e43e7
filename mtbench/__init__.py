"""mtbench: a benchmark suite for multi-task learning with learned structured sparsity.

``mtbench.plan(...)`` and ``mtbench.run(...)`` do from Python what ``mtbench run`` does (see `mtbench.api`).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mtbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_API = {"plan", "run", "request", "RunPlan", "RunRequest", "RunResult"}


def __getattr__(name: str) -> Any:
    """The Python API, imported on first use (``import mtbench`` stays light: no torch)."""
    if name in _API:
        from mtbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtbench' has no attribute {name!r}")
