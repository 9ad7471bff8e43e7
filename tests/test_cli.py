"""The command line as a user meets it."""

from __future__ import annotations

import subprocess
import sys

from mtbench import catalog

REQUIRED_TASKS = {
    "nyuv2": {"semseg": 13, "semseg40": 40, "depth": 1, "normal": 3, "edge": 1},
    "celebamask": {
        "faceseg": 19,
        "faceseg3": 3,
        "male": 1,
        "smiling": 1,
        "eyeglasses": 1,
        "arched-eyebrows": 1,
        "wearing-hat": 1,
    },
}


def test_required_tasks_are_registered_with_directions():
    for family, tasks in REQUIRED_TASKS.items():
        for name, channels in tasks.items():
            spec = catalog.task(family, name)
            assert spec.out_channels == channels and spec.metrics and spec.version
    directions = catalog.task("nyuv2", "depth").directions
    assert directions == {"absErr": False, "relErr": False}
    assert catalog.task("nyuv2", "normal").directions["within11.25"] is True
    assert catalog.task("celebamask", "smiling").directions["balancedAcc"] is True


def test_ls_tasks_shows_metric_directions_and_hold_out(cli):
    code, text = cli("ls", "tasks")
    assert code == 0, text
    for tasks in REQUIRED_TASKS.values():
        for name in tasks:
            assert name in text
    assert "absErr ↓" in text and "mIoU ↑" in text and "within30 ↑" in text and "--unseen" in text
    code, text = cli("ls", "tasks", "face*")
    assert code == 0 and "faceseg3" in text and "depth" not in text


def test_ls_datasets_marks_synthetic(cli):
    code, text = cli("ls", "datasets")
    assert code == 0, text
    assert "nyuv2-synth" in text and "synthetic" in text and "celebamask" in text


def test_unknown_names_fail_with_suggestions(cli):
    code, text = cli("data", "verify", "nyu2", "--root", ".")
    assert code == 1 and "did you mean 'nyuv2'" in text
    code, text = cli("run", "meta-sparsity", "--dataset", "nyuv2-synth", "--unseen", "dept")
    assert code == 1


def test_help_has_examples_and_module_entry_point_works(cli):
    done = subprocess.run([sys.executable, "-m", "mtbench", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Example" in done.stdout
    code, text = cli("data", "verify", "--help")  # a command's help: in-process (each process imports torch)
    assert code == 0 and "Example" in text, text
    done = subprocess.run(["mtbench", "ls", "datasets"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "nyuv2" in done.stdout
