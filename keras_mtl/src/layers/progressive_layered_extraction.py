import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.customized_gate_control import CustomizedGateControl
from keras_mtl.src.layers.expert_stack import normalize_units
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import serialize_objects


@keras_mtl_export("keras_mtl.layers.ProgressiveLayeredExtraction")
class ProgressiveLayeredExtraction(keras.layers.Layer):
    """Progressive layered extraction (PLE): stacked CGC extraction levels.

    Level `j = 1..N` is a `CustomizedGateControl`. Level 1 reads the input
    `x` everywhere; at level `j > 1` task `k`'s experts and gate read task
    `k`'s output of level `j - 1`,
    `g^{k,j}(x) = w^{k,j}(g^{k,j-1}(x))^T S^{k,j}(x)`, and the shared experts
    read the shared output of level `j - 1`, produced by a gate over **all**
    experts of that level. Every level except the last has that shared gate;
    the last level returns one tensor per task, to be fed to task towers.

    Args:
        num_tasks: number of tasks (at least 1).
        num_levels: number of extraction levels `N` (at least 1). Defaults
            to `2`.
        num_specific_experts: experts per task and level. Defaults to `1`.
        num_shared_experts: shared experts per level. Defaults to `1`.
        expert_units: expert output width, or a sequence of layer widths,
            the same at every level. Defaults to `16`.
        expert_activation: activation after every expert layer. Defaults to
            `"relu"`.
        use_gate_bias: whether the gates have a bias. Defaults to `False`.
        use_bias: whether the expert layers have biases. Defaults to `True`.
        kernel_initializer: initializer of the expert and gate kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer: optional regulariser of the kernels.
        bias_regularizer: optional regulariser of the biases.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: tensor of shape `(..., features)`.
        training: passed to the levels (gate statistics).

    Output shape:
        a list of `num_tasks` tensors `(..., expert_units[-1])`.

    Example:

    >>> ple = keras_mtl.layers.ProgressiveLayeredExtraction(
    ...     num_tasks=2, num_levels=2, expert_units=4)
    >>> outputs = ple(np.ones((3, 5), "float32"))
    >>> [tuple(o.shape) for o in outputs]
    [(3, 4), (3, 4)]

    Reference:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task
        Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
    """

    def __init__(
        self,
        num_tasks,
        num_levels=2,
        num_specific_experts=1,
        num_shared_experts=1,
        expert_units=16,
        expert_activation="relu",
        use_gate_bias=False,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_levels", num_levels)
        self.num_tasks = num_tasks
        self.num_levels = num_levels
        self.num_specific_experts = num_specific_experts
        self.num_shared_experts = num_shared_experts
        self.expert_units = normalize_units(expert_units)
        self.expert_activation = keras.activations.get(expert_activation)
        self.use_gate_bias = use_gate_bias
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.levels = [
            CustomizedGateControl(
                num_tasks,
                num_specific_experts,
                num_shared_experts,
                self.expert_units,
                expert_activation=self.expert_activation,
                shared_gate=level < num_levels - 1,
                use_gate_bias=use_gate_bias,
                use_bias=use_bias,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
                kernel_regularizer=self.kernel_regularizer,
                bias_regularizer=self.bias_regularizer,
                dtype=self.dtype_policy,
                name=f"level_{level}",
            )
            for level in range(num_levels)
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        level_shape = shape[:-1] + (self.expert_units[-1],)
        for level in self.levels:
            level.build(shape)
            shape = [level_shape] * (self.num_tasks + 1)

    def call(self, inputs, training=None):
        h = inputs
        for level in self.levels:
            h = level(h, training=training)
        return h

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[:-1]) + (self.expert_units[-1],)
        return [shape] * self.num_tasks

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "num_levels": self.num_levels,
            "num_specific_experts": self.num_specific_experts,
            "num_shared_experts": self.num_shared_experts,
            "expert_units": list(self.expert_units),
            "expert_activation": keras.activations.serialize(
                self.expert_activation
            ),
            "use_gate_bias": self.use_gate_bias,
            "use_bias": self.use_bias,
            **serialize_objects(
                self,
                "kernel_initializer",
                "bias_initializer",
                "kernel_regularizer",
                "bias_regularizer",
            ),
        }


@keras_mtl_export("keras_mtl.layers.PLE")
class PLE(ProgressiveLayeredExtraction):
    """Short name of `ProgressiveLayeredExtraction` (same arguments).

    See `keras_mtl.layers.ProgressiveLayeredExtraction` for the formula.

    Args:
        num_tasks: number of tasks.
        num_levels: number of extraction levels.
        num_specific_experts: experts per task and level.
        num_shared_experts: shared experts per level.
        expert_units: expert output width (or sequence of layer widths).
        expert_activation: activation of the expert layers.
        use_gate_bias: whether the gates have a bias.
        use_bias: whether the expert layers have biases.
        kernel_initializer: initializer of the kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer: regulariser of the kernels.
        bias_regularizer: regulariser of the biases.

    Example:

    >>> outputs = keras_mtl.layers.PLE(3, expert_units=2)(
    ...     np.ones((1, 4), "float32"))
    >>> len(outputs)
    3

    Reference:
        Tang et al., RecSys 2020 (see `ProgressiveLayeredExtraction`).
    """
