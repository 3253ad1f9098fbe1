"""The running sums behind `keras_mtl.callbacks.ConflictMonitor`."""

import keras
from keras import ops


class ConflictTracker(keras.metrics.Metric):
    """Sums, over the training steps, the task weights and the `T x T`
    Gramian of the per-task gradients the step aggregated.

    The state is additive (sums and counts), so replicas each add their
    share and Keras' summing of metric states gives the global values; a
    reader takes differences of the sums between two reads to get the mean
    over the steps in between (one step when it reads after every step).
    It adds nothing to the logs: `ConflictMonitor` reads it.

    Args:
        num_tasks: `T`.
    """

    def __init__(self, num_tasks, name="task_conflicts", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_tasks = int(num_tasks)
        t = self.num_tasks
        self.weight_sum = self.add_variable((t,), "zeros", name="weight_sum")
        self.weight_count = self.add_variable((), "zeros",
                                              name="weight_count")
        self.gramian_sum = self.add_variable((t, t), "zeros",
                                             name="gramian_sum")
        self.gramian_count = self.add_variable((), "zeros",
                                               name="gramian_count")

    def update_state(self, weights, gramian=None, ok=None, replicas=1):
        """Adds one step: `weights` `(T,)`, `gramian` `(T, T)` or None (a
        step without per-task gradients); a step that `ok` marks as skipped
        adds nothing; each of `replicas` replicas adds `1 / replicas`."""
        share = ops.convert_to_tensor(1.0 / replicas, self.dtype)
        if ok is not None:
            share = share * ops.cast(ok, self.dtype)
        weights = ops.cast(weights, self.dtype)
        self.weight_sum.assign_add(_masked(weights, share))
        self.weight_count.assign_add(share)
        if gramian is not None:
            gramian = ops.cast(gramian, self.dtype)
            self.gramian_sum.assign_add(_masked(gramian, share))
            self.gramian_count.assign_add(share)

    def result(self):
        return {}

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, self.dtype))

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks}


def _masked(values, share):
    """`values * share`, with 0 (not NaN) where `share` is 0."""
    return ops.where(share > 0.0, values * share, ops.zeros_like(values))
