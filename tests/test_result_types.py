"""The typed parts of a result: each round-trips its JSON exactly, a malformed field is named by its dotted path,
and every committed result file reads and writes back what it holds."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from mtbench.errors import ResultFileError
from mtbench.result import (
    ALL_METRICS,
    PER_TASK,
    Accounting,
    DeltaM,
    Environment,
    HistoryRow,
    LayerSparsity,
    Protocol,
    RunResult,
)
from mtbench.schema import SchemaViolation, decode, encode
from mtbench.training import training_flops

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "results"
V3 = FIXTURES / "v3-fixed-lambda-nyuv2-synth-smoke.json"


def _stored_results() -> list[Path]:
    """Every committed result file: the published store and the fixtures of each schema version."""
    files = sorted((ROOT / "leaderboard" / "results").rglob("*--*.json")) + sorted(FIXTURES.glob("v*.json"))
    assert len(files) > 100  # the published store is there
    return files


# --- each part round-trips ---------------------------------------------------------------------------------

ACCOUNTING = {
    "input_size": [24, 32],
    "tasks": ["semseg", "normal"],
    "networks": 1,
    "threads": 2,
    "device": "cpu",
    "params": {"dense": 1000, "compact": 600},
    "flops": {"dense": 2000000, "compact": 900000},
    "latency_ms": {"1": {"dense": 2.5, "compact": 1.5, "compact_bn_folded": 1.25}},
}
ENVIRONMENT = {
    "mtbench": "0.9",
    "torch": "2.5.1",
    "device": "cpu",
    "threads": 1,
    "math_libraries": ["oneDNN v3.5"],
    "malloc": None,  # recorded as not applied: stays an explicit null
    "data": {"mode": "memory", "resident": "cpu"},
    "hostname": "node-7",  # a key this mtbench does not know: kept
}
HISTORY = {
    "step": 10,
    "loss": 1.5,
    "loss/semseg": 0.75,
    "loss/depth": 0.75,
    "w/semseg": 0.5,
    "tasks": 2.0,
    "lambda_grad": -0.25,
    "lambda_grad_positive": 0.5,
    "group_sparsity": 0.125,
    "flops": 3e9,
    "lambda": [0.01, 0.03],
    "my_plugin_value": 7.0,  # anything a method logs is kept
}
LAYER = {"name": "stem.0", "groups": 8, "zero_groups": 2, "params": 432, "zero_params": 108}


@pytest.mark.parametrize(
    ("part", "payload"),
    [
        (Accounting, ACCOUNTING),
        (Accounting, {"params": {"dense": 10, "compact": 5}, "flops": {"dense": 20.0, "compact": 5.0}}),
        (Environment, ENVIRONMENT),
        (Environment, {"threads": 1, "device": "cpu"}),  # an older file: absent keys stay absent
        (HistoryRow, HISTORY),
        (HistoryRow, {"step": 0, "loss": 2.0, "group_sparsity": 0.0}),
        (LayerSparsity, LAYER),
        (LayerSparsity, {"name": "stem.0", "groups": 4, "zero_groups": 0}),
        (DeltaM, {"reference_run": "r", "reference_method": "stl", "seen": {ALL_METRICS: 1.5, PER_TASK: 2.0},
                  "unseen": None, "joint": None, "positive_is_better": True, "unavailable": None}),
        (Protocol, {"budget": "smoke", "seen": ["semseg"], "unseen": ["depth"], "task_versions": {"semseg": "1"},
                    "steps": 3, "arch": {"widths": [8, 16]}}),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_each_typed_part_round_trips_its_json_exactly(part, payload):
    typed = part.from_json(copy.deepcopy(payload))
    assert isinstance(typed, part)
    assert typed.to_json() == payload
    assert part.from_json(typed.to_json()) == typed


def test_the_typed_parts_read_by_attribute():
    accounting = Accounting.from_json(ACCOUNTING)
    assert accounting.params.compact == 600 and accounting.flops.percent == 45.0 and accounting.params.ratio == 0.6
    assert accounting.latency_ms["1"].compact_bn_folded == 1.25 and accounting.input_size == (24, 32)
    environment = Environment.from_json(ENVIRONMENT)
    assert environment.threads == 1 and environment.malloc is None and environment.cpu_model is None
    assert environment.extra == {"hostname": "node-7"} and environment.data["mode"] == "memory"
    assert dict(environment) == ENVIRONMENT and environment["hostname"] == "node-7"  # the JSON form, as a mapping
    row = HistoryRow.from_json(HISTORY)
    assert row.task_losses == {"semseg": 0.75, "depth": 0.75} and row.weights == {"semseg": 0.5}
    assert row.lam == [0.01, 0.03] and row.mean_lam == pytest.approx(0.02) and row.episode_tasks == 2.0
    assert row.extra == {"my_plugin_value": 7.0}
    assert HistoryRow.logged({"step": 1, "lambda": (0.5, 0.25)}).lam == [0.5, 0.25]  # as training logs it
    assert LayerSparsity.from_json(LAYER).zero_fraction == 0.25


def test_delta_m_is_read_through_its_accessors():
    adapted = DeltaM(seen={ALL_METRICS: 1.5, PER_TASK: 2.0}, unseen={ALL_METRICS: -3.0, PER_TASK: -1.0})
    assert adapted.overall("seen") == 1.5 and adapted.per_task("seen") == 2.0 and adapted.overall("unseen") == -3.0
    assert adapted.overall("joint") is None and adapted.primary == "seen"
    joint = DeltaM(seen={ALL_METRICS: 1.5}, joint={ALL_METRICS: 4.0, PER_TASK: 5.0})
    assert joint.primary == "joint" and joint.overall(joint.primary) == 4.0
    assert DeltaM(unavailable="a reference metric is 0").overall("seen") is None


def test_the_result_keys_are_the_scoring_conventions():
    from mtbench import scoring

    assert (ALL_METRICS, PER_TASK) == (scoring.ALL_METRICS, scoring.PER_TASK)


# --- a malformed field is named by its path ----------------------------------------------------------------


def _set(payload: dict, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        payload = payload[key]
    if value is KeyError:
        del payload[path[-1]]
    else:
        payload[path[-1]] = value


@pytest.mark.parametrize(
    ("where", "value", "message", "expected"),
    [
        (("sparsity", "layers", 1, "groups"), 0, "'sparsity.layers[1].groups' has the wrong type or value",
         "a positive integer"),
        (("sparsity", "layers", 0, "name"), KeyError, "'sparsity.layers[0].name' is missing", "a non-empty string"),
        (("history", 2, "loss"), "1.5", "'history[2].loss' has the wrong type or value", "null or a number"),
        (("history", 0, "step"), 1.5, "'history[0].step' has the wrong type or value", "an integer"),
        (("history", 1, "loss/semseg"), [1], "'history[1].loss/semseg' has the wrong type or value", "a number"),
        (("inference", "params", "compact"), KeyError, "'inference.params.compact' is missing", "a finite number"),
        (("inference", "latency_ms"), {"1": {"dense": 1.0}}, "'inference.latency_ms.1.compact' is missing", "a number"),
        (("environment", "threads"), "two", "'environment.threads' has the wrong type or value", "null or an integer"),
        (("tasks", "semseg", "metrics", "mIoU", "value"), float("nan"),
         "'tasks.semseg.metrics.mIoU.value' has the wrong type or value", "a finite number"),
        (("delta_m", "joint"), {ALL_METRICS: "high"}, f"'delta_m.joint.{ALL_METRICS}' has the wrong type or value",
         "a number"),
        (("lambda", "end"), "big", "'lambda.end' has the wrong type or value",
         "null, a finite number or a list of finite numbers"),
        (("protocol", "seen", 0), "../x", "'protocol.seen[0]' is not a safe task name", None),
        (("dataset", "identity", "fingerprint"), KeyError, "'dataset.identity.fingerprint' is missing",
         "a non-empty string"),
        (("tasks",), {}, "'tasks' has the wrong type or value", "at least one task"),
    ],
)
def test_a_malformed_nested_field_is_named_by_its_path(tmp_path, where, value, message, expected):
    payload = json.loads(V3.read_text())
    _set(payload, where, value)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ResultFileError) as caught:
        RunResult.read(path)
    assert caught.value.path == path and f"not a valid result file: {message}" in str(caught.value)
    if expected is not None:
        assert caught.value.expected == expected


# --- every committed result file reads and writes back what it holds --------------------------------------------

#: What writing an older file changes, by design: it becomes the current version; a version-1 protocol gains the
#: ``finetune_batch`` its budget had, so its configuration key is computed again; fields added to the schema after
#: the file was written are written with their defaults (null, [] …).
UPGRADED_KEYS = {1: {"schema_version", "config_key", "protocol"}, 2: {"schema_version"}, 3: set()}


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Where ``new`` lacks or changes a value of ``old`` (keys only in ``new`` are listed with a +)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"-{path}.{k}" for k in old if k not in new] + [f"+{path}.{k}" for k in new if k not in old]
        return out + [d for k in old if k in new for d in _differences(old[k], new[k], f"{path}.{k}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{path}[{i}]")]
    return [] if old == new and type(old) is type(new) else [f"~{path}"]


def test_every_committed_result_round_trips():
    for path in _stored_results():
        raw = json.loads(path.read_text())
        result = RunResult.read(path)
        written = result.to_json()
        version = raw["schema_version"]
        changed = [d for d in _differences(raw, written) if d.split(".")[1].split("[")[0] not in UPGRADED_KEYS[version]]
        # an older file only gains fields (all at their defaults); nothing it holds is lost or changed
        assert all(d.startswith("+") for d in changed), (path, changed)
        if version == 3:
            assert written == raw, path
        if version == 1:
            assert written["protocol"] == {**raw["protocol"], "finetune_batch": written["protocol"]["finetune_batch"]}
        assert RunResult.from_json(written) == RunResult.from_json(written)  # and reads back the same


def test_the_lambda_trajectory_and_the_flop_count_read_the_same_numbers_from_typed_rows():
    counted = 0
    for path in _stored_results():
        raw = json.loads(path.read_text())
        result = RunResult.read(path)
        rows = [row.to_json() for row in result.history]
        assert rows == raw["history"]
        assert result.lam.trajectory == tuple((row.step, row.lam) for row in result.history if row.lam is not None)
        if result.training_cost is not None:
            steps = result.training_cost.steps
            assert training_flops(rows, steps) == training_flops(raw["history"], steps)
            assert training_flops(rows, steps)[2] == result.training_cost.flops
            counted += result.training_cost.counted_steps > 0
    assert counted > 0


# --- the schema machinery itself ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    kind: Literal["a", "b"]
    pair: tuple[int, str]
    items: tuple[float, ...] = ()
    table: Mapping[str, bool] | None = None


def test_the_generic_checker_reads_literals_fixed_tuples_and_optional_mappings():
    spec = decode(_Spec, {"kind": "b", "pair": [1, "x"], "items": [1, 2.5], "table": {"on": True}})
    assert spec == _Spec("b", (1, "x"), (1, 2.5), {"on": True}) and encode(spec) == {
        "kind": "b", "pair": [1, "x"], "items": [1, 2.5], "table": {"on": True},
    }
    for payload, path, expected in [
        ({"kind": "c", "pair": [1, "x"]}, "kind", '"a" or "b"'),
        ({"kind": "a", "pair": [1]}, "pair", "a list of 2 items"),
        ({"kind": "a", "pair": [1, 2]}, "pair[1]", "a string"),
        ({"kind": "a", "pair": [True, "x"]}, "pair[0]", "an integer"),  # a boolean is not a number
        ({"kind": "a", "pair": [1, "x"], "table": {"on": 1}}, "table.on", "true or false"),
    ]:
        with pytest.raises(SchemaViolation) as caught:
            decode(_Spec, payload, "spec")
        assert (caught.value.path, caught.value.expected) == (f"spec.{path}", expected)
    with pytest.raises(SchemaViolation, match="is an unknown key") as caught:
        decode(_Spec, {"kind": "a", "pair": [1, "x"], "colour": 1}, strict=True)
    assert caught.value.path == "colour"
    assert decode(_Spec, {"kind": "a", "pair": [1, "x"], "colour": 1}).kind == "a"  # not strict: left out


def test_the_protocol_keeps_the_budget_typed():
    """Every budget field in the protocol is a declared, typed field of BudgetSettings (none left to `extra`), and a
    protocol made from a budget reads back its values."""
    import dataclasses as dc

    from mtbench.presets import BUDGETS, budget
    from mtbench.result import PROTOCOL_EXCLUDED, BudgetSettings, Protocol

    declared = {f.name for f in dc.fields(BudgetSettings)} - {"extra"}
    assert declared == {f.name for f in dc.fields(budget("quick"))} - PROTOCOL_EXCLUDED
    for name in BUDGETS:
        spent = budget(name)
        typed = Protocol.of(spent, [], []).budget_settings
        assert typed.extra == {} and typed.steps == spent.steps and typed.finetune_batch == spent.finetune_batch
        assert dc.asdict(typed.arch) == {**dc.asdict(spent.arch), "widths": tuple(spent.arch.widths)}
        assert typed.resolution == spent.resolution and typed.validation_samples == spent.validation_samples


def test_a_malformed_budget_setting_names_its_field():
    payload = json.loads(next(ROOT.glob("leaderboard/results/**/ew--seed0--*.json")).read_text())
    payload["protocol"]["steps"] = "many"
    with pytest.raises(ResultFileError, match=r"'protocol\.steps' has the wrong type"):
        RunResult.from_json(payload, "bad.json")
