"""The task losses and gradients at other values of the trainable variables.

Bilevel rules (Auto-Lambda, MOML, FORUM) learn the task weights from a
virtual step: they evaluate the task losses, and differentiate them, at
parameter values `theta - eta * g` that the model never takes. A `Probe` is
what the training step hands such a rule (`Aggregator.meta_update`): the
step's trainable values as one flat vector, and two functions that run the
model's forward pass (and backward pass) at any flat vector of the same size
without changing a variable. Each backend engine supplies the evaluation
(`keras_mtl/src/backend/`); the flattening lives here.

The batch is split into two interleaved halves (sample `i` in half
`i mod 2`): half 0 is the inner batch of the virtual step, half 1 the outer
batch. Each evaluation runs the model on one half only (as LibMTL draws two
half-size batches), so its `T` task losses are those of that half; `half`
None runs it on the whole batch (task-based sharpness, `sharpness.py`, uses
the same probe, with the rows of `Balancer.task_losses`).
"""

import math

import keras
from keras import ops

from keras_mtl.src.utils.split_sizes import split_sizes

HALVES = 2


def half_of(data, half):
    """Samples `half`, `half + 2`, ... of every tensor in `data` (None
    entries stay None); `half` None: all of `data`."""
    if half is None:
        return data
    return keras.tree.map_structure(
        lambda t: None if t is None else t[half::HALVES], data)


class Probe:
    """Evaluates the task losses of one half of the batch (or of all of it)
    at flat trainable values.

    Args:
        num_tasks: `T`.
        variables: the trainable variables of the step, in the order of the
            flat vectors.
        evaluate: `evaluate(values, cotangents, half)`, from the engine:
            `values` is a list of tensors, one per variable, and `half` is 0,
            1 or None (the whole batch); returns the `(T,)` task losses
            (the engine's row losses) of that half at `values`
            and, when `cotangents` (an `(n, T)` tensor) is not None, the list
            of `(n, *shape)` gradients of `cotangents @ losses` (else None).
            No variable is changed.
        learning_rate: the optimizer's current learning rate (a scalar),
            or None where the user of the probe takes no virtual step.

    Attributes:
        values: `(P,)` float32, the current values of `variables`.
    """

    def __init__(self, num_tasks, variables, evaluate, learning_rate):
        self.num_tasks = num_tasks
        self.shapes = [tuple(v.shape) for v in variables]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.values = self._flatten([v.value for v in variables])
        self.learning_rate = None if learning_rate is None else ops.cast(
            learning_rate, "float32")
        self._evaluate = evaluate

    def _flatten(self, tensors, leading=()):
        if not tensors:
            return ops.zeros(leading + (0,), "float32")
        return ops.concatenate(
            [ops.reshape(ops.cast(t, "float32"), leading + (-1,))
             for t in tensors], axis=-1)

    def _unflatten(self, flat):
        if len(self.sizes) > 1:
            pieces = split_sizes(flat, self.sizes)
        else:
            pieces = [flat][: len(self.sizes)]
        return [ops.reshape(p, s) for p, s in zip(pieces, self.shapes)]

    def losses(self, values, half):
        """The `(T,)` task losses of half `half` (0, 1 or None: the whole
        batch) at the flat `values`."""
        losses, _ = self._evaluate(self._unflatten(values), None, half)
        return ops.cast(losses, "float32")

    def gradients(self, values, cotangents, half):
        """`(losses, grads)` of half `half` at the flat `values`: the `(T,)`
        task losses and the `(n, P)` gradients of `cotangents @ losses` for
        an `(n, T)` `cotangents`."""
        cotangents = ops.cast(cotangents, "float32")
        losses, grads = self._evaluate(self._unflatten(values), cotangents,
                                       half)
        count = cotangents.shape[0]
        return ops.cast(losses, "float32"), self._flatten(grads, (count,))

