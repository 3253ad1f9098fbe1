"""`PrefixGenerator`: the reparametrisation MLP of prefix tuning."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation


@keras_mtl_export("keras_mtl.layers.PrefixGenerator")
class PrefixGenerator(keras.layers.Layer):
    """The shared part of prefix tuning's reparametrisation.

    Li & Liang (2021) train the prefixes of all layers through one MLP,
    `P = W_2 tanh(E W_1 + b_1) + b_2`, `E` (`l x d`) learned embeddings,
    whose output is split into every layer's key and value prefixes; they
    drop the MLP after training and keep `P`. This layer holds `E`, `W_1`
    and `b_1` and returns the hidden activations `tanh(E W_1 + b_1)`
    (`l x b`); each `keras_mtl.layers.PrefixAdapter` that uses it holds its
    own column block of `W_2` and `b_2`, which is the same function and
    parameter count as one `(b, 2 L d)` output layer. Weights:
    `l d + (d + 1) b`, `d` the width of the embeddings (set by `build`; a
    `PrefixAdapter` builds its generator with its own output width).

    Args:
        prefix_length: `l`, the number of prefix positions. Defaults to
            `30`.
        bottleneck_size: `b`, the MLP's width. Defaults to `512`.
        activation: defaults to `"tanh"`.
        embedding_initializer: initializer of `E`. Defaults to `None`,
            i.e. `RandomNormal(stddev=1.0)` (PyTorch's `nn.Embedding`).
        kernel_initializer: initializer of `W_1` and `b_1`. Defaults to
            `None`, i.e. `U(-1/sqrt(d), 1/sqrt(d))` (PyTorch's `Linear`).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: ignored (the prefix does not depend on the input).

    Example:

    >>> generator = keras_mtl.layers.PrefixGenerator(
    ...     prefix_length=4, bottleneck_size=8)
    >>> generator.build((16,))  # the embedding width d
    >>> tuple(generator().shape)
    (4, 8)
    """

    def __init__(self, prefix_length=30, bottleneck_size=512,
                 activation="tanh", embedding_initializer=None,
                 kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.prefix_length = validation.check_positive_int(
            "prefix_length", prefix_length)
        self.bottleneck_size = validation.check_positive_int(
            "bottleneck_size", bottleneck_size)
        self.activation = validation.get_activation(activation)
        self.embedding_initializer = validation.get_initializer(
            "embedding_initializer",
            keras.initializers.RandomNormal(stddev=1.0)
            if embedding_initializer is None else embedding_initializer)
        self.kernel_initializer = validation.get_initializer(
            "kernel_initializer",
            torch_linear_initializer()
            if kernel_initializer is None else kernel_initializer)

    def build(self, input_shape):
        d = validation.last_dim("input_shape", input_shape)
        self.embedding = self.add_weight(
            shape=(self.prefix_length, d), name="embedding",
            initializer=self.embedding_initializer)
        self.kernel = self.add_weight(
            shape=(d, self.bottleneck_size), name="kernel",
            initializer=self.kernel_initializer)
        self.bias = self.add_weight(
            shape=(self.bottleneck_size,), name="bias",
            initializer=bias_initializer(d))

    def call(self, inputs=None):
        hidden = ops.matmul(self.embedding, self.kernel) + self.bias
        return self.activation(hidden)

    def compute_output_shape(self, input_shape=None):
        return (self.prefix_length, self.bottleneck_size)

    def get_config(self):
        return {
            **super().get_config(),
            "prefix_length": self.prefix_length,
            "bottleneck_size": self.bottleneck_size,
            "activation": keras.activations.serialize(self.activation),
            **validation.serialize_objects(
                self, "embedding_initializer", "kernel_initializer"),
        }


def torch_linear_initializer():
    """`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, PyTorch's `Linear` kernel."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def bias_initializer(fan_in):
    """PyTorch's `Linear` bias: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`."""
    bound = float(fan_in) ** -0.5
    return keras.initializers.RandomUniform(-bound, bound)
