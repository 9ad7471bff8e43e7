"""``python -m mtbench``: the same command-line interface as the ``mtbench`` script."""

from mtbench.cli import main

main()
