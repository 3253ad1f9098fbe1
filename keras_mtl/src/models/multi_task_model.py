import math

import keras
from keras import ops

from keras_mtl.src import backend
from keras_mtl.src.aggregators import registry
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.constant import Constant
from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.models import task_losses
from keras_mtl.src.models.task_means import TaskMeans

GRADIENT_MODES = ("parameters", "features")


class _Holder:
    """A plain container that Keras' attribute tracking leaves alone."""

    def __init__(self, **items):
        self.__dict__.update(items)


class GradientPlan:
    """What one training step differentiates, fixed when the step is traced.

    Attributes:
        shared: trainable variables whose per-task gradients are aggregated.
        others: every other trainable variable; each receives the gradient of
            `sum_t c_t L_t` (+ regularisation), where `c_t` is 1 (own-task
            gradient) or the aggregator's weight of task `t`.
        shared_index / others_index: positions in `trainable_variables`.
        mode: `"losses"` (one backward pass of the weighted loss),
            `"parameters"` or `"features"`.
    """

    def __init__(self, model):
        trainable = model.trainable_variables
        shared_ids = model._shared_variable_ids()
        self.shared_index = [
            i for i, v in enumerate(trainable) if id(v) in shared_ids
        ]
        self.others_index = [
            i for i, v in enumerate(trainable) if id(v) not in shared_ids
        ]
        self.shared = [trainable[i] for i in self.shared_index]
        self.others = [trainable[i] for i in self.others_index]
        if not model.aggregator.requires_jacobian or not self.shared:
            self.mode = "losses"
        else:
            self.mode = model.gradient_mode
        # Loss-only rules with learnable parameters are trained through
        # `aggregator.scalarize`, differentiated inside the step.
        self.parametrized = bool(model._mtl.parameters)
        self.trunk = self.heads = None
        aggregator = model.aggregator
        if aggregator.tracks_gradients and self.mode == "parameters":
            width = sum(math.prod(v.shape) for v in self.shared)
            if width != model._mtl.num_params:
                raise ValueError(
                    f"{type(aggregator).__name__} keeps per-parameter state "
                    f"for {model._mtl.num_params} shared parameters, but "
                    f"{width} are now "
                    "trainable and shared. Compile the model again after "
                    "changing which variables are trainable. Received: "
                    f"{len(self.shared)} shared variables"
                )
        # Rules that balance the gradient norms of one layer (GradNorm).
        self.norm_index = None
        layer = getattr(aggregator, "layer", None)
        if layer is not None and self.mode != "losses":
            if self.mode != "parameters":
                raise ValueError(
                    f"{type(aggregator).__name__}(layer={layer!r}) needs "
                    "gradient_mode='parameters'. Received: "
                    f"gradient_mode={self.mode!r}"
                )
            layer_ids = {id(v) for v in model.get_layer(layer).trainable_variables}
            self.norm_index = [
                k for k, v in enumerate(self.shared) if id(v) in layer_ids
            ]
            if not self.norm_index:
                raise ValueError(
                    f"Layer {layer!r} has no shared trainable variables, so "
                    f"{type(aggregator).__name__} cannot balance its gradient "
                    f"norms. Received: layer={layer!r}"
                )
        if self.mode == "features":
            self.trunk, self.heads = model._features_split()
            trunk_ids = {id(v) for v in self.trunk.trainable_variables}
            outside = [v.path for v in self.shared if id(v) not in trunk_ids]
            if outside:
                raise ValueError(
                    "gradient_mode='features' needs every shared variable "
                    "upstream of the features tensor "
                    f"{model.features!r}; these are not: {outside}"
                )

    def assemble(self, shared_grads, other_grads):
        """Puts gradients back in `trainable_variables` order."""
        grads = [None] * (len(self.shared) + len(self.others))
        for i, g in zip(self.shared_index, shared_grads):
            grads[i] = g
        for i, g in zip(self.others_index, other_grads):
            grads[i] = g
        return grads


@keras_mtl_export("keras_mtl.MultiTaskModel")
class MultiTaskModel(keras.Model):
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

    Missing labels: a NaN label, or a sample weight of 0, means the sample has
    no label for that task; it is left out of that task's loss and metrics.
    Each task loss is the weighted mean over its labelled samples; a task with
    no label in a batch contributes loss 0 and gradient 0.

    Logs: `loss` (unweighted sum of the task losses plus regularisation
    losses, comparable across aggregators), `<task>_loss`, `<task>_weight`
    (the aggregator's weights, averaged over the epoch, training only), the
    aggregator's diagnostics, and `<task>_<metric>` for each task metric.

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
    >>> model.compile("adam", loss={"a": "mse", "b": "mse"}, aggregator="pcgrad")
    >>> history = model.fit(
    ...     np.random.rand(64, 8), {"a": np.random.rand(64, 1),
    ...     "b": np.random.rand(64, 1)}, epochs=1, verbose=0)
    """

    def __init__(self, inputs, outputs, shared_variables=None, **kwargs):
        if not isinstance(outputs, dict) or not outputs:
            raise ValueError(
                "`outputs` must be a non-empty dict mapping task names to "
                f"output tensors. Received: outputs={outputs!r}"
            )
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.task_names = tuple(outputs)
        self._task_dependencies = {
            task: {
                id(v) for v in keras.Model(self.input, outputs[task]).weights
            }
            for task in self.task_names
        }
        self._shared_override = None
        if shared_variables is not None:
            self._shared_override = self._resolve_variables(shared_variables)
        self.aggregator_seed = keras.random.SeedGenerator(name="aggregator_seed")
        self._mtl = _Holder(
            compiled=False, state={}, parameters={}, epoch=None, metrics=[],
            plan=None, plan_key=None, split=None, num_params=None,
        )

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

    # ----------------------------------------------------------- variables

    def _resolve_variables(self, variables):
        by_path = {v.path: v for v in self.weights}
        by_id = {id(v) for v in self.weights}
        resolved = []
        for v in variables:
            if isinstance(v, str):
                if v not in by_path:
                    raise ValueError(
                        "Unknown variable path in `shared_variables`. "
                        f"Received: {v!r}"
                    )
                v = by_path[v]
            elif id(v) not in by_id:
                raise ValueError(
                    "`shared_variables` must hold variables of this model. "
                    f"Received: {getattr(v, 'path', v)!r}"
                )
            resolved.append(v)
        return resolved

    def _shared_variable_ids(self):
        if self._shared_override is not None:
            return {id(v) for v in self._shared_override}
        counts = {}
        for ids in self._task_dependencies.values():
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
        return {i for i, n in counts.items() if n > 1}

    @property
    def shared_variables(self):
        """Trainable variables whose per-task gradients are aggregated."""
        ids = self._shared_variable_ids()
        return [v for v in self.trainable_variables if id(v) in ids]

    @property
    def task_specific_variables(self):
        """Dict: task name -> trainable variables only that task uses."""
        shared = self._shared_variable_ids()
        return {
            task: [
                v
                for v in self.trainable_variables
                if id(v) in ids and id(v) not in shared
            ]
            for task, ids in self._task_dependencies.items()
        }

    def _features_split(self):
        """Splits the graph at the features layer: (trunk, heads) models."""
        cached = getattr(self._mtl, "split", None)
        if cached is not None and cached[0] == self.features:
            return cached[1]
        try:
            features = self.get_layer(self.features).output
        except ValueError as error:
            raise ValueError(
                "gradient_mode='features' needs `features`, the name of a "
                "layer with a single output shared by the task heads. "
                f"Received: features={self.features!r} ({error})"
            ) from None
        trunk = keras.Model(self.input, features)
        heads = keras.Model([self.input, features], self.output)
        self._mtl.split = (self.features, (trunk, heads))
        return trunk, heads

    # ------------------------------------------------------------- compile

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        aggregator=None,
        gradient_mode="parameters",
        features=None,
        weight_task_specific=False,
        vectorize=False,
        run_eagerly=False,
        jit_compile="auto",
        steps_per_execution=1,
    ):
        """Configures the model for training.

        Args:
            optimizer: as for `keras.Model.compile`.
            loss: dict `{task: loss}` with one loss per task (a name, a
                `keras.losses.Loss` or a function); a single loss is used for
                every task. Losses are applied per sample and reduced by the
                masked weighted mean described in the class docstring.
            loss_weights: optional dict `{task: float}`; shorthand for
                `aggregator=keras_mtl.aggregators.Constant(...)`.
            metrics: dict `{task: [metrics]}` (or one list for every task);
                computed on labelled samples only, ignoring sample weights.
            weighted_metrics: like `metrics`, but weighted by sample weights.
            aggregator: an `keras_mtl.aggregators.Aggregator` or its name
                (e.g. `"pcgrad"`). Defaults to `"sum"`, the plain sum of the
                task losses.
            gradient_mode: `"parameters"` (exact per-task gradients of the
                shared variables) or `"features"` (per-task gradients of the
                shared representation named by `features`, then one backward
                pass through the trunk; MGDA-UB style).
            features: name of the layer whose output is the shared
                representation, for `gradient_mode="features"`.
            weight_task_specific: if `True`, non-shared variables receive
                their task's gradient times its aggregator weight; by default
                they receive their own task's gradient unweighted. Loss-only
                aggregators always backpropagate the weighted loss.
            vectorize: compute the per-task gradients in one vectorised call
                (`jax.vmap`, `GradientTape.jacobian`, batched
                `torch.autograd.grad`) instead of a loop of backward passes.
                Same result; which is faster depends on device and model
                (see `benchmarks/step_time.py`). The loop differentiates each
                task loss through its own head only; the vectorised call
                carries each task's one-hot row through every head.
            run_eagerly, jit_compile, steps_per_execution: as for
                `keras.Model.compile`.
        """
        if gradient_mode not in GRADIENT_MODES:
            raise ValueError(
                f"`gradient_mode` must be one of {GRADIENT_MODES}. "
                f"Received: gradient_mode={gradient_mode!r}"
            )
        if gradient_mode == "features" and not isinstance(features, str):
            raise ValueError(
                "gradient_mode='features' needs `features`, the name of the "
                f"shared representation layer. Received: features={features!r}"
            )
        losses = self._per_task("loss", loss, required=True)
        if loss_weights is not None:
            if aggregator is not None:
                raise ValueError(
                    "Pass either `loss_weights` or `aggregator`, not both. "
                    f"Received: loss_weights={loss_weights!r}, "
                    f"aggregator={aggregator!r}"
                )
            weights = self._per_task("loss_weights", loss_weights, True)
            aggregator = Constant([weights[t] for t in self.task_names])
        aggregator = registry.get("sum" if aggregator is None else aggregator)
        super().compile(
            optimizer=optimizer,
            run_eagerly=run_eagerly,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        self.aggregator = aggregator
        self.gradient_mode = gradient_mode
        self.features = features
        self.weight_task_specific = bool(weight_task_specific)
        self.vectorize = bool(vectorize)
        if gradient_mode == "features":
            self._features_split()  # Fail early on a bad layer name.
        # Kept in a holder: Keras would otherwise track the user's metric
        # objects as metrics of the model.
        self._mtl.compile_args = _Holder(
            loss=losses, metrics=metrics, weighted_metrics=weighted_metrics
        )
        self._mtl.loss_fns = {
            t: (
                task_losses.resolve_loss(losses[t], t),
                task_losses.is_sparse_loss(losses[t]),
            )
            for t in self.task_names
        }
        self._mtl.metrics = self._build_metrics(
            losses, metrics, weighted_metrics
        )
        self._build_aggregator_state()
        self._mtl.plan = None
        self._mtl.compiled = True

    def _per_task(self, arg_name, value, required):
        if not isinstance(value, dict):
            if value is None and required:
                raise ValueError(
                    f"`{arg_name}` is required: one entry per task "
                    f"{list(self.task_names)}. Received: {arg_name}=None"
                )
            return {task: value for task in self.task_names}
        unknown = sorted(set(value) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"`{arg_name}` names unknown tasks {unknown}; the tasks are "
                f"{list(self.task_names)}. Received: {arg_name}={value!r}"
            )
        missing = [t for t in self.task_names if t not in value]
        if missing and required:
            raise ValueError(
                f"`{arg_name}` is missing tasks {missing}. "
                f"Received: {arg_name}={value!r}"
            )
        return {task: value.get(task) for task in self.task_names}

    def _build_metrics(self, losses, metrics, weighted_metrics):
        built = []
        for arg_name, value, weighted in (
            ("metrics", metrics, False),
            ("weighted_metrics", weighted_metrics, True),
        ):
            per_task = self._per_task(arg_name, value, required=False)
            for task in self.task_names:
                entries = per_task[task] or []
                if not isinstance(entries, (list, tuple)):
                    entries = [entries]
                for entry in entries:
                    metric = task_losses.resolve_metric(
                        entry,
                        task,
                        losses[task],
                        prefix="weighted_" if weighted else "",
                    )
                    built.append((task, weighted, metric))
        names = self.task_names
        task_loss = TaskMeans([f"{t}_loss" for t in names], name="task_losses")
        task_weight = TaskMeans(
            [f"{t}_weight" for t in names], name="task_weights"
        )
        prefix = self.aggregator.name
        diagnostics = None
        if self.aggregator.diagnostics:
            diagnostics = TaskMeans(
                [f"{prefix}_{key}" for key in self.aggregator.diagnostics],
                name="aggregator_diagnostics",
            )
        return _Holder(
            task_loss=task_loss,
            task_weight=task_weight,
            diagnostics=diagnostics,
            task_metrics=built,
        )

    def _add_aggregator_variables(self, values, trainable, prefix):
        variables = {}
        for key, value in values.items():
            value = ops.convert_to_tensor(value)
            variables[key] = self.add_weight(
                shape=tuple(value.shape),
                initializer=keras.initializers.Constant(
                    ops.convert_to_numpy(value)
                ),
                dtype=value.dtype,
                trainable=trainable,
                name=f"{prefix}_{key}",
            )
        return variables

    def _build_aggregator_state(self):
        """(Re)creates the variables that hold the aggregator's state, its
        trainable parameters and, if it needs it, the epoch counter."""
        old = list(self._mtl.state.values()) + list(
            self._mtl.parameters.values()
        )
        if self._mtl.epoch is not None:
            old.append(self._mtl.epoch)
        for variable in old:
            self._untrack_variable(variable)
        num_tasks = len(self.task_names)
        aggregator = self.aggregator
        parameters = aggregator.initial_parameters(num_tasks)
        if parameters and aggregator.requires_jacobian:
            raise ValueError(
                "Aggregators with learnable parameters must be loss-only "
                "(requires_jacobian=False). Received: aggregator="
                f"{aggregator!r}"
            )
        num_params = None
        if aggregator.tracks_gradients:
            if self.gradient_mode != "parameters":
                raise ValueError(
                    f"{type(aggregator).__name__} keeps per-parameter state "
                    "and needs gradient_mode='parameters'. Received: "
                    f"gradient_mode={self.gradient_mode!r}"
                )
            num_params = sum(math.prod(v.shape) for v in self.shared_variables)
        self._mtl.num_params = num_params
        self._mtl.state = self._add_aggregator_variables(
            aggregator.initial_state(num_tasks, num_params), False,
            "aggregator_state",
        )
        self._mtl.parameters = self._add_aggregator_variables(
            parameters, True, "aggregator"
        )
        self._mtl.epoch = None
        if aggregator.uses_epoch:
            self._mtl.epoch = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="epoch"
            )

    @property
    def metrics(self):
        base = super().metrics
        if not getattr(self, "_mtl", None) or not self._mtl.compiled:
            return base
        own = self._mtl.metrics
        trackers = [own.task_loss, own.task_weight]
        if own.diagnostics is not None:
            trackers.append(own.diagnostics)
        return (
            base[:1]
            + trackers
            + [m for _, _, m in own.task_metrics]
            + base[1:]
        )

    def get_compile_config(self):
        if not self._mtl.compiled:
            return None
        ser = keras.saving.serialize_keras_object
        args = self._mtl.compile_args
        return {
            "optimizer": ser(self.optimizer),
            "loss": {t: ser(v) for t, v in args.loss.items()},
            "metrics": ser(args.metrics),
            "weighted_metrics": ser(args.weighted_metrics),
            "aggregator": registry.serialize(self.aggregator),
            "gradient_mode": self.gradient_mode,
            "features": self.features,
            "weight_task_specific": self.weight_task_specific,
            "vectorize": self.vectorize,
            "jit_compile": self.jit_compile,
        }

    def compile_from_config(self, config):
        de = keras.saving.deserialize_keras_object
        config = dict(config)
        config["optimizer"] = keras.optimizers.get(config["optimizer"])
        config["loss"] = {t: de(v) for t, v in config["loss"].items()}
        config["metrics"] = de(config["metrics"])
        config["weighted_metrics"] = de(config["weighted_metrics"])
        config["aggregator"] = registry.deserialize(config["aggregator"])
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        # Keras serialises the graph only for classes with Functional's own
        # constructor, so describe the same graph through a plain Functional.
        graph = keras.Model(self.input, self.output, name=self.name)
        config = graph.get_config()
        config["trainable"] = self.trainable
        if self._shared_override is not None:
            config["shared_variables"] = [v.path for v in self._shared_override]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        shared = config.pop("shared_variables", None)
        functional = keras.Model.from_config(
            config, custom_objects=custom_objects
        )
        return cls(
            functional.input,
            functional.output,
            shared_variables=shared,
            name=functional.name,
            trainable=config.get("trainable", True),
        )

    # --------------------------------------------- backend-agnostic step parts

    def _check_compiled(self):
        if not self._mtl.compiled:
            raise ValueError(
                "MultiTaskModel must be compiled with a loss per task before "
                "training or evaluation. Received: an uncompiled model"
            )

    def _gradient_plan(self):
        """The step's plan, rebuilt only when the trainable set changes
        (PyTorch runs the step eagerly, so this is on the hot path)."""
        self._check_compiled()
        key = tuple(id(v) for v in self.trainable_variables)
        if self._mtl.plan is None or self._mtl.plan_key != key:
            self._mtl.plan = GradientPlan(self)
            self._mtl.plan_key = key
        return self._mtl.plan

    def _targets(self, y, sample_weight):
        """Validates `y` and `sample_weight`; returns dicts keyed by task."""
        if isinstance(y, (list, tuple)) and len(y) == len(self.task_names):
            y = dict(zip(self.task_names, y))
        if not isinstance(y, dict):
            raise ValueError(
                "MultiTaskModel needs labels as a dict {task: labels}, one "
                f"entry per task {list(self.task_names)}. Received: y={y!r}"
            )
        unknown = sorted(set(y) - set(self.task_names))
        missing = [t for t in self.task_names if t not in y]
        if unknown or missing:
            raise ValueError(
                f"Labels must have exactly the tasks {list(self.task_names)} "
                f"(unknown: {unknown}, missing: {missing}; use NaN labels for "
                f"missing values). Received: y keys={sorted(y)}"
            )
        if sample_weight is None or not isinstance(sample_weight, dict):
            if isinstance(sample_weight, (list, tuple)):
                sample_weight = dict(zip(self.task_names, sample_weight))
            else:
                sample_weight = {t: sample_weight for t in self.task_names}
        unknown = sorted(set(sample_weight) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"`sample_weight` names unknown tasks {unknown}. "
                f"Received: sample_weight keys={sorted(sample_weight)}"
            )
        return y, {t: sample_weight.get(t) for t in self.task_names}

    def _check_arrays(self, y, sample_weight):
        """Validates in-memory labels before Keras starts a step.

        The same checks run inside the step; running them here first gives
        the error before any tracing (on JAX, an error inside the first
        traced step leaves the model's variables unusable).
        """
        if y is None or not isinstance(y, (dict, list, tuple)):
            return
        if isinstance(y, (list, tuple)) and not all(
            hasattr(v, "shape") for v in y
        ):
            return
        y, sample_weight = self._targets(y, sample_weight)
        for task in self.task_names:
            _, sparse = self._mtl.loss_fns[task]
            labels = y[task]
            if hasattr(labels, "shape") and hasattr(labels, "dtype"):
                spec = self.output[task]
                task_losses.check_shapes(
                    task,
                    keras.KerasTensor((None, *labels.shape[1:]), labels.dtype),
                    spec,
                    sparse,
                )

    def fit(self, x=None, y=None, *args, sample_weight=None, **kwargs):
        self._check_compiled()
        self._check_arrays(y, sample_weight)
        if self._mtl.epoch is not None:
            callbacks = list(kwargs.pop("callbacks", None) or [])
            kwargs["callbacks"] = callbacks + [_EpochCounter(self._mtl.epoch)]
        return super().fit(x, y, *args, sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, *args, sample_weight=None, **kwargs):
        self._check_compiled()
        self._check_arrays(y, sample_weight)
        return super().evaluate(
            x, y, *args, sample_weight=sample_weight, **kwargs
        )

    def train_on_batch(self, x, y=None, sample_weight=None, *args, **kwargs):
        self._check_compiled()
        self._check_arrays(y, sample_weight)
        return super().train_on_batch(x, y, sample_weight, *args, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, *args, **kwargs):
        self._check_compiled()
        self._check_arrays(y, sample_weight)
        return super().test_on_batch(x, y, sample_weight, *args, **kwargs)

    def _task_losses(self, y, y_pred, sample_weight, stack=True):
        """Returns `(losses, counts, labelled)`: `(T,)` losses and label
        counts, and per task `(clean_labels, weights)` for the metrics.

        With `stack=False`, `losses` is the list of scalar task losses: a
        gradient of one of them then flows through its own task's graph
        only, while a gradient of one entry of the stacked vector also
        carries zeros through every other task's head.
        """
        y, sample_weight = self._targets(y, sample_weight)
        losses, counts, labelled = [], [], {}
        for task in self.task_names:
            fn, sparse = self._mtl.loss_fns[task]
            loss, count, clean, weights = task_losses.masked_task_loss(
                task, fn, sparse, y[task], y_pred[task], sample_weight[task]
            )
            losses.append(loss)
            counts.append(count)
            labelled[task] = (clean, weights, sample_weight[task])
        return (ops.stack(losses) if stack else losses), ops.stack(counts), labelled

    @staticmethod
    def _sum_losses(losses):
        """Sum of regularisation / `add_loss` losses, or None if none."""
        if not losses:
            return None
        return ops.sum(ops.stack([ops.cast(v, "float32") for v in losses]))

    def _aggregator_state(self):
        """The aggregator's state, plus the read-only epoch and parameters."""
        state = {k: v.value for k, v in self._mtl.state.items()}
        state.update({k: v.value for k, v in self._mtl.parameters.items()})
        if self._mtl.epoch is not None:
            state["epoch"] = self._mtl.epoch.value
        return state

    def _parametrized_objective(self, losses):
        """`aggregator.scalarize` for rules with learnable parameters."""
        parameters = {k: v.value for k, v in self._mtl.parameters.items()}
        return self.aggregator.scalarize(losses, parameters)

    def _set_aggregator_state(self, state):
        for key, variable in self._mtl.state.items():
            variable.assign(ops.cast(state[key], variable.dtype))

    def _loss_weights(self, losses):
        """Task weights of a loss-only aggregator (updates its state).

        A Jacobian aggregator lands here only when no variable is shared:
        each task then simply trains its own variables."""
        if not isinstance(self.aggregator, Weighting):
            return ops.ones((len(self.task_names),), "float32")
        weights, state = self.aggregator.compute_weights(
            len(self.task_names),
            None,
            ops.stop_gradient(losses),
            self._aggregator_state(),
            self.aggregator_seed,
        )
        self._set_aggregator_state(state)
        return ops.stop_gradient(ops.cast(weights, "float32"))

    def _combine(self, jacobians, losses, flat=None):
        """Aggregates per-task gradients.

        Args:
            jacobians: list of `(T, *shape)` tensors (one per shared variable,
                or one for the features tensor).
            losses: `(T,)` task losses.
            flat: optional `(T, P)` float32 matrix of which `jacobians` are
                views, side by side (the PyTorch engine writes the gradients
                into one); Jacobian rules then read it without a copy.

        Returns:
            `(directions, weights)`: one `(*shape)` tensor per entry of
            `jacobians`, and the `(T,)` task weights.
        """
        num_tasks = len(self.task_names)
        losses = ops.stop_gradient(losses)
        if flat is None:
            flats = [
                ops.reshape(ops.cast(j, "float32"), (num_tasks, -1))
                for j in jacobians
            ]
            sizes = [f.shape[1] for f in flats]
        else:
            sizes = [math.prod(j.shape[1:]) for j in jacobians]
            flats = ops.split(flat, _cumulative(sizes)[:-1], axis=1)
        state = self._aggregator_state()
        if isinstance(self.aggregator, Weighting):
            gramians = [f @ ops.transpose(f) for f in flats]
            gramian = _sum(gramians)
            norm_index = self._mtl.plan.norm_index  # Built by this step.
            if norm_index is not None:
                state["layer_gramian"] = _sum([gramians[k] for k in norm_index])
            weights, state = self.aggregator.compute_weights(
                num_tasks, gramian, losses, state, self.aggregator_seed
            )
            weights = ops.cast(weights, "float32")
            directions = [
                ops.cast(ops.tensordot(weights, j, axes=1), j.dtype)
                for j in jacobians
            ]
        else:
            jacobian = ops.concatenate(flats, axis=1) if flat is None else flat
            direction, weights, state = self.aggregator.aggregate(
                jacobian, losses, state, self.aggregator_seed
            )
            pieces = ops.split(direction, _cumulative(sizes)[:-1])
            directions = [
                ops.cast(ops.reshape(p, j.shape[1:]), j.dtype)
                for p, j in zip(pieces, jacobians)
            ]
        self._set_aggregator_state(state)
        return directions, ops.stop_gradient(weights)

    def _after_step(self, x, y, sample_weight, losses_before):
        """Re-evaluates the losses on the batch after the optimizer step
        (inference mode) for rules that learn from the step's effect."""
        if not self.aggregator.requires_losses_after_step:
            return
        y_pred = self(x, training=False)
        losses_after, _, _ = self._task_losses(y, y_pred, sample_weight)
        state = self.aggregator.update_after_step(
            ops.stop_gradient(losses_before),
            ops.stop_gradient(losses_after),
            self._aggregator_state(),
        )
        self._set_aggregator_state(state)

    def _task_coefficients(self, weights):
        """Cotangents of the task losses for the non-shared variables."""
        if self.weight_task_specific:
            return weights
        return ops.ones((len(self.task_names),), "float32")

    def _update_metrics(self, losses, counts, labelled, y_pred, total, x,
                        weights=None):
        """Updates every tracker; returns the logs."""
        own = self._mtl.metrics
        batch = ops.shape(next(t for t in _flatten(x) if t is not None))[0]
        self._loss_tracker.update_state(total, sample_weight=batch)
        own.task_loss.update_state(losses, sample_weight=counts)
        if weights is not None:
            own.task_weight.update_state(weights)
            if own.diagnostics is not None:
                state = self._aggregator_state()
                own.diagnostics.update_state(
                    ops.stack([
                        ops.cast(state[k], "float32")
                        for k in self.aggregator.diagnostics
                    ])
                )
        for task, weighted, metric in own.task_metrics:
            clean, mask, sample_weight = labelled[task]
            metric_weight = mask
            if not weighted and sample_weight is not None:
                metric_weight = ops.cast(mask > 0.0, "float32")
            metric.update_state(clean, y_pred[task], sample_weight=metric_weight)
        logs = self.get_metrics_result()
        if weights is None:
            skip = set(own.task_weight.names)
            if own.diagnostics is not None:
                skip |= set(own.diagnostics.names)
            logs = {k: v for k, v in logs.items() if k not in skip}
        return logs

    def _total_loss(self, losses, regularization):
        total = ops.sum(losses)
        if regularization is not None:
            total = total + regularization
        return total

    def _evaluate_batch(self, x, y, sample_weight):
        """Forward pass, losses and metrics of one evaluation batch."""
        self._check_compiled()
        y_pred = self(x, training=False)
        losses, counts, labelled = self._task_losses(y, y_pred, sample_weight)
        total = self._total_loss(losses, self._sum_losses(self.losses))
        return self._update_metrics(losses, counts, labelled, y_pred, total, x)

    @staticmethod
    def _heads_inputs(x, z):
        """The inputs of the heads model in features mode: `[x, z]`."""
        return [keras.tree.map_structure(ops.convert_to_tensor, x), z]

    # -------------------------------------------------------- backend steps

    def train_step(self, *args):
        return backend.train_step(self, *args)

    def test_step(self, *args):
        return backend.test_step(self, *args)


class _EpochCounter(keras.callbacks.Callback):
    """Writes the current epoch of `fit` into the model's epoch variable."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(float(epoch))


def _sum(tensors):
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total


def _cumulative(sizes):
    out, total = [], 0
    for s in sizes:
        total += s
        out.append(total)
    return out


def _flatten(structure):
    if isinstance(structure, dict):
        return [v for k in sorted(structure) for v in _flatten(structure[k])]
    if isinstance(structure, (list, tuple)):
        return [v for s in structure for v in _flatten(s)]
    return [structure]
