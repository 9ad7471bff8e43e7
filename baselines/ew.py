"""Equal weighting: minimise the plain sum of the task losses."""

from __future__ import annotations

from mtbench.methods import MethodInfo
from mtbench.mtl import MTLConfig, MTLMethod


class EqualWeighting(MTLMethod):
    """Hard parameter sharing trained on Σ_k L_k (``MTLMethod``'s default backward)."""


METHOD = MethodInfo(
    name="ew",
    summary="equal weighting of the task losses (linear scalarisation)",
    method=EqualWeighting,
    config=MTLConfig,
    paper="",
    link="",
    deviations="",
)
