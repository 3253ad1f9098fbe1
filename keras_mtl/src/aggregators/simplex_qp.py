"""Convex quadratic programmes over the probability simplex, in-graph.

Solves `min_{w in simplex} 1/2 w^T Q w + l^T w` for a positive
semi-definite `(T, T)` matrix `Q`, optionally on the hyperplane
`p^T w = 0` as well, with a primal active-set method (the scheme of Wolfe's
minimum-norm-point algorithm, `min_norm_solver.py`, with a linear term and
an optional second equality). It keeps a support set `S` and a feasible
point `w`; each iteration solves the equality-constrained problem on `S`,

    [[Q_SS, 1_S, p_S], [1_S^T, 0, 0], [p_S^T, 0, 0]] [y; -mu; -eta]
        = [-l_S; 1; 0],

takes `y` when it is non-negative and adds the coordinate that most
violates optimality (`(Q w + l)_t - mu - eta p_t < 0`), or else moves
towards `y` until a coordinate of the support reaches 0 and drops it. It ends
exactly after a few iterations per coordinate. The loop is an
`ops.while_loop` bounded by `max_iters`; the final violation is returned so
that callers can log it.
"""

from keras import ops

from keras_mtl.src.aggregators.solver_ops import one_hot
from keras_mtl.src.aggregators.solver_ops import shrink_support
from keras_mtl.src.backend import traceable_ops

# Ridge on Q_SS (Q is scaled to a largest entry of 1): keeps the system
# solvable when the support's columns of Q are linearly dependent.
_RIDGE = 1e-7


def simplex_qp(quadratic, linear, plane=None, max_iters=250,
               tolerance=1e-6):
    """`argmin_{w in simplex, plane . w = 0} 1/2 w^T Q w + l^T w`.

    Args:
        quadratic: `(T, T)` positive semi-definite `Q`.
        linear: `(T,)` `l`.
        plane: optional `(T,)` `p` of the equality `p . w = 0`.
        max_iters: maximum number of iterations.
        tolerance: stop when no coordinate violates optimality by more than
            this, relative to the largest entry of `|Q|` and `|l|`.

    Returns:
        `(weights, gap, feasible)`: the `(T,)` minimiser, the largest
        (relative) violation of optimality left (0 at the optimum), and
        whether the feasible set is non-empty (with `plane`: `p` has
        entries of both signs, or a zero entry). Weights and gap are NaN
        when an input has a non-finite entry.
    """
    num = quadratic.shape[0]
    q = ops.cast(quadratic, "float32")
    lin = ops.reshape(ops.cast(linear, "float32"), (1, num))
    has_plane = plane is not None
    p = (ops.reshape(ops.cast(plane, "float32"), (1, num)) if has_plane
         else ops.zeros((1, num)))
    finite = (ops.all(ops.isfinite(q)) & ops.all(ops.isfinite(lin))
              & ops.all(ops.isfinite(p)))
    q, lin, p = (ops.where(finite, t, ops.zeros_like(t)) for t in (q, lin, p))
    scale = ops.maximum(ops.amax(ops.abs(q)), ops.amax(ops.abs(lin)))
    scale = ops.maximum(scale, 1e-30)
    q, lin = q / scale, lin / scale
    eye = ops.eye(num)
    ridged = q + _RIDGE * eye
    positions = ops.arange(num)
    extra = 2 if has_plane else 1
    size = num + extra
    # Rows num.. of the bordered system: the sum and (optionally) the plane.
    constraints = ops.concatenate([ops.ones((1, num)), p][:extra], axis=0)
    rhs_tail = ops.concatenate(
        [ops.ones((1, 1)), ops.zeros((1, 1))][:extra], axis=0)

    def solve(support):
        inside = ops.transpose(support) * support
        block = ridged * inside + eye * (1.0 - support)
        border = constraints * support  # (extra, T)
        top = ops.concatenate([block, ops.transpose(border)], axis=1)
        # -eps on the multipliers' block makes the system quasi-definite,
        # hence invertible for any support (a support of one coordinate
        # cannot meet two equalities).
        bottom = ops.concatenate(
            [border, -_RIDGE * ops.eye(extra)], axis=1)
        system = ops.concatenate([top, bottom], axis=0)
        rhs = ops.concatenate(
            [ops.transpose(-lin * support), rhs_tail], axis=0)
        x = traceable_ops.solve(system, rhs)
        # y, and the multipliers (mu, eta) of the equalities.
        return ops.transpose(x[:num]), -ops.transpose(x[num:size])

    def violations(w, multipliers):
        gradient = w @ q + lin
        return gradient - multipliers @ constraints

    def body(step, w, support, multipliers, done):
        y, found = solve(support)
        usable = ops.all(ops.isfinite(y)) & ops.all(ops.isfinite(found))
        y = ops.where(usable, y, w)
        found = ops.where(usable, found, multipliers)
        feasible = ops.amin(y + (1.0 - support)) >= 0.0
        slack = violations(y, found) + 1e30 * support
        improving = ops.amin(slack) < -tolerance
        entering = one_hot(ops.argmin(slack[0]), positions)[None, :]
        grown = support + ops.cast(improving, "float32") * entering
        moved, kept = shrink_support(w, y, support, positions)
        new_w = ops.where(feasible, y, moved / ops.sum(moved))
        new_support = ops.where(feasible, grown, kept)
        new_multipliers = ops.where(feasible, found, multipliers)
        return (step + 1, new_w, new_support, new_multipliers,
                (feasible & ~improving) | ~usable)

    def cond(step, w, support, multipliers, done):
        return (step < max_iters) & ~done

    if has_plane:
        # Start at the crossing of the plane with the edge between the
        # largest and the smallest entry of p (or at a zero entry).
        high, low = ops.argmax(p[0]), ops.argmin(p[0])
        p_high, p_low = ops.amax(p), ops.amin(p)
        crossing = (one_hot(high, positions) * -p_low
                    + one_hot(low, positions) * p_high)
        crossing = crossing / ops.maximum(p_high - p_low, 1e-30)
        zero = one_hot(ops.argmin(ops.abs(p[0])), positions)
        on_plane = ops.amin(ops.abs(p)) == 0.0
        start = ops.where(on_plane, zero, crossing)[None, :]
        feasible_set = on_plane | ((p_high > 0.0) & (p_low < 0.0))
    else:
        vertex_values = 0.5 * ops.diagonal(q) + lin[0]
        start = one_hot(ops.argmin(vertex_values), positions)[None, :]
        feasible_set = ops.convert_to_tensor(True)
    support = ops.cast(start > 0.0, "float32")
    _, w, _, multipliers, _ = traceable_ops.while_loop(
        cond,
        body,
        (ops.convert_to_tensor(0, "int32"), start, support,
         ops.zeros((1, extra)), ~feasible_set),
    )
    gap = ops.relu(-ops.amin(violations(w, multipliers)))
    nan = float("nan")
    return (ops.where(finite, w[0], nan),
            ops.where(finite, ops.where(feasible_set, gap, 0.0), nan),
            feasible_set)
