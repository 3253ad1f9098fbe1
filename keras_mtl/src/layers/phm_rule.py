"""`PHMRule`: the shared rule matrices of Compacter's PHM layers."""

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation


@keras_mtl_export("keras_mtl.layers.PHMRule")
class PHMRule(keras.layers.Layer):
    """The `n` rule matrices `A_i` (`n x n`) that Compacter shares.

    A parameterised hypercomplex multiplication (PHM) layer builds its kernel
    as `W = sum_i A_i kron B_i`; Compacter (Mahabadi et al., 2021) shares
    one set `{A_i}` between all adapter projections of a model (`n^3`
    weights in all) and learns the `B_i` per projection. Pass the same
    `PHMRule` to every `keras_mtl.layers.CompacterAdapter` of a task; the
    sharing survives `.keras` saving.

    Args:
        phm_dim: `n`. Defaults to `4`.
        initializer: initializer of the rules. Defaults to `None`, i.e.
            `RandomNormal(stddev=1e-4)` (`adapters`' `phm_init_range`), so
            the adapters start close to zero.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> rule = keras_mtl.layers.PHMRule(phm_dim=2)
    >>> rule.build(None)
    >>> tuple(rule.rule.shape)
    (2, 2, 2)
    """

    def __init__(self, phm_dim=4, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.phm_dim = validation.check_positive_int("phm_dim", phm_dim)
        self.initializer = validation.get_initializer(
            "initializer",
            keras.initializers.RandomNormal(stddev=1e-4)
            if initializer is None else initializer)

    def build(self, input_shape=None):
        n = self.phm_dim
        self.rule = self.add_weight(shape=(n, n, n),
                                    initializer=self.initializer, name="rule")

    def call(self, inputs=None):
        # The rules do not depend on inputs; the adapters read `rule`.
        return keras.ops.convert_to_tensor(self.rule)

    def compute_output_shape(self, input_shape=None):
        return (self.phm_dim,) * 3

    def get_config(self):
        return {**super().get_config(), "phm_dim": self.phm_dim,
                **validation.serialize_objects(self, "initializer")}
