"""What the rules that read several independent batches share.

Such a rule (`batch_splits = k`, see `Aggregator`) sees the Gramian of a
part-major Jacobian with `k * T` rows: row `s * T + t` is task `t`'s
gradient on part `s` of the batch. It learns its task weights from the
cross-batch matrix `A = J_1 J_2^T` of the first two parts, an unbiased
estimate of `J J^T` (the Gramian of one batch, `J_1 J_1^T`, is biased by
the gradients' noise), and applies them to the third part, or to the mean
of both parts when there are two.
"""

from keras import ops

from keras_mtl.src.aggregators.arg_checks import check_choice

NUM_BATCHES = (2, 3)


def check_num_batches(value):
    """`num_batches` as an int in `NUM_BATCHES`, or a `ValueError`."""
    return int(check_choice("num_batches", value, NUM_BATCHES))


def cross_matrix(gramian, num_tasks):
    """`A = J_1 J_2^T`, `(T, T)`: the block of the part-major Gramian that
    pairs the first part's rows with the second's."""
    gramian = ops.cast(gramian, "float32")
    return gramian[:num_tasks, num_tasks: 2 * num_tasks]


def row_weights(weights, num_batches):
    """The `(num_batches * T,)` row weights that apply the task weights to
    the last part (three parts) or to the mean of both parts (two)."""
    if num_batches == 2:
        return ops.concatenate([weights / 2.0, weights / 2.0])
    zeros = ops.zeros_like(weights)
    return ops.concatenate([zeros, zeros, weights])
