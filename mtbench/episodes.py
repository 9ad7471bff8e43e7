"""Episodes for meta-training: task combinations of the seen tasks, disjoint support/query batches.

An episode is drawn from ``numpy.random.default_rng([seed, episode_index])``, so episode ``i`` is
the same whatever was drawn before it (reproducible and resumable). Only the targets of the
episode's tasks are read; the tasks held out from training are never requested from the reader,
and `TaskView` refuses them outright.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mtbench.data.reader import Reader, Sample
from mtbench.errors import ConfigError, HeldOutTargetError
from mtbench.specs import TaskSpec

Combinations = Literal["subsets", "all", "single"]


@dataclass(frozen=True)
class Episode:
    """One episode: which tasks, which training samples for support and for query."""

    index: int
    tasks: tuple[str, ...]
    support: tuple[int, ...]
    query: tuple[int, ...]


def task_combinations(tasks: Sequence[str], mode: Combinations = "subsets") -> list[tuple[str, ...]]:
    """``subsets``: the 2^T − 1 non-empty subsets; ``all``: only the full set; ``single``: one task each."""
    if mode == "all":
        return [tuple(tasks)]
    if mode == "single":
        return [(t,) for t in tasks]
    return [combo for size in range(1, len(tasks) + 1) for combo in itertools.combinations(tasks, size)]


META_VAL_SALT = 9173


def meta_validation_split(num_samples: int, fraction: float, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Carve a meta-validation split out of the training split: ``(meta-train indices, meta-val indices)``.

    The same for every seed and method (like the authors' NYU ``meta_gt_sets``, a fixed list), sorted,
    disjoint, with at least ``minimum`` samples (a query batch) in the meta-validation part and one in
    the rest. Never touches the test split.
    """
    if not 0 < fraction < 1:
        raise ConfigError("meta-validation fraction out of range", expected="0 < fraction < 1", found=str(fraction))
    count = min(max(1, minimum, round(fraction * num_samples)), num_samples - 1)
    order = np.random.default_rng([META_VAL_SALT, num_samples]).permutation(num_samples)
    return np.sort(order[count:]), np.sort(order[:count])


class EpisodeSampler:
    """Draws episodes over the seen tasks from ``num_samples`` training samples.

    Args:
        num_samples: size of the training split.
        tasks: the seen tasks (names).
        support_size: samples in the support batch.
        query_size: samples in the query batch (disjoint from the support batch).
        seed: episode ``i`` depends only on ``(seed, i)``.
        combinations: how task combinations are drawn (`task_combinations`).
        support_pool / query_pool: if given, support indices are drawn from ``support_pool`` and query
            indices from ``query_pool`` (e.g. a meta-validation split); otherwise both from the whole
            split, disjoint within the episode.
    """

    def __init__(
        self,
        num_samples: int,
        tasks: Sequence[str],
        *,
        support_size: int,
        query_size: int,
        seed: int,
        combinations: Combinations = "subsets",
        support_pool: Sequence[int] | None = None,
        query_pool: Sequence[int] | None = None,
    ) -> None:
        if (support_pool is None) != (query_pool is None):
            raise ConfigError("support_pool and query_pool go together", found="only one of them")
        if support_pool is not None and query_pool is not None:
            if set(support_pool) & set(query_pool):
                raise ConfigError("support and query pools overlap", expected="disjoint index pools")
            if support_size > len(support_pool) or query_size > len(query_pool) or min(support_size, query_size) < 1:
                raise ConfigError(
                    "support and query batches do not fit in their pools",
                    expected=f"1 ≤ support ≤ {len(support_pool)}, 1 ≤ query ≤ {len(query_pool)}",
                    found=f"support={support_size}, query={query_size}",
                    fix="use smaller batches, more training samples or a larger meta-validation fraction",
                )
        self.pools = None if support_pool is None else (np.asarray(support_pool), np.asarray(query_pool))
        if not tasks:
            raise ConfigError("no tasks to draw episodes from", expected="at least one seen task", found="none")
        if self.pools is None and (support_size < 1 or query_size < 1 or support_size + query_size > num_samples):
            raise ConfigError(
                "support and query batches do not fit in the training split",
                expected=f"1 ≤ support, 1 ≤ query, support + query ≤ {num_samples}",
                found=f"support={support_size}, query={query_size}",
                fix="use smaller batches or more training samples",
            )
        self.num_samples, self.tasks, self.seed = num_samples, tuple(tasks), seed
        self.support_size, self.query_size = support_size, query_size
        self.combinations = task_combinations(self.tasks, combinations)

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, index])
        combo = self.combinations[int(rng.integers(len(self.combinations)))]
        if self.pools is not None:
            support_pool, query_pool = self.pools
            support = rng.choice(support_pool, size=self.support_size, replace=False)
            query = rng.choice(query_pool, size=self.query_size, replace=False)
            return Episode(index, combo, tuple(int(i) for i in support), tuple(int(i) for i in query))
        drawn = rng.choice(self.num_samples, size=self.support_size + self.query_size, replace=False)
        return Episode(
            index,
            combo,
            tuple(int(i) for i in drawn[: self.support_size]),
            tuple(int(i) for i in drawn[self.support_size :]),
        )

    def __iter__(self) -> Iterator[Episode]:
        return (self.episode(i) for i in itertools.count())


class TaskView:
    """A reader restricted to the targets of the seen tasks: asking for any other target raises.

    Args:
        reader: the data set.
        split: the split to read (training split during meta-training).
        seen: the tasks whose targets may be read.
        unseen: held-out tasks; checked not to share a source file with any seen task.
    """

    def __init__(self, reader: Reader, split: str, seen: Sequence[TaskSpec], unseen: Sequence[TaskSpec] = ()) -> None:
        self.reader, self.split = reader, split
        self.by_name = {t.name: t for t in seen}
        self.allowed = {t.target for t in seen}
        for task in (*seen, *unseen):
            if task.target not in reader.target_sources:
                raise ConfigError(
                    f"task {task.name!r} needs target {task.target!r}, which the "
                    f"{reader.layout} layout does not provide",
                    expected=", ".join(reader.targets()),
                    found=task.target,
                    fix="choose tasks this layout provides (mtbench ls tasks)",
                )
        seen_sources = {reader.target_sources[t.target]: t.name for t in seen}
        for task in unseen:
            source = reader.target_sources[task.target]
            if source in seen_sources:
                raise ConfigError(
                    f"held-out task {task.name!r} reads the same files ({source}) as seen task "
                    f"{seen_sources[source]!r} in the {reader.layout} layout",
                    expected="held-out targets that no seen task reads",
                    found=f"{task.name} and {seen_sources[source]} share '{source}'",
                    fix=f"hold out {seen_sources[source]!r} too, or use a layout where they are separate files",
                )
        self.forbidden = {t.target: t.name for t in unseen}

    def __len__(self) -> int:
        return self.reader.num_samples(self.split)

    def read(self, index: int, targets: Sequence[str], *, image: bool = True) -> Sample:
        """Sample ``index`` of the split: its image (unless ``image=False``) and ``targets``, all of seen tasks."""
        for target in targets:
            if target in self.forbidden:
                raise HeldOutTargetError(
                    f"refused to read {target!r}: task {self.forbidden[target]!r} is held out",
                    fix="this is a bug in the caller; held-out targets are never read in training",
                )
            if target not in self.allowed:
                raise HeldOutTargetError(
                    f"refused to read {target!r}: not a target of the seen tasks",
                    expected=", ".join(sorted(self.allowed)),
                    found=target,
                )
        return self.reader.read(self.split, index, targets, image=image)

    def batch(self, indices: Sequence[int], tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """Stacked samples: ``image`` and the targets of ``tasks`` only."""
        targets = [self.by_name[name].target for name in tasks]
        samples = [self.read(i, targets) for i in indices]
        return {key: np.stack([s[key] for s in samples]) for key in samples[0]}

    def episode(self, episode: Episode) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Support and query batches of ``episode``."""
        return self.batch(episode.support, episode.tasks), self.batch(episode.query, episode.tasks)
