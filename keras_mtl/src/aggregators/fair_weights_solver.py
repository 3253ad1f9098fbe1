"""Positive solution of `G w = w^(-1/alpha)` (alpha-fair task weights).

This is the stationarity condition of the strictly convex problem

    min_{w > 0}  1/2 w^T G w - sum_i phi(w_i),   phi'(w) = w^(-1/alpha),

so damped Newton steps that stay inside `w > 0` converge quickly and need no
external solver (LibMTL uses scipy's least squares, Nash-MTL cvxpy + ECOS).
`alpha = 1` gives the Nash bargaining solution `G w = 1/w`.

Accuracy. With `G = N C N` (`N = diag(||g_i||)`, `C` the cosine matrix) and
`z = N w`, the condition reads `C z = z^(-1/alpha) ||g||^(1/alpha - 1)`.
Newton runs on that form: `C` has unit diagonal and a condition number that
does not depend on the gradients' norms, so the solution stays accurate in
float32 when the norms span many orders of magnitude (on `G` itself, norms
from 1e-2 to 1e2 already cost two digits). Tasks with a zero gradient have
no finite solution and get weight 0; iterates are kept in `[1e-6, 1e6]`, so
conflicting gradients without a positive solution give large but finite
weights and a non-zero residual.
"""

from keras import ops

from keras_mtl.src.aggregators.gramian_utils import cosine_gramian
from keras_mtl.src.aggregators.solver_ops import ratio_test
from keras_mtl.src.backend import traceable_ops


def fair_weights(gramian, alpha, max_iters=30, tolerance=1e-6, initial=None):
    """Returns `(weights, residual)` for `G w = w^(-1/alpha)`.

    Args:
        gramian: `(T, T)` positive semi-definite matrix.
        alpha: the fairness exponent, > 0.
        max_iters: maximum number of Newton steps.
        tolerance: stop when no weight changes by more than this, relatively.
        initial: optional `(T,)` starting weights (a previous solution: a
            warm start); non-positive or non-finite entries start from the
            default.

    Returns:
        `residual` is `max_i |(C z - z^(-1/a) n^(1/a - 1))_i| / (z^(-1/a)
        n^(1/a - 1))_i`, relative. Both are NaN when `G` has a non-finite
        entry.
    """
    num_tasks = gramian.shape[0]
    finite, norms, cosines = cosine_gramian(gramian)
    valid = norms > 0.0
    valid_column = ops.cast(valid, "float32")[:, None]
    exponent = -1.0 / alpha
    # Invalid tasks keep an identity row of C and a right-hand side of 1:
    # decoupled, their z is 1, then zeroed.
    safe_norms = ops.where(valid, norms, 1.0)[:, None]
    right = safe_norms ** (1.0 / alpha - 1.0)
    eye = ops.eye(num_tasks)
    regularized = cosines + 1e-6 * eye  # Keeps the Newton system invertible.
    start = ops.ones((num_tasks, 1))
    if initial is not None:
        guess = ops.cast(initial, "float32")[:, None] * safe_norms
        usable = ops.all(ops.isfinite(guess)) & ops.all(guess > 0.0)
        start = ops.where(usable, ops.clip(guess, 1e-6, 1e6), start)

    # Column vectors and operators in the loop: on eager PyTorch they cost a
    # fraction of the equivalent `ops` calls.
    def residual(z):
        return cosines @ z - right * z**exponent

    def cond(step, z, change):
        return (step < max_iters) & (change > tolerance)

    def body(step, z, change):
        r = residual(z)
        curvature = ops.transpose(-exponent * right * z ** (exponent - 1.0))
        newton = traceable_ops.solve(regularized + eye * curvature, r)
        # Fraction-to-the-boundary rule keeps every weight positive.
        t = ops.minimum(1.0, 0.95 * ops.amin(ratio_test(z, newton)))
        # When no positive solution exists (exactly opposite gradients) the
        # objective is unbounded and z grows; the box keeps it finite, the
        # residual reports it, and the direction of such z is ~0 anyway.
        new_z = ops.clip(z - t * newton, 1e-6, 1e6)
        return step + 1, new_z, ops.amax(abs(new_z - z) / z)

    _, z, _ = traceable_ops.while_loop(
        cond,
        body,
        (ops.convert_to_tensor(0, "int32"), start,
         ops.convert_to_tensor(float("inf"))),
    )
    target = right * z**exponent
    error = ops.amax(abs(residual(z)) / target * valid_column)
    weights = (z / safe_norms * valid_column)[:, 0]
    nan = float("nan")
    return (ops.where(finite, weights, nan), ops.where(finite, error, nan))
