"""Episodes: reproducible, disjoint support/query, subsets of seen tasks; held-out targets never read."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mtbench import catalog
from mtbench.data.nyuv2 import MtanReader
from mtbench.episodes import EpisodeSampler, TaskView, task_combinations
from mtbench.errors import ConfigError, HeldOutTargetError

SEEN = ("semseg", "normal", "edge")


def test_task_combinations_are_the_nonempty_subsets():
    combos = task_combinations(["a", "b", "c"])
    assert len(combos) == 2**3 - 1
    assert set(combos) == {c for r in (1, 2, 3) for c in itertools.combinations("abc", r)}
    assert task_combinations(["a", "b"], "all") == [("a", "b")]
    assert task_combinations(["a", "b"], "single") == [("a",), ("b",)]


def test_episodes_are_reproducible_disjoint_and_cover_combinations():
    sampler = EpisodeSampler(50, SEEN, support_size=4, query_size=3, seed=7)
    again = EpisodeSampler(50, SEEN, support_size=4, query_size=3, seed=7)
    other = EpisodeSampler(50, SEEN, support_size=4, query_size=3, seed=8)
    episodes = [sampler.episode(i) for i in range(200)]
    assert episodes == [again.episode(i) for i in range(200)]
    assert episodes != [other.episode(i) for i in range(200)]
    assert sampler.episode(123) == episodes[123]  # random access: independent of what came before
    for episode in episodes:
        assert len(episode.support) == 4 and len(episode.query) == 3
        assert not set(episode.support) & set(episode.query)
        assert len(set(episode.support)) == 4
        assert set(episode.tasks) <= set(SEEN) and episode.tasks
    assert {e.tasks for e in episodes} == set(task_combinations(SEEN))


def test_sampler_rejects_batches_that_do_not_fit():
    with pytest.raises(ConfigError, match="do not fit"):
        EpisodeSampler(5, SEEN, support_size=4, query_size=2, seed=0)


def _tasks(*names):
    return [catalog.task("nyuv2", n) for n in names]


def test_held_out_targets_are_never_read(nyu_mtan, copy_of):
    """Every depth file is replaced by garbage: meta-training episodes must still load."""
    root = copy_of(nyu_mtan)
    for path in root.glob("*/depth/*.npy"):
        path.write_bytes(b"not an array: reading this file fails")
    reader = MtanReader(root)
    view = TaskView(reader, "train", _tasks(*SEEN), unseen=_tasks("depth"))
    sampler = EpisodeSampler(len(view), SEEN, support_size=3, query_size=3, seed=0)
    for index in range(30):
        episode = sampler.episode(index)
        support, query = view.episode(episode)
        assert "depth" not in support and "depth" not in query
        assert set(support) == {"image", *(catalog.task("nyuv2", t).target for t in episode.tasks)}
        assert support["image"].shape == (3, 3, 24, 32)
    with pytest.raises(HeldOutTargetError, match="held out"):
        view.read(0, ["depth"])
    with pytest.raises(Exception, match="depth"):  # the files really are unreadable
        reader.read("train", 0, ("depth",))


def test_view_refuses_targets_outside_the_seen_tasks(nyu_mtan):
    view = TaskView(MtanReader(nyu_mtan), "train", _tasks("semseg"))
    with pytest.raises(HeldOutTargetError, match="not a target of the seen tasks"):
        view.read(0, ["normal"])
    np.testing.assert_array_equal(
        view.read(0, ["semantic13"])["semantic13"], MtanReader(nyu_mtan).read("train", 0, ("semantic13",))["semantic13"]
    )


def test_holding_out_a_task_that_shares_files_with_a_seen_task_is_refused(nyu_mtan, nyu_nyudmt):
    with pytest.raises(ConfigError, match="reads the same files"):
        TaskView(MtanReader(nyu_mtan), "train", _tasks("edge", "depth"), unseen=_tasks("semseg"))
    with pytest.raises(ConfigError, match="does not provide"):
        TaskView(MtanReader(nyu_mtan), "train", _tasks("semseg40"))
