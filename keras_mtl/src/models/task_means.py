"""A metric that averages one value per task over an epoch."""

import keras
from keras import ops


class TaskMeans(keras.metrics.Metric):
    """Running (weighted) means of a `(T,)` vector, logged as one entry per
    name: one variable update per step instead of one per task."""

    def __init__(self, names, name="task_means", **kwargs):
        super().__init__(name=name, **kwargs)
        self.names = list(names)
        size = (len(self.names),)
        self.total = self.add_variable(size, "zeros", name="total")
        self.count = self.add_variable(size, "zeros", name="count")

    def update_state(self, values, sample_weight=None):
        values = ops.cast(values, self.dtype)
        weight = (
            ops.ones_like(values)
            if sample_weight is None
            else ops.cast(sample_weight, self.dtype)
        )
        self.total.assign_add(values * weight)
        self.count.assign_add(weight)

    def result(self):
        means = ops.divide_no_nan(self.total, self.count)
        return {name: means[i] for i, name in enumerate(self.names)}

    def reset_state(self):
        self.total.assign(ops.zeros(self.total.shape, self.dtype))
        self.count.assign(ops.zeros(self.count.shape, self.dtype))

    def get_config(self):
        return {**super().get_config(), "names": self.names}
