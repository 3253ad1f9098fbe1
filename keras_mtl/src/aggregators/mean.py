from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.Mean")
class Mean(Weighting):
    """Mean of the task gradients.

    `d = (1/T) sum_i g_i`, the gradient of the mean task loss. Cost:
    loss-only (one backward pass). Stateless, deterministic.

    Example:

    >>> agg = keras_mtl.aggregators.Mean()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])  # [1.0, 1.0, 1.0]
    """

    requires_jacobian = False

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        return ops.full((num_tasks,), 1.0 / num_tasks), state
