from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.gramian_utils import gradient_norms
from keras_mtl.src.aggregators.gramian_utils import psd_pinv
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.ConFIG")
class ConFIG(Weighting):
    """Conflict-free inverse gradients (ConFIG).

    With `G_hat` the unit-normalised task gradients, the direction is
    `u = normalize(pinv(G_hat) 1)` scaled by `sum_i g_i . u`:
    `d = (sum_i g_i . u) u`. `d` has the same cosine with every task gradient.
    Computed in weight space from the Gramian (`pinv(G_hat) 1 = J^T N a` with
    `N = diag(1/||g_i||)` and `a = pinv(N G N) 1`). Zero gradients get
    weight 0. Cost: Gramian. Deterministic.

    Example:

    >>> agg = keras_mtl.aggregators.ConFIG()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Liu et al., "ConFIG: Towards Conflict-free Training of Physics
        Informed Neural Networks", ICLR 2025.
    """

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = ops.cast(gramian, "float32")
        norms = gradient_norms(gramian)
        inverse_norms = ops.divide_no_nan(1.0, norms)
        unit_gramian = gramian * inverse_norms[:, None] * inverse_norms[None, :]
        a = ops.matmul(psd_pinv(unit_gramian), ops.cast(norms > 0, "float32"))
        b = inverse_norms * a
        squared_norm = ops.sum(b * ops.matmul(gramian, b))
        projection = ops.sum(ops.matmul(gramian, b))
        return b * ops.divide_no_nan(projection, squared_norm), state
