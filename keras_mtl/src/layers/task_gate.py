import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.validation import check_choice
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import serialize_objects
from keras_mtl.src.layers.validation import split_shapes

ACTIVATIONS = ("sigmoid", "softmax")


@keras_mtl_export("keras_mtl.layers.TaskGate")
class TaskGate(keras.layers.Layer):
    """Per-task gates on shared features: one gated copy of `x` per task.

    For each task `t` a linear gate reads a context `c` (by default the
    features `x` themselves) and rescales every feature of `x`:

    `h_t = c W_t + b_t`, `y_t = g_t * x`, with

    - `activation="sigmoid"` (default): `g_t = scale * sigmoid(h_t)`, an
      independent gate per feature in `(0, scale)`. This is the Gate Neural
      Unit of PEPNet (Chang et al., 2023), one layer deep, whose scale
      `gamma = 2` makes a gate at `h = 0` the identity;
    - `activation="softmax"`: `g_t = scale * softmax(h_t)` over the feature
      axis, so the features of a task compete for a fixed budget (the
      softmax gate of MMoE, Ma et al., 2018, applied to features rather than
      experts); with the default `scale = features`, a gate at `h = 0` is
      again the identity.

    Kernels start at zero by default, so every task starts from the shared
    features unchanged and learns how to reweight them. The `T` gates are
    computed with one einsum over a `(T, context_dim, features)` kernel.

    Args:
        num_tasks: number of tasks `T` (gated outputs).
        activation: `"sigmoid"` or `"softmax"`. Defaults to `"sigmoid"`.
        scale: gate multiplier; defaults to 2.0 for `"sigmoid"` and to the
            number of features for `"softmax"`. Must be positive.
        use_bias: whether the gates have a bias `b_t`. Defaults to `True`.
        kernel_initializer: initializer of the `(T, context_dim, features)`
            kernel. Defaults to `"zeros"`.
        bias_initializer: initializer of the `(T, features)` bias. Defaults
            to `"zeros"`.
        kernel_regularizer: optional regularizer of the kernel.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: the shared features `x`, shape `(batch_size, ..., features)`,
            or a list `[x, context]`, where `context` has shape
            `(batch_size, ..., context_dim)` with the same leading axes as
            `x`, or `(batch_size, context_dim)` (then each sample's gate is
            broadcast over the middle axes of `x`).

    Output shape:
        a list of `T` tensors with the shape of `x`.

    Example:

    >>> x = keras.Input((6,))
    >>> h = keras.layers.Dense(8, activation="relu")(x)
    >>> gated = keras_mtl.layers.TaskGate(num_tasks=2)(h)
    >>> model = keras.Model(x, [keras.layers.Dense(1)(g) for g in gated])
    >>> outputs = model(np.ones((3, 6)))

    Reference:
        Chang et al., "PEPNet: Parameter and Embedding Personalized Network
        for Infusing with Personalized Prior Information", KDD 2023.
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
    """

    def __init__(
        self,
        num_tasks,
        activation="sigmoid",
        scale=None,
        use_bias=True,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        if scale is not None and (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not scale > 0
        ):
            raise ValueError(
                f"`scale` must be a positive number or None. Received: "
                f"scale={scale!r}"
            )
        self.scale = None if scale is None else float(scale)
        if not isinstance(use_bias, bool):
            raise ValueError(
                f"`use_bias` must be a bool. Received: use_bias={use_bias!r}"
            )
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _split_shapes(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and any(
            isinstance(s, (list, tuple)) for s in input_shape
        ):
            split = split_shapes(input_shape, 2)
            if split is None:
                raise ValueError(
                    "TaskGate expects a tensor x or a list [x, context]. "
                    f"Received: inputs with shapes {input_shape!r}"
                )
            x, context = split
        else:
            x = context = tuple(input_shape)
        if len(x) < 2 or x[-1] is None:
            raise ValueError(
                "TaskGate expects features of shape (batch_size, ..., "
                f"features) with a known last axis. Received: x.shape={x}"
            )
        if len(context) < 2 or context[-1] is None or (
            len(context) != 2 and len(context) != len(x)
        ):
            raise ValueError(
                "TaskGate expects a context of shape (batch_size, "
                "context_dim) or with the same rank as x and a known last "
                f"axis. Received: context.shape={context}, x.shape={x}"
            )
        return x, context

    def build(self, input_shape):
        x, context = self._split_shapes(input_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_tasks, context[-1], x[-1]),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.num_tasks, x[-1]),
                initializer=self.bias_initializer,
            )

    def _gate_scale(self, num_features):
        if self.scale is not None:
            return self.scale
        return 2.0 if self.activation == "sigmoid" else float(num_features)

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            x, context = inputs
        else:
            x = context = inputs
        # (..., c) x (T, c, d) -> (T, ..., d)
        logits = ops.einsum("...c,tcd->t...d", context, self.kernel)
        if self.bias is not None:
            bias = self.bias
            for _ in range(len(context.shape) - 1):
                bias = ops.expand_dims(bias, 1)
            logits = logits + bias
        if self.activation == "sigmoid":
            gates = ops.sigmoid(logits)
        else:
            gates = ops.softmax(logits, axis=-1)
        gates = gates * self._gate_scale(x.shape[-1])
        outputs = []
        for t in range(self.num_tasks):
            gate = gates[t]
            for _ in range(len(x.shape) - len(context.shape)):
                gate = ops.expand_dims(gate, 1)
            outputs.append(ops.cast(gate, x.dtype) * x)
        return outputs

    def compute_output_shape(self, input_shape):
        x, _ = self._split_shapes(input_shape)
        return [x for _ in range(self.num_tasks)]

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "activation": self.activation,
            "scale": self.scale,
            "use_bias": self.use_bias,
            **serialize_objects(
                self,
                "kernel_initializer",
                "bias_initializer",
                "kernel_regularizer",
            ),
        }
