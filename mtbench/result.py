"""One run's result: a typed, versioned record, built once at the end of a run and written once.

Every module reads a result through `RunResult` and its typed parts (by attribute), never by string keys into
JSON: `Metric` and `TaskOutcome` per task, `DeltaM` (with `DeltaM.overall`), `Accounting` (parameters, FLOPs and
latency, dense against compact), `Environment`, `HistoryRow` (one logged training step), `Sparsity` with its
`LayerSparsity` rows, `Evaluation`, `TrainingCost`, `LambdaTrace` and `Timings`. Each part has ``to_json`` and
``from_json``. The dataclasses are the one schema: `RunResult.from_json` checks a payload against their type
hints while it reads it (`mtbench.schema.decode`), and what a type cannot say (finite numbers, names safe in file
names, a task present) is a rule declared in the hint next to the field (`Finite`, `Text`, `SafeName`). A bad
file is a `ResultFileError` naming it, the dotted field (``tasks.semseg.metrics.mIoU.value``), what was expected
and what was found.

The JSON form (``result.json`` in a run folder, one file per configuration and seed in a results store) carries a
``schema_version``; every version ever written reads:

* **1** — the protocol lacked ``finetune_batch`` (its fields were a hand-kept list). Every mtbench that wrote
  schema 1 used the budgets below for it, unchanged since the budgets were made, so reading a version-1 file
  fills it in exactly; a budget unknown to that table reads as ``None`` (such a run shares no table cell with
  a version-2 run).
* **2** — the protocol holds every field of the `~mtbench.presets.Budget` that changes what is trained or
  measured (see `PROTOCOL_EXCLUDED`), derived from the budget object itself: a new budget field is part of
  the protocol without touching this module.
* **3** — the evaluation protocol of `mtbench.protocol`: BatchNorm statistics recomputed before every
  evaluation, a validation split carved from the training split, per task the joint score (seen tasks), the
  adapted score (``metrics``, as before) and the trivial predictor's, each on validation and test
  (`TaskOutcome`); `DeltaM` typed, with the joint score; `Evaluation` (splits, recalibration); training cost in
  `TrainingCost`; dead layers in `Sparsity`. Results of version 3 never share a table with older ones: their
  protocol holds ``validation_samples`` and ``bn_recalibration_batches``, which no older protocol has, so their
  `protocol_signature` differs.

The typed parts that were free-form objects in JSON write back exactly what they read: a key an older file lacks
stays absent (``omit_none`` fields), `Environment` keeps keys it does not know in ``extra`` and an explicit null
as a null, `HistoryRow` keeps every value a method logs. A new result field is one dataclass field here (with a
default, so older files still read) and the place in `mtbench.recipe` that fills it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from mtbench.errors import ResultFileError, UnsafeNameError
from mtbench.registry import safe_name
from mtbench.schema import (
    FINITE,
    MISSING,
    NON_EMPTY,
    POSITIVE,
    Record,
    Rule,
    SchemaViolation,
    decode,
    encode,
    json_field,
)

SCHEMA_VERSION = 3  #: the version `RunResult.to_json` writes
READABLE_VERSIONS: tuple[int, ...] = (1, 2, 3)  #: every version ever written; `RunResult.from_json` reads them all
REFERENCE_METHOD = "stl"  #: the method every Δm is measured against (single-task learning)

#: Budget fields that are not part of the protocol, and why: the budget's name is ``protocol.budget``; the
#: synthetic set's size is part of the data set's fingerprint; the evaluation batch and the logging interval
#: change neither what is trained nor what is measured; nor do the budget's help line and the device a sweep reserves.
PROTOCOL_EXCLUDED: frozenset[str] = frozenset(
    {"name", "synth_samples", "synth_options", "eval_batch", "log_every", "summary", "device"}
)
#: Budget fields that schema 3 added to the protocol (`mtbench.protocol`): no older result has them, so no older
#: result shares a protocol signature, a table or a reference with a result of schema 3.
EVALUATION_FIELDS: tuple[str, ...] = ("validation_samples", "bn_recalibration_batches")
#: ``finetune_batch`` of the budgets of every mtbench that wrote schema 1 (see the module docstring).
_V1_FINETUNE_BATCH: Mapping[str, int] = {"smoke": 4, "quick": 8, "plateau": 8, "scarce": 8, "paper": 8}

REWRITE_FIX = (
    "re-run this configuration with `mtbench run`, or restore the file from its run folder "
    "(runs/<run id>/result.json); a file that is not a result does not belong in a results folder"
)


def _json_value(value: Any) -> Any:
    """Tuples as lists, records and dataclasses as their JSON form: the value as it reads back from JSON."""
    return json.loads(json.dumps(encode(value)))


# --- domain rules the types cannot say (declared in the hints: see `mtbench.schema`) -----------------------------


@dataclass(frozen=True)
class SafeName:
    """A rule: a name that becomes part of file names (`mtbench.registry.safe_name`), of ``kind``."""

    kind: str
    describes = True  #: a value of the wrong type is reported as "expected a safe … name"

    @property
    def expected(self) -> str:
        return f"a safe {self.kind} name"

    def check(self, value: Any) -> None:
        try:
            safe_name(self.kind, value)
        except UnsafeNameError as error:
            raise SchemaViolation(
                error.expected or self.expected,
                value,
                problem=f"is not a safe {self.kind} name",
                found_text=error.found,
                fix=f"the {self.kind} name becomes part of file names: rename the {self.kind} and re-run it, "
                "or correct the name in this file",
            ) from None


Finite = Annotated[float, FINITE]  #: a number that is neither NaN nor infinite
Text = Annotated[str, NON_EMPTY]  #: a non-empty string
TaskName = Annotated[str, SafeName("task")]
LamValue = Finite | list[Finite] | None  #: λ: one value, one per layer (a list), or none
Role = Literal["seen", "unseen", "joint"]  #: a Δm of a run: adapted on the seen / held-out tasks, joint on the seen
ALL_METRICS = "all-metric average"  #: the key of a Δm averaged over all metrics at once (`mtbench.scoring`)
PER_TASK = "per-task average"  #: the key of a Δm averaged per task first, then over tasks (`mtbench.scoring`)
_FINGERPRINT = Rule(lambda value: isinstance(value, str) and bool(value), "a non-empty string", key="fingerprint")
_SOME_TASK = Rule(bool, "at least one task")


# --- the parts ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric(Record):
    """One metric of one task: its value and how it is compared."""

    value: Finite
    higher_is_better: bool
    in_delta_m: bool = True  #: False: shown and ranked, but left out of Δm (e.g. attribute F1)


@dataclass(frozen=True)
class TaskOutcome(Record):
    """What the protocol measured on one task (seen: trained on; else held out).

    ``metrics`` is the adapted score on the test split (the meta-test: fine-tuned from the trained backbone);
    ``joint`` the trained multi-task network as it is on the test split (seen tasks; schema 3); ``validation``
    the same scores on the validation split (``{"adapted": {metric: value}, "joint": …}``), where every choice
    is made; ``trivial`` the trivial predictor's metrics per split (``{"val": …, "test": …}``); ``test_interval``
    each test score's bootstrap interval over test images (`mtbench.protocol.bootstrap_interval`).
    """

    seen: bool
    metrics: Mapping[str, Metric]
    version: str | None = None
    title: str | None = None
    finetune_seconds: float | None = None
    eval_seconds: float | None = None
    joint: Mapping[str, Metric] | None = None
    validation: Mapping[str, Mapping[str, float]] | None = None
    trivial: Mapping[str, Mapping[str, float]] | None = None
    #: per score (``adapted``/``joint``), metric -> [low, high]: 95 % bootstrap interval over the test images
    test_interval: Mapping[str, Mapping[str, Sequence[float]]] | None = None
    #: where the task's spec came from (``builtin``, ``file PATH (sha256 …)`` of a plugin, an entry point); absent in
    #: results written before it was recorded
    source: str | None = json_field(default=None, omit_none=True)


@dataclass(frozen=True)
class MethodRecord(Record):
    """The method of a run: registry name, resolved config and its provenance."""

    name: Annotated[str, SafeName("method")]
    config: Mapping[str, Any]
    source: str | None = None  #: ``builtin`` or the plugin file it came from
    summary: str | None = None
    paper: str | None = None
    link: str | None = None
    deviations: str | None = None
    kind: str = "mtl"
    #: ``dense``, ``sparse`` or ``front`` (`mtbench.methods.FAMILIES`); None (no key) in results written before it
    #: was recorded
    family: str | None = json_field(default=None, omit_none=True)


@dataclass(frozen=True)
class DatasetRecord(Record):
    """The data set of a run: name, whether synthetic, and its identity (fingerprint, layout, generator)."""

    name: Annotated[str, SafeName("dataset")]
    synthetic: bool
    identity: Annotated[Mapping[str, Any], _FINGERPRINT]
    family: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    #: where the reader of its layout came from (``builtin``, a plugin file, an entry point); absent in results
    #: written before it was recorded
    layout_source: str | None = json_field(default=None, omit_none=True)

    @property
    def fingerprint(self) -> str:
        return self.identity["fingerprint"]


@dataclass(frozen=True)
class NetworkSettings(Record):
    """The network a protocol trains (`mtbench.models.ArchSpec`, as its JSON form)."""

    backbone: str
    widths: tuple[int, ...]
    blocks: int
    norm: str
    head_hidden: int | None = None


@dataclass(frozen=True)
class BudgetSettings(Record):
    """The budget a protocol ran at, typed: every `~mtbench.presets.Budget` field that changes what is trained or
    measured (`Protocol.of` writes them from the budget itself; `PROTOCOL_EXCLUDED` lists the others). Each is
    type-checked when a result is read; one that a stored protocol lacks (an older schema version) is None; a
    budget field newer than this type lands in ``extra`` (a test keeps the two lists equal)."""

    arch: NetworkSettings | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    finetune_batch: int | None = None
    resolution: tuple[int, int] | None = None
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    validation_samples: int | None = None  #: schema 3
    bn_recalibration_batches: int | None = None  #: schema 3
    extra: Mapping[str, Any] = json_field(default_factory=dict, rest=True)


@dataclass(frozen=True)
class Protocol(Record):
    """What every compared run must share: budget, seen and held-out tasks, and the budget's settings.

    In JSON the settings sit beside the named fields (one object); every key that is not a named field is one.
    """

    budget: Annotated[str, SafeName("budget")]
    seen: tuple[TaskName, ...]
    unseen: tuple[TaskName, ...]
    task_versions: Mapping[str, str] = field(default_factory=dict)
    #: steps, batch size, learning rates, network, … (JSON values)
    settings: Mapping[str, Any] = json_field(default_factory=dict, rest=True)

    @functools.cached_property
    def budget_settings(self) -> BudgetSettings:
        """The settings, typed (read from ``settings``, which holds them as stored)."""
        return BudgetSettings.from_json(dict(self.settings))

    @classmethod
    def of(cls, budget: Any, seen: Sequence[Any], held_out: Sequence[Any]) -> Protocol:
        """The protocol of a run on ``budget`` (a `~mtbench.presets.Budget`) with these `TaskSpec` lists."""
        settings = {
            f.name: _json_value(getattr(budget, f.name))
            for f in dataclasses.fields(budget)
            if f.name not in PROTOCOL_EXCLUDED
        }
        return cls(
            budget=budget.name,
            seen=tuple(t.name for t in seen),
            unseen=tuple(t.name for t in held_out),
            task_versions={t.name: t.version for t in (*seen, *held_out)},
            settings=settings,
        )


@dataclass(frozen=True)
class LayerSparsity(Record):
    """One shared conv at the end of training: its channel groups and parameters, and how many are exactly zero
    (``params``/``zero_params``: absent in files that did not record them)."""

    name: Text
    groups: Annotated[int, POSITIVE]
    zero_groups: int
    params: int | None = json_field(default=None, omit_none=True)
    zero_params: int | None = json_field(default=None, omit_none=True)

    @property
    def zero_fraction(self) -> float:
        """The fraction of this layer's channel groups that are zero."""
        return self.zero_groups / self.groups


@dataclass(frozen=True)
class Sparsity(Record):
    """Structured sparsity of the shared network at the end of training."""

    group_sparsity: Finite | None  #: fraction of channel groups that are exactly zero (None: not measured)
    param_sparsity: float | None = None
    axis: str | None = None  #: ``in`` or ``out``: which channels form a group
    layers: tuple[LayerSparsity, ...] = ()
    #: shared convs whose every group is zero, and residual branches switched off by one (schema 3)
    dead_layers: tuple[str, ...] = ()
    dead_branches: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeltaM(Record):
    """Δm of a run against its reference, positive = better; each score a {convention: value} (`mtbench.scoring`).

    ``seen``/``unseen``: the adapted score (meta-test) of the seen and held-out tasks; ``joint``: the trained
    multi-task network's score of the seen tasks (schema 3). ``unavailable``: why none was computed. Read a
    score with `overall` (all-metric average) or `per_task`, never by its key.
    """

    reference_run: str | None = None
    reference_method: str | None = None
    seen: Mapping[str, float] | None = None
    unseen: Mapping[str, float] | None = None
    joint: Mapping[str, float] | None = None
    positive_is_better: bool = True
    unavailable: str | None = None

    def score(self, role: Role) -> Mapping[str, float] | None:
        """The {convention: Δm %} of one role (None: not computed)."""
        return {"seen": self.seen, "unseen": self.unseen, "joint": self.joint}[role]

    def overall(self, role: Role) -> float | None:
        """Δm % of ``role`` averaged over all metrics at once (the convention the tables rank by)."""
        return (self.score(role) or {}).get(ALL_METRICS)

    def per_task(self, role: Role) -> float | None:
        """Δm % of ``role`` averaged per task first, then over tasks."""
        return (self.score(role) or {}).get(PER_TASK)

    @property
    def primary(self) -> Role:
        """The role a run is ranked by: joint where it was scored so (schema 3), else adapted seen."""
        return "joint" if self.joint is not None else "seen"


@dataclass(frozen=True)
class DenseCompact(Record):
    """One count of a run's network(s): with its zeroed channels (``dense``) and with them removed (``compact``)."""

    dense: Finite
    compact: Finite

    @property
    def ratio(self) -> float | None:
        """compact ÷ dense (None when dense is 0)."""
        return self.compact / self.dense if self.dense else None

    @property
    def percent(self) -> float | None:
        """compact as % of dense (None when dense is 0)."""
        return 100.0 * self.compact / self.dense if self.dense else None


@dataclass(frozen=True)
class PathLatency(Record):
    """One inference path (`mtbench.export.paths`) of the compact network (BatchNorm folded) at one batch size.

    ``status``: ``ok`` (timed: median and interquartile range over the interleaved rounds, in ms, and its largest
    difference from the dense network's outputs), ``unavailable`` (it cannot run here: ``reason`` says why) or
    ``mismatch`` (its outputs differ from the dense network's beyond tolerance: ``reason``; not timed).
    """

    path: str
    status: Literal["ok", "unavailable", "mismatch"] = "ok"
    median_ms: Finite | None = json_field(default=None, omit_none=True)
    low_ms: Finite | None = json_field(default=None, omit_none=True)  #: lower quartile over the rounds
    high_ms: Finite | None = json_field(default=None, omit_none=True)  #: upper quartile over the rounds
    max_abs_difference: Finite | None = json_field(default=None, omit_none=True)  #: against the dense network
    reason: str | None = json_field(default=None, omit_none=True)


@dataclass(frozen=True)
class Latency(Record):
    """Milliseconds of one forward of a batch: dense, compact, and compact with BatchNorm folded into the convs
    (medians); from ``mtbench bench inference`` with inference paths, also the number of interleaved ``rounds``,
    the interquartile range (low, high) of the first two, and each path's `PathLatency` (absent in older files)."""

    dense: float
    compact: float
    compact_bn_folded: float
    rounds: int | None = json_field(default=None, omit_none=True)
    dense_spread: tuple[Finite, Finite] | None = json_field(default=None, omit_none=True)
    compact_spread: tuple[Finite, Finite] | None = json_field(default=None, omit_none=True)
    paths: Mapping[str, PathLatency] | None = json_field(default=None, omit_none=True)

    def ratio(self, path: str) -> float | None:
        """Path ``path``'s median ÷ the dense network's (None: not timed, or no such path)."""
        timing = (self.paths or {}).get(path)
        if timing is None or timing.median_ms is None or not self.dense:
            return None
        return timing.median_ms / self.dense


@dataclass(frozen=True)
class Accounting(Record):
    """Parameters and FLOPs of a run's network(s), dense against compact, summed over its networks
    (`mtbench.inference.account`); the latency per batch size where it was benchmarked (``mtbench bench
    inference``). Keys an older file lacks stay absent."""

    params: DenseCompact
    flops: DenseCompact  #: of one image at ``input_size``
    input_size: tuple[int, int] | None = json_field(default=None, omit_none=True)
    tasks: tuple[str, ...] | None = json_field(default=None, omit_none=True)  #: the heads counted
    networks: int | None = json_field(default=None, omit_none=True)  #: one per task for stl, else one
    threads: int | None = json_field(default=None, omit_none=True)
    device: str | None = json_field(default=None, omit_none=True)
    #: batch size (as text, a JSON key) -> milliseconds; empty: not timed
    latency_ms: Mapping[str, Latency] | None = json_field(default=None, omit_none=True)


_ENVIRONMENT = {"default": None, "omit_none": True}


@dataclass(frozen=True)
class Environment(Record, Mapping[str, Any]):
    """The software and hardware a result was made with (`mtbench.environment.environment`), each field as
    recorded; None (and no key in JSON) where the file did not record it.

    Older files lack some keys (they stay absent), a key this mtbench does not know is kept in ``extra``, and
    a key recorded as null (e.g. ``malloc``: allocator left at its defaults) is written as null again. Reading
    it as a mapping (``dict(env)``, ``env["threads"]``) sees the JSON form.
    """

    mtbench: str | None = json_field(**_ENVIRONMENT)
    torch: str | None = json_field(**_ENVIRONMENT)
    numpy: str | None = json_field(**_ENVIRONMENT)
    python: str | None = json_field(**_ENVIRONMENT)
    learn2learn: str | None = json_field(**_ENVIRONMENT)
    platform: str | None = json_field(**_ENVIRONMENT)
    device: str | None = json_field(**_ENVIRONMENT)  #: ``cpu``, ``cuda:0`` …
    gpu: str | None = json_field(**_ENVIRONMENT)  #: the GPU's name (CUDA runs)
    threads: int | None = json_field(**_ENVIRONMENT)  #: torch's CPU threads
    cpu_model: str | None = json_field(**_ENVIRONMENT)
    cpu_capability: str | None = json_field(**_ENVIRONMENT)  #: torch's CPU kernel choice (AVX2, AVX512 …)
    math_libraries: tuple[str, ...] | None = json_field(**_ENVIRONMENT)  #: BLAS/oneDNN builds
    deterministic: bool | None = json_field(**_ENVIRONMENT)  #: ``torch.use_deterministic_algorithms``
    cudnn_benchmark: bool | None = json_field(**_ENVIRONMENT)
    malloc: Mapping[str, int] | None = json_field(**_ENVIRONMENT)  #: glibc allocator settings (`mtbench.allocator`)
    #: how the data were held (`mtbench.streaming.DataPath` and where they lived / the stream's prefetch)
    data: Mapping[str, Any] | None = json_field(**_ENVIRONMENT)
    nulls: frozenset[str] = json_field(default=frozenset(), nulls=True)  #: fields recorded as an explicit null
    extra: Mapping[str, Any] = json_field(default_factory=dict, rest=True)  #: keys this mtbench does not know

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


_LOGGED = {"default": None, "omit_none": True}


@dataclass(frozen=True)
class HistoryRow(Record):
    """One logged training step (`mtbench.training.train`: every ``log_every`` steps and the last): what the
    method logged and what the engine adds (group sparsity, λ, and the step's FLOPs where counted). Every value a
    method logs is kept: the named ones below, per-task losses and weights, and any other in ``extra``."""

    step: int
    loss: float | None = json_field(**_LOGGED)  #: the step's training loss
    task_losses: Mapping[str, float] = json_field(default_factory=dict, prefix="loss/")  #: ``loss/<task>``
    weights: Mapping[str, float] = json_field(default_factory=dict, prefix="w/")  #: ``w/<task>``: loss weights
    episode_tasks: float | None = json_field(key="tasks", **_LOGGED)  #: tasks in the step's episode (meta)
    lambda_grad: float | None = json_field(**_LOGGED)  #: ∂L_Q/∂λ, a learned λ's meta-gradient
    lambda_grad_positive: float | None = json_field(**_LOGGED)  #: the fraction of steps so far where it was > 0
    group_sparsity: float | None = json_field(**_LOGGED)  #: mean over the trained networks
    flops: float | None = json_field(**_LOGGED)  #: the step's FLOPs (counted steps only)
    lam: float | list[float] | None = json_field(key="lambda", **_LOGGED)  #: λ after the step (one or per layer)
    extra: Mapping[str, Any] = json_field(default_factory=dict, rest=True)  #: anything else the method logged

    @classmethod
    def logged(cls, entry: Mapping[str, Any]) -> HistoryRow:
        """A history entry as training logged it (Python values: a tuple of λ, NumPy scalars …), read as JSON."""
        return cls.from_json(_json_value(entry))

    @property
    def mean_lam(self) -> float | None:
        """λ, or the mean of a per-layer λ."""
        if isinstance(self.lam, list):
            return sum(self.lam) / len(self.lam)
        return self.lam


@dataclass(frozen=True)
class Evaluation(Record):
    """How the run was scored (`mtbench.protocol`): split sizes, the validation samples' origin, BatchNorm
    recalibration and what it changed (per trained network, the layer whose running variance was furthest from
    the recomputed one, as recomputed / stale)."""

    bn_recalibration_batches: int
    splits: Mapping[str, int]  #: role (train / val / test) -> samples
    validation: str  #: where the validation samples come from
    stale_variance: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seconds: float | None = None


@dataclass(frozen=True)
class TrainingCost(Record):
    """Training compute of the run: FLOPs counted with PyTorch's FlopCounterMode on the logged steps (every
    ``log_every``-th, inner loops included), the total extrapolated as their mean × ``steps``."""

    steps: int
    counted_steps: int
    flops_per_step: float
    flops: float
    seconds: float | None = None


@dataclass(frozen=True)
class LambdaTrace(Record):
    """λ of a sparsity method: start, end (a list when per layer) and ``[step, λ]`` along training."""

    start: LamValue = None
    end: LamValue = None
    trajectory: tuple[tuple[int, Any], ...] = ()


@dataclass(frozen=True)
class Timings(Record):
    """Wall-clock seconds; the stl reference's time (when this run trained it) is not in ``total_seconds``. A
    resumed run's ``train_seconds`` and ``total_seconds`` both count the training of its earlier sessions."""

    train_seconds: float | None = None
    meta_test_seconds: float | None = None
    total_seconds: float | None = None
    reference_seconds: float = 0.0
    reference_trained: bool = False


@dataclass(frozen=True)
class RunResult(Record):
    """One run of one method, data set, protocol and seed. Immutable; `dataclasses.replace` makes variants."""

    run_id: Text
    created: Text
    method: MethodRecord
    dataset: DatasetRecord
    protocol: Protocol
    seed: int
    tasks: Annotated[Mapping[str, TaskOutcome], _SOME_TASK]
    overrides: Mapping[str, str] = field(default_factory=dict)
    environment: Environment = field(default_factory=Environment)  #: versions, threads, CPU/GPU
    sparsity: Sparsity | None = None
    lam: LambdaTrace = json_field(default_factory=LambdaTrace, key="lambda")
    history: tuple[HistoryRow, ...] = ()  #: logged training steps
    timings: Timings | None = None
    input_size: tuple[int, int] | None = None
    delta_m: DeltaM | None = None  #: see `mtbench.scoring.run_delta_m`
    inference: Accounting | None = None  #: parameters and FLOPs, dense against compact
    evaluation: Evaluation | None = None  #: how it was scored (schema 3)
    training_cost: TrainingCost | None = None  #: training compute (schema 3)
    schema_version: int = SCHEMA_VERSION  #: the version it was read from (written: always `SCHEMA_VERSION`)

    # --- derived ----------------------------------------------------------------------------------------

    @property
    def threads(self) -> int | None:
        return self.environment.threads

    def seen_tasks(self) -> list[str]:
        return [name for name, task in self.tasks.items() if task.seen]

    def unseen_tasks(self) -> list[str]:
        return [name for name, task in self.tasks.items() if not task.seen]

    def signature(self) -> dict[str, Any]:
        """What two runs must share to be compared (and for one to be the other's reference)."""
        return protocol_signature(self.dataset, self.protocol)

    @property
    def config_key(self) -> str:
        """SHA-256 of the configuration: protocol signature, method, method config and seed."""
        return configuration_key(self.signature(), self.method.name, self.method.config, self.seed)

    # --- JSON -------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON form (always the current `SCHEMA_VERSION`), with its ``config_key``."""
        payload = encode(self)
        payload["schema_version"] = SCHEMA_VERSION
        payload["config_key"] = self.config_key
        return json.loads(json.dumps(payload))  # a deep copy as it reads back from JSON

    @classmethod
    def from_json(cls, payload: Any, path: Path | str = "<in memory>") -> RunResult:
        """Check ``payload`` (any readable schema version) and build the result; `ResultFileError` names ``path``."""
        if not isinstance(payload, dict):
            raise _invalid(path, SchemaViolation("a JSON object holding one result", payload))
        version = payload.get("schema_version", MISSING)
        if not isinstance(version, int) or isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise ResultFileError(
                path,
                "not a result file this mtbench can read: unknown schema_version",
                expected=f"schema_version {' or '.join(map(str, READABLE_VERSIONS))}",
                found=describe_json(version),
                fix="another mtbench version wrote it: re-run the configuration with this one, or use a matching "
                "mtbench",
            )
        if version == 1:
            payload = _upgrade_v1(payload)
        try:
            result = decode(cls, payload)
        except SchemaViolation as violation:
            raise _invalid(path, violation) from None
        try:
            result.protocol.budget_settings  # noqa: B018 - the settings are checked against their type now
        except SchemaViolation as violation:
            raise _invalid(path, violation.inside("protocol")) from None
        return result

    @classmethod
    def read(cls, path: Path | str) -> RunResult:
        """The result in a JSON file; a `ResultFileError` naming it if unreadable or malformed."""
        return cls.from_json(read_json(path), path)


def _invalid(path: Path | str, violation: SchemaViolation) -> ResultFileError:
    """A `ResultFileError` for a payload that does not fit the schema, naming the field."""
    return ResultFileError(
        path,
        f"not a valid result file: {violation.path or '(top level)'!r} {violation.problem}",
        expected=violation.expected,
        found=violation.found_text if violation.found_text is not None else describe_json(violation.found),
        fix=violation.fix or REWRITE_FIX,
    )


def _upgrade_v1(payload: Mapping[str, Any]) -> dict[str, Any]:
    protocol = payload.get("protocol")
    if not isinstance(protocol, dict) or not isinstance(protocol.get("budget"), str):
        return dict(payload)  # the schema check names what is wrong
    protocol = dict(protocol)
    protocol.setdefault("finetune_batch", _V1_FINETUNE_BATCH.get(protocol["budget"]))
    return {**payload, "protocol": protocol}


def protocol_signature(dataset: DatasetRecord, protocol: Protocol) -> dict[str, Any]:
    """What two runs must share to be compared: data set name, fingerprint, synthetic flag and protocol."""
    return _json_value(
        {
            "dataset": dataset.name,
            "fingerprint": dataset.fingerprint,
            "synthetic": dataset.synthetic,
            "protocol": protocol.to_json(),
        }
    )


def configuration_key(signature: Mapping[str, Any], method: str, config: Mapping[str, Any], seed: int) -> str:
    """SHA-256 of a configuration (a results store keeps one file per key)."""
    material = {"signature": signature, "method": method, "config": _json_value(config), "seed": seed}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


# --- reading JSON -------------------------------------------------------------------------------------------


def read_json(path: Path | str) -> Any:
    """The parsed JSON in ``path``; a `ResultFileError` naming it when missing, unreadable or not JSON."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ResultFileError(
            path,
            "no result file here",
            expected="a result.json written by `mtbench run` (or a run folder holding one)",
            found="nothing at this path",
            fix="check the path",
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ResultFileError(
            path, "cannot read this result file", expected="a readable UTF-8 JSON file", found=str(error),
            fix=REWRITE_FIX,
        ) from None
    try:
        return json.loads(text)
    except ValueError as error:
        found = "an empty file" if not text.strip() else f"{error} (a truncated or hand-broken file?)"
        raise ResultFileError(
            path, "not valid JSON", expected="one complete JSON object", found=found, fix=REWRITE_FIX
        ) from None


def describe_json(value: Any) -> str:
    """A short description of a JSON value for an error message."""
    if value is MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{kind.get(type(value), type(value).__name__)} {text[:60]}{'…' if len(text) > 60 else ''}"
