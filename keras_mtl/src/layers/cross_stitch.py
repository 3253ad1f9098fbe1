import keras
import numpy as np
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import split_shapes


@keras_mtl_export("keras_mtl.layers.CrossStitch")
class CrossStitch(keras.layers.Layer):
    """Cross-stitch unit: learned linear mixing of the tasks' activations.

    Given the activations `x_1, ..., x_T` of `T` task networks at the same
    depth (all with the same shape), task `i` continues with

    `x~_i = sum_j alpha_ij x_j`,

    with one `T x T` matrix `alpha` for the layer, or, with
    `per_channel=True`, one matrix per channel (last axis), `alpha_ij[c]`.
    Following Misra et al. (2016), `alpha` starts close to the identity:
    `alpha_ii = self_weight` and `alpha_ij = (1 - self_weight) / (T - 1)`
    for `j != i`, which for two tasks is the paper's best initialisation
    `(alpha_S, alpha_D) = (0.9, 0.1)`; each row sums to 1. (Some
    re-implementations initialise every entry to 1, which starts by feeding
    every task the sum of all activations.) The paper trains `alpha` with a
    larger learning rate than the rest of the network; here `alpha` is an
    ordinary trainable weight updated by the model's optimizer.

    Args:
        num_tasks: number of tasks `T` (at least 2); the layer is called on
            a list of exactly `T` tensors.
        self_weight: initial `alpha_ii`, in [0, 1]. Defaults to 0.9.
        per_channel: whether each channel has its own mixing matrix.
            Defaults to `False`.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: a list of `T` tensors of the same shape
            `(batch_size, ..., channels)`.

    Output shape:
        a list of `T` tensors with the inputs' shape.

    Example:

    >>> x = keras.Input((5,))
    >>> a = keras.layers.Dense(4, activation="relu")(x)
    >>> b = keras.layers.Dense(4, activation="relu")(x)
    >>> a2, b2 = keras_mtl.layers.CrossStitch(num_tasks=2)([a, b])
    >>> model = keras.Model(x, [keras.layers.Dense(1)(a2),
    ...                         keras.layers.Dense(1)(b2)])
    >>> outputs = model(np.ones((2, 5)))

    Reference:
        Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for
        Multi-task Learning", CVPR 2016.
    """

    def __init__(self, num_tasks, self_weight=0.9, per_channel=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = check_positive_int("num_tasks", num_tasks, minimum=2)
        if (
            isinstance(self_weight, bool)
            or not isinstance(self_weight, (int, float))
            or not 0.0 <= self_weight <= 1.0
        ):
            raise ValueError(
                "`self_weight` must be a number in [0, 1]. Received: "
                f"self_weight={self_weight!r}"
            )
        self.self_weight = float(self_weight)
        if not isinstance(per_channel, bool):
            raise ValueError(
                "`per_channel` must be a bool. Received: "
                f"per_channel={per_channel!r}"
            )
        self.per_channel = per_channel

    def _check_inputs(self, shapes):
        split = split_shapes(shapes, self.num_tasks)
        if split is None:
            raise ValueError(
                f"CrossStitch(num_tasks={self.num_tasks}) expects a list of "
                f"{self.num_tasks} tensors. Received: inputs with shapes "
                f"{shapes!r}"
            )
        shapes = split
        first = shapes[0]
        for shape in shapes[1:]:
            if len(shape) != len(first) or any(
                a is not None and b is not None and a != b
                for a, b in zip(shape, first)
            ):
                raise ValueError(
                    "CrossStitch expects every task's tensor to have the same "
                    f"shape. Received: shapes {shapes}"
                )
        if self.per_channel and (len(first) < 2 or first[-1] is None):
            raise ValueError(
                "CrossStitch(per_channel=True) needs a known channel (last) "
                f"axis. Received: shapes {shapes}"
            )
        return first

    def initial_alpha(self):
        """The `(T, T)` initial mixing matrix, as nested Python lists."""
        t = self.num_tasks
        other = (1.0 - self.self_weight) / (t - 1)
        return [
            [self.self_weight if i == j else other for j in range(t)]
            for i in range(t)
        ]

    def build(self, input_shape):
        shape = self._check_inputs(input_shape)
        alpha = np.array(self.initial_alpha(), dtype="float32")
        if self.per_channel:
            alpha = np.repeat(alpha[:, :, None], shape[-1], axis=2)
        self.alpha = self.add_weight(
            name="alpha",
            shape=alpha.shape,
            initializer=keras.initializers.Constant(alpha),
        )

    def call(self, inputs):
        stacked = ops.stack(inputs, axis=0)  # (T, batch, ..., C)
        alpha = ops.cast(self.alpha, stacked.dtype)
        if self.per_channel:
            # (T, T, 1, ..., 1, C) * (1, T, batch, ..., C), summed over j.
            for _ in range(len(stacked.shape) - 2):
                alpha = ops.expand_dims(alpha, 2)
            mixed = ops.sum(alpha * ops.expand_dims(stacked, 0), axis=1)
        else:
            mixed = ops.tensordot(alpha, stacked, axes=1)
        return [mixed[i] for i in range(self.num_tasks)]

    def compute_output_shape(self, input_shape):
        shape = self._check_inputs(input_shape)
        return [shape for _ in range(self.num_tasks)]

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "self_weight": self.self_weight,
            "per_channel": self.per_channel,
        }
