import math

from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_choice
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.gramian_utils import cosine_gramian
from keras_mtl.src.aggregators.gramian_utils import zero_if_non_finite
from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights
from keras_mtl.src.aggregators.solver_ops import one_hot
from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend import traceable_ops

RESCALES = (0, 1, 2)
# Squared norms below this fraction of the terms they are summed from are
# cancellation noise in float32.
_CANCELLED = 1e-6
# Ridge on the cosine matrix (unit diagonal) of a support in
# `active_set_dual`: far above float32 rounding, so the solve stays
# invertible for linearly dependent gradients; the certificate is checked
# without it.
_RIDGE = 1e-5


@keras_mtl_export("keras_mtl.aggregators.CAGrad")
class CAGrad(Weighting):
    """Conflict-averse gradient descent (CAGrad).

    With `g_0` the mean gradient and `g_w = sum_i w_i g_i`, solve the dual
    `min_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`, then
    `d = g_0 + (c ||g_0|| / ||g_w||) g_w`, divided by `1 + c^2`
    (`rescale=1`, LibMTL's default), `1 + c` (`rescale=2`) or not at all
    (`rescale=0`, TorchJD). Defaults follow LibMTL and the official
    multi-task code (`c=0.5`); the Nash-MTL and FAMO experiments use
    `c=0.4` and multiply by T. The dual is solved exactly on the device
    (`conflict_averse_dual`: in closed form on the previous step's support
    when its optimality conditions certify the point, otherwise by a root
    search over minimum-norm problems, each solved by Wolfe's active-set
    method), on the cosine matrix of the gradients, so it stays accurate in
    float32 when their norms span many orders of magnitude. LibMTL and the
    official code
    call SciPy's SLSQP on the host instead; TorchJD's version returns 0 on
    such inputs. Mean scale. Cost: Gramian. Deterministic.

    State keys: `solver_gap`, the largest relative violation of the dual's
    optimality conditions (0 at the optimum), logged as `cagrad_solver_gap`;
    `dual_weights` and `dual_root`, the last dual solution and its `log t`
    (relative to the largest gradient norm), where the next step starts (a
    warm start: when the gradients change little, one closed-form solve on
    the last support).

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
        return {"solver_gap": ops.zeros(()),
                "dual_weights": ops.zeros((num_tasks,)),
                "dual_root": ops.zeros(())}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        finite, gramian = zero_if_non_finite(ops.cast(gramian, "float32"))
        mean = ops.full((num_tasks,), 1.0 / num_tasks)
        if self.c == 0.0 or num_tasks == 1:
            return mean, {**state, "solver_gap": ops.zeros(())}
        w, combined_norm, radius, gap, root = conflict_averse_dual(
            gramian, self.c, self.max_iters, self.tolerance,
            start=state["dual_weights"], guess=state["dual_root"])
        weights = mean + ops.divide_no_nan(radius, combined_norm) * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        weights = ops.where(finite, weights, float("nan"))
        solved = ops.all(ops.isfinite(w))
        return weights, {**state, "solver_gap": gap,
                         "dual_weights": ops.where(solved, w, 0.0),
                         "dual_root": ops.where(solved, root, 0.0)}

    def get_config(self):
        return {
            **super().get_config(),
            "c": self.c,
            "rescale": self.rescale,
            "max_iters": self.max_iters,
            "tolerance": self.tolerance,
        }


def conflict_averse_dual(gramian, c, max_iters=100, tolerance=1e-6,
                         start=None, guess=None):
    """Solves CAGrad's dual `min_{w in simplex} b . w + r ||g_w||`.

    `b = G 1 / T` and `r = c ||g_0||`. First `active_set_dual` tries up to
    `T + 2` supports (and at most `max_iters`), from the support of `start`
    or, without one, from the vertex of smallest dual value; a point it
    certifies is returned (a warm start is usually certified on the first
    or second support). Otherwise the root search below runs.

    Writing `||g_w|| = min_t (t / 2 +
    ||g_w||^2 / (2 t))` turns the dual, for a fixed `t`, into the
    minimum-norm point of the shifted gradients `g_i + (t / r) g_0` (solved
    exactly by `min_norm_weights`, on their own cosine matrix); the optimal
    `t` is the root of `f(u) = u - log ||g_w(e^u)||`, which is increasing in
    `u = log t` and bracketed by `[log(1e-7 m), log m]`, `m = max ||g_i||`.

    The root search starts at `guess` (a `u - log m`, for example the
    previous step's root; `u = log ||g_0||` without a `start` that has
    weight, such as an initial state of zeros), takes a fixed-point step
    `u <- log ||g_w(e^u)||` and then secant steps, each kept inside the
    bracket of the points evaluated so far. A step that leaves the bracket
    evaluates its end the first time and bisects after that; a step after
    one that did not halve `|f|` bisects too. It takes at most `max_iters`
    evaluations, usually two or three when warm, and also ends when the
    bracket is narrower than `tolerance` (rounding can turn a steep root
    into a jump of `f`). Each solve starts from the previous one's weights,
    the first from `start` (optional `(T,)` simplex weights).

    Returns:
        `(w, norm, radius, residual, root)`: the dual weights, `||g_w||`,
        `r = c ||g_0||`, the certificate's gap or else the last `|f(u)|` or
        the bracket's width, whichever is smaller (0 at the optimum), and
        the root as `u - log m` (the next step's `guess`).
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
    high = ops.log(ops.maximum(ops.amax(norms), 1e-30))

    # Without a start: the vertex of smallest dual value, b_i + r ||g_i||.
    support = one_hot(ops.argmin(linear + radius * norms),
                      ops.arange(num_tasks))
    if start is not None:
        given = ops.cast(start > 0.0, "float32")
        support = ops.where(ops.sum(given) > 0.0, given, support)
    w, norm, gap, certified = active_set_dual(
        norms, cosines, ops.divide_no_nan(linear, norms),
        ops.sqrt(mean_norm_sq), radius, support, tolerance,
        min(max_iters, num_tasks + 2))

    def search():
        return _root_search(gramian, linear, mean_norm_sq, safe_radius,
                            norms, cosines, high, c, max_iters, tolerance,
                            start, guess)

    w, norm, gap, root = traceable_ops.cond(
        certified,
        lambda: (w, norm, gap, ops.log(ops.maximum(norm, 1e-30)) - high),
        search)
    return w, norm, radius, gap, root


def active_set_dual(norms, cosines, projections, mean_norm, radius, support,
                    tolerance, max_iters):
    """CAGrad's dual by an active-set search over closed-form solutions.

    On a support `S`, the optimality conditions of `min_{w in simplex}
    b . w + r ||g_w||` are `b_i + r (G w)_i / ||g_w|| = mu` for `i` in `S`
    and `>= mu` outside. Scaled by `1 / ||g_i||` (`z = N w`, `C` the cosine
    matrix, `p_i = u_i . g_0` the `projections`, `a = 1 / norms`) they read
    `p + (r / q) C z = mu a`, with `q = ||g_w||`. Hence `z` is proportional
    to `y = mu C_SS^-1 a_S - C_SS^-1 p_S`, and `q^2 = z^T C z` with
    `a . z = 1` is a quadratic in `mu`. A point is certified when every
    task meets its condition within `tolerance` (relative to `||g_0|| +
    r`), `z >= 0` and `q > 0`; the problem is convex, so a certified point
    is the optimum. Otherwise the task of most negative weight leaves the
    support or, if none, every task outside that violates its condition
    enters it, for at most `max_iters` supports. Starting from the previous
    step's support, the first is usually certified.

    Returns:
        `(w, q, gap, certified)`: the weights, `||g_w||`, the largest
        violation of the conditions and whether the point is certified.
    """
    num_tasks = norms.shape[0]
    eye = ops.eye(num_tasks)
    positions = ops.arange(num_tasks)
    inverse = ops.divide_no_nan(1.0, norms)
    scale = ops.maximum(mean_norm + radius, 1e-30)
    usable = ops.all(norms > 0.0) & (radius > 0.0)

    def attempt(support):
        a, p = inverse * support, projections * support
        block = ((cosines + _RIDGE * eye) * support[:, None]
                 * support[None, :] + eye * (1.0 - support))
        # `block` is symmetric. Solving with its transpose keeps XLA from
        # giving the Gramian's matmul LAPACK's column-major layout (4 ms
        # more per step at T = 3 on JAX's CPU backend, measured).
        solved = traceable_ops.solve(ops.transpose(block),
                                     ops.stack([a, p], axis=1))
        alpha, beta = solved[:, 0], solved[:, 1]
        aa, ab = ops.sum(a * alpha), ops.sum(a * beta)
        pb = ops.sum(p * beta)
        mu = ops.divide_no_nan(
            ab + ops.sqrt(ops.relu(ab * ab - aa * (pb - radius * radius))),
            aa)
        y = mu * alpha - beta
        z = ops.divide_no_nan(y, ops.sum(a * y))
        cz = ops.matmul(cosines, z)
        q = ops.sqrt(ops.relu(ops.sum(z * cz)))
        slack = (projections + ops.divide_no_nan(radius, q) * cz
                 - mu * inverse) / scale
        negative = -z / ops.maximum(ops.amax(z), 1e-30)
        outside = ops.where(support > 0.0, 0.0, -slack)
        gap = ops.amax(ops.maximum(
            ops.where(support > 0.0, abs(slack), outside), negative))
        gap = ops.where(ops.isfinite(gap), gap, float("inf"))
        certified = (gap <= tolerance) & (q > 0.0) & usable
        leaving = ops.amax(negative) > tolerance
        entering = ops.amax(outside) > tolerance
        moving = ~certified & usable & (leaving | entering)
        following = ops.where(
            leaving, support - one_hot(ops.argmax(negative), positions),
            ops.where(entering,
                      ops.maximum(support, ops.cast(outside > tolerance,
                                                    "float32")),
                      support))
        return (following, ops.where(certified, z * inverse, 0.0), q, gap,
                certified, moving)

    def cond(step, support, w, q, gap, certified, moving):
        return (step < max_iters) & moving

    def body(step, support, w, q, gap, certified, moving):
        return (step + 1, *attempt(support))

    result = traceable_ops.while_loop(
        cond, body, (ops.convert_to_tensor(1, "int32"), *attempt(support)))
    return result[2:6]


def _root_search(gramian, linear, mean_norm_sq, safe_radius, norms, cosines,
                 high, c, max_iters, tolerance, start, guess):
    """The root search of `conflict_averse_dual` (see there)."""
    num_tasks = gramian.shape[0]
    low = high + math.log(1e-7)
    positions = ops.arange(num_tasks)

    def evaluate(log_t, start):
        shift = ops.exp(log_t) / safe_radius
        shifted = (gramian + shift * (linear[:, None] + linear[None, :])
                   + shift * shift * mean_norm_sq)
        w, _, _ = min_norm_weights(shifted, norms > 0.0, start=start)
        # A shifted gradient that cancels to rounding noise (g_i parallel
        # to -g_0, at t = r ||g_i|| / ||g_0||) is 0: it is the minimum-norm
        # point, which the solver cannot tell from noise.
        magnitude = (ops.diagonal(gramian) + 2.0 * shift * abs(linear)
                     + shift * shift * mean_norm_sq)
        vanishing = ((ops.diagonal(shifted) <= _CANCELLED * magnitude)
                     & (norms > 0.0))
        w = ops.where(ops.any(vanishing),
                      one_hot(ops.argmax(ops.cast(vanishing, "float32")),
                              positions),
                      w)
        scaled = w * norms
        norm = ops.sqrt(ops.relu(ops.sum(scaled * ops.matmul(cosines, scaled))))
        value = log_t - ops.log(ops.maximum(norm, 1e-30))
        if c < 1.0:
            # At Pareto-stationary gradients, exact arithmetic gives
            # f(u) = log c < 0 for small t, but float32 cannot resolve
            # g_w(t) = -(t / r) g_0 there (it comes from cancellation):
            # keep the bracket's lower end negative.
            value = ops.where(log_t <= low, ops.minimum(value, math.log(c)),
                              value)
        return value, w, norm

    first = 0.5 * ops.log(ops.maximum(mean_norm_sq, 1e-60))
    if start is not None and guess is not None:
        first = ops.where(ops.sum(start) > 0.0, high + guess, first)
    first = ops.clip(first, low, high)
    value, w, norm = evaluate(first, start)
    # Bracket: the root lies in [lo, hi]; an end is "known" once evaluated.
    lo = ops.where(value > 0.0, low, first)
    hi = ops.where(value > 0.0, first, high)

    def below_bracket(u, value):
        # A root below the bracket (Pareto-stationary gradients, c >= 1)
        # ends at the lower end, which is then exact.
        return (u <= low) & (value >= 0.0)

    def cond(step, lo, hi, lo_known, hi_known, u_prev, f_prev, u, value, w,
             norm):
        return ((step < max_iters) & (abs(value) > tolerance)
                & (hi - lo > tolerance) & ~below_bracket(u, value))

    def body(step, lo, hi, lo_known, hi_known, u_prev, f_prev, u, value, w,
             norm):
        slope = (value - f_prev) / (u - u_prev)
        proposal = u - value / slope
        # Secant steps that stop halving |f| (one-sided convergence, or a
        # jump of f) give way to bisection.
        stalled = (step > 1) & (abs(value) > 0.5 * abs(f_prev))
        inside = ((proposal > lo) & (proposal < hi) & ops.isfinite(proposal)
                  & ~stalled)
        end = ops.where(proposal <= lo, lo, hi)
        end_known = ops.where(proposal <= lo, lo_known, hi_known) | stalled
        proposal = ops.where(
            inside, proposal,
            ops.where(end_known, 0.5 * (lo + hi), end))
        new_value, new_w, new_norm = evaluate(proposal, w)
        upper = new_value > 0.0
        return (step + 1,
                ops.where(upper, lo, proposal),
                ops.where(upper, proposal, hi),
                lo_known | ~upper,
                hi_known | upper,
                u, value, proposal, new_value, new_w, new_norm)

    # A virtual previous point of slope 1 makes the first step the
    # fixed-point step u <- log ||g_w(e^u)||.
    result = traceable_ops.while_loop(
        cond, body,
        (ops.convert_to_tensor(1, "int32"), lo, hi,
         value <= 0.0, value > 0.0,
         first - 1.0, value - 1.0, first, value, w, norm))
    lo, hi = result[1:3]
    u, value, w, norm = result[7:]
    residual = ops.where(below_bracket(u, value), 0.0,
                         ops.minimum(abs(value), hi - lo))
    return w, norm, residual, u - high
