from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_choice
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.gramian_utils import gradient_norms
from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights
from keras_mtl.src.api_export import keras_mtl_export

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@keras_mtl_export("keras_mtl.aggregators.MGDA")
class MGDA(Weighting):
    """Multiple-gradient descent: the minimum-norm point of the task gradients.

    `w* = argmin_{w in simplex} ||sum_i w_i s_i g_i||^2` and
    `d = sum_i w*_i g_i`, where `s_i` is the optional gradient normalisation
    of the original code (`"l2"`: `1/||g_i||`, `"loss"`: `1/L_i`, `"loss+"`:
    `1/(L_i ||g_i||)`, `"none"`: 1). As in the official implementation, the
    weights found on the normalised gradients multiply the raw task losses
    (LibMTL instead sums the normalised gradients). The direction is a convex
    combination of the task gradients (mean scale, not sum); when the
    gradients do not conflict it is the common descent direction of smallest
    norm, otherwise it is 0 (a Pareto stationary point).

    Solved in-graph, exactly, by Wolfe's minimum-norm-point algorithm (see
    `min_norm_weights`; about T + 1 iterations, at most `max_iters`), where
    the reference code takes Frank-Wolfe steps. Tasks with an all-zero gradient
    (for example no labels in the batch) get weight 0 and are left out of the
    problem. Cost: Gramian (T backward passes, `T x T` dot products).
    Deterministic.

    State keys: `solver_gap` (Frank-Wolfe duality gap of the last solve on the
    trace-normalised Gramian; near 0 means converged) and `solver_iterations`,
    both logged by `MultiTaskModel`; `weights`, the last solution, where the
    next solve starts (a warm start: when the active tasks do not change, the
    solve ends after one iteration).

    Args:
        normalization: one of `"none"` (default, as in LibMTL), `"l2"`,
            `"loss"`, `"loss+"`.
        max_iters: maximum number of solver iterations (the reference's
            Frank-Wolfe loop: 250).
        tolerance: stop when every task has `(G w)_t >= w^T G w - tolerance`
            (optimality; trace-normalised Gramian). The reference stops when
            the L1 change of the weights is below 1e-5.

    Example:

    >>> agg = keras_mtl.aggregators.MGDA()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])  # [0.0, 1.0, 1.0]

    Reference:
        Sener & Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018.
    """

    diagnostics = ("solver_gap", "solver_iterations")

    def __init__(
        self, normalization="none", max_iters=250, tolerance=1e-7, name=None
    ):
        super().__init__(name=name)
        self.normalization = check_choice(
            "normalization", normalization, NORMALIZATIONS
        )
        self.max_iters = check_count("max_iters", max_iters)
        self.tolerance = check_non_negative("tolerance", tolerance)

    def initial_state(self, num_tasks, num_params=None):
        return {
            "weights": ops.zeros((num_tasks,)),
            "solver_gap": ops.zeros(()),
            "solver_iterations": ops.zeros(()),
        }

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = ops.cast(gramian, "float32")
        squared_norms = ops.diagonal(gramian)
        norms = gradient_norms(gramian)
        if self.normalization in ("loss", "loss+") and losses is None:
            raise ValueError(
                f"MGDA(normalization={self.normalization!r}) needs the task "
                "losses. Received: losses=None"
            )
        if self.normalization == "l2":
            scale = ops.divide_no_nan(1.0, norms)
        elif self.normalization == "loss":
            scale = ops.divide_no_nan(1.0, ops.cast(losses, "float32"))
        elif self.normalization == "loss+":
            scale = ops.divide_no_nan(1.0, ops.cast(losses, "float32") * norms)
        else:
            scale = ops.ones((num_tasks,))
        scaled = gramian * scale[:, None] * scale[None, :]
        valid = ops.logical_and(squared_norms > 0.0, scale > 0.0)
        weights, gap, iterations = min_norm_weights(
            scaled, valid, self.max_iters, self.tolerance,
            start=state["weights"],
        )
        new_state = {
            "weights": ops.where(ops.isfinite(weights), weights, 0.0),
            "solver_gap": gap,
            "solver_iterations": ops.cast(iterations, "float32"),
        }
        return weights, new_state

    def get_config(self):
        return {
            **super().get_config(),
            "normalization": self.normalization,
            "max_iters": self.max_iters,
            "tolerance": self.tolerance,
        }
