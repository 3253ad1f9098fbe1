import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.dselect_k_gate import DSelectKGate
from keras_mtl.src.layers.expert_stack import ExpertStack
from keras_mtl.src.layers.expert_stack import normalize_units
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import serialize_objects

GATES = ("softmax", "dselect_k")


@keras_mtl_export("keras_mtl.layers.MultiGateMixtureOfExperts")
class MultiGateMixtureOfExperts(keras.layers.Layer):
    """Multi-gate mixture of experts (MMoE): shared experts, one gate per task.

    For input `x`, `n = num_experts` shared experts `f_i` and task `k`:
    `y_k = sum_i g^k(x)_i f_i(x)`, with the softmax gate
    `g^k(x) = softmax(x W_gk)` (`W_gk` of shape `(features, n)`, no bias by
    default). Each expert is an MLP with the layer widths `expert_units` and
    `expert_activation` after every layer; the experts are held as batched
    weights and evaluated with one einsum per layer. With
    `gate="dselect_k"`, each task's gate is a `DSelectKGate` (at most
    `num_nonzeros` experts per task) instead of a softmax. Feed each output
    to its own task tower.

    `expert_utilization` (a non-trainable `(num_tasks, num_experts)`
    variable) holds each task's mean gate weight per expert over the last
    training batch.

    Args:
        num_experts: number of shared experts (at least 1).
        expert_units: width of each expert's output, or a sequence of layer
            widths for deeper experts (the last is the output width).
        num_tasks: number of tasks, i.e. of gates and outputs (at least 1).
        expert_activation: activation after every expert layer. Defaults to
            `"relu"`.
        gate: `"softmax"` (default, the MMoE paper's gate) or `"dselect_k"`.
        num_nonzeros: with `gate="dselect_k"`, the number of selectors per
            task gate. Defaults to `2`.
        gamma: with `gate="dselect_k"`, the smooth-step width. Defaults to
            `1.0`.
        entropy_regularization: with `gate="dselect_k"`, the entropy weight.
            Defaults to `0.0`.
        use_gate_bias: whether the softmax gates have a bias. Defaults to
            `False`, as in the paper.
        use_bias: whether the expert layers have biases. Defaults to `True`.
        kernel_initializer: initializer of the expert and gate kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer: optional regulariser of the expert and gate
            kernels.
        bias_regularizer: optional regulariser of the biases.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: tensor of shape `(..., features)`.
        training: whether to update `expert_utilization` and add the
            DSelect-k regularisation losses.

    Output shape:
        a list of `num_tasks` tensors of shape `(..., expert_units[-1])`.

    Example:

    >>> mmoe = keras_mtl.layers.MultiGateMixtureOfExperts(
    ...     num_experts=3, expert_units=4, num_tasks=2)
    >>> outputs = mmoe(np.ones((5, 6), "float32"))
    >>> [tuple(o.shape) for o in outputs]
    [(5, 4), (5, 4)]

    Reference:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
    """

    def __init__(
        self,
        num_experts,
        expert_units,
        num_tasks,
        expert_activation="relu",
        gate="softmax",
        num_nonzeros=2,
        gamma=1.0,
        entropy_regularization=0.0,
        use_gate_bias=False,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        check_positive_int("num_tasks", num_tasks)
        if gate not in GATES:
            raise ValueError(
                f"`gate` must be one of {GATES}. Received: gate={gate!r}"
            )
        self.num_experts = num_experts
        self.expert_units = normalize_units(expert_units)
        self.num_tasks = num_tasks
        self.expert_activation = keras.activations.get(expert_activation)
        self.gate = gate
        self.num_nonzeros = num_nonzeros
        self.gamma = gamma
        self.entropy_regularization = entropy_regularization
        self.use_gate_bias = use_gate_bias
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.experts = ExpertStack(
            num_experts,
            self.expert_units,
            activation=self.expert_activation,
            output_activation=self.expert_activation,
            use_bias=use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            dtype=self.dtype_policy,
            name="experts",
        )
        self.dselect_gates = []
        if gate == "dselect_k":
            if num_experts < 2:
                raise ValueError(
                    "`gate='dselect_k'` needs at least 2 experts. Received: "
                    f"num_experts={num_experts!r}"
                )
            self.dselect_gates = [
                DSelectKGate(
                    num_experts,
                    num_nonzeros,
                    gamma=gamma,
                    entropy_regularization=entropy_regularization,
                    dtype=self.dtype_policy,
                    name=f"gate_{t}",
                )
                for t in range(num_tasks)
            ]

    def build(self, input_shape):
        self.experts.build(input_shape)
        d = input_shape[-1]
        if self.gate == "softmax":
            self.gate_kernel = self.add_weight(
                name="gate_kernel",
                shape=(self.num_tasks, d, self.num_experts),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
            )
            if self.use_gate_bias:
                self.gate_bias = self.add_weight(
                    name="gate_bias",
                    shape=(self.num_tasks, self.num_experts),
                    initializer=self.bias_initializer,
                    regularizer=self.bias_regularizer,
                )
        for gate in self.dselect_gates:
            gate.build(input_shape)
        self.expert_utilization = self.add_weight(
            name="expert_utilization",
            shape=(self.num_tasks, self.num_experts),
            initializer="zeros",
            trainable=False,
            dtype="float32",
        )

    def gate_weights(self, inputs, training=None):
        """Gate weights of shape `(..., num_tasks, num_experts)`."""
        lead = ops.shape(inputs)[:-1]
        tokens = ops.reshape(inputs, (-1, ops.shape(inputs)[-1]))
        gates = self._gates(tokens, training)
        return ops.reshape(
            gates, tuple(lead) + (self.num_tasks, self.num_experts)
        )

    def _gates(self, tokens, training):
        # Einsums without "..." (TensorFlow differentiates those slowly).
        if self.gate == "softmax":
            logits = ops.einsum("nd,tde->nte", tokens, self.gate_kernel)
            if self.use_gate_bias:
                logits = logits + self.gate_bias
            return ops.softmax(logits, axis=-1)
        return ops.stack(
            [gate(tokens, training=training) for gate in self.dselect_gates],
            axis=1,
        )

    def call(self, inputs, training=None):
        lead = ops.shape(inputs)[:-1]
        tokens = ops.reshape(inputs, (-1, ops.shape(inputs)[-1]))
        experts = self.experts(tokens)  # (N, E, u)
        gates = self._gates(tokens, training)  # (N, T, E)
        if training:
            self.expert_utilization.assign(
                ops.cast(ops.mean(gates, axis=0), "float32")
            )
        mixed = ops.einsum("nte,neu->ntu", gates, experts)
        shape = tuple(lead) + (self.expert_units[-1],)
        return [
            ops.reshape(mixed[:, t, :], shape) for t in range(self.num_tasks)
        ]

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[:-1]) + (self.expert_units[-1],)
        return [shape] * self.num_tasks

    def get_config(self):
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "expert_units": list(self.expert_units),
            "num_tasks": self.num_tasks,
            "expert_activation": keras.activations.serialize(
                self.expert_activation
            ),
            "gate": self.gate,
            "num_nonzeros": self.num_nonzeros,
            "gamma": self.gamma,
            "entropy_regularization": self.entropy_regularization,
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


@keras_mtl_export("keras_mtl.layers.MMoE")
class MMoE(MultiGateMixtureOfExperts):
    """Short name of `MultiGateMixtureOfExperts` (same arguments).

    See `keras_mtl.layers.MultiGateMixtureOfExperts` for the formula.

    Args:
        num_experts: number of shared experts.
        expert_units: expert output width (or sequence of layer widths).
        num_tasks: number of tasks.
        expert_activation: activation of the expert layers.
        gate: `"softmax"` or `"dselect_k"`.
        num_nonzeros: DSelect-k selectors per gate.
        gamma: DSelect-k smooth-step width.
        entropy_regularization: DSelect-k entropy weight.
        use_gate_bias: whether the softmax gates have a bias.
        use_bias: whether the expert layers have biases.
        kernel_initializer: initializer of the kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer: regulariser of the kernels.
        bias_regularizer: regulariser of the biases.

    Example:

    >>> outputs = keras_mtl.layers.MMoE(2, 4, 3)(np.ones((1, 5), "float32"))
    >>> len(outputs)
    3

    Reference:
        Ma et al., KDD 2018 (see `MultiGateMixtureOfExperts`).
    """
