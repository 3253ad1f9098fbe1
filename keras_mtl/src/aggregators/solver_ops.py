"""Two small operations shared by the in-graph solvers.

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
