"""One run's result: a typed, versioned record, built once at the end of a run and written once.

Every module reads a result through `RunResult` (by attribute), never by string keys into JSON. The JSON
form (``result.json`` in a run folder, one file per configuration and seed in a results store) carries a
``schema_version``; `RunResult.from_json` checks a payload field by field (`validate_payload`: a bad file is
a `ResultFileError` naming it and the field) and reads every version ever written:

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

A new result field is one dataclass field here (with a default, so older files still read) and the place in
`mtbench.runner` that fills it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mtbench.errors import ResultFileError, UnsafeNameError
from mtbench.registry import safe_name

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
    """Tuples as lists, dataclasses as dicts: the value as it reads back from JSON."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass(frozen=True)
class Metric:
    """One metric of one task: its value and how it is compared."""

    value: float
    higher_is_better: bool
    in_delta_m: bool = True  #: False: shown and ranked, but left out of Δm (e.g. attribute F1)


@dataclass(frozen=True)
class TaskOutcome:
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


@dataclass(frozen=True)
class MethodRecord:
    """The method of a run: registry name, resolved config and its provenance."""

    name: str
    config: Mapping[str, Any]
    source: str | None = None  #: ``builtin`` or the plugin file it came from
    summary: str | None = None
    paper: str | None = None
    link: str | None = None
    deviations: str | None = None
    kind: str = "mtl"
    #: ``dense``, ``sparse`` or ``front`` (`mtbench.methods.FAMILIES`); None in results written before it was recorded
    family: str | None = None


@dataclass(frozen=True)
class DatasetRecord:
    """The data set of a run: name, whether synthetic, and its identity (fingerprint, layout, generator)."""

    name: str
    synthetic: bool
    identity: Mapping[str, Any]
    family: str | None = None
    train_split: str | None = None
    test_split: str | None = None

    @property
    def fingerprint(self) -> str:
        return self.identity["fingerprint"]


@dataclass(frozen=True)
class Protocol:
    """What every compared run must share: budget, seen and held-out tasks, and the budget's settings."""

    budget: str
    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    task_versions: Mapping[str, str]
    settings: Mapping[str, Any]  #: steps, batch size, learning rates, network, … (JSON values)

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

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "seen": list(self.seen),
            "unseen": list(self.unseen),
            "task_versions": dict(self.task_versions),
            **self.settings,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Protocol:
        named = {"budget", "seen", "unseen", "task_versions"}
        return cls(
            budget=payload["budget"],
            seen=tuple(payload["seen"]),
            unseen=tuple(payload["unseen"]),
            task_versions=dict(payload.get("task_versions") or {}),
            settings={k: v for k, v in payload.items() if k not in named},
        )


@dataclass(frozen=True)
class Sparsity:
    """Structured sparsity of the shared network at the end of training."""

    group_sparsity: float | None  #: fraction of channel groups that are exactly zero (None: not measured)
    param_sparsity: float | None = None
    axis: str | None = None  #: ``in`` or ``out``: which channels form a group
    layers: tuple[Mapping[str, Any], ...] = ()
    #: shared convs whose every group is zero, and residual branches switched off by one (schema 3)
    dead_layers: tuple[str, ...] = ()
    dead_branches: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeltaM:
    """Δm of a run against its reference, positive = better; each score a {convention: value} (`mtbench.scoring`).

    ``seen``/``unseen``: the adapted score (meta-test) of the seen and held-out tasks; ``joint``: the trained
    multi-task network's score of the seen tasks (schema 3). ``unavailable``: why none was computed.
    """

    reference_run: str | None = None
    reference_method: str | None = None
    seen: Mapping[str, float] | None = None
    unseen: Mapping[str, float] | None = None
    joint: Mapping[str, float] | None = None
    positive_is_better: bool = True
    unavailable: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """How the run was scored (`mtbench.protocol`): split sizes, the validation samples' origin, BatchNorm
    recalibration and what it changed (per trained network, the layer whose running variance was furthest from
    the recomputed one, as recomputed / stale)."""

    bn_recalibration_batches: int
    splits: Mapping[str, int]  #: role (train / val / test) -> samples
    validation: str  #: where the validation samples come from
    stale_variance: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seconds: float | None = None


@dataclass(frozen=True)
class TrainingCost:
    """Training compute of the run: FLOPs counted with PyTorch's FlopCounterMode on the logged steps (every
    ``log_every``-th, inner loops included), the total extrapolated as their mean × ``steps``."""

    steps: int
    counted_steps: int
    flops_per_step: float
    flops: float
    seconds: float | None = None


@dataclass(frozen=True)
class LambdaTrace:
    """λ of a sparsity method: start, end (a list when per layer) and ``[step, λ]`` along training."""

    start: float | list[float] | None = None
    end: float | list[float] | None = None
    trajectory: tuple[tuple[int, Any], ...] = ()


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds; the stl reference's time (when this run trained it) is not in ``total_seconds``. A
    resumed run's ``train_seconds`` and ``total_seconds`` both count the training of its earlier sessions."""

    train_seconds: float | None = None
    meta_test_seconds: float | None = None
    total_seconds: float | None = None
    reference_seconds: float = 0.0
    reference_trained: bool = False


@dataclass(frozen=True)
class RunResult:
    """One run of one method, data set, protocol and seed. Immutable; `dataclasses.replace` makes variants."""

    run_id: str
    created: str
    method: MethodRecord
    dataset: DatasetRecord
    protocol: Protocol
    seed: int
    tasks: Mapping[str, TaskOutcome]
    overrides: Mapping[str, str] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)  #: versions, threads, CPU/GPU
    sparsity: Sparsity | None = None
    lam: LambdaTrace = field(default_factory=LambdaTrace)  #: ``lambda`` in JSON
    history: tuple[Mapping[str, Any], ...] = ()  #: logged training steps
    timings: Timings | None = None
    input_size: tuple[int, int] | None = None
    delta_m: DeltaM | None = None  #: see `mtbench.scoring.run_delta_m`
    inference: Mapping[str, Any] | None = None  #: parameters and FLOPs, dense against compact
    evaluation: Evaluation | None = None  #: how it was scored (schema 3)
    training_cost: TrainingCost | None = None  #: training compute (schema 3)
    schema_version: int = SCHEMA_VERSION  #: the version it was read from (written: always `SCHEMA_VERSION`)

    # --- derived ----------------------------------------------------------------------------------------

    @property
    def threads(self) -> int | None:
        return self.environment.get("threads")

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
        payload: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Protocol):
                value = value.to_json()
            payload[_JSON_NAMES.get(f.name, f.name)] = value
        payload["schema_version"] = SCHEMA_VERSION
        payload["config_key"] = self.config_key
        written = _json_value(payload)
        if written["method"].get("family") is None:  # not recorded (results written before it was): stays absent
            written["method"].pop("family", None)
        return written

    @classmethod
    def from_json(cls, payload: Any, path: Path | str = "<in memory>") -> RunResult:
        """Check ``payload`` (any readable schema version) and build the result; `ResultFileError` names ``path``."""
        validate_payload(payload, path)
        version = payload["schema_version"]
        if version == 1:
            payload = _upgrade_v1(payload)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _JSON_NAMES.get(f.name, f.name)
            if key in payload and payload[key] is not None:
                read = _READERS.get(f.name)
                values[f.name] = read(payload[key]) if read else payload[key]
        values["schema_version"] = version
        return cls(**values)

    @classmethod
    def read(cls, path: Path | str) -> RunResult:
        """The result in a JSON file; a `ResultFileError` naming it if unreadable or malformed."""
        return cls.from_json(read_json(path), path)


_JSON_NAMES = {"lam": "lambda"}  #: field name -> JSON key, where they differ


def _record(cls: type) -> Any:
    """A reader of a JSON object into dataclass ``cls`` (keys it does not know are dropped: older files)."""
    return lambda value: cls(**_known(cls, value))


#: How a JSON value becomes a field's value, for fields that are not plain JSON (absent: taken as it is).
_READERS: dict[str, Any] = {
    "method": _record(MethodRecord),
    "dataset": _record(DatasetRecord),
    "protocol": lambda value: Protocol.from_json(value),
    "tasks": lambda value: {
        name: TaskOutcome(
            **{
                **_known(TaskOutcome, task),
                "metrics": _metrics(task["metrics"]),
                "joint": _metrics(task["joint"]) if task.get("joint") is not None else None,
            }
        )
        for name, task in value.items()
    },
    "sparsity": lambda value: Sparsity(
        **{
            **_known(Sparsity, value),
            "layers": tuple(value.get("layers") or ()),
            "dead_layers": tuple(value.get("dead_layers") or ()),
            "dead_branches": tuple(value.get("dead_branches") or ()),
        }
    ),
    "delta_m": _record(DeltaM),
    "evaluation": _record(Evaluation),
    "training_cost": _record(TrainingCost),
    "lam": lambda value: LambdaTrace(
        start=value.get("start"),
        end=value.get("end"),
        trajectory=tuple(tuple(pair) for pair in value.get("trajectory") or ()),
    ),
    "timings": _record(Timings),
    "history": tuple,
    "input_size": tuple,
    "overrides": dict,
    "environment": dict,
}


def _metrics(values: Mapping[str, Any]) -> dict[str, Metric]:
    return {m: Metric(**_known(Metric, v)) for m, v in values.items()}


def _known(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of dataclass ``cls`` (older files may lack some; none add any)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _upgrade_v1(payload: Mapping[str, Any]) -> dict[str, Any]:
    protocol = dict(payload["protocol"])
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


# --- reading and checking JSON ------------------------------------------------------------------------------

_MISSING = object()  # a field that is absent (None would be JSON null)


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
            path, "cannot read this result file", expected="a readable UTF-8 JSON file", found=str(error), fix=REWRITE_FIX
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
    if value is _MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{kind.get(type(value), type(value).__name__)} {text[:60]}{'…' if len(text) > 60 else ''}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    """Field-by-field checks of one result payload; the first problem raises a `ResultFileError`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def fail(self, field: str, expected: str, value: Any, fix: str = REWRITE_FIX) -> NoReturn:
        problem = "is missing" if value is _MISSING else "has the wrong type or value"
        raise ResultFileError(
            self.path, f"not a valid result file: {field!r} {problem}", expected=expected, found=describe_json(value), fix=fix
        )

    def object(self, container: Mapping[str, Any], key: str, field: str, *, optional: bool = False) -> Any:
        value = container.get(key, _MISSING)
        if optional and value in (_MISSING, None):
            return None
        if not isinstance(value, dict):
            self.fail(field, "a JSON object", value)
        return value

    def _typed(self, container: Mapping[str, Any], key: str, field: str, ok: Any, expected: str) -> Any:
        value = container.get(key, _MISSING)
        if not ok(value):
            self.fail(field, expected, value)
        return value

    def string(self, container: Mapping[str, Any], key: str, field: str) -> str:
        return self._typed(container, key, field, lambda v: isinstance(v, str) and bool(v), "a non-empty string")

    def boolean(self, container: Mapping[str, Any], key: str, field: str) -> bool:
        return self._typed(container, key, field, lambda v: isinstance(v, bool), "true or false")

    def integer(self, container: Mapping[str, Any], key: str, field: str) -> int:
        return self._typed(container, key, field, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")

    def number(self, container: Mapping[str, Any], key: str, field: str, *, nullable: bool = False) -> Any:
        value = container.get(key, _MISSING)
        if nullable and value is None:
            return None
        if not _is_number(value) or not math.isfinite(value):
            self.fail(field, "a finite number" + (" or null" if nullable else ""), value)
        return value

    def name(self, kind: str, container: Mapping[str, Any], key: str, field: str) -> str:
        value = self.string(container, key, field)
        self.safe(kind, value, field)
        return value

    def safe(self, kind: str, value: Any, field: str) -> None:
        try:
            safe_name(kind, value)
        except UnsafeNameError as error:
            raise ResultFileError(
                self.path,
                f"not a valid result file: {field!r} is not a safe {kind} name",
                expected=error.expected,
                found=error.found,
                fix=f"the {kind} name becomes part of file names: rename the {kind} and re-run it, "
                "or correct the name in this file",
            ) from None

    def names(self, kind: str, container: Mapping[str, Any], key: str, field: str) -> list[str]:
        value = container.get(key, _MISSING)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(field, "a list of strings", value)
        for index, item in enumerate(value):
            self.safe(kind, item, f"{field}[{index}]")
        return value


def validate_payload(payload: Any, path: Path | str) -> None:
    """Check that ``payload`` is a well-formed result of a readable schema; a `ResultFileError` naming ``path``.

    Checks what the leaderboard and Δm read: ``schema_version`` in `READABLE_VERSIONS`; ``run_id``,
    ``created`` (strings); ``seed`` (integer); ``method.name`` (a `safe_name`) and ``method.config`` (object);
    ``dataset.name`` (safe), ``dataset.synthetic`` (boolean), ``dataset.identity.fingerprint`` (string);
    ``protocol`` (object) with ``budget`` and the ``seen``/``unseen`` task lists (safe names: they make up
    table file names); ``tasks``: task -> {``seen`` boolean, ``metrics``: metric -> {``value`` finite number,
    ``higher_is_better`` boolean, ``in_delta_m`` boolean if present}}; ``sparsity``: null or an object whose
    ``group_sparsity`` is a finite number or null and whose ``layers``, if present, list {name, groups,
    zero_groups}; ``overrides``, ``lambda``, ``timings`` and ``inference`` objects (or null) if present.
    """
    check = _Checker(path)
    if not isinstance(payload, dict):
        check.fail("(top level)", "a JSON object holding one result", payload)
    version = payload.get("schema_version", _MISSING)
    if not isinstance(version, int) or isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ResultFileError(
            path,
            "not a result file this mtbench can read: unknown schema_version",
            expected=f"schema_version {' or '.join(map(str, READABLE_VERSIONS))}",
            found=describe_json(version),
            fix="another mtbench version wrote it: re-run the configuration with this one, or use a matching mtbench",
        )
    check.string(payload, "run_id", "run_id")
    check.string(payload, "created", "created")
    check.integer(payload, "seed", "seed")
    method = check.object(payload, "method", "method")
    check.name("method", method, "name", "method.name")
    check.object(method, "config", "method.config")
    dataset = check.object(payload, "dataset", "dataset")
    check.name("dataset", dataset, "name", "dataset.name")
    check.boolean(dataset, "synthetic", "dataset.synthetic")
    identity = check.object(dataset, "identity", "dataset.identity")
    check.string(identity, "fingerprint", "dataset.identity.fingerprint")
    protocol = check.object(payload, "protocol", "protocol")
    check.name("budget", protocol, "budget", "protocol.budget")
    check.names("task", protocol, "seen", "protocol.seen")
    check.names("task", protocol, "unseen", "protocol.unseen")
    tasks = check.object(payload, "tasks", "tasks")
    if not tasks:
        check.fail("tasks", "at least one task", tasks)
    for task, entry in tasks.items():
        where = f"tasks.{task}"
        if not isinstance(entry, dict):
            check.fail(where, "a JSON object", entry)
        check.boolean(entry, "seen", f"{where}.seen")
        metrics = check.object(entry, "metrics", f"{where}.metrics")
        for metric, value in metrics.items():
            field_name = f"{where}.metrics.{metric}"
            if not isinstance(value, dict):
                check.fail(field_name, 'an object {"value": number, "higher_is_better": boolean}', value)
            check.number(value, "value", f"{field_name}.value")
            check.boolean(value, "higher_is_better", f"{field_name}.higher_is_better")
            if "in_delta_m" in value:
                check.boolean(value, "in_delta_m", f"{field_name}.in_delta_m")
    _check_sparsity(check, payload)
    check.object(payload, "overrides", "overrides", optional=True)
    check.object(payload, "timings", "timings", optional=True)
    _check_lambda(check, payload)
    _check_inference(check, payload)


def _check_sparsity(check: _Checker, payload: Mapping[str, Any]) -> None:
    sparsity = payload.get("sparsity")
    if sparsity is None:
        return
    if not isinstance(sparsity, dict):
        check.fail("sparsity", "null or a JSON object", sparsity)
    check.number(sparsity, "group_sparsity", "sparsity.group_sparsity", nullable=True)
    layers = sparsity.get("layers")
    if layers is None:
        return
    if not isinstance(layers, list):
        check.fail("sparsity.layers", "a list", layers)
    for index, layer in enumerate(layers):
        where = f"sparsity.layers[{index}]"
        if not isinstance(layer, dict):
            check.fail(where, "a JSON object", layer)
        check.string(layer, "name", f"{where}.name")
        if check.integer(layer, "groups", f"{where}.groups") <= 0:
            check.fail(f"{where}.groups", "a positive integer", layer["groups"])
        check.integer(layer, "zero_groups", f"{where}.zero_groups")


def _check_lambda(check: _Checker, payload: Mapping[str, Any]) -> None:
    lam = payload.get("lambda")
    if lam is None:
        return
    if not isinstance(lam, dict):
        check.fail("lambda", "null or a JSON object", lam)
    for key in ("start", "end"):
        value = lam.get(key)
        if value is None or (_is_number(value) and math.isfinite(value)):
            continue
        if isinstance(value, list) and all(_is_number(v) and math.isfinite(v) for v in value):
            continue
        check.fail(f"lambda.{key}", "null, a finite number or a list of them (per layer)", value)


def _check_inference(check: _Checker, payload: Mapping[str, Any]) -> None:
    inference = payload.get("inference")
    if inference is None:
        return
    if not isinstance(inference, dict):
        check.fail("inference", "null or a JSON object", inference)
    for key in ("params", "flops"):
        check.number(check.object(inference, key, f"inference.{key}"), "compact", f"inference.{key}.compact")
