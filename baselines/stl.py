"""Single-task learning: one network per task, the reference for Δm."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mtbench.methods import MethodInfo
from mtbench.models import MultiTaskNet
from mtbench.specs import TaskSpec
from mtbench.training import Method, TrainContext


@dataclass
class STLConfig:
    """No options: each seen task gets its own network, optimiser and the full step budget."""


class SingleTask(Method):
    """Trains an independent network for every seen task, each for the budget's steps.

    At meta-test a seen task starts from its own network; a held-out task's network is a freshly initialised
    one trained on the task for the budget's training steps (`held_out_steps`), like a seen task's: the
    single-task reference every method's held-out score is compared with.
    """

    def held_out_steps(self, ctx: TrainContext) -> int:
        return ctx.budget.steps

    def setup(self, ctx: TrainContext) -> None:
        self.models = {t.name: ctx.new_model([t], seed_offset=i + 1) for i, t in enumerate(ctx.seen)}
        self.optimizers = {t: ctx.make_optimizer(m.parameters()) for t, m in self.models.items()}

    def step(self, ctx: TrainContext, step: int) -> dict[str, Tensor]:
        logged: dict[str, Tensor] = {}
        for salt, (task, model) in enumerate(self.models.items()):
            model.train()
            loss = ctx.losses(model, ctx.train_batch(step, [task], salt=salt), [task])[task]
            self.optimizers[task].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers[task].step()
            logged[f"loss/{task}"] = loss.detach()  # a device tensor: `train` makes floats at logged steps
        # the total in float64, as the former sum of Python floats
        logged["loss"] = sum(value.double() for value in logged.values())
        return logged

    def model_for(self, task: TaskSpec, ctx: TrainContext) -> MultiTaskNet:
        if task.name in self.models:
            return self.models[task.name]
        return ctx.new_model([], seed_offset=len(self.models) + 1)

    def state_dict(self) -> dict:
        return {f"model/{t}": m.state_dict() for t, m in self.models.items()}


METHOD = MethodInfo(
    name="stl",
    summary="single-task learning: one network per task (the Δm reference)",
    method=SingleTask,
    config=STLConfig,
    paper="",
    link="",
    deviations="held-out tasks are scored after training a fresh network on them for the training budget's steps "
    "(since result schema 3; before, 150 fine-tuning steps, which scored at the trivial predictor's level)",
)
