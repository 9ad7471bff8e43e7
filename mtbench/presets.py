"""Budgets (``--budget``, see `budget_help`): network size, data size and step counts of a run.

Every method runs the same budget, so numbers in one table are comparable: the same number of
outer updates (training steps, or meta-iterations for the meta-learning methods), the same batch
size (support and query batches each of ``batch_size`` samples), and the same meta-test fine-tuning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from mtbench.errors import ConfigError
from mtbench.models import ArchSpec


@dataclass(frozen=True)
class Budget:
    """One preset.

    Attributes:
        name: ``smoke`` (seconds, for tests), ``quick`` (CPU default, minutes), ``plateau`` (quick ×3
            steps: sparse models recover), ``scarce`` (quick on 128 training samples: the
            over-parameterised regime where parsimony should pay), ``scarce-long`` (scarce ×3 steps: trained past
            fitting) or ``paper`` (GPU).
        arch: the network.
        synth_samples: size of the synthetic set generated when a run uses a synthetic stand-in.
        summary: one line for ``--budget``'s help (`budget_help`).
        device: what a sweep reserves for each run of the budget: ``cpu``, or ``gpu`` (one GPU per cell).
            Neither this nor ``summary`` changes what a run trains or measures.
        synth_options: generator size options per synthetic data set (overrides its defaults).
        resolution: resize inputs and dense targets to ``(H, W)``; None keeps the data's size.
        max_train_samples / max_test_samples: caps on the splits (None = all).
        steps: outer updates (training steps or meta-iterations).
        batch_size: training batch; for meta-learning, the support and the query batch size each.
        lr: Adam learning rate of the (outer) optimiser.
        finetune_steps / finetune_lr / finetune_batch: the meta-test fine-tuning of every task.
        eval_batch: evaluation batch size.
        log_every: history is recorded every this many steps.
        validation_samples: samples of the training split held out as the validation split (fixed, the same for
            every seed and method; no training signal reads them): every choice is made on it.
        bn_recalibration_batches: training batches (of ``batch_size``) over which BatchNorm statistics are
            recomputed before every evaluation (`mtbench.protocol`); 0 skips it (the ablation).
    """

    name: str
    arch: ArchSpec
    synth_samples: int
    summary: str
    device: Literal["cpu", "gpu"] = "cpu"
    synth_options: dict[str, dict[str, int]] = field(default_factory=dict)
    resolution: tuple[int, int] | None = None
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    finetune_steps: int = 100
    finetune_lr: float = 1e-3
    finetune_batch: int = 8
    eval_batch: int = 32
    log_every: int = 10
    validation_samples: int = 250
    bn_recalibration_batches: int = 40

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(
                f"budget {self.name!r}: unknown device {self.device!r}",
                expected="cpu | gpu",
                found=repr(self.device),
                fix="device='gpu' for a budget that needs a GPU per run, else 'cpu'",
            )


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        name="smoke",
        summary="seconds, for tests",
        arch=ArchSpec("small", widths=(8, 8, 16), blocks=1, norm="batch", head_hidden=8),
        synth_samples=32,
        synth_options={
            "nyuv2-synth": {"height": 24, "width": 32},
            "celebamask-synth": {"image_size": 32, "mask_size": 16},
        },
        validation_samples=4,
        bn_recalibration_batches=2,
        max_train_samples=24,
        max_test_samples=8,
        steps=3,
        batch_size=4,
        finetune_steps=2,
        finetune_batch=4,
        eval_batch=8,
        log_every=1,
    ),
    "quick": Budget(
        name="quick",
        summary="minutes on a laptop CPU, the default",
        arch=ArchSpec("small", widths=(16, 32, 64), blocks=1, norm="batch", head_hidden=32),
        # 1,000 test images (a binary accuracy's standard error ≤ 0.016); of the rest, the training split,
        # validation_samples are held out for validation and the others trained on: 750 for nyuv2-synth (as
        # before the test split was enlarged), about 640 for celebamask-synth (was about 806)
        synth_samples=2000,
        synth_options={"nyuv2-synth": {"val_samples": 1000}, "celebamask-synth": {"test_samples": 1000}},
        steps=600,
        batch_size=8,
        lr=1e-3,
        finetune_steps=150,
        finetune_lr=1e-3,
        finetune_batch=8,
        eval_batch=50,
        log_every=10,
    ),
    "paper": Budget(
        name="paper",
        summary="the paper's dilated ResNet-50, for a GPU",
        device="gpu",
        arch=ArchSpec("resnet50", norm="batch"),
        synth_samples=2000,
        resolution=(256, 256),
        steps=20000,
        batch_size=8,
        lr=1e-4,
        finetune_steps=2000,
        finetune_lr=1e-4,
        finetune_batch=8,
        eval_batch=16,
        log_every=50,
        validation_samples=80,  # 10 % of NYU-v2's 795 training images
        bn_recalibration_batches=100,
    ),
}


# Protocols for the sparsity question (see README "Which protocol answers which question"): the quick
# network and data, trained 3× longer (sparse models recover), or on 128 training samples (the
# over-parameterised regime where parsimony should pay).
BUDGETS["plateau"] = dataclasses.replace(
    BUDGETS["quick"], name="plateau", summary="quick with 3× the steps", steps=1800, log_every=30
)
BUDGETS["scarce"] = dataclasses.replace(
    BUDGETS["quick"], name="scarce", summary="quick on 128 training images", max_train_samples=128
)
# The λ study's over-parameterised regime (issue 23): the scarce data trained as long as plateau, about 112 passes
# over the 128 images, where a network fits its training split and a penalty has something to prevent.
BUDGETS["scarce-long"] = dataclasses.replace(
    BUDGETS["scarce"], name="scarce-long", summary="scarce with 3× the steps", steps=1800, log_every=30
)


def budget_help() -> str:
    """``--budget``'s help: every budget of `BUDGETS` with its summary."""
    return "; ".join(f"{b.name} ({b.summary})" for b in BUDGETS.values()) + "."


def budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise ConfigError(f"unknown budget {name!r}", expected=" | ".join(BUDGETS), found=name)
    return BUDGETS[name]
