"""`group_tasks`: tasks into groups that maximise their total affinity."""

import math
import numbers

import numpy as np

from keras_mtl.src.api_export import keras_mtl_export

# The most partitions `group_tasks` enumerates (about 1 s of NumPy work).
MAX_PARTITIONS = 200_000


def _partitions(items, count):
    """Every partition of `items` into `count` non-empty blocks (each once:
    a new block always opens with the smallest unplaced item)."""
    if count == 0:
        if not items:
            yield []
        return
    if len(items) < count:
        return
    first, rest = items[0], items[1:]
    # `first` opens a block of its own ...
    for partition in _partitions(rest, count - 1):
        yield [[first]] + partition
    # ... or joins one of the blocks of a partition of the rest.
    for partition in _partitions(rest, count):
        for k in range(len(partition)):
            yield partition[:k] + [[first] + partition[k]] + partition[k + 1:]


def _stirling(n, k):
    """The number of partitions of `n` items into `k` non-empty blocks."""
    return sum((-1) ** i * math.comb(k, i) * (k - i) ** n
               for i in range(k + 1)) // math.factorial(k)


def group_score(affinity, group):
    """The affinity a group gives its members: for each task, the mean
    affinity onto it from the group's other tasks (0 alone), summed."""
    if len(group) < 2:
        return 0.0
    block = affinity[np.ix_(group, group)]
    onto = (block.sum(axis=0) - np.diag(block)) / (len(group) - 1)
    return float(onto.sum())


@keras_mtl_export("keras_mtl.analysis.group_tasks")
def group_tasks(affinity, num_groups, task_names=None):
    """Splits tasks into groups that maximise their total inter-task
    affinity (TAG's grouping step, Fifty et al., 2021, as a partition).

    `affinity[i, j]` is how much training on task `i` helps task `j` (TAG's
    look-ahead affinity `1 - L_j(theta_i') / L_j(theta)`, or the cosine of
    their gradients; it need not be symmetric). A group gives each member
    the mean affinity onto it from the group's other members (a task alone
    gets 0); the function returns the partition of the tasks into
    `num_groups` non-empty groups with the largest sum over all tasks,
    found by enumerating every partition (exact; up to 200,000 partitions,
    e.g. 10 tasks in 3 groups). Ties go to the first partition found.

    Args:
        affinity: `(T, T)` array of finite numbers (the diagonal is
            ignored).
        num_groups: int between 1 and `T`.
        task_names: optional list of `T` names for the result. Defaults to
            `None`: task indices.

    Returns:
        `(groups, score)`: a list of groups (lists of names or indices, in
        task order) and their total affinity.

    Example:

    >>> affinity = np.array([[0.0, 0.9, -0.5],
    ...                      [0.8, 0.0, -0.4],
    ...                      [-0.3, -0.2, 0.0]])
    >>> keras_mtl.analysis.group_tasks(affinity, 2, ["a", "b", "c"])
    ([['a', 'b'], ['c']], 1.7)
    """
    matrix = np.asarray(affinity, "float64")
    if (matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]
            or matrix.shape[0] == 0 or not np.all(np.isfinite(matrix))):
        raise ValueError(
            "`affinity` must be a square (T, T) array of finite numbers. "
            f"Received: affinity of shape {matrix.shape}")
    count = matrix.shape[0]
    if (isinstance(num_groups, bool) or not isinstance(num_groups,
                                                        numbers.Integral)
            or not 1 <= num_groups <= count):
        raise ValueError(
            f"`num_groups` must be an int between 1 and {count}. "
            f"Received: num_groups={num_groups!r}")
    if task_names is not None and (
            not isinstance(task_names, (list, tuple))
            or len(task_names) != count):
        raise ValueError(
            f"`task_names` must be a list of {count} names. "
            f"Received: task_names={task_names!r}")
    total = _stirling(count, int(num_groups))
    if total > MAX_PARTITIONS:
        raise ValueError(
            f"{count} tasks in {num_groups} groups make {total:,} "
            f"partitions, more than the {MAX_PARTITIONS:,} this exact search "
            f"enumerates. Received: num_groups={num_groups!r}")
    best, best_score = None, -np.inf
    for partition in _partitions(list(range(count)), int(num_groups)):
        score = sum(group_score(matrix, group) for group in partition)
        if score > best_score + 1e-12:
            best, best_score = partition, score
    groups = sorted(sorted(group) for group in best)
    if task_names is not None:
        groups = [[task_names[i] for i in group] for group in groups]
    return groups, round(best_score, 12)
