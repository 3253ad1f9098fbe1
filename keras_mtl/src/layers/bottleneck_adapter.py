"""`BottleneckAdapter`: the sequential adapter (Houlsby, Pfeiffer)."""

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation
from keras_mtl.src.layers.bottleneck import Bottleneck


@keras_mtl_export("keras_mtl.layers.BottleneckAdapter")
class BottleneckAdapter(Bottleneck):
    """Bottleneck adapter: down-projection, activation, up-projection.

    With `delta(x) = W_up act(W_down x + b_down) + b_up`, the layer returns
    `x + delta(x)` when `residual=True` and `delta(x)` alone when
    `residual=False` (the form the combiners `ScaLearn`, `AdapterFusion` and
    `AverageCombiner` take as input). `W_down` has shape `(d, m)` with
    `m = hidden_units`, or `max(1, d // reduction_factor)` when `hidden_units`
    is None. The up-projection is zero-initialised, so the adapter starts as
    the identity (`residual=True`) or as zero (`residual=False`). Weights:
    `2 d m + m + d`, e.g. 74,544 for `d = 768` and a reduction factor of 16.

    Two published configurations are available as class methods:

    - `BottleneckAdapter.pfeiffer()`: reduction factor 16, ReLU. Placed once
      per transformer layer, after the feed-forward block (the `SeqBn`
      configuration of the `adapters` library).
    - `BottleneckAdapter.houlsby()`: reduction factor 16, swish. Placed
      twice per transformer layer, after the attention block and after the
      feed-forward block (`DoubleSeqBn`).

    Placement is the job of the transfer utilities; this layer only computes
    the adapter.

    Args:
        reduction_factor: positive number; the bottleneck width is
            `d // reduction_factor` (at least 1). Defaults to `16`.
        activation: activation between the projections. Defaults to
            `"relu"`.
        residual: whether to add the input to the adapter's output. Defaults
            to `True`.
        hidden_units: optional positive int, the bottleneck width; overrides
            `reduction_factor` when given. Defaults to `None`.
        down_initializer: initializer of the down-projection kernel. Defaults
            to `RandomNormal(stddev=0.02)` (the `"bert"` initialisation of the
            `adapters` library). Biases start at zero.
        up_initializer: initializer of the up-projection kernel. Defaults to
            `"zeros"`, which makes the adapter start as the identity.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(..., d)`.

    Input shape:
        `(..., d)`.

    Output shape:
        `(..., d)`.

    Example:

    >>> adapter = keras_mtl.layers.BottleneckAdapter(reduction_factor=4)
    >>> x = np.ones((2, 3, 8), "float32")
    >>> y = adapter(x)  # identity at initialisation
    >>> houlsby = keras_mtl.layers.BottleneckAdapter.houlsby(residual=False)

    Reference:
        Houlsby et al., "Parameter-Efficient Transfer Learning for NLP",
        ICML 2019.
        Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for
        Transfer Learning", EACL 2021.
    """

    def __init__(
        self,
        reduction_factor=16,
        activation="relu",
        residual=True,
        hidden_units=None,
        down_initializer=None,
        up_initializer="zeros",
        **kwargs,
    ):
        if down_initializer is None:
            down_initializer = keras.initializers.RandomNormal(stddev=0.02)
        super().__init__(
            reduction_factor=reduction_factor,
            hidden_units=hidden_units,
            activation=activation,
            down_initializer=down_initializer,
            up_initializer=up_initializer,
            **kwargs,
        )
        self.residual = validation.check_bool("residual", residual)

    @classmethod
    def pfeiffer(cls, **kwargs):
        """Pfeiffer configuration: reduction factor 16, ReLU, once per layer.

        Keyword arguments override the configuration.
        """
        return cls(**{"reduction_factor": 16, "activation": "relu", **kwargs})

    @classmethod
    def houlsby(cls, **kwargs):
        """Houlsby configuration: reduction factor 16, swish, twice per layer.

        Keyword arguments override the configuration.
        """
        return cls(**{"reduction_factor": 16, "activation": "swish", **kwargs})

    def call(self, inputs):
        delta = self.delta(inputs)
        if self.residual:
            return inputs + delta
        return delta

    def get_config(self):
        return {**super().get_config(), "residual": self.residual}
