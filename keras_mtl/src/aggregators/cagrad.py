import math

from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_choice
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.gramian_utils import cosine_gramian
from keras_mtl.src.aggregators.gramian_utils import zero_if_non_finite
from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights
from keras_mtl.src.api_export import keras_mtl_export

RESCALES = (0, 1, 2)


@keras_mtl_export("keras_mtl.aggregators.CAGrad")
class CAGrad(Weighting):
    """Conflict-averse gradient descent (CAGrad).

    With `g_0` the mean gradient and `g_w = sum_i w_i g_i`, solve the dual
    `min_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`, then
    `d = g_0 + (c ||g_0|| / ||g_w||) g_w`, divided by `1 + c^2`
    (`rescale=1`, LibMTL's default), `1 + c` (`rescale=2`) or not at all
    (`rescale=0`, TorchJD). Defaults follow LibMTL and the official
    multi-task code (`c=0.5`); the Nash-MTL and FAMO experiments use
    `c=0.4` and multiply by T. The dual is solved exactly on the device by an
    active-set method (`simplex_minimizer`, a few iterations per task) on the
    cosine matrix of the gradients, so it stays accurate in float32 when
    their norms span many orders of magnitude. LibMTL and the official code
    call SciPy's SLSQP on the host instead; TorchJD's version returns 0 on
    such inputs. Mean scale. Cost: Gramian. Deterministic.

    State keys: `solver_gap`, the largest relative violation of the dual's
    optimality conditions (0 at the optimum), logged as `cagrad_solver_gap`.

    Args:
        c: the conflict-aversion radius, >= 0 (`c = 0` is the mean).
        rescale: 0, 1 or 2, see above.
        max_iters: maximum number of iterations of the dual solver.
        tolerance: optimality tolerance of the dual solver.

    Example:

    >>> agg = keras_mtl.aggregators.CAGrad(c=0.5, rescale=0)
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> # [0.1835, 1.2041, 1.2041]

    Reference:
        Liu et al., "Conflict-Averse Gradient Descent for Multi-task
        Learning", NeurIPS 2021.
    """

    def __init__(self, c=0.5, rescale=1, max_iters=30, tolerance=1e-4,
                 name=None):
        super().__init__(name=name)
        self.c = check_non_negative("c", c)
        self.rescale = check_choice("rescale", rescale, RESCALES)
        self.max_iters = check_count("max_iters", max_iters)
        self.tolerance = check_non_negative("tolerance", tolerance)

    diagnostics = ("solver_gap",)

    def initial_state(self, num_tasks, num_params=None):
        return {"solver_gap": ops.zeros(())}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        finite, gramian = zero_if_non_finite(ops.cast(gramian, "float32"))
        mean = ops.full((num_tasks,), 1.0 / num_tasks)
        if self.c == 0.0 or num_tasks == 1:
            return mean, {**state, "solver_gap": ops.zeros(())}
        w, combined_norm, radius, gap = conflict_averse_dual(
            gramian, self.c, self.max_iters, self.tolerance)
        weights = mean + ops.divide_no_nan(radius, combined_norm) * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        weights = ops.where(finite, weights, float("nan"))
        return weights, {**state, "solver_gap": gap}

    def get_config(self):
        return {
            **super().get_config(),
            "c": self.c,
            "rescale": self.rescale,
            "max_iters": self.max_iters,
            "tolerance": self.tolerance,
        }


def conflict_averse_dual(gramian, c, max_iters=100, tolerance=1e-6):
    """Solves CAGrad's dual `min_{w in simplex} b . w + r ||g_w||`.

    `b = G 1 / T` and `r = c ||g_0||`. Writing `||g_w|| = min_t (t / 2 +
    ||g_w||^2 / (2 t))` turns the dual, for a fixed `t`, into the
    minimum-norm point of the shifted gradients `g_i + (t / r) g_0` (solved
    exactly by `min_norm_weights`, on their own cosine matrix); the optimal
    `t` is the root of `log t - log ||g_w(t)||`, which is increasing in `t`
    and bracketed by `[1e-7 max ||g_i||, max ||g_i||]`. The root is found
    by the Illinois variant of regula falsi in `log t`, at most `max_iters`
    evaluations.

    Returns:
        `(w, norm, radius, residual)`: the dual weights, `||g_w||`,
        `r = c ||g_0||`, and the last `|log t - log ||g_w(t)|||` (0 at the
        optimum).
    """
    num_tasks = gramian.shape[0]
    mean = ops.full((num_tasks,), 1.0 / num_tasks)
    linear = ops.matmul(gramian, mean)
    mean_norm_sq = ops.relu(ops.sum(mean * linear))
    # A zero mean gradient has no radius (the direction is then 0): any
    # positive stand-in keeps the arithmetic finite.
    radius = c * ops.sqrt(mean_norm_sq)
    safe_radius = ops.where(radius > 0.0, radius, 1.0)
    _, norms, cosines = cosine_gramian(gramian)

    def evaluate(log_t):
        shift = ops.exp(log_t) / safe_radius
        shifted = (gramian + shift * (linear[:, None] + linear[None, :])
                   + shift * shift * mean_norm_sq)
        w, _, _ = min_norm_weights(shifted, norms > 0.0)
        scaled = w * norms
        norm = ops.sqrt(ops.relu(ops.sum(scaled * ops.matmul(cosines, scaled))))
        return log_t - ops.log(ops.maximum(norm, 1e-30)), w, norm

    high = ops.log(ops.maximum(ops.max(norms), 1e-30))
    low = high + ops.log(1e-7)
    f_low, w_low, n_low = evaluate(low)
    if c < 1.0:
        # When the gradients are Pareto-stationary, exact arithmetic gives
        # log t - log ||g_w(t)|| = log c < 0 for small t, but float32 cannot
        # resolve g_w(t) = -(t / r) g_0 there (it comes from cancellation):
        # keep the bracket's lower end negative.
        f_low = ops.minimum(f_low, math.log(c))
    f_high, _, _ = evaluate(high)

    def cond(step, low, f_low, high, f_high, side, w, norm, value):
        return (step < max_iters) & (abs(value) > tolerance)

    def body(step, low, f_low, high, f_high, side, w, norm, value):
        u = (low * f_high - high * f_low) / (f_high - f_low)
        value, w, norm = evaluate(u)
        upper = value > 0.0
        # Illinois: halve the kept end's value when it is kept twice.
        f_low_kept = ops.where(side > 0.5, 0.5 * f_low, f_low)
        f_high_kept = ops.where(side < -0.5, 0.5 * f_high, f_high)
        return (step + 1,
                ops.where(upper, low, u),
                ops.where(upper, f_low_kept, value),
                ops.where(upper, u, high),
                ops.where(upper, value, f_high_kept),
                ops.where(upper, 1.0, -1.0),
                w, norm, value)

    # A root below the bracket (Pareto-stationary gradients) keeps w(low).
    start_value = ops.where(f_low >= 0.0, 0.0, f_low)
    result = ops.while_loop(
        cond, body,
        (ops.convert_to_tensor(0, "int32"), low, f_low, high, f_high,
         ops.zeros(()), w_low, n_low, start_value))
    return result[6], result[7], radius, abs(result[8])
