"""The typed, versioned result: every schema ever written reads, and the protocol is the whole budget."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mtbench.errors import ResultFileError
from mtbench.presets import budget
from mtbench.result import (
    EVALUATION_FIELDS,
    PROTOCOL_EXCLUDED,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    DeltaM,
    Protocol,
    RunResult,
)

FIXTURES = Path(__file__).parent / "fixtures" / "results"  # files as `mtbench run` wrote them, one per version


def _fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("v*.json"))


def test_there_is_a_fixture_of_every_readable_schema_version():
    versions = {json.loads(path.read_text())["schema_version"] for path in _fixtures()}
    assert versions == set(READABLE_VERSIONS)


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: p.stem)
def test_every_written_version_reads_and_converts_losslessly(path):
    raw = json.loads(path.read_text())
    result = RunResult.read(path)
    assert result.schema_version == raw["schema_version"]
    assert result.method.name == raw["method"]["name"] and result.seed == raw["seed"]
    for task, entry in raw["tasks"].items():
        for metric, value in entry["metrics"].items():
            assert result.tasks[task].metrics[metric].value == value["value"]
    assert result.delta_m == DeltaM(**raw["delta_m"])
    assert result.dataset.fingerprint == raw["dataset"]["identity"]["fingerprint"]
    written = result.to_json()
    assert written["schema_version"] == SCHEMA_VERSION
    assert dataclasses.replace(RunResult.from_json(written), schema_version=result.schema_version) == result
    for key in ("history", "inference", "environment", "method", "overrides", "run_id", "created"):
        assert written[key] == raw[key]
    # fields an older file lacks are written as null
    assert {k: v for k, v in written["delta_m"].items() if v is not None or k in raw["delta_m"]} == raw["delta_m"]


def test_a_version_1_file_gets_the_finetune_batch_its_budget_had():
    result = RunResult.read(FIXTURES / "v1-stl-nyuv2-synth-smoke.json")
    assert "finetune_batch" not in json.loads((FIXTURES / "v1-stl-nyuv2-synth-smoke.json").read_text())["protocol"]
    assert result.protocol.settings["finetune_batch"] == budget("smoke").finetune_batch == 4
    seen, unseen = ([_Task(n) for n in names] for names in (result.protocol.seen, result.protocol.unseen))
    now = Protocol.of(budget("smoke"), seen, unseen)
    # exactly today's smoke protocol, less the fields schema 3 added (which keep old and new results apart)
    assert set(now.settings) - set(result.protocol.settings) == set(EVALUATION_FIELDS)
    assert result.protocol == dataclasses.replace(
        now, settings={k: v for k, v in now.settings.items() if k not in EVALUATION_FIELDS}
    )


@dataclasses.dataclass
class _Task:
    name: str
    version: str = "1"


def test_the_protocol_is_every_budget_field_but_the_excluded_ones():
    quick = budget("quick")
    settings = Protocol.of(quick, [_Task("semseg")], []).settings
    assert set(settings) == {f.name for f in dataclasses.fields(quick)} - PROTOCOL_EXCLUDED
    other = Protocol.of(dataclasses.replace(quick, finetune_batch=16), [_Task("semseg")], [])
    assert other != Protocol.of(quick, [_Task("semseg")], [])  # two runs differing in it never share a cell


def test_an_unknown_schema_version_is_refused_with_the_file_named(tmp_path):
    raw = json.loads((FIXTURES / "v2-fixed-lambda-nyuv2-synth-smoke.json").read_text())
    path = tmp_path / "future.json"
    path.write_text(json.dumps({**raw, "schema_version": max(READABLE_VERSIONS) + 1}))
    with pytest.raises(ResultFileError, match="unknown schema_version") as caught:
        RunResult.read(path)
    assert caught.value.path == path


def test_the_configuration_key_of_an_upgraded_file_equals_a_current_one():
    old = RunResult.read(FIXTURES / "v1-fixed-lambda-nyuv2-synth-smoke.json")
    new = RunResult.read(FIXTURES / "v2-fixed-lambda-nyuv2-synth-smoke.json")
    assert old.signature() == new.signature() and old.config_key == new.config_key


def test_a_new_result_field_is_one_declaration():
    """A field added to `RunResult` (here in a subclass, as a diff would add it) is written and read with no
    other change, and files written before it read with its default."""

    @dataclasses.dataclass(frozen=True)
    class WithHost(RunResult):
        host: str | None = None

    old = RunResult.read(FIXTURES / "v2-fixed-lambda-nyuv2-synth-smoke.json")
    assert WithHost.from_json(old.to_json()).host is None
    new = WithHost(**{f.name: getattr(old, f.name) for f in dataclasses.fields(old)}, host="node-7")
    assert new.to_json()["host"] == "node-7" and WithHost.from_json(new.to_json()).host == "node-7"
