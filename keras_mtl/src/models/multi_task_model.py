import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.models.multi_task_trainer import MultiTaskTrainer
from keras_mtl.src.models.multi_task_trainer import check_task_outputs
from keras_mtl.src.transfer.transfer_layout import describe_transfer
from keras_mtl.src.transfer.transfer_layout import restore_transfer


@keras_mtl_export("keras_mtl.MultiTaskModel")
class MultiTaskModel(MultiTaskTrainer, keras.Model):
    """A functional model with one output per task, trained with a
    gradient-balancing rule.

    Build it like a functional model whose outputs are a dict
    `{task_name: tensor}`, then `compile` it with one loss per task and an
    `aggregator`, and train it with `fit`. Each training step computes the
    task losses, the per-task gradients of the **shared** variables (those on
    which several task outputs depend) and combines them with the aggregator.
    Every other trainable variable (a task's head, a per-task gate) receives
    the gradient of its own task's loss, or, with
    `compile(weight_task_specific=True)`, that gradient times the task's
    aggregator weight. Aggregators that need only the losses (`"sum"`,
    `"mean"`, fixed weights) skip per-task gradients: one backward pass of
    the weighted loss, exactly as plain Keras.

    Missing labels: a NaN label, or a sample weight of 0 or NaN, means the
    sample has no label for that task; it is left out of that task's loss
    and metrics.
    Each task loss is the weighted mean over its labelled samples; a task with
    no label in a batch contributes loss 0 and gradient 0.

    Logs: `loss` (unweighted sum of the task losses plus regularisation
    losses, comparable across aggregators), `<task>_loss`, `<task>_weight`
    (the aggregator's weights, averaged over the epoch, training only), the
    aggregator's diagnostics, `skipped_steps`, and `<task>_<metric>` for
    each task metric. Training is that of `keras_mtl.MultiTaskTrainer`; this
    class adds the functional graph: shared variables are known from the
    graph at construction, and `.keras` files describe the graph.

    Args:
        inputs: the model inputs, as for `keras.Model`.
        outputs: dict mapping each task name to its output tensor.
        shared_variables: optional list of variables (or their `.path`
            strings) to treat as shared, overriding the automatic detection.
        **kwargs: passed to `keras.Model` (`name`, `trainable`).

    Example:

    >>> x = keras.Input((8,))
    >>> h = keras.layers.Dense(16, activation="relu")(x)
    >>> model = keras_mtl.MultiTaskModel(
    ...     x, {"a": keras.layers.Dense(1)(h), "b": keras.layers.Dense(1)(h)}
    ... )
    >>> model.compile("adam", loss={"a": "mse", "b": "mse"},
    ...               aggregator="pcgrad")
    >>> history = model.fit(
    ...     np.random.rand(64, 8), {"a": np.random.rand(64, 1),
    ...     "b": np.random.rand(64, 1)}, epochs=1, verbose=0)
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        # Functional's own signature, so that `keras.models.clone_model`
        # rebuilds a MultiTaskModel; `shared_variables` is a keyword.
        shared_variables = kwargs.pop("shared_variables", None)
        if not isinstance(outputs, dict) or not outputs:
            raise ValueError(
                "`outputs` must be a non-empty dict mapping task names to "
                f"output tensors. Received: outputs={outputs!r}"
            )
        check_task_outputs(outputs)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self._output_tasks = tuple(outputs)
        self._dependencies = {
            task: {
                id(v) for v in keras.Model(self.input, outputs[task]).weights
            }
            for task in self._output_tasks
        }
        if shared_variables is not None:
            self._shared_request = self._resolve_variables(shared_variables)

    @classmethod
    def from_model(cls, model, shared_variables=None):
        """Wraps an existing functional model whose outputs are a dict."""
        output = model.output
        if not isinstance(output, dict):
            raise ValueError(
                "The model's outputs must be a dict of task outputs. "
                f"Received: model.output={output!r}"
            )
        return cls(
            model.input,
            output,
            shared_variables=shared_variables,
            name=model.name,
        )

    def output_task_names(self):
        return self._output_tasks

    @property
    def task_names(self):
        return self._output_tasks

    def feature_dependencies(self, features):
        """`id`s of the variables upstream of layer `features`, read from
        the graph (for a layer inside a nested model, from the first
        batch, as for any model)."""
        layer = self.features_layer(features)
        try:
            trunk = keras.Model(self.input, layer.output)
        except (ValueError, AttributeError):
            return super().feature_dependencies(features)
        return {id(v) for v in trunk.weights}

    def get_config(self):
        # Keras serialises the graph only for classes with Functional's own
        # constructor, so describe the same graph through a plain Functional.
        graph = keras.Model(self.input, self.output, name=self.name)
        config = graph.get_config()
        config["trainable"] = self.trainable
        # Adapters, combiners and adapter experts injected into a backbone
        # are not part of its own config: record them to re-inject on load.
        transfer = describe_transfer(self)
        if transfer is not None:
            config["transfer"] = transfer
        if self._shared_request is not None:
            config["shared_variables"] = [
                v.path for v in self._resolve_variables(self._shared_request)]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        shared = config.pop("shared_variables", None)
        transfer = config.pop("transfer", None)
        functional = keras.Model.from_config(
            config, custom_objects=custom_objects
        )
        restore_transfer(functional, transfer)
        return cls(
            functional.input,
            functional.output,
            shared_variables=shared,
            name=functional.name,
            trainable=config.get("trainable", True),
        )
