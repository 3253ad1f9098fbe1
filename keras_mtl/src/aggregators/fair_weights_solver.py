"""Positive solution of `G w = w^(-1/alpha)` (alpha-fair task weights).

This is the stationarity condition of the strictly convex problem

    min_{w > 0}  1/2 w^T G w - sum_i phi(w_i),   phi'(w) = w^(-1/alpha),

so damped Newton steps that stay inside `w > 0` converge quickly and need no
external solver (LibMTL uses scipy's least squares, Nash-MTL cvxpy + ECOS).
`alpha = 1` gives the Nash bargaining solution `G w = 1/w`. Tasks with a zero
gradient have no finite solution and get weight 0; iterates are kept in
`[1e-6, 1e6]` (on the normalised problem), so conflicting gradients without a
positive solution give large but finite weights and a non-zero residual.
"""

from keras import ops

from keras_mtl.src.aggregators.gramian_utils import zero_if_non_finite
from keras_mtl.src.aggregators.solver_ops import ratio_test


def fair_weights(gramian, alpha, max_iters=30, tolerance=1e-6):
    """Returns `(weights, residual)` with `residual = max |G w - w^(-1/a)|`.

    Solved on the trace-normalised Gramian and rescaled, so the result does
    not depend on the scale of the gradients. Both are NaN when `G` has a
    non-finite entry.
    """
    num_tasks = gramian.shape[0]
    finite, gramian = zero_if_non_finite(ops.cast(gramian, "float32"))
    trace = ops.trace(gramian)
    valid = ops.diagonal(gramian) > 1e-12 * ops.maximum(trace, 1e-30)
    valid_f = ops.cast(valid, "float32")
    eye = ops.eye(num_tasks)
    normalized = gramian / ops.where(trace > 0, trace, 1.0)
    # Invalid tasks are decoupled: identity rows and a target weight of 1
    # (then zeroed), so the Newton system stays well posed.
    mask = valid_f[:, None] * valid_f[None, :]
    system = normalized * mask + eye * (1.0 - valid_f)[:, None]
    exponent = -1.0 / alpha
    regularized = system + 1e-6 * eye  # Keeps the Newton system invertible.
    valid_column = valid_f[:, None]

    # Column vectors and operators in the loop: on eager PyTorch they cost a
    # fraction of the equivalent `ops` calls.
    def residual(w):
        return system @ w - w**exponent

    def cond(step, w, change):
        return (step < max_iters) & (change > tolerance)

    def body(step, w, change):
        r = residual(w) * valid_column
        curvature = ops.transpose(w ** (exponent - 1.0))
        hessian = regularized - exponent * eye * curvature
        newton = ops.solve(hessian, r) * valid_column
        # Fraction-to-the-boundary rule keeps every weight positive.
        t = ops.minimum(1.0, 0.95 * ops.min(ratio_test(w, newton)))
        # When no positive solution exists (exactly opposite gradients) the
        # objective is unbounded and w grows; the box keeps it finite, the
        # residual reports it, and the direction of such w is ~0 anyway.
        new_w = ops.clip(w - t * newton, 1e-6, 1e6)
        return step + 1, new_w, ops.max(abs(new_w - w) / w)

    _, w, _ = ops.while_loop(
        cond,
        body,
        (ops.convert_to_tensor(0, "int32"), ops.ones((num_tasks, 1)),
         ops.convert_to_tensor(float("inf"))),
    )
    error = ops.max(abs(residual(w)) * valid_column)
    w = w[:, 0]
    # Undo the normalisation: G = s N gives w = w_N * s^(-alpha / (alpha + 1)).
    scale = ops.power(ops.where(trace > 0, trace, 1.0), -alpha / (alpha + 1.0))
    nan = float("nan")
    return (ops.where(finite, w * valid_f * scale, nan),
            ops.where(finite, error, nan))
