"""Tasks balanced in groups: `compile(task_groups=...)`.

Each group's loss is the sum of its tasks' losses; the aggregator balances
the groups (one row per group: one gradient per group in the step), and
every task of a group receives the group's weight. TAG (Fifty et al.,
2021) trains the groups `keras_mtl.analysis.group_tasks` finds as separate
networks; here they share the model and only the balancing is grouped.
"""

from keras import ops


def normalize(task_groups, task_names):
    """`(group_names, groups)`: the groups as lists of task indices, in the
    order given; None stays None.

    Args:
        task_groups: None, a list of lists of task names, or a dict
            `{group_name: [task names]}`; every task in exactly one group.
        task_names: the compiled tasks.
    """
    if task_groups is None:
        return None, None
    if isinstance(task_groups, dict):
        names, members = list(task_groups), list(task_groups.values())
    elif isinstance(task_groups, (list, tuple)):
        members = list(task_groups)
        names = None
    else:
        members = None
    if members is None or not members or any(
            not isinstance(m, (list, tuple)) or not m for m in members):
        raise ValueError(
            "`task_groups` must be a non-empty list of non-empty lists of "
            "task names (or a dict {group name: [task names]}). Received: "
            f"task_groups={task_groups!r}")
    placed = [t for m in members for t in m]
    unknown = sorted({str(t) for t in placed} - set(task_names))
    missing = [t for t in task_names if t not in placed]
    repeated = sorted({t for t in placed if placed.count(t) > 1})
    if unknown or missing or repeated:
        raise ValueError(
            "`task_groups` must place every task in exactly one group; "
            f"unknown: {unknown}, missing: {missing}, repeated: {repeated} "
            f"(the tasks are {list(task_names)}). Received: "
            f"task_groups={task_groups!r}")
    groups = [[task_names.index(t) for t in m] for m in members]
    if names is None:
        names = ["+".join(task_names[i] for i in g) for g in groups]
    return [str(n) for n in names], groups


def membership(groups, num_tasks):
    """The `(G, T)` 0/1 matrix of which task is in which group."""
    rows = [[1.0 if t in g else 0.0 for t in range(num_tasks)]
            for g in groups]
    return ops.convert_to_tensor(rows, "float32")
