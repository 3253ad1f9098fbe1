"""`MultiTaskTrainer`: gradient-balanced training for any Keras model."""

import contextlib
import warnings

import keras
from keras import ops

from keras_mtl.src import backend
from keras_mtl.src.aggregators import registry
from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.models import aggregation_groups as aggregation_groups_lib
from keras_mtl.src.models import first_batch
from keras_mtl.src.models.balancer import Balancer
from keras_mtl.src.models.balancer import sum_losses
from keras_mtl.src.models.feature_split import find_layer
from keras_mtl.src.models.feature_split import split_at
from keras_mtl.src.models.gradient_plan import GradientPlan
from keras_mtl.src.models.replicas import SINGLE


@keras_mtl_export("keras_mtl.MultiTaskTrainer")
class MultiTaskTrainer:
    """Mixin that trains a Keras model with one loss per task and a
    gradient-balancing rule.

    Put it before `keras.Model` in the bases of a model whose `call` returns
    a dict `{task: output}`, then `compile` with one loss per task and an
    `aggregator`, and train with `fit`. Each training step computes the task
    losses and the per-task gradients of the **shared** variables (those on
    which several task outputs depend) and combines them with the
    aggregator; every other trainable variable receives the gradient of its
    own task's loss (times the task's weight with
    `compile(weight_task_specific=True)`). Loss-only aggregators (`"sum"`,
    fixed weights) run one backward pass of the weighted loss, like plain
    Keras.

    Shared variables are found from the model's graph for a functional
    `keras_mtl.MultiTaskModel`, and otherwise from the first training batch:
    a variable is shared when the outputs of several tasks depend on it
    (the backend's autodiff reports the dependency; traced once, before the
    first step). Pass `shared_variables=[...]` (variables or their paths) to
    the constructor to choose them yourself.

    Missing labels: a NaN label, or a sample weight of 0 or NaN, leaves that
    sample out of that task's loss and metrics. A task with no label in a
    batch has loss 0 and gradient 0; a task with no label in a whole epoch
    logs NaN.

    Logs: `loss` (sum of the task losses plus regularisation), `<task>_loss`,
    `<task>_weight` (training), the aggregator's diagnostics,
    `skipped_steps` (steps with a non-finite loss or gradient, which were not
    applied), and `<task>_<metric>`.

    Args:
        shared_variables: optional list of variables (or `.path` strings)
            whose per-task gradients are aggregated.
        *args, **kwargs: passed on to the other base class (`keras.Model`).

    Example:

    >>> class TwoTasks(keras_mtl.MultiTaskTrainer, keras.Model):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.trunk = keras.layers.Dense(16, activation="relu")
    ...         self.head_a = keras.layers.Dense(1)
    ...         self.head_b = keras.layers.Dense(1)
    ...     def call(self, x):
    ...         h = self.trunk(x)
    ...         return {"a": self.head_a(h), "b": self.head_b(h)}
    >>> model = TwoTasks()
    >>> model.compile("adam", loss={"a": "mse", "b": "mse"},
    ...               aggregator="upgrad")
    >>> history = model.fit(
    ...     np.random.rand(64, 8), {"a": np.random.rand(64, 1),
    ...     "b": np.random.rand(64, 1)}, epochs=1, verbose=0)
    >>> [v.path for v in model.shared_variables]
    ['dense/kernel', 'dense/bias']
    """

    def __init__(self, *args, shared_variables=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._shared_request = shared_variables
        self._dependencies = None
        self._feature_ids = None
        self.balancer = None
        self._compile_args = None

    # ----------------------------------------------------- shared variables

    def task_dependencies(self):
        """`{task: set of variable ids}` the task's output depends on, or
        `None` while unknown (a subclassed model before its first batch)."""
        return self._dependencies

    def find_shared_variables(self, x):
        """Finds the shared variables by differentiating each task output
        (and, in features mode, the features) on the inputs `x` (one
        batch); called by `fit` with its first batch.

        Returns:
            The shared variables.
        """
        outputs = self(x, training=False)
        self._check_outputs(outputs)
        names = self.task_names
        layer = None
        if self.gradient_mode == "features":
            layer = self.features_layer(self.features)

        def forward():
            if layer is None:
                y_pred = self(x, training=False)
                return [y_pred[t] for t in names]
            with split_at(layer, lambda z: z) as split:
                y_pred = self(x, training=False)
            return [y_pred[t] for t in names] + [split.features]

        found = backend.output_dependencies(self, forward)
        self._dependencies = dict(zip(names, found))
        if layer is not None:
            self._feature_ids = (layer.name, found[-1])
        return self.shared_variables

    @property
    def task_names(self):
        if self.balancer is not None:
            return self.balancer.task_names
        raise ValueError(
            "The task names come from `compile(loss={task: loss})`; compile "
            "the model first. Received: an uncompiled model"
        )

    def _resolve_variables(self, variables):
        if isinstance(variables, (str, keras.Variable, keras.layers.Layer)):
            raise ValueError(
                "`shared_variables` must be a list of variables or variable "
                f"paths. Received: shared_variables={variables!r}"
            )
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

    def shared_variable_ids(self):
        """`id`s of the shared variables (see `shared_variables`)."""
        if self._shared_request is not None:
            return {id(v) for v in self._resolve_variables(
                self._shared_request)}
        dependencies = self.task_dependencies()
        if dependencies is None:
            raise ValueError(
                "The shared variables of a subclassed model are found from "
                "its first batch: call `fit`, or "
                "`model.find_shared_variables(x)`, or pass "
                "`shared_variables=[...]` to the constructor. Received: a "
                "model that has not seen a batch"
            )
        counts = {}
        for ids in dependencies.values():
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
        return {i for i, n in counts.items() if n > 1}

    @property
    def shared_variables(self):
        """Trainable variables whose per-task gradients are aggregated."""
        ids = self.shared_variable_ids()
        return [v for v in self.trainable_weights if id(v) in ids]

    @property
    def task_specific_variables(self):
        """Dict: task name -> trainable variables only that task uses."""
        shared = self.shared_variable_ids()
        dependencies = self.task_dependencies() or {}
        return {
            task: [
                v for v in self.trainable_weights
                if id(v) in dependencies.get(task, ()) and id(v) not in shared
            ]
            for task in self.task_names
        }

    def features_layer(self, features):
        """The layer named `features`, whose output is the shared
        representation of `gradient_mode="features"`."""
        layer = find_layer(self, features) if isinstance(
            features, str) else None
        if layer is None:
            raise ValueError(
                "gradient_mode='features' needs `features`, the name of a "
                "layer of the model whose output (one tensor) all task heads "
                f"read. Received: features={features!r}"
            )
        return layer

    def feature_dependencies(self, features):
        """`id`s of the trainable variables the output of layer `features`
        depends on, or `None` while unknown (a subclassed model before its
        first batch)."""
        if self._feature_ids is not None and self._feature_ids[0] == features:
            return self._feature_ids[1]
        return None

    # -------------------------------------------------------------- compile

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
        non_finite="skip",
        aggregation_groups=None,
        sharpness=None,
        rho=2.0,
        sharpness_adaptive=True,
        saliency_regularizer=None,
        task_groups=None,
        run_eagerly=False,
        jit_compile="auto",
        steps_per_execution=1,
    ):
        """Configures the model for training.

        Args:
            optimizer: as for `keras.Model.compile`.
            loss: dict `{task: loss}` with one loss per task (a name, a
                `keras.losses.Loss` or a function); a single loss is used for
                every task of a functional model. Losses are applied per
                sample and reduced by the masked weighted mean.
            loss_weights: optional dict `{task: float}`; shorthand for
                `aggregator=keras_mtl.aggregators.Constant(...)`.
            metrics: dict `{task: [metrics]}` (or one list for every task);
                computed on labelled samples only, ignoring sample weights.
            weighted_metrics: like `metrics`, weighted by sample weights.
            aggregator: a `keras_mtl.aggregators.Aggregator` or its name
                (e.g. `"pcgrad"`). Defaults to `"sum"`.
            gradient_mode: `"parameters"` (exact per-task gradients of the
                shared variables), `"features"` (per-task gradients of the
                shared representation named by `features`, then one backward
                pass through the trunk; MGDA-UB style) or `"gramian"` (for
                rules that read only the Gramian of the task gradients, the
                `Weighting` rules such as UPGrad, MGDA, CAGrad, Nash-MTL,
                PCGrad: the exact Gramian `J J^T` of the shared variables
                one column at a time, `J (J^T e_t)`, by differentiating each
                task's backward pass once more, so only one task gradient
                is held at a time instead of the `T x P` Jacobian; then one
                backward pass of the weighted loss. Same steps as
                `"parameters"`, peak memory about that of plain training;
                about twice the backward passes. One replica, or JAX's
                `keras.distribution`).
            features: name of the layer whose output is the shared
                representation, for `gradient_mode="features"`.
            weight_task_specific: if `True`, non-shared variables receive
                their task's gradient times its aggregator weight.
            vectorize: compute the per-task gradients in one vectorised call
                (`jax.vmap`, `GradientTape.jacobian`, batched
                `torch.autograd.grad`) instead of a loop of backward passes.
            non_finite: `"skip"` (default) leaves the weights, the optimizer
                and the aggregator state unchanged on a step whose loss or
                gradients are not finite and counts it in `skipped_steps`;
                `"raise"` does the same, then stops `fit` with a
                `FloatingPointError`; `"apply"` applies such updates, as
                plain Keras does.
            aggregation_groups: aggregate the per-task gradients of groups
                of shared variables separately, each group with its own
                aggregator state: `None` (one group, default), `"layer"`
                (one group per layer), `"variable"` (one per variable), or
                a list of lists of variables or variable/layer paths
                (shared variables left out form one more group). The task
                weights logged are the groups' mean. Parameter mode, rules
                that read the gradients.
            sharpness: `"task"` takes each task's gradient at its own
                worst-case point within radius `rho` before the aggregator
                balances them (F-MTL, Phan et al.: task-based flat regions;
                about twice the cost of plain per-task gradients; logs
                `<task>_sharpness`, the loss rise at that point); None
                (default) takes them at the current values. Parameter mode;
                every rule without learned parameters.
            rho: the radius for `sharpness`. Defaults to 2.0, F-MTL's, which
                goes with `sharpness_adaptive=True`; plain SAM radii are
                about 0.05.
            sharpness_adaptive: scale the perturbation by the magnitude of
                each variable (ASAM), as F-MTL does by default.
            saliency_regularizer: a `keras_mtl.losses.RepMTL` (or
                `"rep_mtl"`): Rep-MTL's regularisers of the task saliencies
                `dL_t / dz`, trained end to end (a second forward pass and
                double backpropagation per step; logs `rep_mtl_tsr` and
                `rep_mtl_csa`). Features mode, any aggregator.
            task_groups: balance groups of tasks instead of single tasks:
                a list of lists of task names (or `{group: [tasks]}`), each
                task in one group, e.g. from
                `keras_mtl.analysis.group_tasks`. A group's loss is the sum
                of its tasks' losses (several loss terms per balanced
                group); the step computes one gradient per group, and each
                task logs its group's weight. Not with the rules that split
                the batch (bilevel and cross-batch rules).
            run_eagerly, jit_compile, steps_per_execution: as for
                `keras.Model.compile`; `jit_compile` is saved as given. On
                PyTorch the step runs eagerly, and `jit_compile=True`
                compiles the aggregation rule inside it (one
                `torch.compile` graph, compiled at the first step).

        Recompiling with an aggregator of the same configuration keeps its
        state (and its epoch count); another aggregator starts afresh.
        """
        task_names = self._compile_task_names(loss)
        balancer = Balancer(
            task_names, loss, aggregator, loss_weights=loss_weights,
            metrics=metrics, weighted_metrics=weighted_metrics,
            gradient_mode=gradient_mode,
            features=features, weight_task_specific=weight_task_specific,
            vectorize=vectorize, non_finite=non_finite,
            aggregation_groups=aggregation_groups, sharpness=sharpness,
            rho=rho, sharpness_adaptive=sharpness_adaptive,
            saliency_regularizer=saliency_regularizer,
            task_groups=task_groups,
        )
        if gradient_mode == "features":
            self.features_layer(features)  # Fail early on a bad layer name.
        if self._shared_known():
            # Fail early on bad variables or groups.
            aggregation_groups_lib.resolve(
                balancer.aggregation_groups, self.shared_variables)
        previous = self.balancer
        super().compile(
            optimizer=optimizer,
            run_eagerly=run_eagerly,
            jit_compile=backend.step_jit_compile(jit_compile),
            steps_per_execution=steps_per_execution,
        )
        self._compile_args = {"jit_compile": jit_compile}
        compiler = backend.rule_compiler(jit_compile)
        if compiler is not None:
            balancer.compile_rules(compiler)
        self.balancer = balancer
        if self._shared_known():
            self._build_balancer(previous)

    def track_conflicts(self):
        """Makes every training step record its task weights and the
        Gramian of its per-task gradients (what
        `keras_mtl.callbacks.ConflictMonitor` reads); returns the
        `ConflictTracker` metric holding their running sums. Training steps
        built before are rebuilt."""
        self._check_compiled()
        if self.balancer.trackers.conflicts is None:
            self.train_function = None
        return self.balancer.track_conflicts()

    @property
    def aggregator(self):
        """The compiled aggregator (`None` before `compile`)."""
        return None if self.balancer is None else self.balancer.aggregator

    @property
    def gradient_mode(self):
        return None if self.balancer is None else self.balancer.gradient_mode

    @property
    def features(self):
        return None if self.balancer is None else self.balancer.features

    @property
    def weight_task_specific(self):
        return self.balancer is not None and (
            self.balancer.weight_task_specific)

    @property
    def vectorize(self):
        return self.balancer is not None and self.balancer.vectorize

    def _compile_task_names(self, loss):
        """The task names: the model's outputs, or the loss dict's keys."""
        known = self.output_task_names()
        if known is not None:
            return known
        if not isinstance(loss, dict) or not loss:
            raise ValueError(
                "A subclassed multi-task model takes its task names from "
                "`compile(loss={task: loss, ...})`. Received: "
                f"loss={loss!r}"
            )
        return tuple(loss)

    def output_task_names(self):
        """The task names fixed by the model's structure, or `None`."""
        return None

    def _shared_known(self):
        return (self._shared_request is not None
                or self.task_dependencies() is not None)

    def _build_balancer(self, previous=None):
        balancer = self.balancer
        balancer.build(self.shared_variables)
        kept = balancer.copy_state_from(previous)
        if (previous is not None and previous.built and not kept
                and registry.serialize(previous.aggregator)
                == registry.serialize(balancer.aggregator)):
            warnings.warn(
                f"{type(balancer.aggregator).__name__}'s state could not be "
                "kept across this compile (its shape changed with the "
                "trainable variables); it starts afresh.",
                stacklevel=3,
            )

    def _check_compiled(self):
        if self.balancer is None:
            raise ValueError(
                f"{type(self).__name__} must be compiled with a loss per task "
                "before training or evaluation. Received: an uncompiled model"
            )

    def _check_outputs(self, outputs):
        names = self.balancer.task_names if self.balancer else None
        if isinstance(outputs, dict) and (
                names is None or set(outputs) == set(names)):
            check_task_outputs(outputs)
            return
        received = type(outputs).__name__
        if isinstance(outputs, dict):
            received += f" with keys {sorted(outputs, key=str)}"
        raise ValueError(
            "A multi-task model's `call` must return a dict {task: output} "
            f"with the compiled tasks {list(names or [])}. "
            f"Received: {received}"
        )

    # ------------------------------------------------------ state and logs

    @property
    def variables(self):
        """The model's variables plus its training state (the balancer's),
        which every backend threads through the step; `weights` (what
        inference and `save_weights` of the model itself need) leaves the
        training state out."""
        variables = super().variables
        balancer = getattr(self, "balancer", None)
        if balancer is not None and balancer.built:
            variables = variables + balancer.variables
        return variables

    @property
    def metrics(self):
        balancer = getattr(self, "balancer", None)
        base = super().metrics
        if balancer is None:
            return base
        # Keras' own loss tracker is replaced by the balancer's.
        return balancer.metrics + [m for m in base if m.name != "loss"]

    def get_metrics_result(self):
        """The logs read from the metric states (under a `tf.distribute`
        strategy, summed over the replicas): training logs, or evaluation
        logs inside `evaluate`."""
        logs = {}
        balancer = getattr(self, "balancer", None)
        own = set()
        if balancer is not None:
            logs.update(balancer.results(
                training=not getattr(self, "_evaluating", False)))
            own = {id(m) for m in balancer.metrics}
        for metric in super().metrics:
            if id(metric) in own or metric.name == "loss":
                continue
            result = metric.result()
            logs.update(result if isinstance(result, dict)
                        else {metric.name: result})
        return logs

    # ------------------------------------------------------ the step parts

    def gradient_plan(self):
        """The step's `GradientPlan`, rebuilt when the trainable set
        changes."""
        self._check_compiled()
        balancer = self.balancer
        trainable = self.trainable_variables
        key = tuple(id(v) for v in trainable)

        def make():
            layer = balancer.aggregator.gramian_layer
            layer_ids = None
            if layer is not None:
                layer_ids = {
                    id(v) for v in self.get_layer(layer).trainable_variables}
            layer, feature_ids = None, None
            if balancer.gradient_mode == "features":
                layer = self.features_layer(balancer.features)
                feature_ids = self.feature_dependencies(balancer.features)
            return GradientPlan(
                trainable, self.shared_variable_ids(), balancer.aggregator,
                balancer.gradient_mode, layer, feature_ids, layer_ids,
                balancer.num_params,
            )

        return balancer.cached_plan(key, make)

    def regularization_loss(self, layer=None):
        """Sum of the regularisation and `add_loss` losses of the last call
        of `layer` (the model by default), or `None`."""
        return sum_losses((layer or self).losses)

    def compute_test_logs(self, x, y, sample_weight, replicas=SINGLE):
        """Forward pass, losses and metrics of one evaluation batch (this
        replica's shard of it: the losses are the global batch's)."""
        self._check_compiled()
        y_pred = self(x, training=False)
        balancer = self.balancer
        losses = balancer.task_losses(y, y_pred, sample_weight,
                                      self.regularization_loss(), replicas)
        total = ops.sum(losses.losses)
        if losses.reg is not None:
            total = total + losses.reg
        balancer.update_metrics(losses, y_pred, total, batch_size(x),
                                replicas=replicas)
        return balancer.results(training=False)

    def train_step(self, *args):
        return backend.train_step(self, *args)

    def test_step(self, *args):
        return backend.test_step(self, *args)

    # -------------------------------------------------------- fit wiring

    def _prepare(self, x, y, sample_weight, validation_data=None,
                 training=False, steps=True):
        """Checks the distribution set-up (for training `steps`, or only
        evaluation) and the first batch of every input before Keras traces
        a step, and finds the shared variables of a subclassed model; before
        `fit` trains, synchronises the replicas (once per `fit`, not per
        `train_on_batch`)."""
        self._check_compiled()
        backend.check_distribution(self, steps)
        x, y, sample_weight, batch = first_batch.peek(x, y, sample_weight)
        if batch is not None:
            self._check_batch(batch, "x", x)
        if validation_data is not None:
            validation_data, val_batch = first_batch.peek_validation(
                validation_data)
            if val_batch is not None:
                self._check_batch(val_batch, "validation_data",
                                  validation_data)
        if training:
            backend.synchronize_replicas(self)
        return x, y, sample_weight, validation_data

    def _check_batch(self, batch, argument, data):
        if batch is first_batch.EMPTY:
            raise ValueError(
                f"`{argument}` holds no batch. Received: an empty "
                f"{type(data).__name__}"
            )
        x_spec, y_spec, sw_spec = batch
        if y_spec is None:
            raise ValueError(
                "Multi-task training needs labels {task: labels}. "
                "Received: no labels"
            )
        empty = [t.shape for t in keras.tree.flatten((x_spec, y_spec))
                 if t is not None and t.shape and t.shape[0] == 0]
        if empty:
            raise ValueError(
                "The first batch has no samples. Received: inputs and "
                f"labels of shapes with a batch axis of 0: {empty}"
            )
        outputs = self.compute_output_spec(x_spec)
        self._check_outputs(outputs)
        self.balancer.check_batch(y_spec, sw_spec, outputs)
        features = self.balancer.features
        if self.task_dependencies() is None or (
                self.gradient_mode == "features"
                and self.feature_dependencies(features) is None):
            self.find_shared_variables(zeros_like_spec(x_spec))
        if not self.balancer.built:
            self._build_balancer()
        self.gradient_plan()  # Plan errors before Keras traces a step.

    def _callbacks(self, callbacks):
        callbacks = list(callbacks or [])
        callbacks.append(EpochCounter())
        if self.balancer.non_finite == "raise":
            callbacks.append(RaiseOnSkippedStep())
        return callbacks

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto",
            callbacks=None, validation_split=0.0, validation_data=None,
            sample_weight=None, **kwargs):
        x, y, sample_weight, validation_data = self._prepare(
            x, y, sample_weight, validation_data, training=True)
        with backend.restore_on_failure(self):
            return super().fit(
                x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                callbacks=self._callbacks(callbacks),
                validation_split=validation_split,
                validation_data=validation_data, sample_weight=sample_weight,
                **kwargs,
            )

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto",
                 sample_weight=None, **kwargs):
        x, y, sample_weight, _ = self._prepare(x, y, sample_weight,
                                               steps=False)
        with backend.restore_on_failure(self), self._evaluation():
            return super().evaluate(
                x, y, batch_size=batch_size, verbose=verbose,
                sample_weight=sample_weight, **kwargs)

    @contextlib.contextmanager
    def _evaluation(self):
        """Marks an evaluation (see `get_metrics_result`)."""
        previous = getattr(self, "_evaluating", False)
        self._evaluating = True
        try:
            yield
        finally:
            self._evaluating = previous

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight, _ = self._prepare(x, y, sample_weight)
        with backend.restore_on_failure(self):
            return super().train_on_batch(
                x, y, sample_weight=sample_weight, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight, _ = self._prepare(x, y, sample_weight,
                                               steps=False)
        with backend.restore_on_failure(self), self._evaluation():
            return super().test_on_batch(
                x, y, sample_weight=sample_weight, **kwargs)

    # ----------------------------------------------------- compile config

    def get_compile_config(self):
        if self.balancer is None:
            return None
        ser = keras.saving.serialize_keras_object
        args = self.balancer.compile_args
        return {
            "optimizer": ser(self.optimizer),
            "loss": {t: ser(v) for t, v in args["loss"].items()},
            "metrics": ser(args["metrics"]),
            "weighted_metrics": ser(args["weighted_metrics"]),
            **self.balancer.get_config(),
            "jit_compile": self._compile_args["jit_compile"],
        }

    def compile_from_config(self, config):
        de = keras.saving.deserialize_keras_object
        config = dict(config)
        config["optimizer"] = keras.optimizers.get(config["optimizer"])
        config["loss"] = {t: de(v) for t, v in config["loss"].items()}
        config["metrics"] = de(config["metrics"])
        config["weighted_metrics"] = de(config["weighted_metrics"])
        config["aggregator"] = registry.deserialize(config["aggregator"])
        if config.get("saliency_regularizer") is not None:
            config["saliency_regularizer"] = de(
                config["saliency_regularizer"])
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)


def check_task_outputs(outputs):
    """Raises a `ValueError` unless every task output is a single tensor."""
    nested = {task: type(value).__name__ for task, value in outputs.items()
              if keras.tree.is_nested(value) or value is None}
    if nested:
        raise ValueError(
            "Each task needs one output tensor (a task loss compares one "
            "prediction with its labels); split a structured output into "
            f"several tasks. Received: {nested}"
        )


def batch_size(x):
    """The number of samples in the input structure `x`."""
    first = next(t for t in keras.tree.flatten(x) if t is not None)
    return ops.shape(first)[0]


def zeros_like_spec(spec):
    """A batch of zeros (2 samples; unknown sizes 2) for a structure of
    specs: enough to trace which variables each task output depends on."""

    def zeros(leaf):
        if leaf is None:
            return None
        shape = (2,) + tuple(2 if d is None else d for d in leaf.shape[1:])
        return ops.zeros(shape, leaf.dtype)

    return keras.tree.map_structure(zeros, spec)


class EpochCounter(keras.callbacks.Callback):
    """Keeps the balancer's epoch counting across `fit` calls.

    The epoch an epoch-driven rule (DWA, STCH, GradNorm's warm-up) sees is
    `fit`'s epoch index, or the number of epochs trained so far if that is
    larger: `fit(epochs=1)` in a loop, and a model saved and loaded between
    epochs, keep counting.
    """

    def on_epoch_begin(self, epoch, logs=None):
        balancer = self.model.balancer
        done = float(ops.convert_to_numpy(balancer.epochs_done.value))
        balancer.epoch.assign(float(max(epoch, done)))

    def on_epoch_end(self, epoch, logs=None):
        balancer = self.model.balancer
        current = float(ops.convert_to_numpy(balancer.epoch.value))
        balancer.epochs_done.assign(current + 1.0)


class RaiseOnSkippedStep(keras.callbacks.Callback):
    """Stops `fit` when a step was skipped for a non-finite loss or
    gradient (`compile(non_finite="raise")`)."""

    def on_train_batch_end(self, batch, logs=None):
        skipped = (logs or {}).get("skipped_steps")
        if skipped is not None and float(skipped) > 0:
            raise FloatingPointError(
                f"Batch {batch}: a task loss or gradient was not finite; the "
                "step was not applied (weights, optimizer and aggregator "
                "state are those before it). Received: skipped_steps="
                f"{float(skipped):g}"
            )
