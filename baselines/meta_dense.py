"""Meta-dense: the meta-sparsity loop with λ fixed at 0 (the ablation)."""

from __future__ import annotations

from dataclasses import dataclass

from mtbench.meta import EpisodicMetaLearner, MetaConfig
from mtbench.methods import MethodInfo
from mtbench.options import bounded


@dataclass
class MetaDenseConfig(MetaConfig):
    """`MetaConfig` with no penalty and no prox step."""

    learn_lambda: bool = False
    lam_init: float = bounded(0.0, at_least=0)


class MetaDense(EpisodicMetaLearner):
    """MAML over episodes of task combinations, dense (λ = 0)."""


METHOD = MethodInfo(
    name="meta-dense",
    summary="the meta-sparsity loop with λ = 0 (dense ablation)",
    method=MetaDense,
    config=MetaDenseConfig,
    paper="Upadhyay et al., Meta-Sparsity (2025), ablation",
    link="https://arxiv.org/abs/2501.12115",
    deviations="see meta-sparsity",
)
