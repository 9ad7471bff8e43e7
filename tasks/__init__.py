"""Built-in data sets and tasks (installed as ``mtbench_tasks``). Importing registers them."""

from mtbench_tasks import (
    celebamask,  # noqa: F401, I001
    nyuv2,  # noqa: F401  (registered first: the default data set)
)
