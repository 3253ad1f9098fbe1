from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.gramian_utils import cosine_gramian
from keras_mtl.src.aggregators.gramian_utils import psd_pinv
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.IMTLG")
class IMTLG(Weighting):
    """Impartial multi-task learning, gradient part (IMTL-G).

    Finds the combination `d = sum_i w_i g_i`, `sum_i w_i = 1`, whose
    projections onto every unit task gradient `u_i = g_i / ||g_i||` are equal.
    With `C` the Gramian of the unit gradients, `z = pinv(C) 1` gives
    `u_i . (sum_j z_j u_j) = 1` for every task, so `w = (z / ||g||) /
    sum(z / ||g||)`; the pseudo-inverse also handles linearly dependent
    gradients (the paper's closed form inverts a matrix that is then
    singular). TorchJD computes the same `pinv(G) sqrt(diag G)` on the
    Gramian itself, which loses float32 accuracy when the gradients' norms
    differ by orders of magnitude; `C` does not depend on them. Weights are
    0 when `sum(v) <= 0` (all gradients zero). Cost: Gramian. Deterministic.

    Example:

    >>> agg = keras_mtl.aggregators.IMTLG()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> # [0.0767, 1.0, 1.0]

    Reference:
        Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        finite, norms, cosines = cosine_gramian(gramian)
        valid = ops.cast(norms > 0.0, "float32")
        z = ops.matmul(psd_pinv(cosines * valid[:, None] * valid[None, :]),
                       valid)
        v = ops.divide_no_nan(z, norms)
        total = ops.sum(v)
        positive = total > 0.0
        weights = ops.where(positive, v / ops.where(positive, total, 1.0), 0.0)
        return ops.where(finite, weights, float("nan")), state
