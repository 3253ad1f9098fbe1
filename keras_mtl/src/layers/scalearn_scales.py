"""`ScaLearnScales`: the scaling coefficients of ScaLearn, shareable."""

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation

SCALE_MODES = ("vector", "scalar")


@keras_mtl_export("keras_mtl.layers.ScaLearnScales")
class ScaLearnScales(keras.layers.Layer):
    """The scaling coefficients `omega` of ScaLearn, as a shareable object.

    Holds one trainable variable `omega` of shape `(N, d)` (`mode="vector"`)
    or `(N, 1)` (`mode="scalar"`), initialised from
    `N(init_scale / N, init_stddev^2)`, i.e. `N(2/N, 0.001^2)` by default, so
    the scales start out summing to about 2. A `ScaLearn` layer creates its
    own `ScaLearnScales` unless one is passed as `shared_scales`; passing the
    same object to the `ScaLearn` layer of every transformer layer gives the
    "++" variants (ScaLearn++ and ScaLearnUniform++), which learn one set of
    scales for the whole model (`N d` or `N` weights in total). The sharing
    survives `.keras` saving. `d` is taken from the first `ScaLearn` layer
    that builds it.

    Args:
        num_sources: number of source adapters `N` (including the target
            task's own adapter, as in the paper).
        mode: `"vector"` (one scale per source and feature, ScaLearn) or
            `"scalar"` (one scale per source, ScaLearnUniform). Defaults to
            `"vector"`.
        init_scale: the scales are initialised around `init_scale / N`.
            Defaults to `2.0`.
        init_stddev: standard deviation of the initial scales. Defaults to
            `1e-3`.
        seed: optional int, the seed of the initialisation. Defaults to
            `None`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> shared = keras_mtl.layers.ScaLearnScales(2, mode="scalar")
    >>> layer_1 = keras_mtl.layers.ScaLearn(
    ...     2, mode="scalar", shared_scales=shared, dropout=0.0)
    >>> layer_2 = keras_mtl.layers.ScaLearn(
    ...     2, mode="scalar", shared_scales=shared, dropout=0.0)
    >>> a = [np.ones((2, 4), "float32"), np.zeros((2, 4), "float32")]
    >>> out_1, out_2 = layer_1(a), layer_2(a)
    >>> shared.omega.shape
    (2, 1)

    Reference:
        Frohmann et al., "ScaLearn: Simple and Highly Parameter-Efficient
        Task Transfer by Learning to Scale", Findings of ACL 2024.
    """

    def __init__(
        self,
        num_sources,
        mode="vector",
        init_scale=2.0,
        init_stddev=1e-3,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_sources = validation.check_positive_int(
            "num_sources", num_sources
        )
        self.mode = validation.check_choice("mode", mode, SCALE_MODES)
        if isinstance(init_scale, bool) or not isinstance(
            init_scale, (int, float)
        ):
            raise ValueError(
                "`init_scale` must be a number. "
                f"Received: init_scale={init_scale!r}"
            )
        self.init_scale = float(init_scale)
        self.init_stddev = validation.check_non_negative(
            "init_stddev", init_stddev
        )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int)
        ):
            raise ValueError(
                f"`seed` must be an int or None. Received: seed={seed!r}"
            )
        self.seed = seed

    def scales_shape(self, dim):
        return (self.num_sources, dim if self.mode == "vector" else 1)

    def build(self, input_shape):
        dim = 1
        if self.mode == "vector":
            dim = validation.last_dim("inputs", input_shape)
        self.omega = self.add_weight(
            name="omega",
            shape=self.scales_shape(dim),
            initializer=keras.initializers.RandomNormal(
                mean=self.init_scale / self.num_sources,
                stddev=self.init_stddev,
                seed=self.seed,
            ),
        )

    def call(self, inputs):
        # The scales do not depend on the inputs; `ScaLearn` reads `omega`.
        return keras.ops.convert_to_tensor(self.omega)

    def compute_output_shape(self, input_shape):
        dim = input_shape[-1] if input_shape else None
        return self.scales_shape(dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_sources": self.num_sources,
            "mode": self.mode,
            "init_scale": self.init_scale,
            "init_stddev": self.init_stddev,
            "seed": self.seed,
        }
