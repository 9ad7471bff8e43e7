"""`mtbench run` end to end on small synthetic fixtures with the smoke budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtbench.errors import ConfigError
from mtbench.methods import methods
from mtbench.overrides import build_config
from mtbench.result import SCHEMA_VERSION, RunResult
from mtbench.runner import RunRequest, execute

pytestmark = [pytest.mark.slow]

ALL_METHODS = sorted(methods().names())
REQUIRED = {
    "stl",
    "ew",
    "uw",
    "dwa",
    "gradnorm",
    "pcgrad",
    "mgda",
    "cagrad",
    "famo",
    "fixed-lambda",
    "meta-dense",
    "meta-sparsity",
}


def _run(root, method: str, tmp_path, **kwargs) -> RunResult:
    request = RunRequest(method=method, data_root=root, budget="smoke", out=tmp_path / method, **kwargs)
    return execute(request).result


def test_every_required_method_is_registered():
    assert REQUIRED <= set(ALL_METHODS)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, nyu_mtan):
    """One smoke run per registered method (unseen depth), with the final backbone parameters."""
    out = tmp_path_factory.mktemp("smoke")
    results = {}
    for name in ALL_METHODS:
        result = _run(nyu_mtan, name, out, unseen=("depth",))
        state = torch.load(out / name / "checkpoint.pt", weights_only=True)
        key = "model" if "model" in state else sorted(k for k in state if k.startswith("model/"))[0]
        vector = torch.cat([v.flatten().float() for k, v in state[key].items() if k.startswith("backbone.")])
        results[name] = (result, vector, out / name)
    return results


@pytest.mark.parametrize("method", ALL_METHODS)
def test_smoke_run_of_every_method(method, smoke_results):
    result, _, run_dir = smoke_results[method]
    assert result.schema_version == SCHEMA_VERSION
    assert result.dataset.synthetic is True and result.dataset.fingerprint
    assert result.method.name == method and result.method.source == "builtin"
    assert {task.source for task in result.tasks.values()} == {"builtin"} and result.dataset.layout_source == "builtin"
    assert result.protocol.unseen == ("depth",) and "depth" not in result.protocol.seen
    assert result.tasks["depth"].seen is False and result.tasks["semseg"].seen is True
    for task in result.tasks.values():
        for metric in task.metrics.values():
            assert np.isfinite(metric.value) and isinstance(metric.higher_is_better, bool)
    assert result.environment["torch"] == torch.__version__ and result.seed == 0
    assert RunResult.read(run_dir / "result.json") == result  # written once, as returned


def test_no_two_methods_share_a_parameter_trajectory(smoke_results):
    names = sorted(smoke_results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            va, vb = smoke_results[a][1], smoke_results[b][1]
            assert va.shape != vb.shape or not torch.equal(va, vb), f"{a} and {b} trained identical backbones"


def test_same_seed_same_metrics_and_other_seed_differs(nyu_mtan, tmp_path):
    first = _run(nyu_mtan, "meta-sparsity", tmp_path / "a", unseen=("depth",), seed=3)
    again = _run(nyu_mtan, "meta-sparsity", tmp_path / "b", unseen=("depth",), seed=3)
    other = _run(nyu_mtan, "meta-sparsity", tmp_path / "c", unseen=("depth",), seed=4)
    assert _metrics(first) == _metrics(again)
    assert _metrics(first) != _metrics(other)


def _metrics(result: RunResult) -> dict:
    return {t: {m: e.value for m, e in task.metrics.items()} for t, task in result.tasks.items()}


def test_held_out_targets_are_never_read_during_meta_training(nyu_mtan, copy_of, tmp_path, monkeypatch):
    """Spy on the reader: no depth read may happen before the meta-test starts."""
    from mtbench import protocol
    from mtbench.data.nyuv2 import MtanReader

    events: list[str] = []
    original_read, original_score = MtanReader._read_target, protocol.score

    def spy_read(self, split, index, target):
        events.append(f"read:{target}")
        return original_read(self, split, index, target)

    def spy_meta_test(*args, **kwargs):
        events.append("meta-test")
        return original_score(*args, **kwargs)

    monkeypatch.setattr(MtanReader, "_read_target", spy_read)
    monkeypatch.setattr("mtbench.protocol.score", spy_meta_test)
    result = _run(nyu_mtan, "meta-sparsity", tmp_path, unseen=("depth",))
    boundary = events.index("meta-test")
    assert "read:depth" not in events[:boundary]
    assert "read:depth" in events[boundary:]  # the held-out task is evaluated afterwards
    assert {"read:semantic13", "read:normal"} <= set(events[:boundary])
    assert "depth" in result.tasks


def test_celebamask_attribute_can_be_held_out(face_official, tmp_path):
    result = _run(face_official, "meta-sparsity", tmp_path, dataset="celebamask-synth", unseen=("smiling",))
    assert result.protocol.seen == ("faceseg3", "male")
    assert result.tasks["smiling"].seen is False
    assert set(result.tasks["smiling"].metrics) == {"acc", "f1", "balancedAcc"}


def test_set_is_type_checked_against_the_method_config():
    info = methods().get("meta-sparsity")
    config = build_config(info.config, {"inner_steps": "2", "first_order": "false", "combinations": "all"})
    assert config.inner_steps == 2 and config.first_order is False and config.combinations == "all"
    with pytest.raises(ConfigError, match="unknown option"):
        build_config(info.config, {"inner_stepz": "2"})
    with pytest.raises(ConfigError, match="not a valid int"):
        build_config(info.config, {"inner_steps": "two"})
    with pytest.raises(ConfigError, match="not a boolean"):
        build_config(info.config, {"first_order": "maybe"})
    with pytest.raises(ConfigError, match="not an allowed value"):
        build_config(info.config, {"combinations": "pairs"})


def test_run_cli_prints_seen_and_unseen_tables_lambda_and_sparsity(cli, nyu_mtan, tmp_path):
    code, text = cli(
        "run",
        "meta-sparsity",
        "--data-root",
        nyu_mtan,
        "--unseen",
        "depth",
        "--budget",
        "smoke",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, text
    assert "SYNTHETIC" in text and "seen tasks" in text and "held-out tasks" in text
    assert "absErr" in text and "mIoU" in text and "odsF" in text and "within11.25" in text
    assert "λ: start" in text and "final sparsity" in text
    assert (tmp_path / "run" / "result.json").is_file()
    code, text = cli("run", "meta-sparsity", "--data-root", nyu_mtan, "--budget", "smoke", "--set", "nope=1")
    assert code == 1 and "unknown option" in text


def test_readme_plugin_example_runs(cli, nyu_mtan, tmp_path):
    """The method example in the README is real: save it as a plugin file and run it."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = next(
        block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "METHOD = MethodInfo" in block
    )
    plugin = tmp_path / "softmax_weighting.py"
    plugin.write_text(example)
    code, text = cli(
        "run",
        "my-method",
        "--plugins",
        plugin,
        "--data-root",
        nyu_mtan,
        "--budget",
        "smoke",
        "--set",
        "temperature=1.5",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, text
    result = RunResult.read(tmp_path / "run" / "result.json")
    assert result.method.config == {"temperature": 1.5}
    assert result.method.source.startswith(f"file {plugin}")


def test_default_data_is_the_synthetic_stand_in_said_once(tmp_path):
    """No --dataset and no prepared NYU-v2: nyuv2-synth is generated once, said once, tagged synthetic."""
    notices: list[str] = []
    request = RunRequest(
        method="ew", budget="smoke", unseen=("depth",), results=tmp_path / "results", out=tmp_path / "ew"
    )
    result = execute(request, notice=notices.append).result
    assert result.dataset.name == "nyuv2-synth" and result.dataset.synthetic is True
    assert sum("SYNTHETIC stand-in nyuv2-synth" in n for n in notices) == 1, notices
    assert sum("generating nyuv2-synth" in n for n in notices) <= 1
    assert any("training it first" in n for n in notices)  # the stl reference ran on the same data
    assert result.delta_m.reference_method == "stl"


def test_a_plugin_task_runs_and_its_source_is_recorded(nyu_mtan, tmp_path):
    """A task registered by a --plugins file is known when the request is checked, runs, and the result names the
    file it came from (and ``builtin`` for the others)."""
    from mtbench import catalog
    from mtbench.registry import unregister_source

    plugin = tmp_path / "depth_again.py"
    plugin.write_text(
        "from mtbench.catalog import register_task\nfrom mtbench.specs import TaskSpec\n"
        "from mtbench_tasks.kinds import DEPTH\n"
        'register_task(TaskSpec(name="depth-again", family="nyuv2", title="depth again", target="depth", '
        "kind=DEPTH))\n"
    )
    request = RunRequest(method="ew", data_root=nyu_mtan, budget="smoke", tasks=("semseg", "depth-again"),
                         plugins=(plugin,), reference=False, out=tmp_path / "run", results=tmp_path / "results")
    try:
        result = execute(request).result
    finally:
        if "nyuv2/depth-again" in catalog.tasks():
            unregister_source(catalog.tasks().source("nyuv2/depth-again"))
    assert "nyuv2/depth-again" not in catalog.tasks()  # unregistered again: no other test sees it
    assert result.tasks["depth-again"].source.startswith(f"file {plugin} (sha256 ")
    assert result.tasks["semseg"].source == "builtin" and result.protocol.seen == ("semseg", "depth-again")

