from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.Sum")
class Sum(Weighting):
    """Plain sum of the task gradients (linear scalarisation).

    `d = sum_i g_i`: the gradient of `sum_i L_i`, i.e. what Keras computes for
    a multi-output model with unit loss weights. Cost: loss-only (one
    backward pass inside `MultiTaskModel`). Stateless, deterministic.

    Example:

    >>> agg = keras_mtl.aggregators.Sum()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])  # [2.0, 2.0, 2.0]
    """

    requires_jacobian = False

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        return ops.ones((num_tasks,)), state
