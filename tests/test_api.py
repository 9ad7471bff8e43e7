"""The Python API (`mtbench.plan`, `mtbench.run`) and the README's example of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mtbench
from mtbench.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_python() -> str:
    text = README.read_text()
    start = text.index("```python\nimport mtbench")
    return text[start + len("```python\n") : text.index("```", start + 10)]


def test_import_mtbench_stays_light():
    code = "import sys, mtbench; assert 'torch' not in sys.modules, 'import mtbench imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_checks_without_touching_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_HOME", str(tmp_path / "home"))
    plan = mtbench.plan("fixed-lambda", dataset="nyuv2-synth", unseen=["depth"], budget="smoke", set={"lam": 0.05},
                        out=tmp_path / "run", results=tmp_path / "results")  # fmt: skip
    described = dict(plan.describe())
    assert '"lam": 0.05' in described["config"] and described["held-out tasks"] == "depth"
    assert plan.protocol.settings["finetune_batch"] == 4 and plan.needs_reference
    assert not (tmp_path / "home").exists() and not (tmp_path / "run").exists()  # nothing generated or written
    with pytest.raises(ConfigError, match="lam"):
        mtbench.plan("fixed-lambda", dataset="nyuv2-synth", budget="smoke", set={"lam": "x"})


@pytest.mark.e2e
def test_the_readme_python_example_runs(tmp_path):
    env = {**os.environ, "MTBENCH_HOME": str(tmp_path / "home"), "MTBENCH_RESULTS": str(tmp_path / "results")}
    done = subprocess.run(
        [sys.executable, "-c", _readme_python()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *_, deltas, _ = done.stdout.strip().splitlines()  # Δm joint and seen, absErr; then dead layers, FLOPs %, device
    assert "held-out tasks: depth" in done.stdout and len([float(value) for value in deltas.split()]) == 3, deltas
    assert (tmp_path / "runs" / "python-example" / "result.json").is_file()
    assert list((tmp_path / "results" / "nyuv2-synth").glob("meta-sparsity--seed0--*.json"))
