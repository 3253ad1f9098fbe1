from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.GeometricMeanLoss")
class GeometricMeanLoss(Weighting):
    """Geometric loss strategy (GLS): minimise `(prod_i L_i)^(1/T)`.

    Its gradient is `sum_i w_i grad L_i` with
    `w_i = (prod_j L_j)^(1/T) / (T L_i)`, computed in log space. Tasks whose
    loss is 0 (for example no labels in the batch) get weight 0 and are left
    out of the product. Losses must be >= 0. Cost: loss-only. Deterministic.

    Example:

    >>> agg = keras_mtl.aggregators.GeometricMeanLoss()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and
        Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.
    """

    requires_jacobian = False

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        losses = require_losses("GeometricMeanLoss", losses)
        present = losses > 0.0
        count = ops.sum(ops.cast(present, "float32"))
        logs = ops.where(present, ops.log(ops.where(present, losses, 1.0)), 0.0)
        geometric = ops.exp(ops.divide_no_nan(ops.sum(logs), count))
        weights = geometric / (
            ops.maximum(count, 1.0) * ops.where(present, losses, 1.0)
        )
        return ops.where(present, weights, 0.0), state
