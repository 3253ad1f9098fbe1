"""`LoRAAdapter`: the low-rank update of a projection (Hu et al., 2022)."""

import math

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation


def lora_a_initializer():
    """Kaiming-uniform with `a = sqrt(5)`, i.e. `U(-1/sqrt(d_in),
    1/sqrt(d_in))`: the initialisation of LoRA's reference code."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def check_output_dims(value):
    """`output_dims` as a tuple of positive ints (or None)."""
    if value is None:
        return None
    dims = (value,) if isinstance(value, int) else value
    if (
        not isinstance(dims, (tuple, list))
        or not dims
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
               for d in dims)
    ):
        raise ValueError(
            "`output_dims` must be a positive int or a non-empty tuple of "
            f"them. Received: output_dims={value!r}"
        )
    return tuple(int(d) for d in dims)


@keras_mtl_export("keras_mtl.layers.LoRAAdapter")
class LoRAAdapter(keras.layers.Layer):
    """Low-rank adaptation of a projection: `delta(x) = (alpha / r) x A B`.

    LoRA (Hu et al., 2022) keeps a pre-trained projection `W` (`d_in` to
    `d_out`) frozen and learns `A` (`d_in x r`) and `B` (`r x d_out`); the
    adapted projection is `x W + (alpha / r) x A B`. This layer computes the
    second term from the projection's input `x`, reshaped to the
    projection's output dimensions (e.g. `(heads, head_dim)` for the query,
    key and value `EinsumDense`s of `MultiHeadAttention`, whose kernels are
    flattened to `d_in x d_out`). `A` starts Kaiming-uniform, `B` at zero,
    so the update starts at zero. Weights: `r (d_in + d_out)`.
    `keras_mtl.transfer.add_adapters(..., config="lora")` places it beside
    attention projections; `keras_mtl.transfer.merge_adapter` folds it into
    `W`.

    Keras' own `enable_lora` gives an `EinsumDense` kernel `(d_in, heads,
    head_dim)` a per-head `A` of shape `(d_in, heads, r)`, i.e. `heads`
    times the paper's parameters; this layer follows the paper.

    Args:
        rank: the rank `r`, a positive int. Defaults to `8`.
        alpha: the scale numerator, a positive number. Defaults to `None`,
            i.e. `rank` (scale 1), as `adapters` and Keras do.
        output_dims: the projection's output dimensions, an int or a tuple
            of ints. Defaults to `None`: the input's last dimension.
        dropout: dropout rate on the input of `A`. Defaults to `0.0`.
        a_initializer: initializer of `A`. Defaults to `None`, i.e.
            Kaiming-uniform with `a = sqrt(5)`.
        b_initializer: initializer of `B`. Defaults to `"zeros"`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: the projection's input, shape `(..., d_in)`.
        training: Python boolean (for the dropout).

    Output shape:
        `(...,) + output_dims`.

    Example:

    >>> lora = keras_mtl.layers.LoRAAdapter(rank=2, output_dims=(2, 4))
    >>> delta = keras.ops.convert_to_numpy(lora(np.ones((3, 5, 8), "float32")))
    >>> delta.shape, float(np.abs(delta).max())  # zero at init
    ((3, 5, 2, 4), 0.0)
    >>> lora.count_params()  # 2 * (8 + 8)
    32

    Reference:
        - [Hu et al., 2022](https://arxiv.org/abs/2106.09685)
    """

    def __init__(
        self,
        rank=8,
        alpha=None,
        output_dims=None,
        dropout=0.0,
        a_initializer=None,
        b_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rank = validation.check_positive_int("rank", rank)
        self.alpha = float(validation.check_positive_number(
            "alpha", rank if alpha is None else alpha))
        self._dims = check_output_dims(output_dims)
        self.dropout = validation.check_rate("dropout", dropout)
        self.a_initializer = validation.get_initializer(
            "a_initializer",
            lora_a_initializer() if a_initializer is None else a_initializer)
        self.b_initializer = validation.get_initializer(
            "b_initializer", b_initializer)
        self._dropout = keras.layers.Dropout(self.dropout)

    @property
    def scale(self):
        """`alpha / rank`."""
        return self.alpha / self.rank

    def build(self, input_shape):
        d_in = validation.last_dim("inputs", input_shape)
        dims = self._dims or (d_in,)
        self.lora_a = self.add_weight(
            shape=(d_in, self.rank), initializer=self.a_initializer,
            name="lora_a")
        self.lora_b = self.add_weight(
            shape=(self.rank, math.prod(dims)),
            initializer=self.b_initializer, name="lora_b")
        self._out = dims

    def delta_kernel(self):
        """`(alpha / r) A B`, shape `(d_in, d_out)` (flattened outputs)."""
        return ops.matmul(self.lora_a, self.lora_b) * self.scale

    def call(self, inputs, training=None):
        x = self._dropout(inputs, training=training)
        delta = ops.matmul(ops.matmul(x, self.lora_a), self.lora_b)
        delta = delta * ops.cast(self.scale, delta.dtype)
        if len(self._out) == 1:
            return delta
        leading = ops.shape(inputs)[:-1]
        return ops.reshape(delta, tuple(leading) + self._out)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self._dims or (input_shape[-1],))

    def get_config(self):
        return {
            **super().get_config(),
            "rank": self.rank,
            "alpha": self.alpha,
            "output_dims": None if self._dims is None else list(self._dims),
            "dropout": self.dropout,
            **validation.serialize_objects(
                self, "a_initializer", "b_initializer"),
        }
