"""`IA3Adapter`: learned rescaling of activations, (IA)^3 (Liu et al.)."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation


@keras_mtl_export("keras_mtl.layers.IA3Adapter")
class IA3Adapter(keras.layers.Layer):
    """(IA)^3: multiplies activations by a learned vector `l`, `h -> l * h`.

    (IA)^3 (Liu et al., 2022, T-Few) rescales the keys and values of every
    attention layer and the feed-forward block's intermediate activations
    with learned vectors that start at one, so the model is unchanged at
    initialisation. `l` has the shape of the input's last `num_axes`
    dimensions (e.g. `(heads, head_dim)` on the output of an attention
    projection). With `residual=False` the layer returns `(l - 1) * h`, the
    change that an `keras_mtl.transfer.AdapterWrapper` adds to `h`.
    Weights: the product of the scaled dimensions (`2 d + d_ff` per layer:
    55,296 for RoBERTa-base). `keras_mtl.transfer.merge_adapter` folds `l`
    into the preceding projection.

    Args:
        num_axes: how many trailing axes `l` spans. Defaults to `1`.
        residual: return `l * h` (`True`) or `(l - 1) * h` (`False`).
            Defaults to `True`.
        scale_initializer: initializer of `l`. Defaults to `"ones"`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: activations, shape `(..., *scaled_dims)`.

    Example:

    >>> ia3 = keras_mtl.layers.IA3Adapter(num_axes=2)
    >>> h = np.ones((3, 5, 2, 4), "float32")
    >>> bool(np.allclose(keras.ops.convert_to_numpy(ia3(h)), h))  # identity
    True
    >>> ia3.count_params()
    8

    Reference:
        - [Liu et al., 2022](https://arxiv.org/abs/2205.05638)
    """

    def __init__(
        self, num_axes=1, residual=True, scale_initializer="ones", **kwargs
    ):
        super().__init__(**kwargs)
        self.num_axes = validation.check_positive_int("num_axes", num_axes)
        self.residual = validation.check_bool("residual", residual)
        self.scale_initializer = validation.get_initializer(
            "scale_initializer", scale_initializer)

    def build(self, input_shape):
        dims = tuple(input_shape[-self.num_axes:])
        if len(input_shape) < self.num_axes or any(d is None for d in dims):
            raise ValueError(
                f"The last {self.num_axes} dimensions of the input must be "
                f"known. Received: input shape={tuple(input_shape)}"
            )
        self.scale = self.add_weight(
            shape=dims, initializer=self.scale_initializer, name="scale")

    def call(self, inputs):
        scale = ops.cast(self.scale, inputs.dtype)
        if self.residual:
            return inputs * scale
        return inputs * (scale - 1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_axes": self.num_axes,
            "residual": self.residual,
            **validation.serialize_objects(self, "scale_initializer"),
        }
