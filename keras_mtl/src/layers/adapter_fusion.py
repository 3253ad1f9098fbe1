"""`AdapterFusion`: attention over source adapters (Pfeiffer et al., 2021)."""

import math

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation
from keras_mtl.src.layers.source_stacking import stack_sources
from keras_mtl.src.layers.source_stacking import stacked_shape

VALUE_OFF_DIAGONAL = 1e-6


def near_identity(shape, dtype=None):
    """1 on the diagonal, 1e-6 elsewhere (the value initialisation)."""
    eye = ops.eye(shape[0], shape[1], dtype=dtype)
    return eye * (1.0 - VALUE_OFF_DIAGONAL) + VALUE_OFF_DIAGONAL


@keras_mtl_export("keras_mtl.layers.AdapterFusion")
class AdapterFusion(keras.layers.Layer):
    """AdapterFusion: per-token attention over the outputs of N adapters.

    With `h` the hidden state the adapters were applied to (`query`, shape
    `(..., d)`) and `a_1, ..., a_N` their outputs (without residual):

    - `q = h Q + b_Q`, `k_i = a_i K + b_K` (dense layers with bias);
    - scores `s_i = q . k_i` (divided by `sqrt(d)` if `scale_scores`), one
      per token and source, shape `(..., N)`; dropout on the scores in
      training;
    - `p = softmax(s / T)` over the sources;
    - output `sum_i p_i a_i V` (`V` without bias).

    The caller adds the residual (in the paper: `LN(s + output)` with
    `h = LN(s)`). `Q` and `K` start from `N(0, 0.02^2)` with zero bias; `V`
    starts as 1 on the diagonal and 1e-6 elsewhere and is pulled towards the
    identity by the loss `regularization * ||I - V||_F^2`, added with
    `add_loss` at every call. Weights: `3 d^2 + 2 d`, independent of `N`.
    `AdapterFusion.static()` (or `value=False`) drops `V` and its loss
    (`2 d^2 + 2 d` weights; output `sum_i p_i a_i`).

    Temperature: `T` is fixed at `temperature` unless `temperature_decay` is
    positive; then `T` lives in a non-trainable variable `temperature`
    (checkpointed with the model) and, after each training call, becomes
    `max(T - temperature_decay, min_temperature)`. The reference schedule is
    `temperature=50.0, temperature_decay=0.05` (50 down to 1 in 980 training
    steps). Unlike the `adapters` library, inference calls do not anneal.

    Args:
        value: whether to use the value projection `V` (the "dynamic"
            configuration). Defaults to `True`.
        dropout: dropout rate on the attention scores, in training. Defaults
            to `0.1` (the attention dropout of BERT and RoBERTa, which the
            reference implementation uses).
        temperature: softmax temperature, or its starting value when
            `temperature_decay > 0`. Defaults to `1.0`.
        temperature_decay: amount subtracted from the temperature after each
            training call. Defaults to `0.0` (fixed temperature).
        min_temperature: floor of the annealed temperature. Defaults to
            `1.0`.
        regularization: weight of `||I - V||_F^2` (ignored without `V`).
            Defaults to `0.01`.
        scale_scores: whether to divide the scores by `sqrt(d)`. Defaults to
            `False`, as in the reference implementation.
        kernel_initializer: initializer of the query and key kernels.
            Defaults to `RandomNormal(stddev=0.02)`.
        seed: optional int seeding the score dropout. Defaults to `None`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        adapter_outputs: list of N tensors of shape `(..., d)`, or one tensor
            of shape `(..., N, d)`.
        query: tensor of shape `(..., d)`, the hidden state the adapters
            were applied to. Required.
        training: bool, whether dropout and temperature annealing are active.
        return_attention_scores: if True, also return the attention weights
            `p` (after the softmax), of shape `(..., N)`, e.g. for plotting.
            Defaults to `False`.

    Output shape:
        `(..., d)`, or `((..., d), (..., N))` with `return_attention_scores`.

    Example:

    >>> fusion = keras_mtl.layers.AdapterFusion()
    >>> h = np.random.normal(size=(2, 5, 8)).astype("float32")
    >>> outputs = [np.tanh(h), np.sin(h), h]
    >>> y, p = fusion(outputs, query=h, return_attention_scores=True)
    >>> y.shape, p.shape
    ((2, 5, 8), (2, 5, 3))

    Reference:
        Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for
        Transfer Learning", EACL 2021.
    """

    def __init__(
        self,
        value=True,
        dropout=0.1,
        temperature=1.0,
        temperature_decay=0.0,
        min_temperature=1.0,
        regularization=0.01,
        scale_scores=False,
        kernel_initializer=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.value = validation.check_bool("value", value)
        self.dropout = validation.check_rate("dropout", dropout)
        self.temperature = float(
            validation.check_positive_number("temperature", temperature)
        )
        self.temperature_decay = validation.check_non_negative(
            "temperature_decay", temperature_decay
        )
        self.min_temperature = float(
            validation.check_positive_number(
                "min_temperature", min_temperature
            )
        )
        if self.min_temperature > self.temperature:
            raise ValueError(
                "`min_temperature` must not exceed `temperature` "
                f"({self.temperature}). "
                f"Received: min_temperature={min_temperature!r}"
            )
        self.regularization = validation.check_non_negative(
            "regularization", regularization
        )
        self.scale_scores = validation.check_bool("scale_scores", scale_scores)
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(stddev=0.02)
        self.kernel_initializer = validation.get_initializer(
            "kernel_initializer", kernel_initializer
        )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int)
        ):
            raise ValueError(
                f"`seed` must be an int or None. Received: seed={seed!r}"
            )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @classmethod
    def static(cls, **kwargs):
        """The "static" configuration: query and key only, no value."""
        return cls(**{"value": False, **kwargs})

    @property
    def anneals_temperature(self):
        return self.temperature_decay > 0

    def build(self, adapter_outputs_shape):
        dim = validation.last_dim(
            "adapter_outputs", stacked_shape(adapter_outputs_shape)
        )
        self.dim = dim
        for role in ("query", "key"):
            kernel = self.add_weight(
                name=f"{role}_kernel",
                shape=(dim, dim),
                initializer=self.kernel_initializer,
            )
            bias = self.add_weight(
                name=f"{role}_bias", shape=(dim,), initializer="zeros"
            )
            setattr(self, f"{role}_kernel", kernel)
            setattr(self, f"{role}_bias", bias)
        if self.value:
            self.value_kernel = self.add_weight(
                name="value_kernel",
                shape=(dim, dim),
                initializer=near_identity,
            )
        if self.anneals_temperature:
            self.temperature_variable = self.add_weight(
                name="temperature",
                shape=(),
                initializer=keras.initializers.Constant(self.temperature),
                trainable=False,
                dtype="float32",
                autocast=False,
            )

    def current_temperature(self):
        """The temperature the next call will use."""
        if self.anneals_temperature:
            # A copy: the variable is updated in place after the softmax, and
            # PyTorch's autograd must not see the saved value change.
            return ops.copy(ops.convert_to_tensor(self.temperature_variable))
        return ops.convert_to_tensor(self.temperature, "float32")

    def identity_penalty(self):
        """`||I - V||_F^2`, unweighted (zero without `V`)."""
        if not self.value:
            return ops.convert_to_tensor(0.0)
        difference = ops.eye(self.dim) - ops.cast(self.value_kernel, "float32")
        return ops.sum(ops.square(difference))

    def call(
        self,
        adapter_outputs,
        query=None,
        training=None,
        return_attention_scores=False,
    ):
        if query is None:
            raise ValueError(
                "AdapterFusion needs the hidden state the adapters were "
                "applied to. Received: query=None"
            )
        stacked = stack_sources(adapter_outputs)  # (..., N, d)
        if query.shape[-1] is not None and query.shape[-1] != self.dim:
            raise ValueError(
                f"`query` must have last dimension {self.dim}, like the "
                f"adapter outputs. Received: query shape={query.shape}"
            )
        q = ops.matmul(query, self.query_kernel) + self.query_bias
        k = ops.matmul(stacked, self.key_kernel) + self.key_bias
        scores = ops.sum(ops.expand_dims(q, -2) * k, axis=-1)  # (..., N)
        if self.scale_scores:
            scores = scores / math.sqrt(self.dim)
        if training and self.dropout > 0:
            scores = keras.random.dropout(
                scores, self.dropout, seed=self.seed_generator
            )
        temperature = self.current_temperature()
        weights = ops.softmax(
            scores / ops.cast(temperature, scores.dtype), axis=-1
        )
        if training and self.anneals_temperature:
            self.temperature_variable.assign(
                ops.maximum(
                    temperature - self.temperature_decay, self.min_temperature
                )
            )
        values = stacked
        if self.value:
            values = ops.matmul(stacked, self.value_kernel)
            if self.regularization > 0:
                self.add_loss(self.regularization * self.identity_penalty())
        output = ops.sum(ops.expand_dims(weights, -1) * values, axis=-2)
        if return_attention_scores:
            return output, weights
        return output

    def compute_output_shape(self, adapter_outputs_shape):
        shape = stacked_shape(adapter_outputs_shape)
        return shape[:-2] + shape[-1:]

    def compute_output_spec(
        self,
        adapter_outputs,
        query=None,
        training=None,
        return_attention_scores=False,
    ):
        shapes = keras.tree.map_structure(lambda x: x.shape, adapter_outputs)
        if isinstance(adapter_outputs, (list, tuple)):
            shapes = list(shapes)
        shape = stacked_shape(shapes)
        output = keras.KerasTensor(
            shape[:-2] + shape[-1:], dtype=self.compute_dtype
        )
        if return_attention_scores:
            scores = keras.KerasTensor(shape[:-1], dtype=self.compute_dtype)
            return output, scores
        return output

    def get_config(self):
        return {
            **super().get_config(),
            "value": self.value,
            "dropout": self.dropout,
            "temperature": self.temperature,
            "temperature_decay": self.temperature_decay,
            "min_temperature": self.min_temperature,
            "regularization": self.regularization,
            "scale_scores": self.scale_scores,
            **validation.serialize_objects(self, "kernel_initializer"),
            "seed": self.seed,
        }
