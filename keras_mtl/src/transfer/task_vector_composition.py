"""aTLAS (Zhang et al., 2024): task vectors composed with learned scales."""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.transfer.task_vector import TaskVector
from keras_mtl.src.transfer.task_vector import check_vectors
from keras_mtl.src.transfer.task_vector import match_variables

BLOCKS = ("variable", "model")


class _Targets:
    """The model variables that the task vectors change, held where Keras'
    attribute tracking does not list them as the composition's own."""

    def __init__(self, variables):
        self.variables = list(variables)


@keras_mtl_export("keras_mtl.transfer.TaskVectorComposition")
class TaskVectorComposition(keras.Model):
    """A frozen model whose weights are `theta_0 + sum_i lambda_i tau_i`.

    aTLAS (Zhang et al., 2024) learns one coefficient per task vector and
    per parameter block: block `j` of the composed model is
    `theta_0[j] + sum_i lambda[i, j] * tau_i[j]`, where `theta_0` are the
    weights of `model` and `tau_i` the task vectors. Only `coefficients`
    (`num_vectors x num_blocks` scalars) train; `model` is frozen (its
    `trainable` flag is set to `False`) and the task vectors are stored as
    non-trainable variables. A block is one variable (each kernel, bias and
    normalisation tensor), as in aTLAS; `blocks="model"` learns one
    coefficient per task vector (task arithmetic with learned `lambda`).

    The composition runs `model` on its inputs with the composed weights
    (through a `keras.StatelessScope`, so `model`'s variables keep
    `theta_0`), on every backend and under `jit_compile`. Compile and fit it
    like any model (`learn_task_vector_scaling` does it with aTLAS's
    optimizer), then `merge()` writes the composed weights into `model`.

    Args:
        model: the built pre-trained Keras model (it is frozen).
        task_vectors: a `keras_mtl.transfer.TaskVector` or a list of them,
            from models of `model`'s architecture (matched to `model`'s
            variables by key, or by position).
        blocks: `"variable"` (one coefficient per task vector and variable,
            aTLAS) or `"model"` (one per task vector). Defaults to
            `"variable"`.
        initial_coefficient: the coefficients' initial value. Defaults to
            `0.0` (aTLAS: training starts from `theta_0`); `1.0` starts
            from plain task arithmetic.
        **kwargs: base `keras.Model` keyword arguments.

    Example:

    >>> pre = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> tuned = keras.models.clone_model(pre)
    >>> tuned.set_weights([w + 1.0 for w in pre.get_weights()])
    >>> tau = keras_mtl.transfer.task_vector(tuned, pre)
    >>> atlas = keras_mtl.transfer.TaskVectorComposition(pre, [tau, -tau])
    >>> atlas.num_coefficients  # 2 vectors x 2 blocks (kernel, bias)
    4
    >>> x = np.ones((4, 3), "float32")
    >>> y = atlas.predict(x, verbose=0)  # equals `pre`'s: coefficients are 0
    >>> bool(np.allclose(y, pre.predict(x, verbose=0), atol=1e-6))
    True

    Reference:
        - [Zhang et al., 2024](https://arxiv.org/abs/2407.02469)
    """

    def __init__(
        self,
        model,
        task_vectors,
        blocks="variable",
        initial_coefficient=0.0,
        **kwargs,
    ):
        task_vectors = check_vectors(task_vectors)
        if blocks not in BLOCKS:
            raise ValueError(
                f"`blocks` must be one of {BLOCKS}. Received: blocks={blocks!r}"
            )
        if (
            not isinstance(initial_coefficient, numbers.Real)
            or not math.isfinite(initial_coefficient)
        ):
            raise ValueError(
                "`initial_coefficient` must be a finite number. Received: "
                f"initial_coefficient={initial_coefficient!r}"
            )
        keys = task_vectors[0].keys
        targets = match_variables(model, keys, task_vectors[0].shapes)
        super().__init__(**kwargs)
        self.pre_trained = model
        self.blocks = blocks
        self.initial_coefficient = float(initial_coefficient)
        self.task_vector_keys = keys
        self.num_vectors = len(task_vectors)
        self._targets = _Targets(targets)
        model.trainable = False
        self.vectors = [
            [
                self.add_weight(
                    shape=tuple(target.shape),
                    initializer=keras.initializers.Constant(
                        np.asarray(vector[key], "float32")),
                    trainable=False,
                    dtype=target.dtype,
                    name=f"vector_{i}_{j}",
                )
                for j, (key, target) in enumerate(zip(keys, targets))
            ]
            for i, vector in enumerate(task_vectors)
        ]
        num_blocks = len(keys) if blocks == "variable" else 1
        self.coefficients = self.add_weight(
            shape=(self.num_vectors, num_blocks),
            initializer=keras.initializers.Constant(self.initial_coefficient),
            name="coefficients",
        )
        self.built = True

    @property
    def num_coefficients(self):
        """The number of trainable coefficients."""
        return int(math.prod(self.coefficients.shape))

    def _column(self, j):
        return j if self.blocks == "variable" else 0

    def composed_values(self):
        """The composed weights, one tensor per task-vector variable."""
        coefficients = ops.convert_to_tensor(self.coefficients)
        values = []
        for j, target in enumerate(self._targets.variables):
            value = ops.convert_to_tensor(target)
            for i in range(self.num_vectors):
                weight = ops.cast(
                    coefficients[i, self._column(j)], value.dtype)
                value = value + weight * ops.convert_to_tensor(
                    self.vectors[i][j])
            values.append(value)
        return values

    def call(self, inputs, training=None):
        composed = self.composed_values()
        targets = {id(v) for v in self._targets.variables}
        others = [
            v for v in self.pre_trained.variables if id(v) not in targets
        ]
        mapping = list(zip(self._targets.variables, composed)) + [
            (v, ops.convert_to_tensor(v)) for v in others
        ]
        with keras.StatelessScope(
            state_mapping=mapping, collect_losses=True
        ) as scope:
            initial = dict(scope.state_mapping)
            outputs = self.pre_trained(inputs, training=training)
        # State that the frozen model still updates (dropout seeds) and its
        # losses (regularisers) carry on outside the scope.
        for variable in others:
            value = scope.state_mapping[id(variable)]
            if value is not initial[id(variable)]:
                variable.assign(value)
        for loss in scope.losses:
            self.add_loss(loss)
        return outputs

    def merge(self):
        """Writes the composed weights into the pre-trained model.

        The coefficients are then set to zero, so the composition's output
        is unchanged and equals the model's. Returns the model (still
        frozen: set `model.trainable = True` to fine-tune it further).
        """
        values = [ops.convert_to_numpy(v) for v in self.composed_values()]
        for target, value in zip(self._targets.variables, values):
            target.assign(value)
        self.coefficients.assign(ops.zeros(self.coefficients.shape))
        return self.pre_trained

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.pre_trained),
                "num_vectors": self.num_vectors,
                "task_vector_keys": list(self.task_vector_keys),
                "blocks": self.blocks,
                "initial_coefficient": self.initial_coefficient,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects)
        keys = config.pop("task_vector_keys")
        # The task vectors are weights: zeros here, loaded with the rest.
        zeros = TaskVector.zeros_like(model, keys)
        vectors = [zeros] * config.pop("num_vectors")
        return cls(model, vectors, **config)


@keras_mtl_export("keras_mtl.transfer.learn_task_vector_scaling")
def learn_task_vector_scaling(
    model,
    task_vectors,
    x,
    y=None,
    loss=None,
    blocks="variable",
    optimizer=None,
    epochs=1,
    batch_size=None,
    metrics=None,
    merge=False,
    **fit_kwargs,
):
    """aTLAS: learns per-block scales of task vectors on data.

    Builds a `TaskVectorComposition` of the frozen `model` and
    `task_vectors` (coefficients start at 0), compiles it with aTLAS's
    optimizer (AdamW, learning rate 1e-3, weight decay 0.1) unless another
    is given, and fits only the coefficients on `x`/`y` (for task addition,
    the tasks' validation data with their summed loss). Trainable
    parameters: `len(task_vectors) x` the number of blocks, reported as
    `composition.num_coefficients`.

    Args:
        model: the built pre-trained Keras model (frozen by this function).
        task_vectors: a `TaskVector` or a list of them.
        x: training inputs, as for `Model.fit` (arrays, a dataset, ...).
        y: training targets. Defaults to `None` (targets inside `x`).
        loss: the loss, as for `Model.compile`. Required.
        blocks: `"variable"` or `"model"`, see `TaskVectorComposition`.
            Defaults to `"variable"`.
        optimizer: a Keras optimizer. Defaults to `None`:
            `keras.optimizers.AdamW(1e-3, weight_decay=0.1)`.
        epochs: number of epochs. Defaults to `1`.
        batch_size: as for `Model.fit`. Defaults to `None`.
        metrics: as for `Model.compile`. Defaults to `None`.
        merge: write the learned composition into `model` afterwards (see
            `TaskVectorComposition.merge`). Defaults to `False`.
        **fit_kwargs: further `Model.fit` arguments (`validation_data`,
            `callbacks`, `verbose`, ...).

    Returns:
        The fitted `TaskVectorComposition` (its `history` attribute holds
        the `History`).

    Example:

    >>> pre = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> tuned = keras.models.clone_model(pre)
    >>> tuned.set_weights([w + 0.1 for w in pre.get_weights()])
    >>> tau = keras_mtl.transfer.task_vector(tuned, pre)
    >>> x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    >>> atlas = keras_mtl.transfer.learn_task_vector_scaling(
    ...     pre, [tau], x, tuned.predict(x, verbose=0), loss="mse",
    ...     epochs=2, verbose=0)
    >>> atlas.num_coefficients
    2

    Reference:
        - [Zhang et al., 2024](https://arxiv.org/abs/2407.02469)
    """
    if loss is None:
        raise ValueError("`loss` is required. Received: loss=None")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(
            f"`epochs` must be a positive integer. Received: epochs={epochs!r}"
        )
    composition = TaskVectorComposition(model, task_vectors, blocks=blocks)
    if optimizer is None:
        optimizer = keras.optimizers.AdamW(
            learning_rate=1e-3, weight_decay=0.1)
    composition.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    composition.fit(x, y, epochs=epochs, batch_size=batch_size, **fit_kwargs)
    if merge:
        composition.merge()
    return composition
