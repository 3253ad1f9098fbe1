"""Small operations shared by the in-graph solvers.

Solvers run these in every iteration. On eager PyTorch `ops.one_hot` costs
about 45 us for an 8-vector, against 5 us for the comparison and cast below.
"""

from keras import ops


def one_hot(index, positions, dtype="float32"):
    """`(len(positions),)` indicator of `index`; `positions = ops.arange(T)`."""
    return ops.cast(positions == index, dtype)


def ratio_test(weights, decrease):
    """Step at which each non-negative weight reaches 0 when it falls by
    `decrease` per unit step: `weights / decrease`, +inf where `decrease <= 0`.

    `abs` matters: PyTorch and TensorFlow return -0.0 for `relu(-0.0)`, and a
    -inf ratio would win every `min`.
    """
    return (weights + 1e-30) / abs(ops.relu(decrease))


def shrink_support(current, target, support, positions):
    """The active-set solvers' step when `target` (the minimiser on the
    support) leaves the simplex: move from `current` towards it until a
    weight of the support reaches 0, and drop that coordinate.

    Returns `(moved, kept)`: the new `(1, T)` point, zero outside the kept
    support, and the kept `(1, T)` support indicator (`positions =
    ops.arange(T)`). The caller rescales `moved` onto its simplex.
    """
    ratios = ratio_test(current, (current - target) * support)
    ratio = ops.minimum(1.0, ops.amin(ratios))
    moved = current + ratio * (target - current)
    blocking = one_hot(ops.argmin(ratios[0]), positions)[None, :]
    kept = support * (1.0 - blocking) * ops.cast(moved > 0.0, "float32")
    return moved * kept, kept


def project_onto_simplex(v):
    """Euclidean projection of `v` (last axis) onto the probability simplex
    (sort-based, exact; Duchi et al. 2008).

    The projection does not change when a constant is added to `v`; `v` is
    shifted so that its largest entry is 0, which keeps entries of any size
    exact in float32 (`(u_1 - 1) - u_1` would round to 0 for `u_1 > 2^24`).
    """
    num = v.shape[-1]
    v = v - ops.amax(v, axis=-1, keepdims=True)
    u = ops.flip(ops.sort(v, axis=-1), axis=-1)
    cumulative = ops.cumsum(u, axis=-1) - 1.0
    index = ops.arange(1, num + 1, dtype=v.dtype)
    positive = u - cumulative / index > 0
    rho = ops.sum(ops.cast(positive, v.dtype), axis=-1, keepdims=True)
    theta = ops.take_along_axis(
        cumulative, ops.cast(rho, "int32") - 1, axis=-1) / rho
    return ops.maximum(v - theta, 0.0)
