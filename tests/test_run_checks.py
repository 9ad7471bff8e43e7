"""`mtbench run` checks its request before any data is loaded or trained on, trains the stl reference once
where ``--out`` says, keeps its time apart, and records what a result's exact numbers depend on."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from mtbench import preflight, recipe, runner
from mtbench.errors import ConfigError, OutputError
from mtbench.runner import RunRequest, execute

pytestmark = [pytest.mark.slow]


@pytest.fixture
def never_loads_or_trains(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spies on data resolution and training: the list they append to must stay empty."""
    calls: list[str] = []

    def no_data(*args, **kwargs):
        calls.append("resolve_data")
        raise AssertionError("data was resolved")

    def no_training(*args, **kwargs):
        calls.append("train")
        raise AssertionError("training started")

    monkeypatch.setattr(recipe, "resolve_data", no_data)
    monkeypatch.setattr(recipe, "train", no_training)
    return calls


def _run_cli(cli, root: Path, *args: object) -> tuple[int, str]:
    return cli("run", "ew", "--data-root", root, "--budget", "smoke", *args)


def _short_error(code: int, text: str, calls: list[str]) -> str:
    """Asserts a short typed error and no data or training; returns the text with rich's line wrapping undone."""
    assert code == 1, text
    assert text.startswith("error:") and "Traceback" not in text and len(text.splitlines()) <= 8, text
    assert calls == [] and "ew: training" not in text
    return " ".join(text.split())


def _writable(folder: Path) -> bool:
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


def test_read_only_out_parent_fails_before_training(cli, nyu_mtan, tmp_path, never_loads_or_trains):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        out = parent / "run"
        if _writable(parent):  # root ignores permissions: a path under a regular file fails for root too
            (tmp_path / "a-file").write_text("not a folder")
            out = tmp_path / "a-file" / "run"
        code, text = _run_cli(cli, nyu_mtan, "--out", out)
    finally:
        parent.chmod(0o755)
    text = _short_error(code, text, never_loads_or_trains)
    assert f"--out {out}" in text and ("not writable" in text or "is not a folder" in text)


def test_out_that_is_a_file_fails_before_training(cli, nyu_mtan, tmp_path, never_loads_or_trains):
    (tmp_path / "a-file").write_text("not a folder")
    code, text = _run_cli(cli, nyu_mtan, "--out", tmp_path / "a-file")
    text = _short_error(code, text, never_loads_or_trains)
    assert f"--out {tmp_path / 'a-file'} is not a folder" in text and "found: a file" in text


def test_results_pointing_to_a_file_fails_before_training(cli, nyu_mtan, tmp_path, never_loads_or_trains):
    (tmp_path / "results.json").write_text("{}")
    code, text = _run_cli(cli, nyu_mtan, "--out", tmp_path / "run", "--results", tmp_path / "results.json")
    text = _short_error(code, text, never_loads_or_trains)
    assert f"--results {tmp_path / 'results.json'} is not a folder" in text
    assert not (tmp_path / "run").exists()


def test_too_little_free_space_fails_before_training(nyu_mtan, tmp_path, monkeypatch, never_loads_or_trains):
    real = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: real(path)._replace(free=10 * 2**20))
    with pytest.raises(OutputError, match="too little free space"):
        execute(RunRequest(method="ew", data_root=nyu_mtan, budget="smoke", out=tmp_path / "run"))
    assert never_loads_or_trains == []


def test_duplicated_unseen_is_rejected(cli, nyu_mtan, tmp_path, never_loads_or_trains):
    code, text = _run_cli(cli, nyu_mtan, "--unseen", "depth", "--unseen", "depth", "--out", tmp_path / "run")
    text = _short_error(code, text, never_loads_or_trains)
    assert "--unseen names depth more than once" in text


def test_duplicated_tasks_are_rejected(nyu_mtan, never_loads_or_trains):
    with pytest.raises(ConfigError, match="--tasks names semseg more than once"):
        execute(RunRequest(method="ew", data_root=nyu_mtan, budget="smoke", tasks=("semseg", "normal", "semseg")))
    assert never_loads_or_trains == []


def test_task_both_seen_and_held_out_is_rejected(cli, nyu_mtan, never_loads_or_trains):
    code, text = _run_cli(cli, nyu_mtan, "--tasks", "depth", "--tasks", "semseg", "--unseen", "depth")
    text = _short_error(code, text, never_loads_or_trains)
    assert "depth is both a seen task (--tasks) and held out (--unseen)" in text


def test_unknown_device_lists_the_accepted_ones(cli, nyu_mtan, never_loads_or_trains):
    code, text = _run_cli(cli, nyu_mtan, "--device", "tpu")
    text = _short_error(code, text, never_loads_or_trains)
    assert "unknown device 'tpu'" in text and "auto | cpu | cuda | cuda:N" in text


def test_synthetic_name_on_a_real_folder_is_rejected(cli, nyu_mtan, copy_of, tmp_path, monkeypatch):
    """A folder without the generator's manifest is real data: naming it nyuv2-synth is a contradiction."""
    from mtbench.data.reader import SYNTH_MANIFEST

    real = copy_of(nyu_mtan)
    (real / SYNTH_MANIFEST).unlink()
    trained: list[str] = []
    monkeypatch.setattr(recipe, "train", lambda *a, **k: trained.append("train"))
    code, text = cli(
        "run", "ew", "--dataset", "nyuv2-synth", "--data-root", real, "--budget", "smoke", "--out", tmp_path / "r"
    )
    assert code == 1 and trained == [], text
    text = " ".join(text.split())
    assert "is not nyuv2-synth: it is real nyuv2 data" in text and f"no {SYNTH_MANIFEST}" in text
    assert "--dataset nyuv2" in text


def test_task_of_another_data_set_suggests_a_command_that_works(cli, nyu_mtan, never_loads_or_trains):
    code, text = _run_cli(cli, nyu_mtan, "--unseen", "smiling")
    text = _short_error(code, text, never_loads_or_trains)
    assert "'smiling' is a task of celebamask" in text and "`mtbench ls tasks nyuv2`" in text
    assert "mtbench ls nyuv2 tasks" not in text
    code, listing = cli("ls", "tasks", "nyuv2")  # the suggested command runs and lists the right tasks
    assert code == 0 and "depth" in listing and "smiling" not in listing


def _request(root: Path, out: Path, results: Path, method: str = "ew", **kwargs) -> RunRequest:
    return RunRequest(
        method=method, data_root=root, budget="smoke", unseen=("depth",), out=out, results=results, **kwargs
    )


def test_reference_is_written_beside_out_and_its_time_kept_apart(nyu_mtan, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # the reference must not land in ./runs
    notices: list[str] = []
    start = time.perf_counter()
    result = execute(_request(nyu_mtan, tmp_path / "mine" / "ew", tmp_path / "results"), notice=notices.append).result
    wall = time.perf_counter() - start
    reference_dir = tmp_path / "mine" / "ew-stl-reference"
    assert json.loads((reference_dir / "result.json").read_text())["method"]["name"] == "stl"
    assert not (tmp_path / "runs").exists()
    assert any(str(reference_dir) in n and "training it first" in n for n in notices), notices
    timings = result.timings
    assert timings.reference_trained is True and timings.reference_seconds > 0
    assert timings.total_seconds + timings.reference_seconds <= wall + 0.05  # total excludes the reference
    again = execute(_request(nyu_mtan, tmp_path / "mine" / "ew2", tmp_path / "results")).result
    assert again.timings.reference_seconds == 0 and again.timings.reference_trained is False
    assert not (tmp_path / "mine" / "ew2-stl-reference").exists()
    code, text = cli(
        "run", "uw", "--data-root", nyu_mtan, "--budget", "smoke", "--unseen", "normal",
        "--out", tmp_path / "cli" / "uw", "--results", tmp_path / "results",
    )  # fmt: skip
    assert code == 0, text
    assert "reference stl trained first:" in " ".join(text.split()) and "(not in the total above)" in text


def test_corrupt_reference_is_named_in_the_notice(nyu_mtan, tmp_path):
    results = tmp_path / "results"
    first = execute(_request(nyu_mtan, tmp_path / "a", results)).result
    [stl_file] = (results / "nyuv2-synth").glob("stl--*.json")
    stl_file.write_text('{"schema_version": 1, "meth')
    notices: list[str] = []
    again = execute(_request(nyu_mtan, tmp_path / "b", results), notice=notices.append).result
    said = [n for n in notices if str(stl_file) in n and "corrupt" in n and "not valid JSON" in n]
    assert said and not any("no stl reference" in n for n in notices), notices
    assert json.loads(stl_file.read_text())["method"]["name"] == "stl"  # replaced by a fresh reference
    assert again.timings.reference_trained is True
    assert again.delta_m.seen == first.delta_m.seen


def test_concurrent_runs_train_the_reference_once(nyu_mtan, tmp_path, monkeypatch):
    """Two runs that miss the same reference at once: one trains it under the lock, the other reuses it."""
    made = execute(_request(nyu_mtan, tmp_path / "stl", tmp_path / "elsewhere", method="stl"))
    reference = made.result
    trained: list[str] = []
    lookups: list[int] = []
    real_find = runner.find_reference

    def counted_find(*args, **kwargs):
        lookups.append(1)
        return real_find(*args, **kwargs)

    def slow_training(request: RunRequest, notice=None, progress=None) -> runner.Executed:
        trained.append(request.method)
        deadline = time.monotonic() + 30
        while len(lookups) < 3 and time.monotonic() < deadline:  # the other run has missed it too
            time.sleep(0.01)
        time.sleep(0.2)  # and reached the lock
        runner.store(reference, request.results)
        return made

    monkeypatch.setattr(runner, "find_reference", counted_find)
    monkeypatch.setattr(runner, "execute", slow_training)
    got: list[runner.Reference] = []

    def one(name: str) -> None:
        request = _request(nyu_mtan, tmp_path / name, tmp_path / "results", method="ew")
        got.append(runner.reference_for(runner.plan(request)))

    threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert trained == ["stl"]
    assert sorted(found.trained for found in got) == [False, True]
    assert all(found.result.run_id == reference.run_id for found in got)
    assert all(found.seconds > 0 for found in got)  # neither found it stored at the start


def test_environment_records_cpu_model_capability_and_threads(nyu_mtan, tmp_path):
    import torch

    made = execute(_request(nyu_mtan, tmp_path / "stl", tmp_path / "results", method="stl"))
    env = made.result.environment
    assert env["threads"] == torch.get_num_threads()
    assert env["cpu_model"] and isinstance(env["cpu_model"], str)
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["math_libraries"], list) and all(len(line) <= 100 for line in env["math_libraries"])
    stored = json.loads(made.stored.read_text())["environment"]
    assert stored["cpu_model"] == env["cpu_model"] and stored["cpu_capability"] == env["cpu_capability"]


def test_replacing_a_result_of_another_thread_count_says_so(nyu_mtan, tmp_path):
    request = _request(nyu_mtan, tmp_path / "stl", tmp_path / "results", method="stl")
    first = execute(request)
    stored = first.stored
    old = json.loads(stored.read_text())
    old["environment"].update(threads=64, cpu_model="Some Other CPU")
    stored.write_text(json.dumps(old))
    notices: list[str] = []
    execute(request, notice=notices.append)
    assert any("replaces a result made with 64 thread(s) on CPU Some Other CPU" in n for n in notices), notices
    notices.clear()
    execute(request, notice=notices.append)  # same machine and threads: the plain notice only
    assert any("run before" in n for n in notices) and not any("thread(s)" in n for n in notices), notices
    assert len(list(stored.parent.glob("stl--*.json"))) == 1  # still one result: threads are not in the key
