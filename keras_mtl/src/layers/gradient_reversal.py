import math

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export


@ops.custom_gradient
def reverse_gradient(x, strength):
    """Identity on `x`; the gradient is multiplied by `-strength`.

    `strength` is an explicit argument (not a closure) so that JAX's
    `custom_gradient` sees it as a traced input; its own gradient is zero.
    """

    def grad(*args, upstream=None):
        # JAX and TensorFlow pass the upstream gradient positionally,
        # PyTorch as a keyword (see `keras.ops.custom_gradient`).
        if upstream is None:
            (upstream,) = args
        scale = ops.cast(strength, upstream.dtype)
        return ops.negative(upstream) * scale, ops.zeros_like(strength)

    return ops.copy(x), grad


def check_strength(strength, arg_name="strength"):
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float))
        or not math.isfinite(strength)
        or strength < 0
    ):
        raise ValueError(
            f"`{arg_name}` must be a finite number >= 0. Received: "
            f"{arg_name}={strength!r}"
        )
    return float(strength)


@keras_mtl_export("keras_mtl.layers.GradientReversal")
class GradientReversal(keras.layers.Layer):
    """Gradient reversal: identity forward, gradient times `-strength` back.

    Forward `y = x`; backward `dL/dx = -strength * dL/dy`. Placed between a
    shared feature extractor and a domain (or task) discriminator, it trains
    the discriminator to tell the domains apart while pushing the features
    to make them indistinguishable (DANN; Ganin & Lempitsky, 2015), or, in
    adversarial shared-private multi-task learning (Liu et al., 2017), keeps
    task-specific information out of the shared features.

    `strength` lives in a non-trainable variable, so it can change during
    training (e.g. with `keras_mtl.callbacks.GradientReversalSchedule`)
    without retracing the compiled step. Set it with `layer.strength = v`.
    Implemented with `keras.ops.custom_gradient`; the forward output is
    exactly `x`.

    Args:
        strength: non-negative scale `lambda` of the reversed gradient.
            Defaults to 1.0.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: a tensor of any shape.

    Output shape:
        the input's shape.

    Example:

    >>> x = keras.Input((4,))
    >>> features = keras.layers.Dense(8, activation="relu")(x)
    >>> reversed_features = keras_mtl.layers.GradientReversal(0.5)(features)
    >>> domain_logit = keras.layers.Dense(1)(reversed_features)
    >>> model = keras.Model(x, domain_logit)
    >>> y = model(np.ones((2, 4)))

    Reference:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by
        Backpropagation", ICML 2015.
    """

    def __init__(self, strength=1.0, **kwargs):
        super().__init__(**kwargs)
        self._initial_strength = check_strength(strength)
        self.supports_masking = True

    def build(self, input_shape):
        self._strength = self.add_weight(
            name="strength",
            shape=(),
            initializer=keras.initializers.Constant(self._initial_strength),
            trainable=False,
            autocast=False,
        )

    @property
    def strength(self):
        """The current strength, as a Python float."""
        if not self.built:
            return self._initial_strength
        return float(ops.convert_to_numpy(self._strength.value))

    @strength.setter
    def strength(self, value):
        value = check_strength(value)
        if not self.built:
            self._initial_strength = value
        else:
            self._strength.assign(value)

    @property
    def strength_variable(self):
        """The non-trainable variable holding the strength (after build)."""
        return self._strength if self.built else None

    def call(self, inputs):
        return reverse_gradient(inputs, self._strength.value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "strength": self.strength}
