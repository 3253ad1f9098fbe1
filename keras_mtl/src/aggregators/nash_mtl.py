from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.fair_weights_solver import fair_weights
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.NashMTL")
class NashMTL(Weighting):
    """Nash-MTL: the Nash bargaining solution of the tasks.

    Weights `w > 0` with `G_n w = 1 / w` for the Gramian normalised by its
    Frobenius norm, `G_n = G / ||G||_F` (as the official code), and
    `d = sum_i w_i g_i`. The official code solves a sequence of convex
    programs with cvxpy + ECOS and silently falls back to equal weights when
    ECOS is missing; here the same condition is solved exactly on the device
    by damped Newton steps, and the residual is logged (`solver_residual`).
    As in the reference, the weights are recomputed every
    `update_weights_every` steps (reused in between) and the direction is
    limited to `max_norm`, by scaling the weights (TorchJD's way) instead of
    clipping the gradient. Zero gradients get weight 0. Cost: Gramian.
    Deterministic.

    State keys: `weights` (last weights, where the next solve starts: a warm
    start), `step`, `solver_residual`.

    Args:
        update_weights_every: recompute the weights every this many steps.
        max_iters: maximum number of Newton iterations (reference: 20).
        max_norm: maximum norm of the direction; `None` disables it.

    Example:

    >>> agg = keras_mtl.aggregators.NashMTL()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
    """

    diagnostics = ("solver_residual",)

    def __init__(self, update_weights_every=1, max_iters=20, max_norm=1.0,
                 name=None):
        super().__init__(name=name)
        self.update_weights_every = check_count(
            "update_weights_every", update_weights_every
        )
        self.max_iters = check_count("max_iters", max_iters)
        self.max_norm = None if max_norm is None else check_positive(
            "max_norm", max_norm
        )

    def initial_state(self, num_tasks, num_params=None):
        return {
            "weights": ops.zeros((num_tasks,)),
            "step": ops.zeros(()),
            "solver_residual": ops.zeros(()),
        }

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = ops.cast(gramian, "float32")
        frobenius = ops.sqrt(ops.sum(gramian * gramian))
        normalized = gramian / ops.where(frobenius > 0, frobenius, 1.0)
        fresh, error = fair_weights(
            normalized, 1.0, self.max_iters, initial=state["weights"])
        update = ops.mod(state["step"], self.update_weights_every) == 0
        weights = ops.where(update, fresh, state["weights"])
        direction_norm = ops.sqrt(
            ops.maximum(ops.sum(weights * ops.matmul(gramian, weights)), 0.0)
        )
        used = weights
        if self.max_norm is not None:
            used = weights * ops.minimum(
                1.0, ops.divide_no_nan(self.max_norm, direction_norm)
            )
            used = ops.where(direction_norm > 0, used, weights)
        new_state = {
            "weights": weights,
            "step": state["step"] + 1.0,
            "solver_residual": ops.where(
                update, error, state["solver_residual"]
            ),
        }
        return used, new_state

    def get_config(self):
        return {
            **super().get_config(),
            "update_weights_every": self.update_weights_every,
            "max_iters": self.max_iters,
            "max_norm": self.max_norm,
        }
