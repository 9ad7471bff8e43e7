"""What a run is asked for (`RunRequest`) and what it was checked and resolved into (`RunPlan`).

Below both the runner (which makes plans) and the recipe (which runs them), so neither imports the other's types.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtbench.errors import ConfigError
from mtbench.methods import MethodInfo
from mtbench.presets import Budget
from mtbench.result import REFERENCE_METHOD, Protocol
from mtbench.specs import DatasetSpec, TaskSpec
from mtbench.training import CHECKPOINT_EVERY

#: Default parent of run folders (``runs/<run id>``).
RUNS_DIR = Path("runs")

_PATH_FIELDS = ("data_root", "out", "results")
_TUPLE_FIELDS = ("unseen", "tasks", "plugins")


@dataclass
class RunRequest:
    """Everything ``mtbench run`` was asked for."""

    method: str
    dataset: str | None = None
    data_root: Path | None = None
    unseen: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None
    seed: int = 0
    budget: str = "quick"
    overrides: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    device: str = "auto"
    #: method plugin files or folders (paths) and installed modules (dotted names) to load: `methods`
    plugins: tuple[str | Path, ...] = ()
    results: Path | None = None
    reference: bool = True
    #: Continue from a checkpoint of this same configuration in the run folder; False starts from step 0.
    resume: bool = True
    #: Steps between two training checkpoints.
    checkpoint_every: int = CHECKPOINT_EVERY
    #: Deterministic kernels (``torch.use_deterministic_algorithms``, no cuDNN autotuning, no fused Adam);
    #: None (auto): True on the CPU (exact numbers per machine and thread count), False on CUDA, where
    #: ``torch.backends.cudnn.benchmark`` is set instead. The result's environment records which.
    deterministic: bool | None = None
    #: Compile the training forwards with `torch.compile` (see `TrainContext.compile`).
    compile: bool = False
    #: BatchNorm recalibration batches before every evaluation (None: the budget's; 0: none, the ablation).
    bn_batches: int | None = None
    #: CPU threads of torch for this run (None: torch's default, all cores). A seed's numbers depend on it; the
    #: published tables use 1.
    threads: int | None = None
    #: How the splits are held: ``memory`` (compact tensors), ``stream`` (read batch by batch through DataLoader
    #: workers) or ``auto`` (stream when the in-memory estimate exceeds ``memory_budget_gib``); see
    #: `mtbench.streaming.choose_data_path`. Either path gives the same numbers.
    data_mode: str = "auto"
    #: The in-memory data's budget in GiB for ``auto`` (None: half of the machine's memory).
    memory_budget_gib: float | None = None
    #: DataLoader workers per stream when streaming (None: `mtbench.streaming.default_workers`).
    loader_workers: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The request as JSON values (paths as text, tuples as lists): what a sweep sends to a worker."""
        payload: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [str(v) for v in value]
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, dict):
                value = dict(value)
            payload[f.name] = value
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> RunRequest:
        """The request `to_json` wrote; unknown keys are refused (another mtbench version wrote it)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - names)
        if unknown or "method" not in payload:
            raise ConfigError(
                "not a run request of this mtbench version",
                expected=f"the keys of mtbench.runner.RunRequest ({', '.join(sorted(names))}), with method",
                found=f"unknown keys {', '.join(unknown)}" if unknown else "no method",
                fix="run the sweep's driver and workers with the same mtbench version",
            )
        values = dict(payload)
        for name in _PATH_FIELDS:
            if values.get(name) is not None:
                values[name] = Path(values[name])
        for name in _TUPLE_FIELDS:
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def resolved_deterministic(self, device: torch.device) -> bool:
        """``deterministic``, with auto resolved for ``device`` (True unless CUDA)."""
        return self.deterministic if self.deterministic is not None else device.type != "cuda"


@dataclass(frozen=True)
class RunPlan:
    """A checked run, before any data is generated, loaded or trained on (`plan`); `describe` prints it.

    Attributes:
        request: what was asked for.
        method: the registry entry; ``config`` its resolved config (``--set`` applied).
        budget: the budget; ``protocol`` what every compared run shares (tasks, budget settings).
        dataset: the data set spec; ``data`` says where its files come from.
        seen / held_out: the tasks trained on, and those held out from training.
        device: the torch device; ``results_dir`` the store; ``out`` the run folder (None: ``runs/<run id>``).
        needs_reference: whether Δm needs the stl reference (trained first when not stored).
    """

    request: RunRequest
    method: MethodInfo
    config: Any
    budget: Budget
    protocol: Protocol
    dataset: DatasetSpec
    data: str
    seen: tuple[TaskSpec, ...]
    held_out: tuple[TaskSpec, ...]
    device: torch.device
    results_dir: Path
    out: Path | None
    needs_reference: bool

    def describe(self) -> list[tuple[str, str]]:
        """The plan as (what, value) lines."""
        budget = self.budget
        overrides = ", ".join(f"{k}={v}" for k, v in self.request.overrides.items())
        return [
            ("method", f"{self.method.name} ({self.method.summary})"),
            ("config", json.dumps(plain_config(self.config), sort_keys=True)
             + (f"  (--set {overrides})" if overrides else "")),
            ("data set", f"{self.dataset.name}: {self.data}"),
            ("seen tasks", ", ".join(t.name for t in self.seen)),
            ("held-out tasks", ", ".join(t.name for t in self.held_out) or "none"),
            ("budget", f"{budget.name}: {budget.steps} steps, batch {budget.batch_size}, lr {budget.lr}, meta-test "
             f"fine-tuning {budget.finetune_steps} steps"),
            ("network", json.dumps(dataclasses.asdict(budget.arch), sort_keys=True)),
            ("evaluation", f"mtbench/protocol.py: BatchNorm statistics recomputed on "
             f"{budget.bn_recalibration_batches} training batches before every evaluation; "
             f"{budget.validation_samples} training-split samples held out for validation; joint, adapted "
             "and trivial scores on validation and test"),
            ("seed", str(self.request.seed)),
            ("device", f"{self.device} ({torch.get_num_threads()} CPU threads)"),
            ("stl reference", "needed for Δm: reused from the store, else trained first" if self.needs_reference
             else "not needed" if self.method.name == REFERENCE_METHOD else "skipped (--no-reference)"),
            ("run folder", str(self.out) if self.out is not None else f"{RUNS_DIR}/<run id>"),
            ("results store", str(self.results_dir)),
        ]


def plain_config(config: Any) -> Any:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
