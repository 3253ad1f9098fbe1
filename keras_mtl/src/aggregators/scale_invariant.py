from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.ScaleInvariant")
class ScaleInvariant(Weighting):
    """Scale-invariant loss: minimise `sum_i log L_i`.

    Gradient weights `w_i = 1 / L_i`, so multiplying a loss by a constant does
    not change the update (the loss-balancing half of DB-MTL). Tasks whose
    loss is 0 get weight 0. Losses must be >= 0. Cost: loss-only.
    Deterministic.

    Args:
        eps: added to each loss before the logarithm.

    Example:

    >>> agg = keras_mtl.aggregators.ScaleInvariant()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022
        (scale-invariant baseline).
    """

    requires_jacobian = False

    def __init__(self, eps=0.0, name=None):
        super().__init__(name=name)
        self.eps = check_non_negative("eps", eps)

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        losses = require_losses("ScaleInvariant", losses)
        present = losses > 0.0
        safe = ops.where(present, losses, 1.0)
        return ops.where(present, 1.0 / (safe + self.eps), 0.0), state

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}
