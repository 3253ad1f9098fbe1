"""`PrefixAdapter`: learned key or value prefixes of one attention layer."""

import math

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation
from keras_mtl.src.layers.prefix_generator import PrefixGenerator
from keras_mtl.src.layers.prefix_generator import bias_initializer
from keras_mtl.src.layers.prefix_generator import torch_linear_initializer


@keras_mtl_export("keras_mtl.layers.PrefixAdapter")
class PrefixAdapter(keras.layers.Layer):
    """The `l` prefix positions prepended to one projection's output.

    Prefix tuning (Li & Liang, 2021) lets every attention head attend over
    `[P_k; K]` and `[P_v; V]`: learned keys and values before the
    sequence's. This layer makes `P` (`l x ...`, the trailing shape of the
    projection's output, e.g. `(heads, head_dim)`) and returns it repeated
    over the batch, `(batch, l, ...)`, for the caller to concatenate before
    the projected keys or values (`keras_mtl.transfer.add_adapters(...,
    config="prefix_tuning")` does this and extends the attention mask).

    - With a `generator` (training, as in the paper): `P = h W + b`, `h`
      the generator's `(l x b)` hidden activations, `W`, `b` this
      adapter's block of the MLP's output layer.
    - Without one (`flat`): `P` is a variable, initialised `N(0, 1)` as in
      `adapters`' `flat=True`. `keras_mtl.transfer.eject_prefix` turns
      generated prefixes into flat ones holding the same values.

    The output changes at initialisation (prefixes are not zero); the
    parameter count kept after ejection is `l x prod(...)` per adapter.

    Args:
        prefix_length: `l`. Defaults to `None`: the generator's, or `30`
            without one.
        generator: a `keras_mtl.layers.PrefixGenerator` shared by the
            prefixes of one task, or `None` for a flat prefix. Defaults to
            `None`.
        prefix_initializer: initializer of a flat prefix. Defaults to
            `"random_normal"` with standard deviation 1.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: the projected keys or values, `(batch, seq, ...)`; only
            their batch size and dtype are used.

    Input shape:
        `(batch, seq, ...)`.

    Output shape:
        `(batch, l, ...)`.

    Example:

    >>> prefix = keras_mtl.layers.PrefixAdapter(prefix_length=3)
    >>> keys = np.ones((2, 5, 4, 8), "float32")  # (batch, seq, heads, dim)
    >>> tuple(prefix(keys).shape)
    (2, 3, 4, 8)

    Reference:
        Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for
        Generation", ACL 2021.
    """

    def __init__(self, prefix_length=None, generator=None,
                 prefix_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if generator is not None and not isinstance(generator,
                                                    PrefixGenerator):
            raise ValueError(
                "`generator` must be a `PrefixGenerator` or None. "
                f"Received: generator={generator!r}")
        if generator is not None and prefix_length not in (
                None, generator.prefix_length):
            raise ValueError(
                f"`prefix_length` must be None or the generator's "
                f"({generator.prefix_length}). "
                f"Received: prefix_length={prefix_length!r}")
        if prefix_length is None:
            prefix_length = 30 if generator is None else (
                generator.prefix_length)
        self.prefix_length = validation.check_positive_int(
            "prefix_length", prefix_length)
        self.generator = generator
        self.prefix_initializer = validation.get_initializer(
            "prefix_initializer",
            keras.initializers.RandomNormal(stddev=1.0)
            if prefix_initializer is None else prefix_initializer)

    @property
    def flat(self):
        """Whether the prefix is a variable (no generator)."""
        return self.generator is None

    def build(self, input_shape):
        if len(input_shape) < 3 or any(d is None for d in input_shape[2:]):
            raise ValueError(
                "`PrefixAdapter` needs inputs of shape (batch, seq, ...) with "
                f"known trailing dimensions. Received: input shape="
                f"{tuple(input_shape)}")
        self.prefix_shape = tuple(int(d) for d in input_shape[2:])
        width = math.prod(self.prefix_shape)
        if self.flat:
            self.prefix = self.add_weight(
                shape=(self.prefix_length, width), name="prefix",
                initializer=self.prefix_initializer)
            return
        if not self.generator.built:
            self.generator.build((width,))
        hidden = self.generator.bottleneck_size
        self.kernel = self.add_weight(
            shape=(hidden, width), name="kernel",
            initializer=torch_linear_initializer())
        self.bias = self.add_weight(
            shape=(width,), name="bias", initializer=bias_initializer(hidden))

    def value(self):
        """The prefix, `(l,) + trailing shape`."""
        if self.flat:
            prefix = ops.convert_to_tensor(self.prefix)
        else:
            prefix = ops.matmul(self.generator(), self.kernel) + self.bias
        return ops.reshape(prefix, (self.prefix_length,) + self.prefix_shape)

    def call(self, inputs):
        prefix = ops.cast(self.value(), inputs.dtype)
        batch = ops.shape(inputs)[0]
        return ops.broadcast_to(
            prefix[None], (batch, self.prefix_length) + self.prefix_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.prefix_length) + tuple(input_shape[2:])

    def get_config(self):
        return {
            **super().get_config(),
            "prefix_length": self.prefix_length,
            # The object itself: inside `.keras` saving's object-sharing
            # scope, every prefix sharing it gets the same generator back.
            "generator": self.generator,
            **validation.serialize_objects(self, "prefix_initializer"),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("generator"), dict):
            config["generator"] = keras.saving.deserialize_keras_object(
                config["generator"])
        return cls(**config)
