from keras import ops

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aggregator import jacobian_and_state
from keras_mtl.src.aggregators.aggregator import seed_from
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend import traceable_ops


@keras_mtl_export("keras_mtl.aggregators.GradDrop")
class GradDrop(Aggregator):
    """Gradient sign dropout (GradDrop).

    For every coordinate, the sign purity
    `P = (1 + sum_i g_i / sum_i |g_i|) / 2` and a draw `U ~ Uniform(0, 1)`:
    positive task components are kept where `P > U` and negative ones where
    `P < U`; `leak` lets that fraction of the dropped components through. The
    direction is the sum of the kept components (sum convention, as TorchJD on
    the Jacobian). Not a weighted sum of the task gradients: the logged weight
    of task `i` is the fraction of its squared gradient norm that is kept.
    Cost: full Jacobian. Randomised, seeded through `seed`.

    Args:
        leak: fraction in `[0, 1]` of the dropped components kept anyway.

    Example:

    >>> agg = keras_mtl.aggregators.GradDrop()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
        Gradient Sign Dropout", NeurIPS 2020.
    """

    def __init__(self, leak=0.0, name=None):
        super().__init__(name=name)
        self.leak = check_fraction("leak", leak)

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        jacobian, state = jacobian_and_state(self, jacobian, state)
        # P > U, with the purity P = (1 + total / magnitude) / 2 and
        # U ~ Uniform(0, 1), is total > (2U - 1) * magnitude: no division.
        # Sums over tasks as products with ones: XLA's CPU reduction over the
        # leading axis is 10-80x slower than this matrix product.
        ones = ops.ones((1, ops.shape(jacobian)[0]))
        total = ops.matmul(ones, jacobian)[0]
        magnitude = ops.matmul(ones, ops.abs(jacobian))[0]
        draw = traceable_ops.uniform(
            ops.shape(total), minval=-1.0, maxval=1.0, seed=seed_from(seed))
        # The surviving sign of every coordinate (0 drops both); the kept
        # part of task i is `sign * relu(g_i * sign)`.
        sign = ops.sign(total - draw * magnitude)
        agreeing = ops.relu(jacobian * sign)
        kept_norms = ops.norm(agreeing, axis=1) ** 2
        norms = ops.norm(jacobian, axis=1) ** 2
        direction = (1.0 - self.leak) * sign * ops.matmul(ones, agreeing)[0]
        if self.leak:
            direction = direction + self.leak * total
            kept_norms = (1.0 - self.leak) * kept_norms + self.leak * norms
        weights = ops.divide_no_nan(kept_norms, norms)
        return direction, weights, state

    def get_config(self):
        return {**super().get_config(), "leak": self.leak}
