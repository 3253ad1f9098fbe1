"""`group_tasks` against a brute force over all assignments."""

import itertools

import numpy as np
import pytest

from keras_mtl.analysis import group_tasks
from keras_mtl.src.analysis.group_tasks import _partitions
from keras_mtl.src.analysis.group_tasks import _stirling


def brute_force(affinity, k):
    """Best score over every labelling of tasks with k non-empty groups."""
    count = len(affinity)
    best = -np.inf
    for labels in itertools.product(range(k), repeat=count):
        if len(set(labels)) != k:
            continue
        score = 0.0
        for g in range(k):
            members = [i for i in range(count) if labels[i] == g]
            for j in members:
                others = [i for i in members if i != j]
                if others:
                    score += np.mean([affinity[i][j] for i in others])
        best = max(best, score)
    return best


@pytest.mark.parametrize("count, k", [(1, 1), (4, 2), (5, 3), (6, 2),
                                      (6, 4), (7, 3)])
def test_partitions_are_complete_and_distinct(count, k):
    seen = {tuple(sorted(tuple(sorted(g)) for g in p))
            for p in _partitions(list(range(count)), k)}
    assert len(seen) == _stirling(count, k)
    assert all(sorted(sum(p, ())) == list(range(count)) for p in seen)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_best_partition_matches_brute_force(seed, k):
    affinity = np.random.default_rng(seed).normal(size=(6, 6))
    groups, score = group_tasks(affinity, k)
    assert score == pytest.approx(brute_force(affinity, k), abs=1e-9)
    assert len(groups) == k and sorted(sum(groups, [])) == list(range(6))


def test_clear_clusters_and_degenerate_inputs():
    # Two blocks that help each other, hurting across.
    blocks = np.full((6, 6), -1.0)
    blocks[:3, :3] = blocks[3:, 3:] = 1.0
    names = list("abcdef")
    assert group_tasks(blocks, 2, names) == ([list("abc"), list("def")], 6.0)
    # All zero: any partition scores 0; all tasks alone with k = T.
    groups, score = group_tasks(np.zeros((4, 4)), 4)
    assert groups == [[0], [1], [2], [3]] and score == 0.0
    # The diagonal is ignored.
    assert group_tasks(np.diag([1e9, 1e9]), 1) == ([[0, 1]], 0.0)


@pytest.mark.parametrize("args, match", [
    ((np.ones((2, 3)), 1), "`affinity`"),
    ((np.array([[0.0, np.nan], [0.0, 0.0]]), 1), "`affinity`"),
    ((np.zeros((3, 3)), 0), "`num_groups`"),
    ((np.zeros((3, 3)), 4), "`num_groups`"),
    ((np.zeros((3, 3)), 2.0), "`num_groups`"),
    ((np.zeros((3, 3)), 2, ["a"]), "`task_names`"),
    ((np.zeros((16, 16)), 5), "partitions"),
])
def test_argument_errors(args, match):
    with pytest.raises(ValueError, match=match):
        group_tasks(*args)
