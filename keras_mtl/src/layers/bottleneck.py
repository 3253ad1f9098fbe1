"""The down-projection, activation, up-projection pair shared by adapters."""

import keras
from keras import ops

from keras_mtl.src.layers import validation


class Bottleneck(keras.layers.Layer):
    """Base class: `delta(x) = W_up act(W_down x + b_down) + b_up`.

    Holds the four weights `down_kernel` (d, m), `down_bias` (m,),
    `up_kernel` (m, d) and `up_bias` (d,), where `m = hidden_units` or
    `max(1, d // reduction_factor)`. Subclasses decide what `call` returns.
    """

    def __init__(
        self,
        reduction_factor,
        hidden_units,
        activation,
        down_initializer,
        up_initializer,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction_factor = validation.check_positive_number(
            "reduction_factor", reduction_factor
        )
        self.hidden_units = validation.check_positive_int(
            "hidden_units", hidden_units, allow_none=True
        )
        self.activation = validation.get_activation(activation)
        self.down_initializer = validation.get_initializer(
            "down_initializer", down_initializer
        )
        self.up_initializer = validation.get_initializer(
            "up_initializer", up_initializer
        )

    def bottleneck_units(self, dim):
        if self.hidden_units is not None:
            return self.hidden_units
        return max(1, int(dim // self.reduction_factor))

    def build(self, input_shape):
        dim = validation.last_dim("inputs", input_shape)
        units = self.bottleneck_units(dim)
        self.down_kernel = self.add_weight(
            name="down_kernel",
            shape=(dim, units),
            initializer=self.down_initializer,
        )
        self.down_bias = self.add_weight(
            name="down_bias", shape=(units,), initializer="zeros"
        )
        self.up_kernel = self.add_weight(
            name="up_kernel",
            shape=(units, dim),
            initializer=self.up_initializer,
        )
        self.up_bias = self.add_weight(
            name="up_bias", shape=(dim,), initializer="zeros"
        )

    def delta(self, inputs):
        hidden = ops.matmul(inputs, self.down_kernel) + self.down_bias
        hidden = self.activation(hidden)
        return ops.matmul(hidden, self.up_kernel) + self.up_bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "reduction_factor": self.reduction_factor,
            "hidden_units": self.hidden_units,
            "activation": keras.activations.serialize(self.activation),
            **validation.serialize_objects(
                self, "down_initializer", "up_initializer"
            ),
        }
