from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.gramian_utils import gradient_norms
from keras_mtl.src.aggregators.task_order import visiting_order
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.GradVac")
class GradVac(Weighting):
    """Gradient vaccine: align task gradients towards target similarities.

    Keeps an EMA target cosine `phi_hat_ij` for each ordered pair of tasks.
    For each task `i`, starting from `g'_i = g_i`, the other tasks `j` are
    visited in a random order; with `phi_ij = cos(g'_i, g_j)`, if
    `phi_ij < phi_hat_ij`:

        g'_i <- g'_i + g_j ||g'_i|| (phi_hat_ij sqrt(1 - phi_ij^2)
                 - phi_ij sqrt(1 - phi_hat_ij^2))
                 / (||g_j|| sqrt(1 - phi_hat_ij^2))

    and in every case `phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij`.
    The direction is the sum `sum_i g'_i` (LibMTL). Whole-model granularity
    (LibMTL's `group_type=0`, TorchJD), computed on the Gramian. Cost:
    Gramian. Randomised (visiting order), seeded through `seed`.

    State keys: `targets`, the `(T, T)` EMA target cosines (start at 0).

    Args:
        beta: EMA rate of the target cosines (reference: 0.5).
        eps: numerical guard on norms.

    Example:

    >>> agg = keras_mtl.aggregators.GradVac()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Wang et al., "Gradient Vaccine: Investigating and Improving
        Multi-task Optimization in Massively Multilingual Models",
        ICLR 2021.
    """

    def __init__(self, beta=0.5, eps=1e-8, name=None):
        super().__init__(name=name)
        self.beta = check_fraction("beta", beta)
        self.eps = check_positive("eps", eps)

    def initial_state(self, num_tasks, num_params=None):
        return {"targets": ops.zeros((num_tasks, num_tasks))}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = ops.cast(gramian, "float32")
        targets = ops.cast(state["targets"], "float32")
        norms = gradient_norms(gramian)[:, None]
        # `visits[i, k]` is the one-hot of the task row i visits k-th; the
        # loop uses slices, columns and operators (cheap on eager PyTorch).
        visits = visiting_order(num_tasks, seed)
        coefficients = ops.eye(num_tasks)
        for position in range(num_tasks - 1):
            visited = visits[:, position]  # (T, T)
            products = coefficients @ gramian
            dots = ops.sum(products * visited, axis=1, keepdims=True)
            own_norm = ops.sqrt(ops.relu(
                ops.sum(coefficients * products, axis=1, keepdims=True)))
            other_norm = visited @ norms
            cosine = dots / (own_norm * other_norm + self.eps)
            target = ops.sum(visited * targets, axis=1, keepdims=True)
            below = ops.cast(cosine < target, "float32") * ops.cast(
                other_norm > 0.0, "float32")
            sine = ops.sqrt(ops.relu(1.0 - cosine**2))
            target_sine = ops.sqrt(ops.relu(1.0 - target**2))
            step = own_norm * (target * sine - cosine * target_sine) / (
                other_norm * target_sine + self.eps)
            coefficients = coefficients + below * step * visited
            targets = targets + self.beta * visited * (cosine - targets)
        return ops.sum(coefficients, axis=0), {"targets": targets}

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "eps": self.eps}
