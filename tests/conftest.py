"""Shared fixtures: small synthetic data sets in every real layout, written once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mtbench.data.synth import generate_celebamask, generate_nyuv2

NYU_SIZE = {"height": 24, "width": 32}
FACE_SIZE = {"image_size": 32, "mask_size": 16}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache/mtbench or Hugging Face caches from tests."""
    home = tmp_path_factory.getbasetemp() / "mtbench-home"
    monkeypatch.setenv("MTBENCH_HOME", str(home))
    monkeypatch.setenv("MTBENCH_RESULTS", str(home / "results"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


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
    return _once(synth_root, "nyu-mtan", lambda p: generate_nyuv2(p, n=12, seed=3, layout="nyuv2-mtan", **NYU_SIZE))


@pytest.fixture(scope="session")
def nyu_nyudmt(synth_root: Path) -> Path:
    return _once(synth_root, "nyu-nyudmt", lambda p: generate_nyuv2(p, n=12, seed=3, layout="nyuv2-nyudmt", **NYU_SIZE))


@pytest.fixture(scope="session")
def nyu_parquet(synth_root: Path) -> Path:
    return _once(
        synth_root, "nyu-parquet", lambda p: generate_nyuv2(p, n=12, seed=3, layout="nyuv2-parquet", **NYU_SIZE)
    )


@pytest.fixture(scope="session")
def face_official(synth_root: Path) -> Path:
    return _once(
        synth_root,
        "face-official",
        lambda p: generate_celebamask(p, n=20, seed=5, layout="celebamask-official", **FACE_SIZE),
    )


@pytest.fixture(scope="session")
def face_parquet(synth_root: Path) -> Path:
    return _once(
        synth_root,
        "face-parquet",
        lambda p: generate_celebamask(p, n=20, seed=5, layout="celebamask-parquet", **FACE_SIZE),
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
    """One intra-op thread for a module of tiny-tensor tests: on a shared 2-core machine, OpenMP threads
    competing with other jobs only add contention (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

