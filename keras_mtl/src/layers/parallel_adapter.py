"""`ParallelAdapter`: the scaled parallel adapter of He et al. (2022)."""

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.bottleneck import Bottleneck


@keras_mtl_export("keras_mtl.layers.ParallelAdapter")
class ParallelAdapter(Bottleneck):
    """Scaled parallel adapter: `s * (W_up act(W_down x + b_down) + b_up)`.

    The adapter runs in parallel to a block `f` (usually the feed-forward
    block of a transformer layer) and the caller adds its output to the
    block's: `f(x) + s * delta(x)`. The layer returns only `s * delta(x)`.
    `W_down` has shape `(d, m)` with `m = hidden_units`, or
    `max(1, d // reduction_factor)`. As in the `ParBn` configuration of the
    `adapters` library, the down-projection is Kaiming-uniform
    (`U(-1/sqrt(d), 1/sqrt(d))`, the PyTorch `Linear` default) and the
    up-projection and biases start at zero, so the output is zero at
    initialisation.

    Args:
        reduction_factor: positive number; the bottleneck width is
            `d // reduction_factor` (at least 1). Defaults to `2`.
        scaling: the fixed scale `s` of the adapter's output. Defaults to
            `4.0`.
        activation: activation between the projections. Defaults to
            `"relu"`.
        hidden_units: optional positive int, the bottleneck width; overrides
            `reduction_factor` when given. Defaults to `None`.
        down_initializer: initializer of the down-projection kernel. Defaults
            to `VarianceScaling(1/3, "fan_in", "uniform")`.
        up_initializer: initializer of the up-projection kernel. Defaults to
            `"zeros"`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(..., d)`, the input of the parallel block.

    Input shape:
        `(..., d)`.

    Output shape:
        `(..., d)`.

    Example:

    >>> adapter = keras_mtl.layers.ParallelAdapter(reduction_factor=2)
    >>> x = np.ones((2, 3, 8), "float32")
    >>> block = keras.layers.Dense(8)
    >>> y = block(x) + adapter(x)  # equals block(x) at initialisation

    Reference:
        He et al., "Towards a Unified View of Parameter-Efficient Transfer
        Learning", ICLR 2022.
    """

    def __init__(
        self,
        reduction_factor=2,
        scaling=4.0,
        activation="relu",
        hidden_units=None,
        down_initializer=None,
        up_initializer="zeros",
        **kwargs,
    ):
        if down_initializer is None:
            down_initializer = keras.initializers.VarianceScaling(
                scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
            )
        super().__init__(
            reduction_factor=reduction_factor,
            hidden_units=hidden_units,
            activation=activation,
            down_initializer=down_initializer,
            up_initializer=up_initializer,
            **kwargs,
        )
        if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
            raise ValueError(
                f"`scaling` must be a number. Received: scaling={scaling!r}"
            )
        self.scaling = float(scaling)

    def call(self, inputs):
        return self.scaling * self.delta(inputs)

    def get_config(self):
        return {**super().get_config(), "scaling": self.scaling}
