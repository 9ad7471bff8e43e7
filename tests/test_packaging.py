"""Set-up and packaging: CI runs the README's commands; tasks/ and baselines/ survive a wheel install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    section = REPO.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_exactly_the_readme_setup_and_test_commands():
    setup, test = _readme_commands()
    lines = [line.strip() for line in REPO.joinpath(".ci/run").read_text().splitlines()]
    optional = ("#", "set ", "cd ", "command -v chromium", "||")  # the optional browser install
    commands = [line for line in lines if line and not line.startswith(optional)]
    assert commands == [setup, test]


def test_wheel_ships_tasks_and_baselines_and_works_outside_the_repo(tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(wheel_dir.glob("mtbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mtbench_tasks/nyuv2.py" in names and "mtbench_baselines/__init__.py" in names
    assert "mtbench/data/synth_nyuv2.py" in names
    assert "mtbench/assets/leaderboard.js" in names and "mtbench/assets/leaderboard.css" in names  # package data
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import mtbench, mtbench_tasks, mtbench_baselines, sys\n"
        f"assert mtbench.__file__.startswith({str(site)!r}), mtbench.__file__\n"
        f"assert mtbench_tasks.__file__.startswith({str(site)!r})\n"
        "from mtbench import catalog\nfrom mtbench.methods import methods\n"
        "assert 'nyuv2/depth' in catalog.tasks() and 'nyuv2-synth' in catalog.datasets()\n"
        "methods()\n"
        "from mtbench.leaderboard import ASSETS, asset_text\n"
        "from pathlib import Path\n"  # the shared page assets, read from the installed wheel:
        f"assert all(asset_text(n) == Path({str(REPO / 'mtbench' / 'assets')!r}, n).read_text() for n in ASSETS)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
