"""``mtbench sweep``: spec validation, grid expansion, and real sweeps on a local Ray instance (smoke budget)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtbench.errors import SweepSpecError
from mtbench.methods import methods
from mtbench.result import SCHEMA_VERSION
from mtbench.results import load_results, read_result
from mtbench.runner import RunRequest
from mtbench.sweep import expand, run_sweep, stored_index
from mtbench.sweep_spec import load_spec

# generous limits: each cell is a fresh `mtbench run` process, slow on a busy 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "leaderboard" / "specs"


def _write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = 'schema_version = 1\nbudgets = ["smoke"]\nseeds = [0]\n'
NYU = '[[datasets]]\nname = "nyuv2-synth"\nunseen = ["depth"]\n'


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "says"),
    [
        (HEADER + NYU + "[methods.fxed-lambda]\n", "methods.fxed-lambda", "unknown method 'fxed-lambda'"),
        (HEADER + NYU + "[methods.fixed-lambda]\nlambda = [0.1]\n", "methods.fixed-lambda.lambda", "unknown option"),
        (HEADER + NYU + '[methods.fixed-lambda]\nlam = [0.1, "big"]\n', "methods.fixed-lambda.lam[1]", "invalid value"),
        (HEADER + NYU + "[methods.meta-sparsity]\nfirst_order = 3\n", "methods.meta-sparsity.first_order", "invalid"),
        (HEADER + NYU + '[methods.meta-sparsity]\nhypergradient = "nope"\n', "methods.meta-sparsity.hypergradient",
         "invalid value"),
        (HEADER + NYU + "[methods.prune]\nsparsity = []\n", "methods.prune.sparsity", "empty grid"),
        (HEADER + '[[datasets]]\nname = "nyuv3-synth"\n[methods.ew]\n', "datasets[0].name", "unknown data set"),
        (HEADER + '[[datasets]]\nname = "nyuv2-synth"\nunseen = ["normal", "dept"]\n[methods.ew]\n',
         "datasets[0].unseen[1]", "unknown nyuv2 task 'dept'"),
        (HEADER + '[[datasets]]\nname = "nyuv2-synth"\nunsen = ["depth"]\n[methods.ew]\n', "datasets[0].unsen",
         "unknown key"),
        ('budgets = ["smoke"]\nseeds = [0]\n' + NYU + "[methods.ew]\n", "schema_version", "missing"),
        ("schema_version = 2\n" + HEADER[19:] + NYU + "[methods.ew]\n", "schema_version", "unknown sweep spec version"),
        ('schema_version = 1\nbudgets = ["quik"]\nseeds = [0]\n' + NYU + "[methods.ew]\n", "budgets[0]",
         "unknown budget"),
        ('schema_version = 1\nbudgets = ["smoke"]\nseeds = [0, "1"]\n' + NYU + "[methods.ew]\n", "seeds[1]",
         "not a seed"),
        (HEADER + NYU, "methods", "missing"),
        (HEADER + NYU + "[methods.ew\n", "(syntax)", "not valid TOML"),
        (HEADER + NYU + 'data = "disk"\n[methods.ew]\n', "datasets[0].data", "unknown data mode 'disk'"),
        (HEADER + NYU + "memory_budget = 0\n[methods.ew]\n", "datasets[0].memory_budget", "must be positive"),
        (HEADER + NYU + "workers = -1\n[methods.ew]\n", "datasets[0].workers", "cannot be negative"),
        (HEADER + NYU + 'workers = "4"\n[methods.ew]\n', "datasets[0].workers", "not an integer"),
    ],
    ids=[
        "unknown-method", "unknown-option", "bad-value-type", "bad-boolean", "bad-literal", "empty-grid",
        "unknown-dataset", "unknown-task", "unknown-dataset-key", "missing-schema-version", "unknown-schema-version",
        "unknown-budget", "bad-seed", "missing-methods", "toml-syntax", "bad-data-mode", "zero-memory-budget",
        "negative-workers", "workers-not-integer",
    ],
)
def test_spec_errors_name_the_file_and_the_key(tmp_path, body, key, says):
    path = _write(tmp_path, body)
    with pytest.raises(SweepSpecError) as caught:
        load_spec(path)
    error = caught.value
    assert error.path == path and error.key == key
    text = str(error)
    assert text.startswith(f"{path}: {key}: ") and says in text, text
    assert "expected:" in text and "found:" in text


def test_spec_error_for_a_data_root_of_another_data_set(tmp_path, nyu_mtan):
    path = _write(
        tmp_path, HEADER + f'[[datasets]]\nname = "celebamask-synth"\ndata_root = "{nyu_mtan}"\n[methods.ew]\n'
    )
    with pytest.raises(SweepSpecError) as caught:
        load_spec(path)
    assert caught.value.key == "datasets[0].data_root" and str(path) in str(caught.value)


def test_missing_spec_file_is_a_typed_error(tmp_path, cli):
    with pytest.raises(SweepSpecError) as caught:
        load_spec(tmp_path / "nope.toml")
    assert caught.value.key == "(file)"
    code, text = cli("sweep", tmp_path / "nope.toml")
    assert code == 1 and "nope.toml: (file): no such file" in text


# --- expansion ----------------------------------------------------------------------------------------------


def test_grids_expand_into_hand_counted_cells(tmp_path):
    path = _write(
        tmp_path,
        """schema_version = 1
budgets = ["smoke", "quick"]
seeds = [0, 1, 2]
[[datasets]]
name = "nyuv2-synth"
unseen = ["depth"]
[[datasets]]
name = "celebamask-synth"
unseen = ["smiling"]
[methods.ew]
[methods.fixed-lambda]
lam = [0.001, 0.01, 0.1]
[methods.prune]
sparsity = [0.25, 0.5]
scope = ["global", "layer"]
[[methods.meta-sparsity]]
[[methods.meta-sparsity]]
hypergradient = "maml"     # the default: the same cell as the table above
[[methods.meta-sparsity]]
hypergradient = "online"
""",
    )
    cells = expand(load_spec(path))
    # per (budget, data set, seed): ew 1 + fixed-lambda 3 + prune 2×2 + meta-sparsity 2 = 10 cells, + 1 stl reference
    groups = 2 * 2 * 3
    assert len(cells) == groups * 11
    references = [c for c in cells if c.is_reference]
    assert len(references) == groups and cells[:groups] == references  # scheduled first
    assert len({c.key for c in cells}) == len(cells)
    prune = [c for c in cells if c.method == "prune" and c.budget == "smoke" and c.seed == 0]
    assert sorted(c.overrides for c in prune if c.dataset.name == "nyuv2-synth") == [
        (("scope", "global"), ("sparsity", "0.25")),
        (("scope", "global"), ("sparsity", "0.5")),
        (("scope", "layer"), ("sparsity", "0.25")),
        (("scope", "layer"), ("sparsity", "0.5")),
    ]
    one = next(c for c in cells if c.method == "fixed-lambda" and c.budget == "quick" and c.seed == 2)
    assert one.request == RunRequest(
        method="fixed-lambda", dataset=one.dataset.name, seed=2, budget="quick", unseen=one.dataset.unseen,
        overrides={"lam": "0.001"},
    )
    assert RunRequest.from_json(json.loads(json.dumps(one.request.to_json()))) == one.request  # what a worker gets
    assert json.loads(one.config) == {**dataclasses.asdict(methods().get("fixed-lambda").config()), "lam": 0.001}


def test_data_options_reach_the_cells_and_leave_their_identity_alone(tmp_path):
    plain = expand(load_spec(_write(tmp_path, HEADER + NYU + "[methods.ew]\n", "plain.toml")))
    streamed = expand(load_spec(_write(
        tmp_path, HEADER + NYU + 'data = "stream"\nmemory_budget = 12\nworkers = 3\n[methods.ew]\n', "stream.toml"
    )))
    ew = next(c for c in streamed if c.method == "ew")
    assert (ew.request.data_mode, ew.request.memory_budget_gib, ew.request.loader_workers) == ("stream", 12.0, 3)
    assert all((c.request.data_mode, c.request.memory_budget_gib, c.request.loader_workers) == ("auto", None, None)
               for c in plain)
    # the same results: a stored cell counts as done whichever way the data were held
    assert [(c.method, c.config, c.seed, c.protocol) for c in plain] == [
        (c.method, c.config, c.seed, c.protocol) for c in streamed
    ]


def test_checked_in_specs_parse_and_expand_to_the_published_grids():
    quick = expand(load_spec(SPECS / "to-rerun" / "nyuv2-quick.toml"))
    # 9 dense methods + stl + 6 fixed-λ (λ = 0.01 is the default fixed-lambda) + 2 meta-sparsity + 3 prune = 21
    # variants per seed × 5 seeds; the stl cells are the others' references
    assert len(quick) == 21 * 5 and sum(c.is_reference for c in quick) == 5
    assert {c.budget for c in quick} == {"quick"} and {c.seed for c in quick} == {0, 1, 2, 3, 4}
    assert {(c.dataset.name, c.dataset.unseen) for c in quick} == {("nyuv2-synth", ("depth",))}
    names = ("fixed-lambda", "meta-sparsity", "meta-dense", "prune", "stl")
    count = {m: sum(c.method == m for c in quick) for m in names}
    assert count == {"fixed-lambda": 30, "meta-sparsity": 10, "meta-dense": 5, "prune": 15, "stl": 5}
    lams = sorted({json.loads(c.config)["lam"] for c in quick if c.method == "fixed-lambda"})
    assert lams == [0.001, 0.003, 0.01, 0.02, 0.05, 0.1]
    assert sorted({json.loads(c.config)["hypergradient"] for c in quick if c.method == "meta-sparsity"}) == [
        "maml", "online"
    ]
    plateau = expand(load_spec(SPECS / "to-rerun" / "celebamask-plateau.toml"))
    assert {c.seed for c in plateau} == set(range(5)) and len(plateau) == 8 * 5


# --- real sweeps on Ray -------------------------------------------------------------------------------------


@pytest.fixture
def ray_tmp(monkeypatch) -> Iterator[Path]:
    """A short, private RAY_TMPDIR (Ray's socket paths must stay under ~100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="mtb-ray-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _grid(
    tmp_path: Path, root: Path, methods_: list[str], seeds: list[int], extra: str = "", top: bool = False
) -> Path:
    """A smoke grid on ``root``; ``extra`` goes after the data set entry, or before it when ``top``."""
    tables = "".join(f"[methods.{m}]\n" for m in methods_)
    head, tail = (extra, "") if top else ("", extra)
    return _write(
        tmp_path,
        f'schema_version = 1\nbudgets = ["smoke"]\nseeds = {seeds}\n{head}'
        f'[[datasets]]\nname = "nyuv2-synth"\nunseen = ["depth"]\ndata_root = "{root}"\n{tail}{tables}',
    )


def _stored(results: Path) -> dict[tuple[str, int], dict]:
    found: dict[tuple[str, int], dict] = {}
    for _, result in load_results(results):  # strict: every file must be a valid result
        key = (result.method.name, result.seed)
        assert key not in found, f"{key} stored twice"
        found[key] = result
    return found


def _check_references(stored: dict[tuple[str, int], dict], seeds: list[int], names: list[str]) -> None:
    """One stl per seed, and every other result scored against it without training one itself."""
    for (method, seed), result in stored.items():
        assert result.threads == 1
        assert result.method.config == dataclasses.asdict(methods().get(method).config())
        if method != "stl":
            assert result.timings.reference_trained is False
            assert result.delta_m.reference_run == stored[("stl", seed)].run_id
    assert sorted(stored) == sorted((m, s) for m in ["stl", *names] for s in seeds)


def _readme_plugin(folder: Path) -> Path:
    """The README's method plugin ("my-method", softmax loss weighting), saved as a file in ``folder``."""
    import re

    readme = (REPO / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "METHOD = MethodInfo" in b)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "softmax_weighting.py").write_text(example)
    return folder / "softmax_weighting.py"


def test_two_by_two_sweep_with_a_plugin_method_then_rerun_skips_everything(
    tmp_path, nyu_mtan, ray_tmp, monkeypatch, fresh_methods, cli
):
    """A method from a plugin file outside the repository, named in the spec, is swept on Ray like a built-in
    (one fresh worker per cell, through the library), stored with its source and family, and tabulated."""
    import ray

    import mtbench.sweep as sweep

    plugin = _readme_plugin(tmp_path / "elsewhere")
    spec = load_spec(_grid(tmp_path, nyu_mtan, ["ew", "my-method"], [0, 1],
                           extra='plugins = ["elsewhere/softmax_weighting.py"]\n', top=True))
    assert spec.plugins == (str(plugin),)
    results = tmp_path / "results"
    report = run_sweep(spec, results, num_cpus=2, logs_dir=tmp_path / "logs")
    assert not ray.is_initialized()  # the driver shut Ray down
    assert report.ok and report.count("done") == 6 and report.count("skipped") == 0, report.line()
    assert [o.cell.method for o in report.outcomes[:2]] == ["stl", "stl"]
    stored = _stored(results)
    _check_references(stored, [0, 1], ["ew", "my-method"])
    for seed in (0, 1):
        mine = stored[("my-method", seed)]
        assert mine.method.source.startswith(f"file {plugin} (sha256 ") and mine.method.family == "dense"
        assert mine.method.config == {"temperature": 2.0}
    assert len(list(results.rglob("*.json"))) == 6
    times = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}

    code, text = cli("leaderboard", "build", "--results", results, "--out", tmp_path / "board")
    assert code == 0, text
    tables = [p for p in (tmp_path / "board").rglob("*.md") if p.name != "README.md"]
    assert len(tables) == 1 and "| my-method |" in tables[0].read_text(), [p.name for p in tables]

    def no_ray(*_args, **_kwargs):
        raise AssertionError("a sweep with every cell stored must not start Ray")

    monkeypatch.setattr(sweep, "_start_ray", no_ray)
    again = run_sweep(spec, results, num_cpus=2, logs_dir=tmp_path / "logs")
    assert again.ok and again.count("skipped") == 6 and again.count("done") == 0, again.line()
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == times
    assert {o.stored for o in again.outcomes} == set(times)


def test_spec_plugin_by_module_name(tmp_path, monkeypatch, fresh_methods):
    """An installed module named in the spec is imported, its method checked like a built-in's, and every cell
    loads it by that name."""
    package = tmp_path / "site" / "sweep_plugin_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "methods.py").write_text(_readme_plugin(tmp_path / "src").read_text())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = _write(tmp_path, 'plugins = ["sweep_plugin_pkg.methods"]\n' + HEADER + NYU
                  + "[methods.my-method]\ntemperature = [1.0, 3.0]\n")
    spec = load_spec(path)
    cells = [c for c in expand(spec) if c.method == "my-method"]
    assert spec.plugins == ("sweep_plugin_pkg.methods",) and len(cells) == 2
    assert all(c.request.plugins == ("sweep_plugin_pkg.methods",) for c in cells)
    assert sorted(json.loads(c.config)["temperature"] for c in cells) == [1.0, 3.0]
    with pytest.raises(SweepSpecError, match=r"methods.my-method.temperature\[0\].*invalid value"):
        load_spec(_write(tmp_path, 'plugins = ["sweep_plugin_pkg.methods"]\n' + HEADER + NYU
                         + "[methods.my-method]\ntemperature = [-1.0]\n", "bad.toml"))


@pytest.mark.parametrize(
    ("plugins", "says"),
    [('["elsewhere/none.py"]', "does not exist"), ('["no_such_module_xyz"]', "cannot be imported"),
     ('["not a name"]', "neither a path nor a module name")],
    ids=["missing-file", "missing-module", "neither"],
)
def test_spec_plugin_errors_name_the_key(tmp_path, plugins, says):
    path = _write(tmp_path, f"plugins = {plugins}\n" + HEADER + NYU + "[methods.ew]\n")
    with pytest.raises(SweepSpecError) as info:
        load_spec(path)
    assert info.value.key == "plugins[0]" and says in str(info.value), str(info.value)


def test_a_failing_cell_fails_alone_with_its_log(tmp_path, nyu_mtan, ray_tmp, cli):
    """A data root that exists only "on the workers" (here: nowhere) fails its reference, and so its dependants;
    the other data set's cells run and are stored; the command exits 1 and shows the log."""
    missing = tmp_path / "not-here"
    path = _grid(
        tmp_path, nyu_mtan, ["ew"], [0],
        extra=f'[[datasets]]\nname = "nyuv2-synth"\nunseen = ["normal"]\ndata_root = "{missing}"\n',
    )
    results, logs = tmp_path / "results", tmp_path / "logs"
    code, text = cli("sweep", path, "--results", results, "--num-cpus", "2", "--logs", logs)
    assert code == 1, text
    flat = " ".join(text.split())
    assert "sweep: 4 cells — 2 done, 2 failed, 0 skipped" in flat, text
    assert "the run failed on" in flat and "its stl reference" in flat
    assert str(missing) in flat  # the failed run's log tail names the folder it could not read
    (log,) = logs.iterdir()
    assert str(missing) in " ".join(log.read_text().split())
    assert sorted(_stored(results)) == [("ew", 0), ("stl", 0)]


# --- a driver killed mid-sweep ------------------------------------------------------------------------------


#: Ray processes that outlive a SIGKILLed driver (they are not fate-shared with it in Ray 2.60).
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _session(sid: int) -> dict[int, str]:
    """Live processes of session ``sid`` (pid -> command line); zombies left out."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                members[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return members


def _kill_session(sid: int) -> dict[int, str]:
    """SIGKILL what is left of a session this test started (by pid); returns what was left."""
    left = _session(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _sweep_process(spec: Path, results: Path, logs: Path, cpus: int, out: Path, ray_dir: Path) -> subprocess.Popen:
    """``python -m mtbench sweep`` in a session of its own, so everything it starts can be found again."""
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir), "COLUMNS": "200"}
    args = ["-m", "mtbench", "sweep", str(spec), "--results", str(results), "--logs", str(logs)]
    args += ["--num-cpus", str(cpus)]
    with open(out, "wb") as handle:
        return subprocess.Popen([sys.executable, *args], stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def test_killed_driver_resumes_with_only_the_missing_cells(tmp_path, nyu_mtan, ray_tmp):
    seeds = [0, 1]
    spec = _grid(tmp_path, nyu_mtan, ["ew"], seeds)  # 4 cells: stl seed 0 and 1 first, then ew seed 0 and 1
    results, logs = tmp_path / "results", tmp_path / "logs"
    driver = _sweep_process(spec, results, logs, 1, tmp_path / "first.txt", ray_tmp)
    try:
        deadline = time.monotonic() + 600
        while not list(results.rglob("*.json")):
            assert driver.poll() is None, (tmp_path / "first.txt").read_text()
            assert time.monotonic() < deadline, "no result stored within 600 s"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # the local Ray instance dies with its driver (Ray's fate sharing), and each cell's run with its Ray
        # worker (PR_SET_PDEATHSIG); Ray's two agent processes stay behind: they are removed below, by pid, from
        # the session this test started
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            cmd.startswith(RAY_AGENTS) for cmd in _session(driver.pid).values()
        ):
            time.sleep(0.2)
        runs = [cmd for cmd in _session(driver.pid).values() if "-m mtbench run" in cmd]
        assert not runs, f"cell runs outlived the killed driver: {runs}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        _kill_session(driver.pid)
    assert driver.returncode == -signal.SIGKILL
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in results.rglob("*.json")}
    assert 1 <= len(before) < 4
    for path in before:
        read_result(path)  # complete, valid JSON results only (the store writes atomically)

    again = _sweep_process(spec, results, logs, 2, tmp_path / "second.txt", ray_tmp)
    try:
        again.wait(timeout=600)
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
        _kill_session(again.pid)
    text = " ".join((tmp_path / "second.txt").read_text().split())
    assert again.returncode == 0, text
    ran = 4 - len(before)
    assert f"sweep: 4 cells — {ran} done, 0 failed, {len(before)} skipped" in text, text
    for path, (mtime, content) in before.items():  # the cells stored before the kill did not run again
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    _check_references(_stored(results), seeds, ["ew"])


def test_the_published_results_are_exactly_the_cells_of_the_checked_in_specs():
    """Every published table of the current protocol is regenerated by `mtbench sweep leaderboard/specs/...`:
    nothing published comes from elsewhere, and no spec cell is missing from the published store. The results
    of older protocols are the record of the grids in leaderboard/specs/to-rerun/ (same methods, options and
    seeds; their protocol was the budget of that time)."""
    cells = {cell.key for spec in sorted(SPECS.glob("*.toml")) for cell in expand(load_spec(spec))}
    index = stored_index(SPECS.parent / "results")
    published = {key for key, (_, result) in index.items() if result.schema_version == SCHEMA_VERSION}
    assert not published - cells, f"published but in no spec: {sorted(published - cells)[:3]}"
    assert not cells - published, f"in a spec but not published: {sorted(cells - published)[:3]}"
    grids = [cell.key for spec in sorted((SPECS / "to-rerun").glob("*.toml")) for cell in expand(load_spec(spec))]

    def in_a_grid(key: tuple) -> bool:  # a config option added since (e.g. match_ew_flops) is at its default
        method, config, seed, dataset = key[:4]
        return any(
            (g[0], g[2], g[3]) == (method, seed, dataset) and json.loads(g[1]).items() >= json.loads(config).items()
            for g in grids
        )

    old = [key for key, (_, result) in index.items() if result.schema_version < SCHEMA_VERSION]
    outside = [key for key in old if not in_a_grid(key)]
    assert old and not outside, f"old results in no grid to rerun: {outside[:3]}"


def test_the_planned_specs_expand_to_runnable_cells():
    """A spec under leaderboard/specs/planned/ (a grid not yet run) stays valid: it loads, every method and option
    exists, and it expands to cells with all the spec's seeds."""
    planned = sorted((SPECS / "planned").glob("*.toml"))
    assert planned
    for path in planned:
        spec = load_spec(path)
        cells = expand(spec)
        assert cells and {cell.key[2] for cell in cells} == set(spec.seeds), path.name
