"""Meta-sparsity: meta-learn the shared network and its group-sparsity strength λ over task episodes."""

from __future__ import annotations

from dataclasses import dataclass

from mtbench.meta import EpisodicMetaLearner, MetaConfig
from mtbench.methods import MethodInfo
from mtbench.options import bounded


@dataclass
class MetaSparsityConfig(MetaConfig):
    """`MetaConfig` with λ learned (λ = exp(ρ), starting at ``lam_init``).

    ``lam_init`` defaults to fixed-λ's default λ (1e-2), so meta-learning starts from the hand-tuned value
    and any move of λ is learned, not set.
    """

    learn_lambda: bool = True
    lam_init: float = bounded(1e-2, above=0)  # λ = 0 is meta-dense


class MetaSparsity(EpisodicMetaLearner):
    """MAML over episodes of task combinations with λ in the inner loop and a prox step on θ (see mtbench.meta)."""


METHOD = MethodInfo(
    name="meta-sparsity",
    family="sparse",
    summary="MAML over task episodes that learns λ and prunes shared channel groups",
    method=MetaSparsity,
    config=MetaSparsityConfig,
    paper="Upadhyay et al., Meta-Sparsity: learning optimal sparse structures in multi-task networks "
    "through meta-learning (2025)",
    link="https://arxiv.org/abs/2501.12115",
    deviations="our formulation from the abstract and the authors' fixed-λ code (the algorithm box was not "
    "available): no penalty in the query loss; first-order meta-gradients by default on CPU with λ's path kept "
    "exact; the authors' proximal Adam on the meta-parameters with the bias-corrected denominator; queries from a "
    "meta-validation split carved (fixed, 20 %) from the training split where the authors used a separate "
    "meta split list; a fixed step budget instead of early stopping; lam_path=prox and hypergradient=online "
    "are our variants (see mtbench.meta)",
)
