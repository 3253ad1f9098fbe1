"""`AdapterHypernetwork` and `TaskEmbedding`: Hyperformer's generated
adapters."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation

# Generated tensors of one adapter: name -> shape, from (d, m).
GENERATED = ("down", "down_bias", "up", "up_bias", "gamma", "beta")


def standardize(x, epsilon=1e-5):
    """`(x - mean) / sqrt(var + epsilon)` over the last axis: a LayerNorm
    without its own scale and shift."""
    mean = ops.mean(x, axis=-1, keepdims=True)
    variance = ops.var(x, axis=-1, keepdims=True)
    return (x - mean) * ops.rsqrt(variance + epsilon)


def _sizes(d, m):
    return {"down": (d, m), "down_bias": (m,), "up": (m, d), "up_bias": (d,),
            "gamma": (d,), "beta": (d,)}


@keras_mtl_export("keras_mtl.layers.TaskEmbedding")
class TaskEmbedding(keras.layers.Layer):
    """One learned vector per task: Hyperformer's task embedding.

    Args:
        embedding_dim: size of the vector. Defaults to `64`.
        initializer: defaults to `"random_normal"` with standard deviation
            1 (Hyperformer's `N(0, 1)`).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> task = keras_mtl.layers.TaskEmbedding(embedding_dim=8)
    >>> tuple(task().shape)
    (8,)
    """

    def __init__(self, embedding_dim=64, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = validation.check_positive_int(
            "embedding_dim", embedding_dim)
        self.initializer = validation.get_initializer(
            "initializer", keras.initializers.RandomNormal(stddev=1.0)
            if initializer is None else initializer)

    def build(self, input_shape=None):
        self.embedding = self.add_weight(
            shape=(self.embedding_dim,), name="embedding",
            initializer=self.initializer)

    def call(self, inputs=None):
        return ops.convert_to_tensor(self.embedding)

    def compute_output_shape(self, input_shape=None):
        return (self.embedding_dim,)

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                **validation.serialize_objects(self, "initializer")}


@keras_mtl_export("keras_mtl.layers.AdapterHypernetwork")
class AdapterHypernetwork(keras.layers.Layer):
    """Generates bottleneck adapters from task and layer embeddings.

    Hyperformer++ (Mahabadi et al., 2021): for a task embedding `z_t`, a
    layer `i` and a position `p` (after attention, after the feed-forward
    block), `e = LN(W_2 relu(W_1 [z_t; z_i; z_p] + b_1) + b_2)`, and linear
    generators map `e` to the adapter's down- and up-projections, their
    biases and the scale and shift of its output LayerNorm. One
    hypernetwork serves every task, layer and position; a task adds only
    its embedding. Generators start at `N(0, 0.01)` with zero biases, as in
    Hyperformer, except those of the LayerNorm's scale and shift, which
    start at zero (`norm_generator_initializer`): the generated adapters
    then start exactly at zero, and the model at its own function, while
    the first step trains the scale's generator (as LoRA's zero `B`).
    Weights:
    `(e + 1)(2 d m + m + 3 d)` for the generators plus
    `(L + P) e + (3 e + 1) h + (h + 1) e + 2 e` for the embeddings and the
    projector (`m = d // reduction_factor`, `h = projection_dim`).

    Args:
        num_layers: number of layers `L` it serves.
        positions_per_layer: adapter positions per layer `P`. Defaults to
            `2`.
        reduction_factor: bottleneck `m = d // reduction_factor`. Defaults
            to `32`.
        embedding_dim: size `e` of the task, layer and position embeddings
            and of `e`. Defaults to `64`.
        projection_dim: hidden size of the projector. Defaults to `128`.
        generator_initializer: defaults to `None`, i.e.
            `RandomNormal(stddev=0.01)`.
        norm_generator_initializer: of the scale and shift generators.
            Defaults to `"zeros"`; `None` uses `generator_initializer`
            (Hyperformer's own initialisation: adapters near zero).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        task_embedding: `(e,)` tensor.
        layer_index: Python int below `num_layers`.
        position_index: Python int below `positions_per_layer`.

    Returns:
        A dict of the generated `"down"` `(d, m)`, `"down_bias"`, `"up"`
        `(m, d)`, `"up_bias"`, `"gamma"` and `"beta"` tensors.

    Example:

    >>> net = keras_mtl.layers.AdapterHypernetwork(
    ...     num_layers=2, reduction_factor=4, embedding_dim=8,
    ...     projection_dim=16)
    >>> net.build((None, 16))  # the hidden size d
    >>> weights = net.generate(np.ones((8,), "float32"), 1, 0)
    >>> tuple(weights["down"].shape)
    (16, 4)

    Reference:
        Mahabadi et al., "Parameter-efficient Multi-task Fine-tuning for
        Transformers via Shared Hypernetworks", ACL 2021.
    """

    def __init__(self, num_layers, positions_per_layer=2, reduction_factor=32,
                 embedding_dim=64, projection_dim=128,
                 generator_initializer=None,
                 norm_generator_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_layers = validation.check_positive_int(
            "num_layers", num_layers)
        self.positions_per_layer = validation.check_positive_int(
            "positions_per_layer", positions_per_layer)
        self.reduction_factor = validation.check_positive_number(
            "reduction_factor", reduction_factor)
        self.embedding_dim = validation.check_positive_int(
            "embedding_dim", embedding_dim)
        self.projection_dim = validation.check_positive_int(
            "projection_dim", projection_dim)
        self.generator_initializer = validation.get_initializer(
            "generator_initializer",
            keras.initializers.RandomNormal(stddev=0.01)
            if generator_initializer is None else generator_initializer)
        self.norm_generator_initializer = validation.get_initializer(
            "norm_generator_initializer",
            self.generator_initializer if norm_generator_initializer is None
            else norm_generator_initializer)

    def build(self, input_shape):
        d = validation.last_dim("input_shape", input_shape)
        m = max(1, int(d // self.reduction_factor))
        e, h = self.embedding_dim, self.projection_dim
        normal = keras.initializers.RandomNormal(stddev=1.0)

        def weight(shape, name, initializer="zeros"):
            return self.add_weight(shape=shape, name=name,
                                   initializer=initializer)

        self.layer_embeddings = weight((self.num_layers, e),
                                       "layer_embeddings", normal)
        self.position_embeddings = weight((self.positions_per_layer, e),
                                          "position_embeddings", normal)
        self.projector_kernel = weight((3 * e, h), "projector_kernel",
                                       "glorot_uniform")
        self.projector_bias = weight((h,), "projector_bias")
        self.output_kernel = weight((h, e), "output_kernel", "glorot_uniform")
        self.output_bias = weight((e,), "output_bias")
        self.norm_gamma = weight((e,), "norm_gamma", "ones")
        self.norm_beta = weight((e,), "norm_beta")
        self.shapes = _sizes(d, m)
        self.generators = {}
        for name, shape in self.shapes.items():
            size = 1
            for dim in shape:
                size *= dim
            initializer = (self.norm_generator_initializer
                           if name in ("gamma", "beta")
                           else self.generator_initializer)
            self.generators[name] = (
                weight((e, size), f"{name}_generator", initializer),
                weight((size,), f"{name}_generator_bias"))

    def generate(self, task_embedding, layer_index, position_index):
        """The generated adapter tensors (see the class docstring)."""
        for argument, value, bound in (
                ("layer_index", layer_index, self.num_layers),
                ("position_index", position_index, self.positions_per_layer)):
            if not isinstance(value, int) or not 0 <= value < bound:
                raise ValueError(
                    f"`{argument}` must be an int in [0, {bound}). "
                    f"Received: {argument}={value!r}")
        z = ops.concatenate([ops.convert_to_tensor(task_embedding),
                             self.layer_embeddings[layer_index],
                             self.position_embeddings[position_index]])
        hidden = ops.relu(ops.matmul(z[None], self.projector_kernel)
                          + self.projector_bias)
        e = ops.matmul(hidden, self.output_kernel) + self.output_bias
        e = standardize(e) * self.norm_gamma + self.norm_beta
        generated = {}
        for name, (kernel, bias) in self.generators.items():
            flat = ops.matmul(e, kernel)[0] + bias
            generated[name] = ops.reshape(flat, self.shapes[name])
        return generated

    def call(self, task_embedding, layer_index=0, position_index=0):
        return self.generate(task_embedding, layer_index, position_index)

    def get_config(self):
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "positions_per_layer": self.positions_per_layer,
            "reduction_factor": self.reduction_factor,
            "embedding_dim": self.embedding_dim,
            "projection_dim": self.projection_dim,
            **validation.serialize_objects(self, "generator_initializer",
                                           "norm_generator_initializer"),
        }
