"""The order in which each task visits the others (PCGrad, GradVac)."""

from keras import ops

from keras_mtl.src.aggregators.aggregator import seed_from
from keras_mtl.src.backend import traceable_ops


def visiting_order(num_tasks, seed=None, shuffle=True):
    """One-hot `(T, T - 1, T)` order in which each task visits the others.

    `order[i, k]` is the one-hot of the task that task `i` visits `k`-th.
    Each row is an independent seeded random permutation of the other
    tasks (from one `(T, T)` uniform draw), or index order with
    `shuffle=False`.
    """
    if shuffle:
        keys = traceable_ops.uniform(
            (num_tasks, num_tasks), seed=seed_from(seed))
    else:
        keys = ops.tile(ops.arange(num_tasks, dtype="float32")[None, :],
                        (num_tasks, 1)) / num_tasks
    # Keys are in [0, 1): adding 2 on the diagonal sorts each task last.
    order = ops.argsort(keys + 2.0 * ops.eye(num_tasks), axis=-1)
    return ops.one_hot(order[:, :-1], num_tasks)
