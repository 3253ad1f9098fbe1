from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.task_order import visiting_order
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.PCGrad")
class PCGrad(Weighting):
    """Projecting conflicting gradients ("gradient surgery").

    For each task `i`, start from `g'_i = g_i` and visit the other tasks `j` in
    a random order; whenever `g'_i . g_j < 0`, remove the conflicting component:
    `g'_i <- g'_i - (g'_i . g_j / ||g_j||^2) g_j`. The direction is the **sum**
    `d = sum_i g'_i` (as in the paper, LibMTL and TorchJD; divide by T for the
    mean convention of some re-implementations). Every `g'_i` is a linear
    combination of the task gradients, so the rule is computed on the Gramian
    alone and returns the combined weights. Zero gradients are never projected
    onto. Cost: Gramian (T backward passes). Randomised (visiting order),
    reproducible with a seeded `keras.random.SeedGenerator`; with
    `shuffle=False` tasks are visited in index order (the behaviour of the
    official TensorFlow code, whose shuffle is unused).

    Args:
        shuffle: whether to visit the other tasks in a random order.

    Example:

    >>> agg = keras_mtl.aggregators.PCGrad()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> # [0.5848, 3.8012, 3.8012]

    Reference:
        Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
    """

    def __init__(self, shuffle=True, name=None):
        super().__init__(name=name)
        if not isinstance(shuffle, bool):
            raise ValueError(
                f"`shuffle` must be a bool. Received: shuffle={shuffle!r}"
            )
        self.shuffle = shuffle

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = ops.cast(gramian, "float32")
        squared_norms = ops.diagonal(gramian)
        # `visits[i, k]` is the one-hot of the task row i visits k-th; the
        # loop uses slices and operators (cheap on eager PyTorch).
        visits = visiting_order(num_tasks, seed, self.shuffle)
        inverse_norms = ops.divide_no_nan(1.0, squared_norms)[:, None]
        # Row i holds the coefficients of g'_i in the basis of task gradients.
        coefficients = ops.eye(num_tasks)
        for position in range(num_tasks - 1):
            visited = visits[:, position]  # (T, T)
            # g'_i . g_j for each row's visited task j, kept where negative.
            dots = ops.sum(
                (coefficients @ gramian) * visited, axis=1, keepdims=True
            )
            conflict = ops.cast(dots < 0.0, "float32")
            step = conflict * dots * (visited @ inverse_norms)
            coefficients = coefficients - step * visited
        return ops.sum(coefficients, axis=0), state

    def get_config(self):
        return {**super().get_config(), "shuffle": self.shuffle}
