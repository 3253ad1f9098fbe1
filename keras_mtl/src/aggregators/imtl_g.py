from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.gramian_utils import divide_by_trace
from keras_mtl.src.aggregators.gramian_utils import gradient_norms
from keras_mtl.src.aggregators.gramian_utils import psd_pinv
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.IMTLG")
class IMTLG(Weighting):
    """Impartial multi-task learning, gradient part (IMTL-G).

    Finds the combination `d = sum_i w_i g_i`, `sum_i w_i = 1`, whose
    projections onto every unit task gradient `u_i = g_i / ||g_i||` are equal.
    Computed from the Gramian as in TorchJD: `v = pinv(G) sqrt(diag G)`,
    `w = v / sum(v)`, which also handles linearly dependent gradients (the
    paper's closed form inverts a matrix that is then singular). Weights are
    0 when `sum(v) <= 0` (all gradients zero). Cost: Gramian. Deterministic.

    Example:

    >>> agg = keras_mtl.aggregators.IMTLG()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> # [0.0767, 1.0, 1.0]

    Reference:
        Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = divide_by_trace(ops.cast(gramian, "float32"))
        v = ops.matmul(psd_pinv(gramian), gradient_norms(gramian))
        total = ops.sum(v)
        positive = total > 1e-12
        weights = ops.where(positive, v / ops.where(positive, total, 1.0), 0.0)
        return weights, state
