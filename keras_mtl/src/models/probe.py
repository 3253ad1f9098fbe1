"""The task losses and gradients at other values of the trainable variables.

Bilevel rules (Auto-Lambda, MOML, FORUM) learn the task weights from a
virtual step: they evaluate the task losses, and differentiate them, at
parameter values `theta - eta * g` that the model never takes. A `Probe` is
what the training step hands such a rule (`Aggregator.meta_update`): the
step's trainable values as one flat vector, and two functions that run the
model's forward pass (and backward pass) at any flat vector of the same size
without changing a variable. Each backend engine supplies the evaluation
(`keras_mtl/src/backend/`); the flattening lives here.

The losses are the batch's two interleaved parts (sample `i` in part
`i mod 2`), part-major: entries `0 .. T-1` are the tasks on part 0 (the inner
batch of the virtual step), entries `T .. 2T-1` on part 1 (the outer batch).
"""

import math

from keras import ops

PARTS = 2


class Probe:
    """Evaluates the part-major task losses at flat trainable values.

    Args:
        num_tasks: `T`.
        variables: the trainable variables of the step, in the order of the
            flat vectors.
        evaluate: `evaluate(values, cotangents)`, from the engine: `values`
            is a list of tensors, one per variable; returns the `(2T,)` row
            losses at `values` and, when `cotangents` (an `(n, 2T)` tensor)
            is not None, the list of `(n, *shape)` gradients of
            `cotangents @ rows` (else None). No variable is changed.
        learning_rate: the optimizer's current learning rate (a scalar).

    Attributes:
        values: `(P,)` float32, the current values of `variables`.
    """

    def __init__(self, num_tasks, variables, evaluate, learning_rate):
        self.num_tasks = num_tasks
        self.shapes = [tuple(v.shape) for v in variables]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.values = self._flatten([v.value for v in variables])
        self.learning_rate = ops.cast(learning_rate, "float32")
        self._evaluate = evaluate

    def _flatten(self, tensors, leading=()):
        if not tensors:
            return ops.zeros(leading + (0,), "float32")
        return ops.concatenate(
            [ops.reshape(ops.cast(t, "float32"), leading + (-1,))
             for t in tensors], axis=-1)

    def _unflatten(self, flat):
        if len(self.sizes) > 1:
            pieces = ops.split(flat, _offsets(self.sizes))
        else:
            pieces = [flat][: len(self.sizes)]
        return [ops.reshape(p, s) for p, s in zip(pieces, self.shapes)]

    def losses(self, values):
        """The `(2T,)` row losses at the flat `values`."""
        rows, _ = self._evaluate(self._unflatten(values), None)
        return ops.cast(rows, "float32")

    def gradients(self, values, cotangents):
        """`(rows, grads)` at the flat `values`: the `(2T,)` row losses and
        the `(n, P)` gradients of `cotangents @ rows` for an `(n, 2T)`
        `cotangents`."""
        cotangents = ops.cast(cotangents, "float32")
        rows, grads = self._evaluate(self._unflatten(values), cotangents)
        count = cotangents.shape[0]
        return ops.cast(rows, "float32"), self._flatten(grads, (count,))


def _offsets(sizes):
    out, total = [], 0
    for size in sizes[:-1]:
        total += size
        out.append(total)
    return out
