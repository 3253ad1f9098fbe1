import math

from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.Constant")
class Constant(Weighting):
    """Fixed, user-chosen task weights.

    `d = sum_i w_i g_i`, the gradient of `sum_i w_i L_i` (what
    `compile(loss_weights=...)` does in plain Keras). Equal and well-tuned
    fixed weights are strong baselines for every balancing method. Cost:
    loss-only (one backward pass). Stateless, deterministic.

    Args:
        weights: sequence of finite floats, one per task, in the order of the
            model's tasks.

    Example:

    >>> agg = keras_mtl.aggregators.Constant([1.0, 0.5])
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])  # [-1.0, 1.5, 1.5]
    """

    requires_jacobian = False

    def __init__(self, weights, name=None):
        super().__init__(name=name)
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ValueError(
                "`weights` must be a sequence of floats. "
                f"Received: weights={weights!r}"
            ) from None
        if not weights or not all(math.isfinite(w) for w in weights):
            raise ValueError(
                "`weights` must be a non-empty sequence of finite floats. "
                f"Received: weights={weights}"
            )
        self.weights = weights

    def check_tasks(self, num_tasks):
        if num_tasks != len(self.weights):
            raise ValueError(
                f"Constant has {len(self.weights)} weights but there are "
                f"{num_tasks} tasks. Received: weights={self.weights}"
            )

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        self.check_tasks(num_tasks)
        return ops.convert_to_tensor(self.weights, "float32"), state

    def get_config(self):
        return {**super().get_config(), "weights": self.weights}
