"""Projection onto the dual cone of the task gradients, in weight space.

For a Gramian `G = J J^T` and a lower bound `u`, the vector `J^T u` projected
onto the dual cone `{d : J d >= 0}` is `J^T v` with

    v = argmin_{v >= u} v^T G v

(Quinton & Rey, 2024, Jacobian descent; TorchJD solves it with quadprog on the
CPU). Here the box-constrained QP is solved on the device by cyclic coordinate
descent, which converges for any positive-definite `G`: each coordinate is
minimised exactly and clipped to its bound. Several QPs sharing `G` (one per
row of `lower`) are solved at once.
"""

from keras import ops

from keras_mtl.src.backend import traceable_ops


def project_weights(gramian, lower, max_sweeps=200, tolerance=1e-7):
    """Solves `min_{v >= lower[k]} v^T G v` for every row `k` of `lower`.

    Args:
        gramian: `(T, T)` positive-definite matrix (regularise it first).
        lower: `(K, T)` lower bounds.
        max_sweeps: maximum number of passes over the coordinates.
        tolerance: stop when no coordinate moved by more than this.

    Returns:
        `(weights, residual)`: the `(K, T)` solutions, and the largest KKT
        violation `max |min(v - lower, G v)|` (0 at the optimum).
    """
    num_tasks = gramian.shape[0]
    diag = ops.diagonal(gramian)
    # A zero diagonal entry (no ridge, zero gradient) has a zero column: its
    # coordinate then stays at its bound instead of becoming 0 / 0.
    diag = ops.where(diag > 0, diag, 1.0)
    eye = ops.eye(num_tasks, dtype=gramian.dtype)

    # Slices and operators rather than `ops` calls where possible: they are
    # several times cheaper on eager PyTorch, and a solve runs T of these
    # coordinate updates per sweep.
    def sweep(v):
        for j in range(num_tasks):
            column = slice(j, j + 1)
            gradient_j = v @ gramian[:, column]
            bound = lower[:, column]
            target = bound + ops.relu(
                v[:, column] - gradient_j / diag[j] - bound)
            v = v + (target - v[:, column]) * eye[column]
        return v

    def cond(step, v, change):
        return (step < max_sweeps) & (change > tolerance)

    def body(step, v, change):
        new_v = sweep(v)
        return step + 1, new_v, ops.amax(abs(new_v - v))

    _, v, _ = traceable_ops.while_loop(
        cond,
        body,
        (
            ops.convert_to_tensor(0, "int32"),
            lower,
            ops.convert_to_tensor(float("inf"), gramian.dtype),
        ),
    )
    residual = ops.amax(ops.abs(ops.minimum(v - lower, ops.matmul(v, gramian))))
    return v, residual
