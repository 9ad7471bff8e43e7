"""mtbench: a benchmark suite for multi-task learning with learned structured sparsity."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
