"""`HyperAdapter`: a bottleneck adapter whose weights a hypernetwork
generates."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation
from keras_mtl.src.layers.adapter_hypernetwork import AdapterHypernetwork
from keras_mtl.src.layers.adapter_hypernetwork import TaskEmbedding
from keras_mtl.src.layers.adapter_hypernetwork import standardize


@keras_mtl_export("keras_mtl.layers.HyperAdapter")
class HyperAdapter(keras.layers.Layer):
    """Hyperformer's adapter: `delta(x) = LN_{gamma, beta}(W_up f(W_dn x +
    b_dn) + b_up)`, every tensor generated.

    The hypernetwork (`keras_mtl.layers.AdapterHypernetwork`, shared by all
    tasks and layers) generates `W_dn`, `b_dn`, `W_up`, `b_up` and the
    output LayerNorm's `gamma`, `beta` from the task's embedding
    (`keras_mtl.layers.TaskEmbedding`, shared by the task's adapters) and
    this adapter's layer and position (Mahabadi et al., 2021). The adapter
    has no weights of its own; the caller adds the residual.

    Args:
        hypernetwork: the shared `AdapterHypernetwork`.
        task_embedding: the task's `TaskEmbedding`.
        layer_index: this adapter's layer, an int.
        position_index: this adapter's position in its layer, an int.
        activation: defaults to `"gelu"`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(..., d)`.

    Example:

    >>> net = keras_mtl.layers.AdapterHypernetwork(
    ...     num_layers=1, reduction_factor=4, embedding_dim=8,
    ...     projection_dim=16)
    >>> task = keras_mtl.layers.TaskEmbedding(embedding_dim=8)
    >>> adapter = keras_mtl.layers.HyperAdapter(net, task, 0, 1)
    >>> tuple(adapter(np.ones((2, 3, 16), "float32")).shape)
    (2, 3, 16)
    """

    def __init__(self, hypernetwork, task_embedding, layer_index=0,
                 position_index=0, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        if isinstance(hypernetwork, dict):
            hypernetwork = keras.saving.deserialize_keras_object(hypernetwork)
        if isinstance(task_embedding, dict):
            task_embedding = keras.saving.deserialize_keras_object(
                task_embedding)
        if not isinstance(hypernetwork, AdapterHypernetwork):
            raise ValueError(
                "`hypernetwork` must be an `AdapterHypernetwork`. "
                f"Received: hypernetwork={hypernetwork!r}")
        if not isinstance(task_embedding, TaskEmbedding):
            raise ValueError(
                "`task_embedding` must be a `TaskEmbedding`. "
                f"Received: task_embedding={task_embedding!r}")
        if task_embedding.embedding_dim != hypernetwork.embedding_dim:
            raise ValueError(
                f"`task_embedding` has size {task_embedding.embedding_dim}, "
                f"the hypernetwork expects {hypernetwork.embedding_dim}.")
        for argument, value, bound in (
                ("layer_index", layer_index, hypernetwork.num_layers),
                ("position_index", position_index,
                 hypernetwork.positions_per_layer)):
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    0 <= value < bound):
                raise ValueError(
                    f"`{argument}` must be an int in [0, {bound}). "
                    f"Received: {argument}={value!r}")
        self.hypernetwork = hypernetwork
        self.task_embedding = task_embedding
        self.layer_index = layer_index
        self.position_index = position_index
        self.activation = validation.get_activation(activation)

    def build(self, input_shape):
        if not self.hypernetwork.built:
            self.hypernetwork.build(input_shape)
        if not self.task_embedding.built:
            self.task_embedding.build()
        d = validation.last_dim("inputs", input_shape)
        if self.hypernetwork.shapes["up_bias"] != (d,):
            raise ValueError(
                f"The hypernetwork generates adapters for size "
                f"{self.hypernetwork.shapes['up_bias'][0]}. Received: input "
                f"shape={tuple(input_shape)}")

    def weights_for_inputs(self):
        """The generated tensors of this adapter."""
        return self.hypernetwork.generate(
            self.task_embedding.embedding, self.layer_index,
            self.position_index)

    def call(self, inputs):
        w = {k: ops.cast(v, inputs.dtype)
             for k, v in self.weights_for_inputs().items()}
        hidden = self.activation(ops.matmul(inputs, w["down"])
                                 + w["down_bias"])
        x = ops.matmul(hidden, w["up"]) + w["up_bias"]
        return standardize(x) * w["gamma"] + w["beta"]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            # The objects themselves: inside `.keras` saving's
            # object-sharing scope they come back shared.
            "hypernetwork": self.hypernetwork,
            "task_embedding": self.task_embedding,
            "layer_index": self.layer_index,
            "position_index": self.position_index,
            "activation": keras.activations.serialize(self.activation),
        }
