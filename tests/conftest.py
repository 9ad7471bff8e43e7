"""Shared fixtures: small synthetic data sets in every real layout, written once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# One CPU thread for torch (and OpenMP/MKL) in the tests and in every process they start, set before torch is
# imported: the tensors are tiny, and on a shared 2-core machine torch's default of one thread per core makes
# the threads of a parallel region wait for each other behind the other jobs: tests/test_run.py took 387 s
# with the default and 65 s with one thread next to a second job (load 4-5). Set OMP_NUM_THREADS yourself to
# test another count; tests of the thread setting itself (`--threads`, the recorded count) set it explicitly.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mtbench.data.synth import generate_celebamask, generate_nyuv2  # noqa: E402

if os.environ["OMP_NUM_THREADS"].isdigit():
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # also when a plugin imported torch before this file

NYU_SIZE = {"height": 24, "width": 32}
FACE_SIZE = {"image_size": 32, "mask_size": 16}


def random_nyu_context(count: int = 12, device: str = "cpu", **budget_fields: object):
    """A `TrainContext` over ``count`` random 16×16 NYU-like samples (semseg, depth, normal; generator seed 0)
    with the smoke budget, ``budget_fields`` replaced."""
    import dataclasses

    import torch

    from mtbench import catalog, presets
    from mtbench.training import TensorSet, TrainContext

    generator = torch.Generator().manual_seed(0)
    data = TensorSet(
        {
            "image": torch.rand(count, 3, 16, 16, generator=generator),
            "semantic13": torch.randint(-1, 13, (count, 16, 16), generator=generator),
            "depth": torch.rand(count, 1, 16, 16, generator=generator),
            "normal": torch.nn.functional.normalize(torch.randn(count, 3, 16, 16, generator=generator), dim=1),
        }
    )
    budget = dataclasses.replace(presets.budget("smoke"), **budget_fields)
    tasks = [catalog.task("nyuv2", n) for n in ("semseg", "depth", "normal")]
    return TrainContext(budget, tasks, data, seed=0, device=torch.device(device))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache/mtbench or Hugging Face caches from tests."""
    home = tmp_path_factory.getbasetemp() / "mtbench-home"
    monkeypatch.setenv("MTBENCH_HOME", str(home))
    monkeypatch.setenv("MTBENCH_RESULTS", str(home / "results"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def fresh_methods(monkeypatch: pytest.MonkeyPatch):
    """An empty method registry for one test (a plugin registered in it does not leak into other tests)."""
    from mtbench import methods as methods_module
    from mtbench.registry import Registry

    registry: Registry = Registry("method")
    monkeypatch.setattr(methods_module, "METHODS", registry)
    monkeypatch.setattr(methods_module, "_loaded_builtins", False)
    return registry


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


def _once(root: Path, name: str, make) -> Path:
    path = root / name
    if not path.exists():
        make(path)
    return path


@pytest.fixture(scope="session")
def nyu_mtan(synth_root: Path) -> Path:
    return _once(synth_root, "nyu-mtan", lambda p: generate_nyuv2(p, n=16, seed=3, layout="nyuv2-mtan", **NYU_SIZE))


@pytest.fixture(scope="session")
def nyu_nyudmt(synth_root: Path) -> Path:
    return _once(synth_root, "nyu-nyudmt", lambda p: generate_nyuv2(p, n=16, seed=3, layout="nyuv2-nyudmt", **NYU_SIZE))


@pytest.fixture(scope="session")
def nyu_parquet(synth_root: Path) -> Path:
    return _once(
        synth_root, "nyu-parquet", lambda p: generate_nyuv2(p, n=16, seed=3, layout="nyuv2-parquet", **NYU_SIZE)
    )


@pytest.fixture(scope="session")
def face_official(synth_root: Path) -> Path:
    return _once(
        synth_root,
        "face-official",
        lambda p: generate_celebamask(p, n=24, seed=5, layout="celebamask-official", **FACE_SIZE),
    )


@pytest.fixture(scope="session")
def face_parquet(synth_root: Path) -> Path:
    return _once(
        synth_root,
        "face-parquet",
        lambda p: generate_celebamask(p, n=24, seed=5, layout="celebamask-parquet", **FACE_SIZE),
    )


@pytest.fixture
def copy_of(tmp_path: Path):
    """A writable copy of a session fixture, for tests that corrupt files."""

    def copy(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copytree(source, target)
        return target

    return copy


@pytest.fixture
def cli():
    """Invoke the typer app in-process; returns (exit_code, combined output)."""
    from typer.testing import CliRunner

    from mtbench.cli import app

    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, [str(a) for a in args], env={**os.environ, "COLUMNS": "200"})
        return result.exit_code, result.output  # click >= 8.2: stdout and stderr interleaved

    return invoke


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests even where OMP_NUM_THREADS asks for more: on a shared
    2-core machine, OpenMP threads competing with other jobs only add contention
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

