"""`AverageCombiner`: the plain mean of source adapter outputs."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.source_stacking import stack_sources
from keras_mtl.src.layers.source_stacking import stacked_shape


@keras_mtl_export("keras_mtl.layers.AverageCombiner")
class AverageCombiner(keras.layers.Layer):
    """Averages the outputs of N source adapters: `(1/N) sum_i a_i`.

    A parameter-free baseline for `ScaLearn` and `AdapterFusion`, with the
    same call convention; it corresponds to the `Average` composition block
    of the `adapters` library with equal weights. The caller adds the
    residual.

    Args:
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        adapter_outputs: list of N tensors of shape `(..., d)`, or one tensor
            of shape `(..., N, d)`.
        query: ignored (accepted for a call convention shared with
            `AdapterFusion`).
        training: ignored.

    Output shape:
        `(..., d)`.

    Example:

    >>> combiner = keras_mtl.layers.AverageCombiner()
    >>> y = combiner([np.zeros((2, 4), "float32"), np.ones((2, 4), "float32")])
    >>> # every entry is 0.5

    Reference:
        Pfeiffer et al., "AdapterHub: A Framework for Adapting Transformers",
        EMNLP 2020 (system demonstrations).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, adapter_outputs, query=None, training=None):
        return ops.mean(stack_sources(adapter_outputs), axis=-2)

    def compute_output_shape(self, adapter_outputs_shape):
        shape = stacked_shape(adapter_outputs_shape)
        return shape[:-2] + shape[-1:]
