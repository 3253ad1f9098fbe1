import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import serialize_objects
from keras_mtl.src.layers.validation import split_shapes


@keras_mtl_export("keras_mtl.layers.TaskConditioning")
class TaskConditioning(keras.layers.Layer):
    """Feature-wise linear modulation (FiLM) of features by a task id.

    Each task `t` has a learned scale `gamma_t` and shift `beta_t`, vectors
    over the last (feature) axis; a sample with task id `t` is transformed
    feature-wise as

    `y = gamma_t * x + beta_t`,

    broadcast over any axes between the batch and the feature axis. This is
    FiLM (Perez et al., 2018) with the conditioning network replaced by an
    embedding lookup of the task id: one shared network serves every task,
    and the per-task cost is `2 * features` parameters. `gamma` starts at 1
    and `beta` at 0, so the layer is the identity at initialisation.

    Args:
        num_tasks: number of tasks `T`; ids must lie in `[0, T)` (an id out
            of range is an error or is clipped, depending on the backend).
        gamma_initializer: initializer of the `(T, features)` scales.
            Defaults to `"ones"`.
        beta_initializer: initializer of the `(T, features)` shifts.
            Defaults to `"zeros"`.
        gamma_regularizer: optional regularizer of the scales.
        beta_regularizer: optional regularizer of the shifts.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: a list `[features, task_ids]`: `features` of shape
            `(batch_size, ..., features)` and integer `task_ids` of shape
            `(batch_size,)` or `(batch_size, 1)`.

    Output shape:
        the shape of `features`.

    Example:

    >>> features = keras.Input((3,))
    >>> task_ids = keras.Input((), dtype="int32")
    >>> film = keras_mtl.layers.TaskConditioning(num_tasks=2)
    >>> y = film([features, task_ids])
    >>> model = keras.Model([features, task_ids], y)
    >>> out = model([np.ones((2, 3)), np.array([0, 1])])  # identity at init

    Reference:
        Perez, Strub, de Vries, Dumoulin & Courville, "FiLM: Visual
        Reasoning with a General Conditioning Layer", AAAI 2018.
    """

    def __init__(
        self,
        num_tasks,
        gamma_initializer="ones",
        beta_initializer="zeros",
        gamma_regularizer=None,
        beta_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)

    def _check_inputs(self, shapes):
        split = split_shapes(shapes, 2)
        if split is None:
            raise ValueError(
                "TaskConditioning expects a list [features, task_ids]. "
                f"Received: inputs with shapes {shapes!r}"
            )
        features, ids = split
        if len(features) < 2 or features[-1] is None:
            raise ValueError(
                "TaskConditioning expects features of shape "
                "(batch_size, ..., features) with a known last axis. "
                f"Received: features.shape={features}"
            )
        if len(ids) not in (1, 2) or (len(ids) == 2 and ids[1] != 1):
            raise ValueError(
                "TaskConditioning expects task_ids of shape (batch_size,) or "
                f"(batch_size, 1). Received: task_ids.shape={ids}"
            )
        return features

    def build(self, input_shape):
        features = self._check_inputs(input_shape)
        shape = (self.num_tasks, features[-1])
        self.gamma = self.add_weight(
            name="gamma",
            shape=shape,
            initializer=self.gamma_initializer,
            regularizer=self.gamma_regularizer,
        )
        self.beta = self.add_weight(
            name="beta",
            shape=shape,
            initializer=self.beta_initializer,
            regularizer=self.beta_regularizer,
        )

    def call(self, inputs):
        features, task_ids = inputs
        task_ids = ops.reshape(ops.cast(task_ids, "int32"), (-1,))
        gamma = ops.take(self.gamma, task_ids, axis=0)
        beta = ops.take(self.beta, task_ids, axis=0)
        # (batch, features) -> (batch, 1, ..., 1, features)
        for _ in range(len(features.shape) - 2):
            gamma = ops.expand_dims(gamma, 1)
            beta = ops.expand_dims(beta, 1)
        return ops.cast(gamma, features.dtype) * features + ops.cast(
            beta, features.dtype
        )

    def compute_output_shape(self, input_shape):
        return self._check_inputs(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            **serialize_objects(
                self,
                "gamma_initializer",
                "beta_initializer",
                "gamma_regularizer",
                "beta_regularizer",
            ),
        }
