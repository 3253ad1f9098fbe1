"""Groups of shared variables aggregated separately (`aggregation_groups`).

With groups, the aggregator runs once per group on the per-task gradients of
that group's variables only (TorchJD's grouping example; LibMTL's GradVac
`group_type`), and a stateful rule keeps one state per group.
"""

import keras

MODES = ("layer", "variable")


def normalize(groups):
    """Checks `compile`'s `aggregation_groups` and returns it serialisable:
    `None`, `"layer"`, `"variable"`, or a list of lists of variable (or
    layer) paths."""
    if groups is None or groups in MODES:
        return groups
    bad = ValueError(
        "`aggregation_groups` must be None, 'layer', 'variable' or a list of "
        "non-empty lists of variables or variable paths. "
        f"Received: aggregation_groups={groups!r}")
    if isinstance(groups, str) or not isinstance(groups, (list, tuple)):
        raise bad
    normalized = []
    for group in groups:
        if isinstance(group, (str, keras.Variable)) or not isinstance(
                group, (list, tuple)) or not group:
            raise bad
        paths = []
        for entry in group:
            if isinstance(entry, keras.Variable):
                entry = entry.path
            if not isinstance(entry, str):
                raise bad
            paths.append(entry)
        normalized.append(paths)
    return normalized


def _matches(entry, path):
    # A variable's own path, or the path of a layer (or model) holding it.
    return path == entry or path.startswith(entry.rstrip("/") + "/")


def resolve(groups, shared_variables):
    """Returns the groups as lists of indices into `shared_variables`.

    `None` gives one group; `"variable"` one group per variable; `"layer"`
    one group per layer (the variables sharing a path up to the last `/`).
    Given lists keep their order; shared variables they leave out form one
    more group at the end.
    """
    shared = list(shared_variables)
    if groups is None:
        return [list(range(len(shared)))]
    if groups == "variable":
        return [[i] for i in range(len(shared))]
    if groups == "layer":
        owners = {}
        for i, v in enumerate(shared):
            owners.setdefault(v.path.rpartition("/")[0], []).append(i)
        return list(owners.values())
    taken = {}
    resolved = []
    for g, group in enumerate(groups):
        members = []
        for entry in group:
            found = [i for i, v in enumerate(shared)
                     if _matches(entry, v.path)]
            if not found:
                raise ValueError(
                    "An `aggregation_groups` entry matches no shared "
                    f"variable. Shared: {[v.path for v in shared]}. "
                    f"Received: {entry!r}")
            for i in found:
                if taken.setdefault(i, g) != g:
                    raise ValueError(
                        f"Variable {shared[i].path!r} is in two "
                        f"`aggregation_groups` ({taken[i]} and {g}). "
                        f"Received: aggregation_groups={groups!r}")
                if i not in members:
                    members.append(i)
        resolved.append(sorted(members))
    rest = [i for i in range(len(shared)) if i not in taken]
    if rest:
        resolved.append(rest)
    return resolved
