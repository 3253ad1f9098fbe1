from keras import ops

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aggregator import check_num_params
from keras_mtl.src.aggregators.aggregator import jacobian_and_state
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.DBMTL")
class DBMTL(Aggregator):
    """Dual-balancing multi-task learning (DB-MTL).

    Loss balancing: each task is trained on `log L_i`, whose gradient is
    `g_i / (L_i + eps)`. Gradient balancing: an exponential moving average
    of those gradients, `m_i <- beta_t m_i + (1 - beta_t) g_i / (L_i + eps)`
    with `beta_t = beta / t^beta_sigma` (starting from `m_i = 0`, no bias
    correction, as in LibMTL), then every task is rescaled to the largest
    norm: `d = sum_i (max_j ||m_j|| / (||m_i|| + eps)) m_i`. The logged
    weight of task `i` is that scale `max_j ||m_j|| / (||m_i|| + eps)`.
    Losses must be positive (the log transform); a task with no label in
    the batch (loss 0, gradient 0) simply adds nothing to its average.
    Cost: full Jacobian, state O(T * num_params); parameter gradients only.
    Deterministic.

    State keys: `average`, the `(T, num_params)` moving averages, and `step`.

    Args:
        beta: moving-average rate (reference: 0.9).
        beta_sigma: decay exponent of `beta` over steps (reference: 0).
        eps: constant added to losses and norms.

    Example:

    >>> agg = keras_mtl.aggregators.DBMTL()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Lin et al., "Dual-Balancing for Multi-Task Learning", 2023
        (arXiv:2308.12029); defaults of LibMTL's `DB_MTL`.
    """

    tracks_gradients = True

    def __init__(self, beta=0.9, beta_sigma=0.0, eps=1e-8, name=None):
        super().__init__(name=name)
        self.beta = check_fraction("beta", beta, include_one=False)
        self.beta_sigma = check_non_negative("beta_sigma", beta_sigma)
        self.eps = check_positive("eps", eps)

    def initial_state(self, num_tasks, num_params=None):
        num_params = check_num_params("DBMTL", num_params)
        return {
            "average": ops.zeros((num_tasks, num_params)),
            "step": ops.zeros(()),
        }

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        jacobian, state = jacobian_and_state(self, jacobian, state)
        losses = require_losses("DBMTL", losses)
        step = state["step"] + 1.0
        beta = self.beta / ops.power(step, self.beta_sigma)
        shifted = ops.maximum(losses, 0.0) + self.eps
        log_gradients = jacobian / shifted[:, None]
        average = beta * state["average"] + (1.0 - beta) * log_gradients
        norms = ops.sqrt(ops.sum(average * average, axis=1))
        scales = ops.amax(norms) / (norms + self.eps)
        direction = ops.matmul(scales, average)
        return direction, scales, {"average": average, "step": step}

    def get_config(self):
        return {
            **super().get_config(),
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
            "eps": self.eps,
        }
