import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.expert_stack import ExpertStack
from keras_mtl.src.layers.expert_stack import normalize_units
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import serialize_objects


@keras_mtl_export("keras_mtl.layers.CustomizedGateControl")
class CustomizedGateControl(keras.layers.Layer):
    """Customized gate control (CGC): task-specific plus shared experts.

    Each task `k` has `m_k = num_specific_experts` experts of its own,
    `E_(k,1..m_k)`, and all tasks share `m_s = num_shared_experts` experts
    `E_(s,1..m_s)`. Task `k`'s output mixes its own and the shared experts
    with a softmax gate:
    `g^k(x) = w^k(x)^T S^k(x)`, `w^k(x) = softmax(W_g^k x)`,
    `S^k(x) = [E_(k,1)(x), ..., E_(k,m_k)(x), E_(s,1)(x), ..., E_(s,m_s)(x)]`.

    Called on one tensor, every expert and gate reads it. Called on a list
    of `num_tasks + 1` tensors (as inside PLE), task `k`'s experts and gate
    read `inputs[k]` and the shared experts read `inputs[-1]`. With
    `shared_gate=True` the layer also returns, last, the mixture of **all**
    experts (every task's, in task order, then the shared ones) under a
    softmax gate on the shared input: the shared branch of the next PLE
    level. Experts are MLPs with layer widths `expert_units` and
    `expert_activation` after each layer, held as batched weights.

    `expert_utilization` (non-trainable, `(num_tasks, m_k + m_s)`) holds each
    task gate's mean weights over the last training batch (own experts
    first, then the shared ones).

    Args:
        num_tasks: number of tasks (at least 1).
        num_specific_experts: experts per task (at least 1).
        num_shared_experts: shared experts (at least 1).
        expert_units: expert output width, or a sequence of layer widths.
        expert_activation: activation after every expert layer. Defaults to
            `"relu"`.
        shared_gate: whether to also return the shared-gate mixture.
            Defaults to `False`.
        use_gate_bias: whether the gates have a bias. Defaults to `False`.
        use_bias: whether the expert layers have biases. Defaults to `True`.
        kernel_initializer: initializer of the expert and gate kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer: optional regulariser of the kernels.
        bias_regularizer: optional regulariser of the biases.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: a tensor `(..., features)`, or a list of `num_tasks + 1`
            such tensors (task inputs, then the shared input).
        training: whether to update `expert_utilization`.

    Output shape:
        a list of `num_tasks` tensors `(..., expert_units[-1])` (plus the
        shared mixture with `shared_gate=True`).

    Example:

    >>> cgc = keras_mtl.layers.CustomizedGateControl(
    ...     num_tasks=2, num_specific_experts=2, num_shared_experts=1,
    ...     expert_units=4)
    >>> outputs = cgc(np.ones((3, 5), "float32"))
    >>> [tuple(o.shape) for o in outputs]
    [(3, 4), (3, 4)]

    Reference:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task
        Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
    """

    def __init__(
        self,
        num_tasks,
        num_specific_experts,
        num_shared_experts,
        expert_units,
        expert_activation="relu",
        shared_gate=False,
        use_gate_bias=False,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_tasks", num_tasks)
        check_positive_int("num_specific_experts", num_specific_experts)
        check_positive_int("num_shared_experts", num_shared_experts)
        self.num_tasks = num_tasks
        self.num_specific_experts = num_specific_experts
        self.num_shared_experts = num_shared_experts
        self.expert_units = normalize_units(expert_units)
        self.expert_activation = keras.activations.get(expert_activation)
        self.shared_gate = bool(shared_gate)
        self.use_gate_bias = use_gate_bias
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        common = dict(
            units=self.expert_units,
            activation=self.expert_activation,
            output_activation=self.expert_activation,
            use_bias=use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            dtype=self.dtype_policy,
        )
        self.specific_experts = ExpertStack(
            num_specific_experts, groups=num_tasks, name="specific_experts",
            **common,
        )
        self.shared_experts = ExpertStack(
            num_shared_experts, name="shared_experts", **common
        )

    def _split_shapes(self, input_shape):
        nested = isinstance(input_shape, (list, tuple)) and bool(input_shape)
        if nested and isinstance(input_shape[0], (list, tuple)):
            if len(input_shape) != self.num_tasks + 1:
                raise ValueError(
                    "CustomizedGateControl expects one tensor or a list of "
                    f"num_tasks + 1 = {self.num_tasks + 1} tensors. Received: "
                    f"{len(input_shape)} inputs"
                )
            return tuple(input_shape[0]), tuple(input_shape[-1])
        return tuple(input_shape), tuple(input_shape)

    def build(self, input_shape):
        task_shape, shared_shape = self._split_shapes(input_shape)
        d_task, d_shared = task_shape[-1], shared_shape[-1]
        self.specific_experts.build(
            task_shape[:-1] + (self.num_tasks, d_task)
        )
        self.shared_experts.build(shared_shape)
        own = self.num_specific_experts + self.num_shared_experts
        self.gate_kernel = self.add_weight(
            name="gate_kernel",
            shape=(self.num_tasks, d_task, own),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.use_gate_bias:
            self.gate_bias = self.add_weight(
                name="gate_bias", shape=(self.num_tasks, own),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        if self.shared_gate:
            total = self.num_tasks * self.num_specific_experts + (
                self.num_shared_experts
            )
            self.shared_gate_kernel = self.add_weight(
                name="shared_gate_kernel",
                shape=(d_shared, total),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
            )
            if self.use_gate_bias:
                self.shared_gate_bias = self.add_weight(
                    name="shared_gate_bias", shape=(total,),
                    initializer=self.bias_initializer,
                    regularizer=self.bias_regularizer,
                )
        self.expert_utilization = self.add_weight(
            name="expert_utilization",
            shape=(self.num_tasks, own),
            initializer="zeros",
            trainable=False,
            dtype="float32",
        )

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != self.num_tasks + 1:
                raise ValueError(
                    "CustomizedGateControl expects one tensor or a list of "
                    f"num_tasks + 1 = {self.num_tasks + 1} tensors. Received: "
                    f"{len(inputs)} inputs"
                )
        else:
            inputs = [inputs] * (self.num_tasks + 1)
        # Flatten leading axes: einsums without "..." (TensorFlow
        # differentiates those slowly).
        lead = tuple(ops.shape(inputs[0])[:-1])
        flat = [ops.reshape(x, (-1, ops.shape(x)[-1])) for x in inputs]
        task_inputs = ops.stack(flat[:-1], axis=1)  # (N, T, d)
        shared_input = flat[-1]
        specific = self.specific_experts(task_inputs)  # (N, T, m_k, u)
        shared = self.shared_experts(shared_input)  # (N, m_s, u)
        shared_per_task = ops.stack([shared] * self.num_tasks, axis=1)
        candidates = ops.concatenate([specific, shared_per_task], axis=2)
        logits = ops.einsum("ntd,tde->nte", task_inputs, self.gate_kernel)
        if self.use_gate_bias:
            logits = logits + self.gate_bias
        gates = ops.softmax(logits, axis=-1)  # (N, T, m_k + m_s)
        if training:
            self.expert_utilization.assign(
                ops.cast(ops.mean(gates, axis=0), "float32")
            )
        mixed = ops.einsum("nte,nteu->ntu", gates, candidates)
        outputs = [mixed[:, t, :] for t in range(self.num_tasks)]
        if self.shared_gate:
            outputs.append(self._shared_mixture(shared_input, specific, shared))
        shape = lead + (self.expert_units[-1],)
        return [ops.reshape(o, shape) for o in outputs]

    def _shared_mixture(self, shared_input, specific, shared):
        """Softmax gate over every expert, read from the shared input."""
        t, m_k = self.num_tasks, self.num_specific_experts
        kernel = self.shared_gate_kernel
        kernel_specific = ops.reshape(kernel[:, : t * m_k], (-1, t, m_k))
        logits_specific = ops.einsum(
            "nd,dtm->ntm", shared_input, kernel_specific
        )
        logits_shared = ops.matmul(shared_input, kernel[:, t * m_k :])
        if self.use_gate_bias:
            bias = self.shared_gate_bias
            logits_specific = logits_specific + ops.reshape(
                bias[: t * m_k], (t, m_k)
            )
            logits_shared = logits_shared + bias[t * m_k :]
        # One softmax over the T * m_k + m_s logits, kept in two blocks.
        top = ops.maximum(
            ops.max(logits_specific, axis=(1, 2)),
            ops.max(logits_shared, axis=-1),
        )
        e_specific = ops.exp(logits_specific - top[:, None, None])
        e_shared = ops.exp(logits_shared - top[:, None])
        total = ops.sum(e_specific, axis=(1, 2)) + ops.sum(e_shared, axis=1)
        mixed = ops.einsum("ntm,ntmu->nu", e_specific, specific)
        mixed = mixed + ops.einsum("nm,nmu->nu", e_shared, shared)
        return mixed / total[:, None]

    def compute_output_shape(self, input_shape):
        task_shape, _ = self._split_shapes(input_shape)
        shape = task_shape[:-1] + (self.expert_units[-1],)
        return [shape] * (self.num_tasks + int(self.shared_gate))

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "num_specific_experts": self.num_specific_experts,
            "num_shared_experts": self.num_shared_experts,
            "expert_units": list(self.expert_units),
            "expert_activation": keras.activations.serialize(
                self.expert_activation
            ),
            "shared_gate": self.shared_gate,
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


@keras_mtl_export("keras_mtl.layers.CGC")
class CGC(CustomizedGateControl):
    """Short name of `CustomizedGateControl` (same arguments).

    See `keras_mtl.layers.CustomizedGateControl` for the formula.

    Args:
        num_tasks: number of tasks.
        num_specific_experts: experts per task.
        num_shared_experts: shared experts.
        expert_units: expert output width (or sequence of layer widths).
        expert_activation: activation of the expert layers.
        shared_gate: whether to also return the shared-gate mixture.
        use_gate_bias: whether the gates have a bias.
        use_bias: whether the expert layers have biases.
        kernel_initializer: initializer of the kernels.
        bias_initializer: initializer of the biases.
        kernel_regularizer: regulariser of the kernels.
        bias_regularizer: regulariser of the biases.

    Example:

    >>> outputs = keras_mtl.layers.CGC(2, 1, 1, 3)(np.ones((1, 4), "float32"))
    >>> len(outputs)
    2

    Reference:
        Tang et al., RecSys 2020 (see `CustomizedGateControl`).
    """
