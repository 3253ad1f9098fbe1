"""`task_affinity`: how much training on one task helps another."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_mtl.src import backend
from keras_mtl.src.aggregators.arg_checks import check_finite
from keras_mtl.src.api_export import keras_mtl_export

METHODS = ("lookahead", "cosine")


def _batches(data, batch_size, steps):
    """`(x, y, sample_weight)` batches of `data`: a tuple of arrays (or
    dicts of arrays), a `keras.utils.PyDataset`, or any iterable of
    batches (`tf.data.Dataset`, generator)."""
    if isinstance(data, (tuple, list)):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(tuple(data))
        size = len(keras.tree.flatten(x)[0])

        def cut(structure, start):
            return keras.tree.map_structure(
                lambda a: None if a is None else a[start: start + batch_size],
                structure)

        batches = ((cut(x, s), cut(y, s), cut(sw, s))
                   for s in range(0, size, batch_size))
    elif isinstance(data, keras.utils.PyDataset):
        batches = (keras.utils.unpack_x_y_sample_weight(data[i])
                   for i in range(len(data)))
    else:
        batches = (keras.utils.unpack_x_y_sample_weight(tuple(b))
                   for b in data)
    for n, batch in enumerate(batches):
        if steps is not None and n >= steps:
            return
        yield keras.tree.map_structure(
            lambda a: None if a is None else np.asarray(a), batch)


def _lookahead(probe, num_shared, learning_rate, num_tasks):
    """`Z[i, j] = 1 - L_j(w - lr g_i) / L_j(w)`, `g_i` task `i`'s gradient
    of the shared variables only; NaN where `L_j(w)` is 0."""
    values = probe.values
    losses, grads = probe.gradients(values, ops.eye(num_tasks), None)
    shared = ops.concatenate([ops.ones((num_shared,)), ops.zeros(
        (values.shape[0] - num_shared,))])
    rows = []
    for i in range(num_tasks):
        after = probe.losses(values - learning_rate * grads[i] * shared,
                             None)
        rows.append(1.0 - after / ops.where(losses > 0, losses, 1.0))
    affinity = ops.stack(rows)
    return ops.where((losses > 0)[None, :], affinity, float("nan"))


def _cosine(probe, num_shared, num_tasks):
    """Cosines of the tasks' gradients of the shared variables (from their
    Gramian); NaN for a zero gradient."""
    _, grads = probe.gradients(probe.values, ops.eye(num_tasks), None)
    shared = grads[:, :num_shared]
    gramian = shared @ ops.transpose(shared)
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    outer = norms[:, None] * norms[None, :]
    return ops.where(outer > 0, gramian / ops.where(outer > 0, outer, 1.0),
                     float("nan"))


@keras_mtl_export("keras_mtl.analysis.task_affinity")
def task_affinity(model, data, method="lookahead", learning_rate=None,
                  batch_size=32, steps=None):
    """The inter-task affinity of a compiled multi-task model on `data`.

    `affinity[i, j]` says how much a step on task `i` helps task `j`,
    averaged over the batches (entries undefined on a batch, e.g. a task
    without labels there, are left out of the mean). Nothing is trained:
    the model, its optimizer and its balancing state are unchanged.

    - `"lookahead"`: Fifty et al.'s TAG affinity (NeurIPS 2021),
      `1 - L_j(w_s - lr g_i) / L_j(w_s)`, where the look-ahead is one plain
      gradient step of task `i`'s loss on the shared variables only, on the
      same batch. `T + 1` forward and `T` backward passes per batch.
      (TAG's CelebA code also divides by `lr` and reuses the optimizer's
      momentum; this is the paper's definition.)
    - `"cosine"`: the cosine of the tasks' gradients of the shared
      variables, from their Gramian (the quantity `ConflictMonitor` records
      during training at no extra cost: its `mean_cosines()` is this
      affinity averaged over training). One forward and `T` backward passes
      per batch; symmetric.

    Feed the result to `keras_mtl.analysis.group_tasks` to choose which
    tasks to train together.

    Args:
        model: a compiled `keras_mtl.MultiTaskModel` (or
            `MultiTaskTrainer`) whose shared variables are known.
        data: `(x, y)` or `(x, y, sample_weight)` arrays (dicts per task),
            a `keras.utils.PyDataset`, or an iterable of such batches (a
            `tf.data.Dataset`, a generator).
        method: `"lookahead"` (default) or `"cosine"`.
        learning_rate: the look-ahead step size. Defaults to the model's
            optimizer's current learning rate.
        batch_size: batch size for array data. Defaults to 32.
        steps: optional limit on the number of batches.

    Returns:
        A `(T, T)` float64 NumPy array in the order of `model.task_names`
        (NaN where no batch defined it).

    Example:

    >>> x = keras.Input((4,))
    >>> h = keras.layers.Dense(8, name="trunk")(x)
    >>> model = keras_mtl.MultiTaskModel(
    ...     x, {t: keras.layers.Dense(1, name=t)(h) for t in "abc"})
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> data = np.random.rand(64, 4).astype("float32")
    >>> y = {"a": data[:, :1], "b": data[:, :1] + 0.1, "c": -data[:, 1:2]}
    >>> affinity = keras_mtl.analysis.task_affinity(model, (data, y))
    >>> groups, _ = keras_mtl.analysis.group_tasks(
    ...     affinity, 2, list(model.task_names))
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: "
                         f"method={method!r}")
    if getattr(model, "balancer", None) is None:
        raise ValueError(
            "task_affinity needs a compiled keras_mtl.MultiTaskModel (its "
            f"task losses). Received: a {type(model).__name__} without them")
    if model.balancer.groups is not None:
        raise ValueError(
            "task_affinity compares single tasks; compile the model without "
            "`task_groups` to measure it. Received: task_groups="
            f"{model.balancer.task_groups!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
            batch_size < 1):
        raise ValueError("`batch_size` must be a positive int. Received: "
                         f"batch_size={batch_size!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(
            steps, int) or steps < 1):
        raise ValueError("`steps` must be a positive int or None. Received: "
                         f"steps={steps!r}")
    if method == "lookahead":
        if learning_rate is None:
            learning_rate = float(keras.ops.convert_to_numpy(
                model.optimizer.learning_rate))
        learning_rate = check_finite("learning_rate", learning_rate)
    num_tasks = len(model.balancer.task_names)
    total = np.zeros((num_tasks, num_tasks))
    count = np.zeros((num_tasks, num_tasks))
    for x, y, sw in _batches(data, batch_size, steps):
        probe, plan = backend.batch_probe(model, x, y, sw)
        if not plan.shared:
            raise ValueError(
                "task_affinity compares the tasks' gradients of the shared "
                "variables, and this model has no trainable shared "
                "variable. Received: shared_variables=[]")
        num_shared = sum(probe.sizes[: len(plan.shared)])
        if method == "lookahead":
            value = _lookahead(probe, num_shared, learning_rate, num_tasks)
        else:
            value = _cosine(probe, num_shared, num_tasks)
        value = np.asarray(keras.ops.convert_to_numpy(value), np.float64)
        seen = np.isfinite(value)
        total += np.where(seen, value, 0.0)
        count += seen
    if not count.any():
        warnings.warn("task_affinity saw no batch with labels; every entry "
                      "is NaN.", stacklevel=2)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
