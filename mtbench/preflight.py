"""Checks a run passes before anything is generated, loaded or trained: seed, output folders, device, tasks."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtbench import catalog
from mtbench.data.reader import Reader
from mtbench.errors import ConfigError, OutputError, UnknownNameError
from mtbench.specs import DatasetSpec, TaskSpec

MIN_FREE_BYTES = 50 * 2**20


SEED_LIMIT = 2**32


def check_seed(seed: Any) -> None:
    """Refuse a seed that some seeded generator of a run would reject, before anything is loaded or trained."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(
            f"seed {seed!r} is out of range",
            expected=f"an integer with 0 ≤ seed < 2^32 ({SEED_LIMIT:,})",
            found=repr(seed),
            fix="pass --seed 0, 1, 2, … (the published tables use 0–4)",
        )


def check_output_dir(path: Path, role: str, option: str) -> None:
    """Fail fast unless ``path`` is (or can become) a writable folder with ``MIN_FREE_BYTES`` free.

    The nearest existing folder on the way to ``path`` is probed by creating and deleting a temporary file,
    so permissions, read-only file systems and files in the way are all caught; nothing is left behind and
    ``path`` itself is not created here.

    Args:
        path: the folder a run will write into.
        role: what it is, for the message (``--out``, ``results store`` …).
        option: the option that chooses it (``--out``, ``--results``), for the fix.
    """
    fix = f"pass {option} a folder you can write to"
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(
            f"{role} {path} is not a folder",
            expected="a folder (existing or to be created)",
            found="a file" if path.is_file() else "something that is not a folder",
            fix=f"remove or rename {path}, or {fix}",
        )
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{role} {path} cannot be created: {existing} is not a folder",
            expected=f"{existing} to be a folder",
            found="a file" if existing.is_file() else "something that is not a folder",
            fix=fix,
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".mtbench-write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"{role} {path} is not writable",
            expected=f"permission to create files in {existing}",
            found=f"{type(error).__name__}: {error.strerror or error}",
            fix=fix,
        ) from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise OutputError(
            f"{role} {path}: too little free space",
            expected=f"at least {MIN_FREE_BYTES // 2**20} MiB free on the file system of {existing}",
            found=f"{free / 2**20:.1f} MiB",
            fix=f"free some space, or {fix}",
        )


def check_device_name(name: str) -> None:
    """Reject a ``--device`` that is none of auto, cpu, cuda, cuda:N, mps (when torch has MPS)."""
    has_mps = hasattr(torch.backends, "mps")
    allowed = ["auto", "cpu", "cuda", "cuda:N", *(["mps"] if has_mps else [])]
    if name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name) or (name == "mps" and has_mps):
        return
    raise ConfigError(
        f"unknown device {name!r}",
        expected=" | ".join(allowed),
        found=name,
        fix="--device auto uses CUDA when available, else the CPU",
    )


def pick_device(name: str) -> torch.device:
    """The torch device for ``--device``; unknown names and absent devices raise `ConfigError`."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "CUDA requested but not available",
                expected="a CUDA device",
                found="none",
                fix="use --device cpu or auto",
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"no CUDA device {index}",
                expected=f"cuda:0 … cuda:{torch.cuda.device_count() - 1}",
                found=name,
                fix="use --device cuda or auto",
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "MPS requested but not available", expected="an Apple GPU", found="none", fix="use --device cpu or auto"
        )
    return torch.device(name)


def _short(name: str) -> str:
    return name.split("/")[-1]


def _duplicates(names: Sequence[str]) -> list[str]:
    return [name for name, count in Counter(map(_short, names)).items() if count > 1]


def check_task_options(family: str, tasks: Sequence[str] | None, unseen: Sequence[str]) -> None:
    """Reject repeated names, a task both seen and held out, and task names not of ``family``."""
    for option, names in (("--unseen", unseen), ("--tasks", tasks or ())):
        repeated = _duplicates(names)
        if repeated:
            raise ConfigError(
                f"{option} names {', '.join(repeated)} more than once",
                expected=f"each task once in {option}",
                found=" ".join(f"{option} {n}" for n in names),
                fix=f"give each task once: {' '.join(f'{option} {n}' for n in dict.fromkeys(map(_short, names)))}",
            )
    held_out = {_short(n) for n in unseen}
    both = [n for n in dict.fromkeys(map(_short, tasks or ())) if n in held_out]
    if both:
        raise ConfigError(
            f"{', '.join(both)} is both a seen task (--tasks) and held out (--unseen)",
            expected="--tasks (seen, trained on) and --unseen (held out from training) to be disjoint",
            found=f"--tasks {' '.join(tasks or ())}; --unseen {' '.join(unseen)}",
            fix="drop it from --tasks to hold it out, or from --unseen to train on it",
        )
    for name in (*unseen, *(tasks or ())):
        task_of(family, name)


def task_of(family: str, name: str) -> TaskSpec:
    """``catalog.task`` that also refuses another family's task, and whose error says which data set the
    task belongs to and which command lists the right ones (``mtbench ls tasks FAMILY``)."""
    short = _short(name)
    try:
        task = catalog.task(family, name)
        if task.family == family:
            return task
    except UnknownNameError:
        pass
    own = [t.name for t in catalog.family_tasks(family)]
    elsewhere = sorted({t.family for _, t in catalog.tasks().items() if t.name == short and t.family != family})
    listing = f"`mtbench ls tasks {family}` lists them"
    if elsewhere:
        sets = [n for n in catalog.datasets().names() if catalog.dataset(n).family in elsewhere]
        fix = (
            f"{short!r} is a task of {' and '.join(elsewhere)}: run on {' or '.join(sets)} with --dataset, "
            f"or pick a {family} task ({listing})"
        )
    else:
        close = difflib.get_close_matches(short, own, n=3, cutoff=0.5)
        fix = f"did you mean {', '.join(repr(c) for c in close)}? {listing}" if close else listing
    raise UnknownNameError(
        f"unknown {family} task {short!r}",
        expected=f"one of the {family} tasks: {', '.join(own)}",
        found=repr(name),
        fix=fix,
    )


def plan_tasks(
    spec: DatasetSpec, tasks: Sequence[str] | None, unseen: Sequence[str]
) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """The seen and held-out tasks of a run (``tasks`` default to the data set's)."""
    held_out = [task_of(spec.family, name) for name in unseen]
    for task in held_out:
        if not task.may_hold_out:
            raise ConfigError(f"task {task.name!r} may not be held out", found=task.name)
    names = tasks if tasks else [t for t in spec.default_tasks]
    seen = [task_of(spec.family, n) for n in names if n not in {t.name for t in held_out}]
    if not seen:
        raise ConfigError(
            "no seen task left to train on",
            expected="at least one task not held out",
            found=f"tasks {list(names)}, unseen {list(unseen)}",
        )
    return seen, held_out


def check_targets(reader: Reader, tasks: Sequence[TaskSpec]) -> None:
    """Refuse tasks whose targets the data's layout does not provide."""
    missing = [t.name for t in tasks if t.target not in reader.target_sources]
    if missing:
        raise ConfigError(
            f"the {reader.layout} layout does not provide {', '.join(missing)}",
            expected=", ".join(reader.targets()),
            found=", ".join(missing),
            fix="choose tasks with --tasks, or a layout that provides them",
        )
