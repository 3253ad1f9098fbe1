"""Minimum-norm point of the convex hull of the task gradients, in-graph.

Solves `min_{w in simplex} w^T G w` for a `(T, T)` Gramian `G` with Wolfe's
minimum-norm-point algorithm (P. Wolfe, "Finding the nearest point in a
polytope", Mathematical Programming 11, 1976), an active-set method. It keeps
a set `S` of tasks (the "corral") and weights `w` on it, and each iteration
- takes the minimum-norm point `y` of the affine hull of `S` when it lies in
  the simplex, and adds to `S` the task that most violates optimality, if
  any;
- otherwise moves from `w` towards `y` until a weight reaches 0, and drops
  that task.
It ends, exactly, after a few iterations per task (about T + 1 on random
problems, against 20 to 50 pairwise Frank-Wolfe steps in Sener & Koltun's
reference code).

Accuracy. Gradients whose norms span several orders of magnitude give
Gramians with condition numbers beyond float32 (1e12 for norms from 1e-3 to
1e3). Every quantity is therefore computed on the cosine matrix
`C = N^-1 G N^-1` (`N = diag(||g_i||)`), whose conditioning does not depend
on the norms, with scaled weights `z = N w`: the affine minimiser
solves `[[C_SS, a_S], [a_S^T, 0]] [z; -mu] = [0; 1]` for `a = 1 / ||g||`,
and the optimality test `g_t . d >= ||d||^2` is checked as the scale-free
`(u_t . d - ||d||^2 / ||g_t||) / ||d|| >= -tolerance`. The loop is an
`ops.while_loop` bounded by `max_iters`, so it stays on the device and
traces under `jit`.
"""

from keras import ops

from keras_mtl.src.aggregators.gramian_utils import cosine_gramian
from keras_mtl.src.aggregators.solver_ops import one_hot
from keras_mtl.src.aggregators.solver_ops import shrink_support
from keras_mtl.src.backend import traceable_ops

# Ridge on the cosine matrix (unit diagonal) of the tasks in the active set:
# keeps the solve finite when two gradients are parallel.
_RIDGE = 1e-7
# Directions shorter than this, relative to the smallest gradient, count as 0.
_ZERO = 1e-2


def min_norm_weights(gramian, valid=None, max_iters=250, tolerance=1e-6,
                     start=None):
    """Wolfe's minimum-norm point of the simplex under the metric `G`.

    Args:
        gramian: `(T, T)` positive semi-definite matrix.
        valid: optional `(T,)` boolean mask; tasks outside it get weight 0.
            Tasks with a zero gradient are always left out (they would make
            the minimum-norm point trivially 0).
        max_iters: maximum number of iterations.
        tolerance: stop when no task violates optimality by more than this
            (the scale-free test above).
        start: optional `(T,)` weights to start from, for example the
            solution of a nearby problem; their support becomes the first
            corral, and a start from the optimal support ends after one
            iteration. Any point of the simplex is a valid start; one
            without weight on a valid task falls back to the default
            vertex.

    Returns:
        `(weights, gap, iterations)`: the `(T,)` weights on the simplex (all
        zero when no task is valid), the largest violation of the
        optimality test (0 at the optimum), and the number of iterations
        run. Weights and gap are NaN when `G` has a non-finite entry.
    """
    num_tasks = gramian.shape[0]
    finite, norms, cosines = cosine_gramian(gramian)
    present = norms > 0.0
    if valid is not None:
        present = present & valid
    valid_f = ops.cast(present, "float32")[None, :]
    any_valid = ops.amax(valid_f)
    # The simplex in z = N w is {z >= 0, a . z = 1}; a is rescaled to a
    # largest entry of 1, which only rescales z.
    a = valid_f * ops.divide_no_nan(1.0, norms)[None, :]
    a = a / ops.maximum(ops.amax(a), 1e-30)
    positions = ops.arange(num_tasks)
    eye = ops.eye(num_tasks)
    ridged = cosines + _RIDGE * eye
    excluded = 1e30 * (1.0 - valid_f)

    # The affine system [[C_SS, a_S], [a_S^T, 0]] [z; -mu] = [0; 1],
    # embedded in (T + 1) x (T + 1) with identity rows outside S. Unlike
    # C_SS it stays invertible for affinely independent, linearly dependent
    # gradients (two opposite ones).
    last = ops.concatenate(
        [ops.zeros((num_tasks, 1)), ops.ones((1, 1))], axis=0)
    embed = ops.concatenate([eye, ops.zeros((1, num_tasks))], axis=0)

    def affine_minimizer(corral):
        inside = ops.transpose(corral) * corral
        block = ridged * inside + eye * (1.0 - corral)
        border = embed @ ops.transpose(a * corral)  # (T + 1, 1)
        system = (embed @ block @ ops.transpose(embed)
                  + border @ ops.transpose(last)
                  + last @ ops.transpose(border))
        x = ops.transpose(traceable_ops.solve(system, last)[:num_tasks])
        return x / ops.sum(a * x)

    def violations(z):
        cz = z @ cosines
        norm = ops.sqrt(ops.relu(ops.sum(z * cz)))
        # A direction far below the smallest gradient (norm 1 here) is 0:
        # the gradients are Pareto-stationary, and rounding decides cz.
        return (cz - norm * norm * a) / ops.maximum(norm, _ZERO) + excluded

    def body(step, z, corral, done, fresh):
        y = affine_minimizer(corral)
        # A numerically singular system (affinely dependent gradients let in
        # by rounding) ends the search at the current point.
        usable = ops.all(ops.isfinite(y))
        y = ops.where(usable, y, z)
        feasible = ops.amin(y + (1.0 - corral)) >= 0.0
        slack = violations(y) + 1e30 * corral
        improving = ops.amin(slack) < -tolerance
        entering = one_hot(ops.argmin(slack[0]), positions)[None, :]
        grown = corral + ops.cast(improving, "float32") * entering
        moved, kept = shrink_support(z, y, corral, positions)
        new_z = ops.where(feasible, y, moved / ops.sum(a * moved))
        new_corral = ops.where(feasible, grown, kept)
        # A warm start can put dependent tasks in the corral, or lose the
        # point (seen under XLA on TensorFlow): start again from the vertex,
        # once; after that, end at the current point.
        failed = (~usable | ~ops.all(ops.isfinite(new_z))
                  | (ops.amax(new_corral) < 0.5))
        restart = failed & ~fresh
        new_z = ops.where(restart, vertex_z, ops.where(failed, z, new_z))
        new_corral = ops.where(
            restart, vertex, ops.where(failed, corral, new_corral))
        done = ((feasible & ~improving) | failed) & ~restart
        return step + 1, new_z, new_corral, done, fresh | restart

    def cond(step, z, corral, done, fresh):
        return (step < max_iters) & ~done

    # Start from the valid task of smallest norm (largest a).
    vertex = one_hot(
        ops.argmax(a[0] - excluded[0]), positions)[None, :] * any_valid
    vertex_z = vertex / ops.maximum(ops.sum(a * vertex), 1e-30)
    corral, z, fresh = vertex, vertex_z, ops.convert_to_tensor(True)
    if start is not None:
        given = ops.relu(ops.reshape(ops.cast(start, "float32"),
                                     (1, num_tasks)))
        # z = N w, on the valid tasks.
        given = ops.where(present[None, :], given * norms[None, :], 0.0)
        fresh = ops.sum(given) <= 0.0
        corral = ops.where(fresh, corral, ops.cast(given > 0.0, "float32"))
        z = ops.where(fresh, z,
                      given / ops.maximum(ops.sum(a * given), 1e-30))
    iterations, z, _, _, _ = traceable_ops.while_loop(
        cond,
        body,
        (ops.convert_to_tensor(0, "int32"), z, corral, any_valid < 0.5,
         fresh),
    )
    gap = ops.relu(-ops.amin(violations(z)))
    gap = ops.where(any_valid > 0.0, gap, 0.0)
    weights = ops.where(present, ops.divide_no_nan(z[0], norms), 0.0)
    weights = ops.divide_no_nan(weights, ops.sum(weights))
    nan = float("nan")
    return (ops.where(finite, weights, nan), ops.where(finite, gap, nan),
            iterations)
