import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import serialize_objects


@keras_mtl_export("keras_mtl.layers.TaskFeatureRefinement")
class TaskFeatureRefinement(keras.layers.Layer):
    """Task-specific re-weighting of field embeddings (squeeze-excitation).

    Given `F` field embeddings `e_1, ..., e_F` (each of size `k`), every
    task `t` re-weights the fields with its own SENet-style excitation:

    - squeeze: `z_f = mean(e_f)` (mean over the `k` embedding entries);
    - excite: `a_t = sigmoid(W2_t relu(W1_t z + b1_t) + b2_t)`, with
      `W1_t` of shape `(F, F // reduction)` and `W2_t` of shape
      `(F // reduction, F)`;
    - re-weight: `e~_{t,f} = a_{t,f} * e_f`.

    This is the task-specific representation refinement module (TRM) of
    DTRN (Liu et al., 2023), as described in its abstract: a SENet-like
    network per task that re-weights each feature's embedding, producing
    task-specific bottom representations for any multi-task top (MMoE,
    PLE, ...). The exact DTRN equations are not public in this form; the
    block above is the standard squeeze-excitation of Hu et al. (2018)
    over fields, as in FiBiNET (Huang et al., 2019), with one set of
    weights per task. The `T` excitations are computed with batched einsums
    over `(T, ...)` kernels.

    Args:
        num_tasks: number of tasks `T`.
        reduction: ratio between the number of fields and the hidden size
            of the excitation (`max(1, F // reduction)`). Defaults to 3.
        use_bias: whether the excitation layers have biases. Defaults to
            `True`.
        kernel_initializer: initializer of both excitation kernels.
            Defaults to `"glorot_uniform"`.
        kernel_regularizer: optional regularizer of both kernels.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: field embeddings of shape `(batch_size, fields, k)`.

    Output shape:
        a list of `T` tensors of shape `(batch_size, fields, k)`.

    Example:

    >>> embeddings = keras.Input((5, 4))  # 5 fields, embedding size 4
    >>> refined = keras_mtl.layers.TaskFeatureRefinement(
    ...     num_tasks=2, reduction=2)(embeddings)
    >>> heads = [keras.layers.Dense(1)(keras.layers.Flatten()(r))
    ...          for r in refined]
    >>> outputs = keras.Model(embeddings, heads)(np.ones((3, 5, 4)))

    Reference:
        Liu, Zhou, Jiang, Ge & Lian, "Deep Task-specific Bottom
        Representation Network for Multi-Task Recommendation", CIKM 2023.
        Hu, Shen & Sun, "Squeeze-and-Excitation Networks", CVPR 2018.
    """

    def __init__(
        self,
        num_tasks,
        reduction=3,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.reduction = check_positive_int("reduction", reduction)
        if not isinstance(use_bias, bool):
            raise ValueError(
                f"`use_bias` must be a bool. Received: use_bias={use_bias!r}"
            )
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _check_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 3 or shape[1] is None:
            raise ValueError(
                "TaskFeatureRefinement expects field embeddings of shape "
                "(batch_size, fields, k) with a known number of fields. "
                f"Received: inputs.shape={shape}"
            )
        return shape

    def build(self, input_shape):
        fields = self._check_shape(input_shape)[1]
        hidden = max(1, fields // self.reduction)
        t = self.num_tasks
        self.squeeze_kernel = self.add_weight(
            name="squeeze_kernel",
            shape=(t, fields, hidden),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.excite_kernel = self.add_weight(
            name="excite_kernel",
            shape=(t, hidden, fields),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.squeeze_bias = self.excite_bias = None
        if self.use_bias:
            self.squeeze_bias = self.add_weight(
                name="squeeze_bias", shape=(t, hidden), initializer="zeros"
            )
            self.excite_bias = self.add_weight(
                name="excite_bias", shape=(t, fields), initializer="zeros"
            )

    def call(self, inputs):
        z = ops.mean(inputs, axis=-1)  # (batch, F)
        h = ops.einsum("bf,tfh->tbh", z, self.squeeze_kernel)
        if self.squeeze_bias is not None:
            h = h + self.squeeze_bias[:, None, :]
        h = ops.relu(h)
        a = ops.einsum("tbh,thf->tbf", h, self.excite_kernel)
        if self.excite_bias is not None:
            a = a + self.excite_bias[:, None, :]
        a = ops.sigmoid(a)  # (T, batch, F)
        return [a[t][:, :, None] * inputs for t in range(self.num_tasks)]

    def compute_output_shape(self, input_shape):
        shape = self._check_shape(input_shape)
        return [shape for _ in range(self.num_tasks)]

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "reduction": self.reduction,
            "use_bias": self.use_bias,
            **serialize_objects(
                self,
                "kernel_initializer",
                "kernel_regularizer",
            ),
        }
