"""glibc's allocator settings for the training loop (mtbench.allocator), applied once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CODE = "import json; from mtbench.allocator import tune_malloc; print(json.dumps([tune_malloc(), tune_malloc()]))"


def _in_fresh_process(**env: str) -> list:
    done = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_the_settings_are_applied_once_and_can_be_turned_off():
    from mtbench.allocator import SETTINGS

    first, second = _in_fresh_process(MTBENCH_TUNE_MALLOC="1")
    assert first == second == SETTINGS
    assert _in_fresh_process(MTBENCH_TUNE_MALLOC="0") == [None, None]


def test_a_run_records_its_allocator_settings(nyu_mtan, tmp_path):
    from mtbench.runner import RunRequest, execute

    request = RunRequest(
        method="ew", data_root=nyu_mtan, budget="smoke", out=tmp_path / "run", unseen=("depth",), reference=False,
        results=tmp_path / "results",
    )
    environment = execute(request).result.environment
    recorded = environment["malloc"]
    assert "malloc" not in environment["data"]
    expected = _in_fresh_process()[0]  # what this machine's libc accepts
    assert recorded == expected
