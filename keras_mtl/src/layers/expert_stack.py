"""A stack of small MLP experts held as batched weights (internal)."""

import keras
from keras import ops

from keras_mtl.src.layers.validation import serialize_objects


def normalize_units(units, name="expert_units"):
    """Returns `units` (an int or a sequence of ints) as a tuple of ints."""
    values = (units,) if isinstance(units, int) else units
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if (
        not values
        or any(isinstance(u, bool) or not isinstance(u, int) for u in values)
        or any(u <= 0 for u in values)
    ):
        raise ValueError(
            f"`{name}` must be a positive integer or a non-empty sequence of "
            f"positive integers. Received: {name}={units!r}"
        )
    return values


class ExpertStack(keras.layers.Layer):
    """`num_experts` MLPs evaluated together with batched einsums.

    Expert `e` computes `h_0 = x`, `h_l = act_l(h_{l-1} W_{e,l} + b_{e,l})`
    for the layer widths in `units`; `act_l` is `activation` for every layer
    but the last and `output_activation` for the last. The weights of layer
    `l` form one variable of shape `(num_experts, in, out)` (with `groups`,
    `(groups, num_experts, in, out)`).

    Without `groups`, the input is `(..., d)` and the output
    `(..., num_experts, units[-1])`: every expert reads the same input. With
    `groups=G`, the input is `(..., G, d)` and the output
    `(..., G, num_experts, units[-1])`: group `g` has its own experts, which
    read the input slice `g`.
    """

    def __init__(
        self,
        num_experts,
        units,
        activation="relu",
        output_activation=None,
        groups=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        output_kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.units = normalize_units(units)
        self.activation = keras.activations.get(activation)
        self.output_activation = keras.activations.get(output_activation)
        self.groups = groups
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or kernel_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        lead = (self.num_experts,)
        if self.groups is not None:
            lead = (self.groups, self.num_experts)
        self.kernels, self.biases = [], []
        width = input_shape[-1]
        last = len(self.units) - 1
        for i, units in enumerate(self.units):
            initializer = (
                self.output_kernel_initializer
                if i == last
                else self.kernel_initializer
            )
            self.kernels.append(
                self.add_weight(
                    name=f"kernel_{i}",
                    shape=lead + (width, units),
                    initializer=initializer,
                    regularizer=self.kernel_regularizer,
                )
            )
            if self.use_bias:
                self.biases.append(
                    self.add_weight(
                        name=f"bias_{i}",
                        shape=lead + (units,),
                        initializer=self.bias_initializer,
                        regularizer=self.bias_regularizer,
                    )
                )
            width = units

    def call(self, inputs):
        lead = ops.shape(inputs)[: -1 if self.groups is None else -2]
        h = self._apply_layers(inputs, len(self.units))
        trailing = (self.num_experts, self.units[-1])
        if self.groups is not None:
            trailing = (self.groups,) + trailing
        return ops.reshape(h, tuple(lead) + trailing)

    def _apply_layers(self, inputs, count):
        """Applies the first `count` layers to the flattened inputs; returns
        `(N, E, width)` (`(N, G, E, width)` with groups)."""
        # Leading axes are flattened and every product is a plain matmul or
        # an einsum without "...": TensorFlow differentiates einsums with an
        # ellipsis about 100x more slowly.
        last = len(self.units) - 1
        d = ops.shape(inputs)[-1]
        E = self.num_experts
        if self.groups is None:
            x = ops.reshape(inputs, (-1, d))
        else:
            x = ops.reshape(inputs, (-1, self.groups, d))
        if count == 0:
            return ops.stack([x] * E, axis=-2)
        if self.groups is None:
            kernel = ops.reshape(
                ops.transpose(self.kernels[0], (1, 0, 2)), (d, -1)
            )
            h = ops.reshape(ops.matmul(x, kernel), (-1, E, self.units[0]))
        else:
            h = ops.einsum("ngd,gedu->ngeu", x, self.kernels[0])
        for i in range(count):
            if i > 0:
                if self.groups is None:
                    h = ops.einsum("ned,edu->neu", h, self.kernels[i])
                else:
                    h = ops.einsum("nged,gedu->ngeu", h, self.kernels[i])
            if self.use_bias:
                h = h + self.biases[i]
            h = (self.output_activation if i == last else self.activation)(h)
        return h

    def per_expert(self, inputs):
        """Expert `e` applied to `inputs[e]`: `(E, C, d)` to `(E, C, units)`.

        The routed computation of sparse dispatch: each expert sees only its
        own `C` tokens, one batched matrix product per layer (no groups).
        """
        h = inputs
        last = len(self.units) - 1
        for i, kernel in enumerate(self.kernels):
            h = ops.matmul(h, kernel)
            if self.use_bias:
                h = h + self.biases[i][:, None, :]
            h = (self.output_activation if i == last else self.activation)(h)
        return h

    def gated_sum(self, inputs, gates):
        """`sum_e gates[:, e] * expert_e(inputs)` for `(N, d)` inputs and
        `(N, E)` gates, for a linear last layer.

        The gate scales each expert's last hidden layer, and the last layers
        of all experts become one `(N, E * h) @ (E * h, units)` product: the
        cost of a dense layer of width `E * h` instead of `E` separate
        outputs.
        """
        h = self._apply_layers(inputs, len(self.units) - 1)  # (N, E, h)
        width = ops.shape(h)[-1]
        scaled = ops.reshape(
            h * ops.cast(gates, h.dtype)[:, :, None],
            (-1, self.num_experts * width),
        )
        kernel = ops.reshape(self.kernels[-1], (-1, self.units[-1]))
        y = ops.matmul(scaled, kernel)
        if self.use_bias:
            y = y + ops.matmul(ops.cast(gates, y.dtype), self.biases[-1])
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_experts, self.units[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "output_activation": keras.activations.serialize(
                self.output_activation
            ),
            "groups": self.groups,
            "use_bias": self.use_bias,
            **serialize_objects(
                self,
                "kernel_initializer",
                "output_kernel_initializer",
                "bias_initializer",
                "kernel_regularizer",
                "bias_regularizer",
            ),
        }
