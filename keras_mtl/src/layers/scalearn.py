"""`ScaLearn`: learned scaling of source adapters (Frohmann et al., 2024)."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation
from keras_mtl.src.layers.scalearn_scales import SCALE_MODES
from keras_mtl.src.layers.scalearn_scales import ScaLearnScales
from keras_mtl.src.layers.source_stacking import stack_sources
from keras_mtl.src.layers.source_stacking import stacked_shape

NORMALIZATIONS = (None, "mean", "softmax")


@keras_mtl_export("keras_mtl.layers.ScaLearn")
class ScaLearn(keras.layers.Layer):
    """ScaLearn combiner: a learned, scaled sum of source adapter outputs.

    Given the outputs `a_1, ..., a_N` (each `(..., d)`, without residual) of N
    frozen source adapters applied to the same hidden state, returns

    `sum_i omega_i * a_i`

    where `omega_i` is a vector of `d` scales (`mode="vector"`, ScaLearn) or a
    scalar (`mode="scalar"`, ScaLearnUniform). The caller adds the residual
    (in the paper: `out = LN(s + sum_i omega_i * a_i(LN(s)))`). The scales are
    initialised from `N(2/N, 0.001^2)` and are unconstrained unless
    `normalization` is `"mean"` (`omega / sum_i omega_i`) or `"softmax"`
    (softmax over the sources). In training, dropout is applied to the
    scales themselves (after normalisation), not to the activations.

    The four variants of the paper:

    - ScaLearn: `ScaLearn(N)` in every layer (`N d` weights per layer);
    - ScaLearnUniform: `ScaLearn(N, mode="scalar")` (`N` per layer);
    - ScaLearn++: one `s = ScaLearnScales(N)` passed as
      `ScaLearn(N, shared_scales=s)` to every layer (`N d` in total);
    - ScaLearnUniform++: `s = ScaLearnScales(N, mode="scalar")` and
      `ScaLearn(N, mode="scalar", shared_scales=s, dropout=0.0)`
      (`N` in total).

    Args:
        num_sources: number of source adapters `N`.
        mode: `"vector"` or `"scalar"`. Defaults to `"vector"`.
        dropout: dropout rate applied to the scales in training. Defaults
            to `0.3` (the paper uses `0.0` for ScaLearnUniform++).
        normalization: `None`, `"mean"` or `"softmax"`. Defaults to `None`.
        shared_scales: optional `ScaLearnScales` shared with other `ScaLearn`
            layers (the "++" variants); its `num_sources` and `mode` must
            match. When given, `init_scale`, `init_stddev` and `seed` only
            seed the dropout (the shared object has its own initialisation).
            Defaults to `None`: the layer owns its scales.
        init_scale: the scales start around `init_scale / N`. Defaults to
            `2.0`.
        init_stddev: standard deviation of the initial scales. Defaults to
            `1e-3`.
        seed: optional int seeding the initialisation and the dropout.
            Defaults to `None`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        adapter_outputs: list of N tensors of shape `(..., d)`, or one tensor
            of shape `(..., N, d)`.
        query: ignored (the hidden state the adapters were applied to;
            accepted for a call convention shared with `AdapterFusion`).
        training: bool, whether dropout on the scales is active.

    Output shape:
        `(..., d)`.

    Example:

    >>> combiner = keras_mtl.layers.ScaLearn(3)
    >>> outputs = [np.ones((2, 5, 4), "float32") for _ in range(3)]
    >>> y = combiner(outputs)  # about 2 * ones: the scales sum to about 2
    >>> y.shape
    (2, 5, 4)

    Reference:
        Frohmann et al., "ScaLearn: Simple and Highly Parameter-Efficient
        Task Transfer by Learning to Scale", Findings of ACL 2024.
    """

    def __init__(
        self,
        num_sources,
        mode="vector",
        dropout=0.3,
        normalization=None,
        shared_scales=None,
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
        self.dropout = validation.check_rate("dropout", dropout)
        self.normalization = validation.check_choice(
            "normalization", normalization, NORMALIZATIONS
        )
        if shared_scales is None:
            self.scales = ScaLearnScales(
                num_sources,
                mode=mode,
                init_scale=init_scale,
                init_stddev=init_stddev,
                seed=seed,
                name="scales",
            )
        else:
            if not isinstance(shared_scales, ScaLearnScales):
                raise ValueError(
                    "`shared_scales` must be a `ScaLearnScales` or None. "
                    f"Received: shared_scales={shared_scales!r}"
                )
            if shared_scales.num_sources != self.num_sources:
                raise ValueError(
                    "`shared_scales` has num_sources="
                    f"{shared_scales.num_sources}, but this layer has "
                    f"num_sources={num_sources}. Received: "
                    f"shared_scales={shared_scales!r}"
                )
            if shared_scales.mode != self.mode:
                raise ValueError(
                    f"`shared_scales` has mode={shared_scales.mode!r}, but "
                    f"this layer has mode={mode!r}. Received: "
                    f"shared_scales={shared_scales!r}"
                )
            self.scales = shared_scales
        self.shared = shared_scales is not None
        self.init_scale = self.scales.init_scale
        self.init_stddev = self.scales.init_stddev
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def omega(self):
        """The scales variable, `(N, d)` or `(N, 1)`."""
        return self.scales.omega

    def build(self, adapter_outputs_shape):
        shape = stacked_shape(adapter_outputs_shape)
        if shape[-2] is not None and shape[-2] != self.num_sources:
            raise ValueError(
                f"Expected {self.num_sources} adapter outputs (num_sources), "
                f"received {shape[-2]}. Received: adapter_outputs "
                f"shape={shape}"
            )
        dim = validation.last_dim("adapter_outputs", shape)
        if not self.scales.built:
            self.scales.build((dim,))
        expected = self.scales.scales_shape(dim)
        if tuple(self.scales.omega.shape) != expected:
            raise ValueError(
                f"The shared scales have shape {tuple(self.omega.shape)}, "
                f"but adapter outputs of size d={dim} need {expected}. "
                f"Received: adapter_outputs shape={shape}"
            )

    def scaling_coefficients(self, training=None):
        """The scales after normalisation and (in training) dropout."""
        omega = ops.convert_to_tensor(self.scales.omega)
        if self.normalization == "mean":
            omega = omega / ops.sum(omega, axis=0, keepdims=True)
        elif self.normalization == "softmax":
            omega = ops.softmax(omega, axis=0)
        if training and self.dropout > 0:
            omega = keras.random.dropout(
                omega, self.dropout, seed=self.seed_generator
            )
        return omega

    def call(self, adapter_outputs, query=None, training=None):
        stacked = stack_sources(adapter_outputs)
        omega = ops.cast(self.scaling_coefficients(training), stacked.dtype)
        return ops.sum(stacked * omega, axis=-2)

    def compute_output_shape(self, adapter_outputs_shape):
        shape = stacked_shape(adapter_outputs_shape)
        return shape[:-2] + shape[-1:]

    def get_config(self):
        config = {
            **super().get_config(),
            "num_sources": self.num_sources,
            "mode": self.mode,
            "dropout": self.dropout,
            "normalization": self.normalization,
            "init_scale": self.init_scale,
            "init_stddev": self.init_stddev,
            "seed": self.seed,
        }
        if self.shared:
            # The object itself, not its serialised dict: Keras serialises it
            # while serialising this layer, inside the object-sharing scope of
            # `.keras` saving, so every layer sharing it records the same
            # `shared_object_id` and gets the same object back on loading.
            config["shared_scales"] = self.scales
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("shared_scales"), dict):
            config["shared_scales"] = keras.saving.deserialize_keras_object(
                config["shared_scales"]
            )
        return cls(**config)
