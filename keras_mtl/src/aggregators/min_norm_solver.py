"""Minimum-norm point of the convex hull of the task gradients, in-graph.

Solves `min_{w in simplex} w^T G w` for a `(T, T)` Gramian `G` with Wolfe's
minimum-norm-point algorithm (P. Wolfe, "Finding the nearest point in a
polytope", Mathematical Programming 11, 1976), an active-set method. It keeps a
set `S` of tasks (the "corral") and the current weights `w` on it, and each
iteration either
- adds to `S` the task with the smallest `(G w)_t`, once `w` is the
  minimum-norm point of the affine hull of `S` and lies in the simplex, or
- when that affine minimiser `y` has a negative weight, moves `w` towards `y`
  until a weight reaches 0 and drops that task.
It ends, exactly, after a few iterations per task (about T + 1 on random
problems, against 20 to 50 pairwise Frank-Wolfe steps, which Sener & Koltun's
reference code uses); each iteration solves one `(T + 1)`-square linear
system. The loop is an `ops.while_loop` bounded by `max_iters`, so it stays on
the device and traces under `jit`.
"""

from keras import ops

from keras_mtl.src.aggregators.gramian_utils import divide_by_trace
from keras_mtl.src.aggregators.gramian_utils import zero_if_non_finite
from keras_mtl.src.aggregators.solver_ops import one_hot
from keras_mtl.src.aggregators.solver_ops import ratio_test

# Ridge on the Gramian block of the affine system: keeps it invertible when
# rounding lets two affinely dependent gradients into the corral.
_RIDGE = 1e-7


def min_norm_weights(gramian, valid=None, max_iters=250, tolerance=1e-7):
    """Wolfe's minimum-norm point of the simplex under the metric `G`.

    Args:
        gramian: `(T, T)` positive semi-definite matrix.
        valid: optional `(T,)` boolean mask; tasks outside it get weight 0
            (used to leave out zero gradients, which would make the min-norm
            point trivially 0).
        max_iters: maximum number of iterations.
        tolerance: stop when every task has `(G w)_t >= w^T G w - tolerance`
            (trace-normalised `G`; the optimality condition).

    Returns:
        `(weights, gap, iterations)`: the `(T,)` weights on the simplex (all
        zero when no task is valid), the Frank-Wolfe duality gap
        `w^T G w - min_t (G w)_t` on the trace-normalised Gramian (0 at the
        optimum), and the number of iterations run. Weights and gap are NaN
        when `G` has a non-finite entry.
    """
    num_tasks = gramian.shape[0]
    finite, gramian = zero_if_non_finite(
        ops.convert_to_tensor(gramian, "float32"))
    if valid is None:
        valid = ops.ones((num_tasks,), "bool")
    # The solution does not change when G is scaled; normalising keeps the
    # arithmetic well inside float32 for gradients from 1e-6 to 1e6.
    gramian = divide_by_trace(gramian)
    valid_f = ops.cast(valid, "float32")
    any_valid = ops.max(valid_f)
    positions = ops.arange(num_tasks)
    eye = ops.eye(num_tasks)
    # Added to (G w)_t: keeps invalid tasks out of every argmin (a finite
    # penalty: entries of the trace-normalised G are at most 1).
    excluded = 1e30 * (1.0 - valid_f)[None, :]
    # The affine system [[G_SS, 1], [1^T, 0]] [y; -mu] = [0; 1], embedded in
    # (T + 1) x (T + 1) with identity rows for the tasks outside S.
    embed = ops.concatenate([eye, ops.zeros((1, num_tasks))], axis=0)
    last = ops.concatenate(
        [ops.zeros((num_tasks, 1)), ops.ones((1, 1))], axis=0)
    ridged = gramian + _RIDGE * eye

    def affine_minimizer(corral):
        inside = ops.transpose(corral) * corral  # (T, T) mask of S x S
        block = ridged * inside + eye * (1.0 - corral)
        border = embed @ ops.transpose(corral)  # (T + 1, 1)
        system = (
            embed @ block @ ops.transpose(embed)
            + border @ ops.transpose(last)
            + last @ ops.transpose(border)
        )
        solution = ops.solve(system, last)
        return ops.transpose(solution[:num_tasks])  # (1, T), 0 outside S

    # Row vectors, slices and operators in the loop: they are the cheap ops
    # on eager PyTorch.
    def body(step, w, corral, done):
        y = affine_minimizer(corral)
        # y is the new point when it lies in the simplex; the corral then
        # gains the task outside it that most violates optimality, if any.
        feasible = ops.min(y + (1.0 - corral)) >= 0.0
        gy = y @ gramian
        candidates = gy + excluded + 1e30 * corral
        improving = ops.sum(y * gy) - ops.min(candidates) > tolerance
        entering = one_hot(ops.argmin(candidates[0]), positions)[None, :]
        grown = corral + ops.cast(improving, "float32") * entering
        # Otherwise: go from w towards y until the first weight reaches 0.
        ratios = ratio_test(w, (w - y) * corral)
        ratio = ops.minimum(1.0, ops.min(ratios))
        moved = w + ratio * (y - w)
        blocking = one_hot(ops.argmin(ratios[0]), positions)[None, :]
        kept = corral * (1.0 - blocking) * ops.cast(moved > 0.0, "float32")
        moved = moved * kept
        new_w = ops.where(feasible, y, moved / ops.sum(moved))
        new_corral = ops.where(feasible, grown, kept)
        return step + 1, new_w, new_corral, feasible & ~improving

    def cond(step, w, corral, done):
        return (step < max_iters) & ~done

    # Start from the valid task of smallest norm.
    start = one_hot(
        ops.argmin(ops.diagonal(gramian) + excluded[0]), positions
    )[None, :] * any_valid
    iterations, weights, _, _ = ops.while_loop(
        cond,
        body,
        (ops.convert_to_tensor(0, "int32"), start, start, any_valid < 0.5),
    )
    gw = weights @ gramian
    gap = ops.sum(weights * gw) - ops.min(gw + excluded)
    gap = ops.where(any_valid > 0.0, ops.relu(gap), 0.0)
    nan = float("nan")
    return (ops.where(finite, weights[0], nan), ops.where(finite, gap, nan),
            iterations)
