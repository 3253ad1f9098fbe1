"""The balancer: everything one gradient-balanced training step needs.

A `Balancer` is made by `compile` and owns the aggregator, its state, its
learnable parameters and seed, the epoch counter, the per-task losses and the
per-task trackers. The backend engines (`keras_mtl/src/backend/`) call its
public methods in this order, much as Keras' trainers call an optimizer:

1. `task_losses(y, y_pred, sample_weight)`: the `(T,)` masked task losses.
2. `loss_weights(losses)` (loss-only rules) or `combine(jacobians, losses)`
   (rules that read per-task gradients): the task weights and the shared
   variables' update direction. The aggregator's new state is kept pending.
3. `check_finite(losses, grads)`: whether the step may be applied.
4. the optimizer step (skipped when the check failed), then
   `commit(applied)`: the pending state is written only if the optimizer
   applied the step (not on a skipped step, nor on a micro-batch of
   gradient accumulation).
5. `after_step(losses_before, losses_after, applied)` for rules that learn
   from the step's effect (FAMO).
6. `update_metrics(...)`: the logs.

Data parallelism: each engine passes a description of the replicas (see
`replicas.py`) and the loss scale of a `LossScaleOptimizer`.
`task_losses` then divides each replica's masked sum by the count of the
whole global batch and gives the losses their global values; every gradient
the engine takes is the replica's share times the loss scale, and
`unscale` sums the shares over the replicas and divides by the scale before
the aggregation, so every replica aggregates the global Jacobian.
`optimizer_gradients` prepares what `optimizer.apply` receives.

The balancer's variables are training state, like an optimizer's: the model
lists them in `variables` (so every backend threads them through its step)
but not in `weights`, and `.keras` files store them under `balancer/`, which
`load_model(compile=False)` and `load_weights` into a model compiled with
another aggregator simply skip.
"""

import math
import threading
import warnings
from typing import NamedTuple

import keras
from keras import ops

# Keras saves an attribute of a model only if it is a `KerasSaveable`; the
# class has no public alias (keras 3.8 - 3.15).
from keras.src.saving.keras_saveable import KerasSaveable  # noqa: E402

from keras_mtl.src.aggregators import registry
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.constant import Constant
from keras_mtl.src.backend import traceable_ops
from keras_mtl.src.losses import rep_mtl
from keras_mtl.src.models import aggregation_groups as aggregation_groups_lib
from keras_mtl.src.models import task_groups as task_groups_lib
from keras_mtl.src.models import task_losses as task_loss_lib
from keras_mtl.src.models.conflict_tracker import ConflictTracker
from keras_mtl.src.models.gradient_plan import GRADIENT_MODES
from keras_mtl.src.models.replicas import SINGLE
from keras_mtl.src.models.sharpness import TaskSharpness
from keras_mtl.src.models.sharpness import check_sharpness
from keras_mtl.src.models.task_means import TaskMeans
from keras_mtl.src.utils.split_sizes import split_sizes

NON_FINITE = ("skip", "raise", "apply")


class TaskLosses(NamedTuple):
    """One batch's task losses.

    Attributes:
        rows: list of the scalar losses to differentiate one by one (to get
            one gradient through its own head only): the `T` task losses,
            or, for a rule that reads `k` independent batches, the `k * T`
            losses of each task on each part of the batch, part-major.
        losses: the `(T,)` task losses of the whole batch.
        counts: `(T,)` total weight of each task's labelled samples (in
            this replica's shard).
        labelled: `{task: (clean_labels, weights, sample_weight)}` for the
            metrics.
        reg: the regularisation and `add_loss` total, or None.
        row_losses: `rows`, stacked.
        shares: with parts, `(k * T,)` each part's share of its task's
            labelled weight (`losses[t] = sum_s shares[s, t] rows[s, t]`);
            else None.
    """

    rows: list
    losses: object
    counts: object
    labelled: dict
    reg: object = None
    row_losses: object = None
    shares: object = None

    def stop_gradient(self):
        """The same losses, cut from the autodiff graph."""
        cut = ops.stop_gradient
        return self._replace(
            rows=[cut(r) for r in self.rows], losses=cut(self.losses),
            row_losses=cut(self.row_losses),
            reg=None if self.reg is None else cut(self.reg))


class _Trackers:
    """The balancer's metric objects (kept out of Keras' saving walk)."""

    def __init__(self, **items):
        self.__dict__.update(items)


def sum_losses(losses):
    """Sum of regularisation / `add_loss` losses, or None if there is none."""
    if not losses:
        return None
    return ops.sum(ops.stack([ops.cast(v, "float32") for v in losses]))


def _spread(local, value, factor):
    """`value` in the forward pass; `factor` times the gradient of `local`
    in the backward pass."""
    return ops.stop_gradient(value) + factor * (
        local - ops.stop_gradient(local))


def _variable(value, trainable, name):
    value = ops.convert_to_tensor(value)
    return keras.Variable(
        ops.convert_to_numpy(value), dtype=value.dtype, trainable=trainable,
        name=name,
    )


class Balancer(KerasSaveable):
    """Owns one multi-task model's balancing rule and its training state.

    Args:
        task_names: the task names, in output order.
        loss: dict `{task: loss}` (a name, a `keras.losses.Loss` or a
            function) or one loss for every task.
        aggregator: a `keras_mtl.aggregators.Aggregator` or its name.
        loss_weights: optional `{task: weight}` (or one weight for every
            task); shorthand for a `Constant` aggregator.
        metrics, weighted_metrics: dicts `{task: [metrics]}` or one list.
        gradient_mode: `"parameters"`, `"features"` or `"gramian"`.
        features: the shared layer's name for `"features"` mode.
        weight_task_specific: scale the non-shared gradients by the task
            weights.
        vectorize: one vectorised Jacobian call instead of a loop.
        non_finite: what a step with a non-finite loss or gradient does:
            `"skip"` (default: weights, optimizer and aggregator state stay
            as they were; the step is counted in the `skipped_steps` log),
            `"raise"` (the same, then `fit` stops with a `FloatingPointError`),
            or `"apply"` (plain Keras: the update is applied anyway).
        aggregation_groups: see `MultiTaskTrainer.compile`.
        sharpness: None, or `"task"` for F-MTL's task-based flat gradients
            (see `sharpness.py`), with radius `rho` and `sharpness_adaptive`.
        saliency_regularizer: None, or a `keras_mtl.losses.RepMTL` (or
            `"rep_mtl"`) on the task saliencies of the features.
        task_groups: None, or groups of tasks balanced as one (see
            `task_groups.py`).
    """

    def __init__(self, task_names, loss, aggregator=None, loss_weights=None,
                 metrics=None, weighted_metrics=None,
                 gradient_mode="parameters", features=None,
                 weight_task_specific=False, vectorize=False,
                 non_finite="skip", aggregation_groups=None,
                 sharpness=None, rho=2.0, sharpness_adaptive=True,
                 saliency_regularizer=None, task_groups=None):
        self.task_names = tuple(task_names)
        self.task_groups = None if task_groups is None else (
            dict(task_groups) if isinstance(task_groups, dict)
            else [list(g) for g in task_groups])
        self.group_names, self.groups = task_groups_lib.normalize(
            task_groups, self.task_names)
        self.saliency_regularizer = rep_mtl.get(saliency_regularizer)
        if self.saliency_regularizer is not None and (
                gradient_mode != "features"):
            raise ValueError(
                "`saliency_regularizer` acts on the per-task gradients of "
                "the shared features: it needs gradient_mode='features'. "
                f"Received: gradient_mode={gradient_mode!r}")
        self.sharpness, self.rho, self.sharpness_adaptive = check_sharpness(
            sharpness, rho, sharpness_adaptive)
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
        if non_finite not in NON_FINITE:
            raise ValueError(
                f"`non_finite` must be one of {NON_FINITE}. "
                f"Received: non_finite={non_finite!r}"
            )
        if loss_weights is not None:
            if aggregator is not None:
                raise ValueError(
                    "Pass either `loss_weights` or `aggregator`, not both. "
                    f"Received: loss_weights={loss_weights!r}, "
                    f"aggregator={aggregator!r}"
                )
            weights = self.per_task("loss_weights", loss_weights, True)
            aggregator = Constant([weights[t] for t in self.task_names])
        self.aggregator = registry.get(
            "sum" if aggregator is None else aggregator)
        self.gradient_mode = gradient_mode
        self.aggregation_groups = aggregation_groups_lib.normalize(
            aggregation_groups)
        self._check_aggregator()
        self.features = features
        self.weight_task_specific = bool(weight_task_specific)
        self.vectorize = bool(vectorize)
        self.non_finite = non_finite
        losses = self.per_task("loss", loss, required=True)
        self.compile_args = {
            "loss": losses, "metrics": metrics,
            "weighted_metrics": weighted_metrics,
        }
        self.loss_functions = {
            t: (task_loss_lib.resolve_loss(losses[t], t),
                task_loss_lib.label_layout(losses[t]))
            for t in self.task_names
        }
        self.trackers = self._build_trackers(losses, metrics, weighted_metrics)
        self.built = False
        self.num_params = None
        self.num_groups = 1
        self.group_of = {}
        self.state = {}
        self._state_keys = [{}]
        self.parameters = {}
        self.seed_generator = None
        self.epoch = None
        self.epochs_done = None
        # The aggregator's new state between `combine` and `commit`, per
        # thread: `MirroredStrategy` traces each replica's step in its own
        # thread, switching between them inside the optimizer's `apply`.
        self._step = threading.local()
        self._jacobian_rule = self._run_on_jacobians
        self._gramian_rule = self._run_on_gramian
        self._plan = None
        self._plan_key = None

    # ------------------------------------------------------------ set-up

    def per_task(self, arg_name, value, required):
        """`value` as `{task: entry}`: a dict is checked, anything else is
        used for every task."""
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

    @property
    def num_balanced(self):
        """How many losses the aggregator balances: the groups of
        `task_groups`, else the tasks."""
        return len(self.task_names if self.groups is None else self.groups)

    @property
    def balanced_names(self):
        """The names of what the aggregator balances (tasks or groups)."""
        return self.task_names if self.groups is None else tuple(
            self.group_names)

    def balanced_losses(self, losses):
        """The `(G,)` group losses of `(T,)` task losses (each group's sum),
        or `losses` when the tasks are not grouped."""
        if self.groups is None:
            return losses
        members = task_groups_lib.membership(self.groups,
                                             len(self.task_names))
        return ops.tensordot(members, ops.cast(losses, "float32"), axes=1)

    def _check_aggregator(self):
        """Refuses a rule this balancer cannot run (before `compile`
        changes anything)."""
        aggregator = self.aggregator
        if self.groups is not None and (
                aggregator.bilevel or aggregator.batch_splits > 1):
            raise ValueError(
                f"{type(aggregator).__name__} evaluates each task on parts "
                "of the batch, which `task_groups` does not split; use it "
                "without groups. Received: task_groups="
                f"{self.task_groups!r}")
        aggregator.check_tasks(self.num_balanced)
        parameters = aggregator.initial_parameters(self.num_balanced)
        if parameters and aggregator.requires_jacobian:
            raise ValueError(
                "Aggregators with learnable parameters must be loss-only "
                "(requires_jacobian=False). Received: aggregator="
                f"{aggregator!r}"
            )
        if self.aggregation_groups is not None and (
                self.gradient_mode != "parameters"
                or not aggregator.requires_jacobian
                or aggregator.gramian_layer is not None):
            raise ValueError(
                "`aggregation_groups` splits the per-task gradients of the "
                "shared variables: it needs gradient_mode='parameters' and a "
                "rule that reads the gradients of all of them. Received: "
                f"aggregator={aggregator!r}, gradient_mode="
                f"{self.gradient_mode!r}, aggregation_groups="
                f"{self.aggregation_groups!r}")
        if aggregator.bilevel and self.aggregation_groups is not None:
            raise ValueError(
                f"{type(aggregator).__name__} learns one set of task weights "
                "from a virtual step of the whole model; it cannot keep one "
                "per group of variables. Received: aggregation_groups="
                f"{self.aggregation_groups!r}")
        if self.gradient_mode == "gramian" and aggregator.requires_jacobian \
                and not isinstance(aggregator, Weighting):
            raise ValueError(
                "gradient_mode='gramian' gives the rule the Gramian of the "
                "task gradients and never the gradients themselves; "
                f"{type(aggregator).__name__} reads the gradients. Use "
                "gradient_mode='parameters' with it, or a rule that "
                "weights the tasks from their Gramian (e.g. 'upgrad', "
                "'mgda', 'cagrad', 'nash_mtl'). Received: "
                f"aggregator={aggregator!r}, gradient_mode='gramian'")
        if aggregator.batch_splits > 1 and self.gradient_mode not in (
                "parameters", "gramian"):
            raise ValueError(
                f"{type(aggregator).__name__} compares the gradients of "
                "independent parts of the batch, which share no feature "
                "rows: it needs gradient_mode='parameters'. Received: "
                f"gradient_mode={self.gradient_mode!r}")
        if self.sharpness is not None:
            self._check_sharpness(aggregator)
        if aggregator.tracks_gradients and self.gradient_mode != "parameters":
            raise ValueError(
                f"{type(aggregator).__name__} keeps per-parameter state "
                "and needs gradient_mode='parameters'. Received: "
                f"gradient_mode={self.gradient_mode!r}"
            )

    def _check_sharpness(self, aggregator):
        if self.gradient_mode != "parameters":
            raise ValueError(
                "sharpness='task' perturbs the shared variables per task and "
                "needs their per-task gradients: gradient_mode='parameters'. "
                f"Received: gradient_mode={self.gradient_mode!r}")
        if aggregator.initial_parameters(self.num_balanced):
            raise ValueError(
                f"{type(aggregator).__name__} learns its weights from its "
                "own objective of the losses, which has no per-task flat "
                "gradient; use sharpness=None with it. Received: "
                f"sharpness={self.sharpness!r}")

    def _build_trackers(self, losses, metrics, weighted_metrics):
        task_metrics = []
        for arg_name, value, weighted in (
            ("metrics", metrics, False),
            ("weighted_metrics", weighted_metrics, True),
        ):
            per_task = self.per_task(arg_name, value, required=False)
            for task in self.task_names:
                entries = per_task[task] or []
                if not isinstance(entries, (list, tuple)):
                    entries = [entries]
                for entry in entries:
                    metric = task_loss_lib.resolve_metric(
                        entry, task, losses[task],
                        prefix="weighted_" if weighted else "",
                    )
                    task_metrics.append((task, weighted, metric))
        names = self.task_names
        diagnostics = None
        if self.aggregator.diagnostics:
            diagnostics = TaskMeans(
                [f"{self.aggregator.name}_{k}"
                 for k in self.aggregator.diagnostics],
                name="aggregator_diagnostics",
            )
        return _Trackers(
            loss=keras.metrics.Mean(name="loss"),
            task_loss=TaskMeans([f"{t}_loss" for t in names],
                                name="task_losses"),
            task_weight=TaskMeans([f"{t}_weight" for t in names],
                                  name="task_weights"),
            diagnostics=diagnostics,
            skipped=keras.metrics.Sum(name="skipped_steps"),
            task_metrics=task_metrics,
            conflicts=None,
            sharpness=None if self.sharpness is None else TaskMeans(
                [f"{t}_sharpness" for t in names], name="task_sharpness"),
            saliency=None if self.saliency_regularizer is None else TaskMeans(
                ["rep_mtl_tsr", "rep_mtl_csa"], name="saliency_terms"),
        )

    def track_conflicts(self):
        """Makes every training step add its task weights and task Gramian
        to a `ConflictTracker` (created once, then returned)."""
        if self.trackers.conflicts is None:
            self.trackers.conflicts = ConflictTracker(self.num_balanced)
        return self.trackers.conflicts

    @property
    def metrics(self):
        """Every tracker, in log order (the model lists them)."""
        t = self.trackers
        metrics = [t.loss, t.task_loss, t.task_weight]
        if t.diagnostics is not None:
            metrics.append(t.diagnostics)
        if self.non_finite != "apply":
            metrics.append(t.skipped)
        if t.sharpness is not None:
            metrics.append(t.sharpness)
        if t.saliency is not None:
            metrics.append(t.saliency)
        if t.conflicts is not None:
            metrics.append(t.conflicts)
        return metrics + [m for _, _, m in t.task_metrics]

    def build(self, shared_variables):
        """Creates the state, parameter, seed and epoch variables.

        Args:
            shared_variables: the variables whose per-task gradients will be
                aggregated (their total size sizes per-parameter state).
        """
        aggregator = self.aggregator
        num_tasks = self.num_balanced
        parameters = aggregator.initial_parameters(num_tasks)
        shared = list(shared_variables)
        groups = aggregation_groups_lib.resolve(
            self.aggregation_groups, shared)
        self.group_of = {id(shared[i]): g for g, members in enumerate(groups)
                         for i in members}
        self.num_groups = len(groups)
        self.num_params = None
        if aggregator.tracks_gradients:
            self.num_params = sum(math.prod(v.shape) for v in shared)
        self.state = {}
        self._state_keys = []
        for g, members in enumerate(groups):
            num_params = None
            if aggregator.tracks_gradients:
                num_params = sum(math.prod(shared[i].shape) for i in members)
            initial = aggregator.initial_state(num_tasks, num_params)
            keys = {k: _group_key(g, k) for k in initial}
            self._state_keys.append(keys)
            self.state.update({
                keys[k]: _variable(v, False, f"aggregator_state_{keys[k]}")
                for k, v in initial.items()})
        self.parameters = {
            k: _variable(v, True, f"aggregator_{k}")
            for k, v in parameters.items()
        }
        self.seed_generator = keras.random.SeedGenerator(
            name="aggregator_seed")
        self.epoch = _variable(ops.zeros(()), False, "epoch")
        self.epochs_done = _variable(ops.zeros(()), False, "epochs_done")
        self.built = True

    def named_variables(self):
        """`{key: variable}` of everything the balancer saves."""
        named = {f"state.{k}": v for k, v in self.state.items()}
        named.update({f"parameter.{k}": v for k, v in self.parameters.items()})
        if self.built:
            named["seed"] = self.seed_generator.state
            named["epoch"] = self.epoch
            named["epochs_done"] = self.epochs_done
        return named

    @property
    def variables(self):
        """Every variable of the balancer (state, parameters, seed, epoch)."""
        return list(self.named_variables().values())

    def copy_state_from(self, other):
        """Takes over another balancer's state when it has the same rule,
        tasks and shapes; returns whether it did."""
        if other is None or not other.built or not self.built:
            return False
        same = (
            registry.serialize(other.aggregator)
            == registry.serialize(self.aggregator)
            and other.task_names == self.task_names
            and other.aggregation_groups == self.aggregation_groups
            and other.groups == self.groups
        )
        mine, theirs = self.named_variables(), other.named_variables()
        if not same or set(mine) != set(theirs) or any(
            tuple(mine[k].shape) != tuple(theirs[k].shape) for k in mine
        ):
            return False
        for key, variable in mine.items():
            variable.assign(theirs[key].value)
        return True

    # ------------------------------------------------------------ saving

    def _obj_type(self):
        # Keras' saving walk treats the balancer like an optimizer: its own
        # variables are saved, nothing below it is visited.
        return "Optimizer"

    def save_own_variables(self, store):
        for key, variable in self.named_variables().items():
            store[key] = variable

    def load_own_variables(self, store):
        """Restores saved state. A file of another rule is skipped with a
        warning (as Keras does for an optimizer of another size); state
        keys that a file of an earlier version lacks keep their initial
        values, with a warning naming them."""
        named = self.named_variables()
        keys = set(store.keys())
        if not keys <= set(named) or any(
            tuple(store[k].shape) != tuple(named[k].shape) for k in keys
        ):
            warnings.warn(
                "Skipping the saved balancing state: it belongs to another "
                f"aggregator or task set (saved {sorted(keys)}, expected "
                f"{sorted(named)}). The aggregator "
                f"{type(self.aggregator).__name__} starts from its initial "
                "state.",
                stacklevel=2,
            )
            return
        missing = sorted(set(named) - keys)
        if missing:
            warnings.warn(
                f"The saved balancing state has no {missing} (a file of an "
                f"earlier version of {type(self.aggregator).__name__}): "
                "they keep their initial values; the rest is restored.",
                stacklevel=2,
            )
        # In the balancer's own order: on several JAX processes every
        # assignment is a collective that must match across processes.
        for key, variable in named.items():
            if key in keys:
                variable.assign(ops.cast(store[key], variable.dtype))

    def get_config(self):
        return {
            "aggregator": registry.serialize(self.aggregator),
            "gradient_mode": self.gradient_mode,
            "features": self.features,
            "weight_task_specific": self.weight_task_specific,
            "vectorize": self.vectorize,
            "non_finite": self.non_finite,
            "aggregation_groups": self.aggregation_groups,
            "sharpness": self.sharpness,
            "rho": self.rho,
            "sharpness_adaptive": self.sharpness_adaptive,
            "task_groups": self.task_groups,
            "saliency_regularizer": None if self.saliency_regularizer is None
            else keras.saving.serialize_keras_object(
                self.saliency_regularizer),
        }

    # ------------------------------------------------------------ the plan

    def cached_plan(self, key, make):
        """The step's plan, rebuilt with `make()` only when `key` (the
        trainable set) changes: PyTorch runs the step eagerly."""
        if self._plan is None or self._plan_key != key:
            self._plan = make()
            self._plan_key = key
        return self._plan

    def reset_plan(self):
        self._plan = None
        self._plan_key = None

    # ------------------------------------------------------- step: losses

    def targets(self, y, sample_weight):
        """Validates `y` and `sample_weight`; returns dicts keyed by task."""
        tasks = self.task_names
        if isinstance(y, (list, tuple)) and len(y) == len(tasks):
            y = dict(zip(tasks, y))
        if not isinstance(y, dict):
            raise ValueError(
                "Multi-task training needs labels as a dict {task: labels}, "
                f"one entry per task {list(tasks)}. Received: y={y!r}"
            )
        unknown = sorted(set(y) - set(tasks), key=str)
        missing = [t for t in tasks if t not in y]
        if unknown or missing:
            raise ValueError(
                f"Labels must have exactly the tasks {list(tasks)} "
                f"(unknown: {unknown}, missing: {missing}; use NaN labels for "
                f"missing values). Received: y keys={sorted(y, key=str)}"
            )
        if sample_weight is None or not isinstance(sample_weight, dict):
            if isinstance(sample_weight, (list, tuple)):
                if len(sample_weight) != len(tasks):
                    raise ValueError(
                        f"A list of sample weights needs one entry per task "
                        f"{list(tasks)}. Received: {len(sample_weight)} "
                        "entries"
                    )
                sample_weight = dict(zip(tasks, sample_weight))
            else:
                sample_weight = {t: sample_weight for t in tasks}
        unknown = sorted(set(sample_weight) - set(tasks), key=str)
        if unknown:
            raise ValueError(
                f"`sample_weight` names unknown tasks {unknown}. "
                f"Received: sample_weight keys={sorted(sample_weight, key=str)}"
            )
        return y, {t: sample_weight.get(t) for t in tasks}

    def check_batch(self, y, sample_weight, outputs):
        """Checks label and weight shapes against the task outputs.

        Args:
            y, sample_weight: label and weight structures (arrays or
                anything with `.shape` and `.dtype`).
            outputs: `{task: spec}` of the model's outputs (`.shape`).
        """
        y, sample_weight = self.targets(y, sample_weight)
        for task in self.task_names:
            _, layout = self.loss_functions[task]
            task_loss_lib.check_labels(
                task, y[task], sample_weight[task], outputs[task], layout)

    def task_losses(self, y, y_pred, sample_weight, reg=None,
                    replicas=SINGLE, scale=None, parts=None):
        """The masked task losses of one batch, as `TaskLosses`.

        Args:
            y, y_pred, sample_weight: the batch's labels, predictions and
                sample weights.
            reg: the regularisation and `add_loss` total of the forward pass
                (or None); returned as `TaskLosses.reg`.
            replicas: the data-parallel replicas this step runs on (see
                `replicas.py`).
            scale: the loss scale of a `LossScaleOptimizer`, or None.
            parts: split the batch into this many parts (default: the
                rule's `batch_splits`).

        Each task's loss is the weighted mean over the labelled samples of
        the **global** batch: the local sum divided by the count summed over
        the replicas. With several replicas, or a loss scale `s`, the
        returned losses take the global value while their gradient is `s`
        times this replica's share, so that the sum of every gradient over
        the replicas, divided by `s`, is the gradient of the global batch's
        loss. Regularisation counts once: `1 / count` of it per replica.
        """
        y, sample_weight = self.targets(y, sample_weight)
        parts = self.batch_splits if parts is None else parts
        totals, counts, labelled = [], [], {}
        for task in self.task_names:
            fn, layout = self.loss_functions[task]
            total, count, clean, weights = task_loss_lib.masked_task_loss(
                task, fn, layout, y[task], y_pred[task], sample_weight[task],
                parts)
            totals.append(total)
            counts.append(count)
            labelled[task] = (clean, weights, sample_weight[task])
        # One entry per row, part-major (`(k, T)` flattened). Each row
        # stays a function of its own task's total only: a stacked vector
        # would carry zeros back through every other head.
        num_tasks = len(self.task_names)
        totals = [totals[t] if parts == 1 else totals[t][s]
                  for s in range(parts) for t in range(num_tasks)]
        counts = ops.reshape(ops.stack(counts, axis=-1), (-1,))
        num_rows = num_tasks * parts
        parallel = replicas.count > 1
        global_counts, values = counts, None
        if parallel:
            # One all-reduce: the counts, the sums and the regularisation.
            local = [counts, ops.stack(totals)]
            if reg is not None:
                local.append(ops.reshape(reg, (1,)))
            local = ops.stop_gradient(ops.concatenate(local))
            (summed,) = replicas.sum([local])
            global_counts = summed[:num_rows]
            values = summed[num_rows: 2 * num_rows]
        safe = _positive(global_counts)
        rows = [totals[i] / safe[i] for i in range(num_rows)]
        if parallel or scale is not None:
            if parallel:
                values = values / safe
            else:
                values = ops.stop_gradient(ops.stack(rows))
            factor = 1.0 if scale is None else scale
            rows = [_spread(row, values[i], factor)
                    for i, row in enumerate(rows)]
            if reg is not None:
                n = replicas.count
                total_reg = summed[-1] if parallel else reg
                reg = _spread(reg, total_reg / n, factor / n)
        if parts == 1 and self.groups is not None:
            task_rows = rows
            rows = [sum(task_rows[t] for t in g) for g in self.groups]
            return TaskLosses(rows, ops.stack(task_rows), counts, labelled,
                              reg, ops.stack(rows))
        row_losses = ops.stack(rows)
        if parts == 1:
            return TaskLosses(rows, row_losses, counts, labelled, reg,
                              row_losses)
        # The whole batch's loss of a task: its parts' losses, each weighted
        # by the part's share of the task's labelled weight.
        by_part = ops.reshape(global_counts, (parts, -1))
        shares = ops.reshape(by_part / _positive(ops.sum(by_part, axis=0)),
                             (-1,))
        losses = ops.sum(ops.reshape(row_losses * shares, (parts, -1)),
                         axis=0)
        task_counts = ops.sum(ops.reshape(counts, (parts, -1)), axis=0)
        return TaskLosses(rows, losses, task_counts, labelled, reg,
                          row_losses, shares)

    def unscale(self, grads, replicas=SINGLE, scale=None):
        """The global gradients from this replica's (see `task_losses`):
        summed over the replicas, then divided by the loss scale in
        float32 (`None` entries stay `None`)."""
        if replicas.count > 1:
            present = [g for g in grads if g is not None]
            summed = iter(replicas.sum(present))
            grads = [None if g is None else next(summed) for g in grads]
        if scale is None:
            return grads
        return [None if g is None else ops.cast(g, "float32") / scale
                for g in grads]

    # ------------------------------------------------ step: aggregation

    def _read_state(self, group=0):
        """The aggregator's state (of one group of shared variables) plus
        the read-only inputs it declared."""
        state = {k: self.state[full].value
                 for k, full in self._state_keys[group].items()}
        state.update(getattr(self._step, "meta", None) or {})
        state.update({k: v.value for k, v in self.parameters.items()})
        if self.aggregator.uses_epoch:
            state["epoch"] = self.epoch.value
        return state

    @property
    def _pending(self):
        return getattr(self._step, "pending", None)

    @_pending.setter
    def _pending(self, value):
        self._step.pending = value

    def _keep_pending(self, state, group=0):
        kept = {full: state[k] for k, full in self._state_keys[group].items()}
        if group:
            kept = {**(self._pending or {}), **kept}
        self._pending = kept

    def objective(self, losses, weights, replicas=SINGLE, scale=None):
        """The scalar a loss-only step differentiates: the weighted sum of
        the losses, or the rule's own objective when it has parameters.

        The rule's parameters see only the global losses, so every replica
        computes the same gradient for them: each contributes `1 / count` of
        it (times the loss scale, as for every other gradient).
        """
        losses = self.balanced_losses(losses)
        if self.parameters:
            parameters = {k: v.value for k, v in self.parameters.items()}
            if replicas.count > 1 or scale is not None:
                factor = (1.0 if scale is None else scale) / replicas.count
                parameters = {k: _spread(p, p, factor)
                              for k, p in parameters.items()}
            return self.aggregator.scalarize(losses, parameters)
        return ops.sum(weights * losses)

    @property
    def bilevel(self):
        """Whether the rule learns from a virtual step (`meta_update`)."""
        return self.aggregator.bilevel

    def meta_update(self, probe):
        """Runs the rule's virtual step on `probe` (see `models/probe.py`);
        the step's weights then read the new state, which is written at
        `commit` like any other."""
        self._step.meta = self.aggregator.meta_update(
            probe, self._read_state())

    def loss_weights(self, losses):
        """Task weights of a loss-only step. A rule that reads gradients
        lands here only when no variable is shared: each task then simply
        trains its own variables."""
        if self.aggregator.requires_jacobian or not isinstance(
                self.aggregator, Weighting):
            self._pending = None
            return ops.ones((self.num_balanced,), "float32")
        weights, state = self._gramian_rule(None, losses, self._read_state())
        self._keep_pending(state)
        return weights

    def combine(self, jacobians, losses, norm_index=None, flat=None):
        """Aggregates per-task gradients.

        Args:
            jacobians: list of `(R, *shape)` tensors (one per shared
                variable, or one for the features tensor), one row per
                entry of `TaskLosses.rows` (`R = T`, or `k * T` with parts).
            losses: `(T,)` task losses.
            norm_index: positions in `jacobians` of the aggregator's
                `gramian_layer` (the plan's `norm_index`), or `None`.
            flat: optional `(R, P)` float32 matrix of which `jacobians` are
                views, side by side (the PyTorch engine writes the gradients
                into one); Jacobian rules then read it without a copy.

        Returns:
            `(directions, weights)`: one `(*shape)` tensor per entry of
            `jacobians`, and the `(R,)` row weights.
        """
        if self.num_groups > 1:
            return self._combine_groups(jacobians, losses)
        return self._combine(jacobians, losses, norm_index, flat)

    def gramian_weights(self, columns, losses, scale=None, layer_rows=None):
        """The row weights of a Gramian rule (a `Weighting`) in
        `gradient_mode="gramian"`, which never forms the Jacobian.

        Args:
            columns: `R` tensors `(R,)`, the columns `J g_r` of the rows'
                Gramian: the Jacobian of the row losses times one row's
                (unscaled) gradient `g_r`. In a mixed-precision step that
                Jacobian is of the scaled losses, so a column is `scale`
                times the true one (the tangent is unscaled first, which
                keeps float16 intermediates of order `scale`, not
                `scale ** 2`).
            losses: `(T,)` task losses.
            scale: the loss scale of a mixed-precision step, or `None`.
            layer_rows: `R` unscaled flat gradients of the aggregator's
                `gramian_layer` alone (small, so kept), or `None`.

        Returns:
            The `(R,)` row weights; the step's direction is their
            combination of the row gradients, one more backward pass.
        """
        gramian = ops.cast(ops.stack(columns, axis=1), "float32")
        if scale is not None:
            gramian = gramian / scale
        # Each column is its own backward pass: equal up to rounding.
        gramian = 0.5 * (gramian + ops.transpose(gramian))
        state = self._read_state()
        if layer_rows is not None:
            rows = ops.cast(ops.stack(layer_rows), "float32")
            state["layer_gramian"] = rows @ ops.transpose(rows)
        self._record_gramian(gramian)
        weights, state = self._gramian_rule(gramian, losses, state)
        self._keep_pending(state)
        return weights

    def compile_rules(self, compile_fn):
        """Runs the rule (its solver, and the directions it gives) through
        `compile_fn(fn)`, which returns a compiled `fn`: PyTorch's
        `torch.compile` where the rest of the step runs eagerly (see
        `keras_mtl/src/backend/torch_engine.py`). The compiled functions
        take and return tensors only; state is read before and kept after
        them."""
        self._jacobian_rule = compile_fn(self._run_on_jacobians)
        self._gramian_rule = compile_fn(self._run_on_gramian)

    def _run_on_gramian(self, gramian, losses, state):
        """A `Weighting`'s `(weights, new_state)` from the rows' Gramian
        (`None` for a loss-only step) and the `(T,)` task losses."""
        losses = ops.stop_gradient(self.balanced_losses(losses))
        weights, new_state = self.aggregator.compute_weights(
            self.num_balanced, gramian, losses, state, self.seed_generator)
        return (ops.stop_gradient(ops.cast(weights, "float32")),
                {**state, **new_state})

    def _combine_groups(self, jacobians, losses):
        """`combine` once per group of shared variables, each with its own
        state; the weights returned are the groups' mean."""
        directions = [None] * len(jacobians)
        all_weights = []
        positions = {}
        for i, v in enumerate(self._plan.shared):
            positions.setdefault(self.group_of[id(v)], []).append(i)
        for group, members in sorted(positions.items()):
            found, weights = self._combine(
                [jacobians[i] for i in members], losses, group=group)
            for i, direction in zip(members, found):
                directions[i] = direction
            all_weights.append(weights)
        return directions, ops.mean(ops.stack(all_weights), axis=0)

    def _combine(self, jacobians, losses, norm_index=None, flat=None,
                 group=0):
        directions, weights, state, gramian = self._jacobian_rule(
            jacobians, losses, self._read_state(group), norm_index, flat)
        if gramian is not None:
            self._record_gramian(gramian)
        self._keep_pending(state, group)
        return directions, weights

    def _run_on_jacobians(self, jacobians, losses, state, norm_index=None,
                          flat=None):
        """The rule on per-variable Jacobians (see `combine`): returns
        `(directions, weights, new_state, gramian)`, the last the rows'
        Gramian for the conflict tracker, or `None`."""
        num_rows = self.num_balanced * self.batch_splits
        if flat is None:
            flats = [
                ops.reshape(ops.cast(j, "float32"), (num_rows, -1))
                for j in jacobians
            ]
            sizes = [f.shape[1] for f in flats]
        else:
            sizes = [math.prod(j.shape[1:]) for j in jacobians]
            flats = split_sizes(flat, sizes, axis=1)
        tracked = self.trackers.conflicts is not None
        gramian = None  # For the conflict tracker.
        if isinstance(self.aggregator, Weighting):
            gramians = [f @ ops.transpose(f) for f in flats]
            total = sum(gramians)
            if norm_index is not None:
                state = {**state, "layer_gramian": sum(
                    gramians[k] for k in norm_index)}
            weights, state = self._run_on_gramian(total, losses, state)
            gramian = total if tracked else None
            directions = [
                ops.cast(ops.tensordot(weights, j, axes=1), j.dtype)
                for j in jacobians
            ]
        else:
            jacobian = ops.concatenate(flats, axis=1) if flat is None else flat
            if tracked:
                gramian = jacobian @ ops.transpose(jacobian)
            direction, weights, new_state = self.aggregator.aggregate(
                jacobian, ops.stop_gradient(self.balanced_losses(losses)),
                state, self.seed_generator)
            state = {**state, **new_state}
            pieces = split_sizes(direction, sizes)
            directions = [
                ops.cast(ops.reshape(p, j.shape[1:]), j.dtype)
                for p, j in zip(pieces, jacobians)
            ]
        return directions, ops.stop_gradient(weights), state, gramian

    def flat_gradients(self, probe, losses, num_shared, norm_index=None,
                       clean=None):
        """The step's gradients from task-based sharpness (`sharpness.py`).

        Args:
            probe: a whole-batch `Probe` over the shared variables (the
                first `num_shared`) and the task-specific ones; its
                evaluations give the rows of `losses`.
            losses: the step's `TaskLosses` at the current values.
            num_shared: the number of shared variables.
            norm_index: as for `combine`.
            clean: optional `(R, *shape)` row gradients at the current
                values, one per variable of `probe` (unscaled), from the
                step's own passes; else the probe computes them.

        Returns:
            `(shared_directions, other_gradients, weights)`: the aggregated
            flat gradients of the shared variables, the task-specific
            variables' flat gradients summed with `coefficients`, and the
            row weights. Regularisation is not included.
        """
        num_rows = len(losses.rows)
        sizes, shapes = probe.sizes, probe.shapes
        size = sum(sizes[:num_shared])
        if clean is not None:
            clean = ops.concatenate(
                [ops.reshape(ops.cast(g, "float32"), (num_rows, -1))
                 for g in clean], axis=1)
        rows, sharpness = TaskSharpness(
            self.rho, self.sharpness_adaptive).gradients(
                probe, num_rows, size, ops.stop_gradient(losses.row_losses),
                clean)
        self._step.sharpness = self.task_weights(sharpness) / (
            num_rows // self.num_balanced)
        jacobians = _pieces(rows[:, :size], sizes[:num_shared],
                            shapes[:num_shared], leading=(num_rows,))
        if num_shared and self.aggregator.requires_jacobian:
            directions, weights = self.combine(jacobians, losses.losses,
                                               norm_index)
        else:
            weights = self.loss_weights(losses.losses)
            directions = [ops.tensordot(weights, j, axes=1)
                          for j in jacobians]
        coefficients = self.coefficients(weights, losses)
        others = ops.tensordot(ops.cast(coefficients, "float32"),
                               rows[:, size:], axes=1)
        return (directions, _pieces(others, sizes[num_shared:],
                                    shapes[num_shared:]), weights)

    def record_saliency_terms(self, tsr, csa):
        """Keeps the step's saliency terms for the logs."""
        self._step.saliency = ops.stack([ops.cast(tsr, "float32"),
                                         ops.cast(csa, "float32")])

    def _record_gramian(self, gramian):
        """Adds a row Gramian's `T x T` task part to this step's record
        for `ConflictTracker` (summed over groups of variables)."""
        if self.trackers.conflicts is None:
            return
        num_tasks = self.num_balanced
        k = gramian.shape[0] // num_tasks
        if k > 1:
            # Rows of independent parts of the batch: the task gradient is
            # the sum of its parts, so its Gramian sums the blocks.
            gramian = ops.sum(ops.reshape(
                gramian, (k, num_tasks, k, num_tasks)), axis=(0, 2))
        recorded = getattr(self._step, "gramian", None)
        self._step.gramian = gramian if recorded is None else (
            recorded + gramian)

    @property
    def batch_splits(self):
        """Parts per batch: more than 1 for a rule that reads independent
        batches (see `Aggregator.batch_splits`)."""
        aggregator = self.aggregator
        return aggregator.batch_splits if aggregator.requires_jacobian else 1

    def coefficients(self, weights, losses):
        """Cotangents of the row losses (`losses.rows`) for the non-shared
        variables: the row weights, or each task's plain gradient."""
        if self.weight_task_specific:
            return weights
        if losses.shares is not None:
            return ops.stop_gradient(losses.shares)
        return ops.ones((self.num_balanced,), "float32")

    @property
    def unit_coefficients(self):
        """Whether `coefficients` is always 1 (then they need no product)."""
        return not self.weight_task_specific and self.batch_splits == 1

    def task_weights(self, weights):
        """The `(T,)` task weights of the `(k * T,)` row weights (a
        loss-only step's weights are already per task)."""
        if weights.shape[0] != self.num_balanced:
            weights = ops.sum(ops.reshape(weights, (self.batch_splits, -1)),
                              axis=0)
        if self.groups is None:
            return weights
        # Each task carries its group's weight.
        members = task_groups_lib.membership(self.groups,
                                             len(self.task_names))
        return ops.tensordot(ops.cast(weights, "float32"), members, axes=1)

    # ------------------------------------------- step: finish and commit

    @staticmethod
    def loss_scale(optimizer):
        """The current scale of a `LossScaleOptimizer` (the optimizer of a
        `"mixed_float16"` model), as a float32 scalar, or None."""
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return ops.cast(optimizer.scale_loss(ops.ones((), "float32")),
                            "float32")
        return None

    def optimizer_gradients(self, grads, ok=None, scale=None, divide=1):
        """What `optimizer.apply` receives for the global gradients `grads`.

        A `LossScaleOptimizer` divides by its scale and skips a non-finite
        step itself (lowering its scale), so it receives `grads` times the
        scale, and NaN where `ok` is False. An optimizer that sums the
        gradients over `divide` replicas once more (Keras' TensorFlow
        optimizer under a strategy) receives `1 / divide` of them.
        """
        if scale is None and divide == 1:
            return grads
        factor = (1.0 if scale is None else scale) / divide
        out = [None if g is None else g * ops.cast(factor, g.dtype)
               for g in grads]
        if scale is None or ok is None:
            return out
        return [None if g is None else ops.where(
            ok, g, ops.full_like(g, float("nan"))) for g in out]


    def check_finite(self, losses, grads):
        """Whether every loss and gradient is finite (a boolean tensor), or
        `None` when `non_finite="apply"` (no check: always apply).

        One sum per tensor is checked first (a tensor holding a NaN or an
        inf has a non-finite sum); only when a sum is not finite, which a
        finite tensor gives only by overflowing float32, is every element
        checked.
        """
        if self.non_finite == "apply":
            return None
        tensors = [losses] + [g for g in grads if g is not None]
        sums = ops.stack([ops.sum(ops.cast(t, "float32")) for t in tensors])

        def exact():
            return ops.all(ops.stack(
                [ops.all(ops.isfinite(t)) for t in tensors]))

        return traceable_ops.cond(ops.all(ops.isfinite(sums)),
                                  lambda: ops.convert_to_tensor(True), exact)

    def commit(self, applied=None):
        """Writes the pending aggregator state: always when `applied` is
        None, else only where the optimizer applied the step."""
        self._step.meta = None
        if self._pending is None:
            return
        for key, value in self._pending.items():
            variable = self.state[key]
            value = ops.cast(value, variable.dtype)
            if applied is not None:
                value = ops.where(applied, value, variable.value)
            variable.assign(value)
        self._pending = None

    @property
    def needs_losses_after_step(self):
        return self.aggregator.requires_losses_after_step

    def after_step(self, losses_before, losses_after, applied=None):
        """Lets the rule learn from the step's effect on the same batch."""
        state = self.aggregator.update_after_step(
            ops.stop_gradient(self.balanced_losses(losses_before)),
            ops.stop_gradient(self.balanced_losses(losses_after)),
            self._read_state(),
        )
        self._keep_pending(state)
        self.commit(applied)

    # --------------------------------------------------------- step: logs

    def update_metrics(self, losses, y_pred, total, batch_size,
                       weights=None, ok=None, replicas=SINGLE):
        """Updates every tracker with one batch.

        The updates are additive: with several replicas, each adds its own
        shard's share, and the metric states are summed over the replicas
        (TensorFlow's metric variables do it; the PyTorch engine all-reduces
        the updates).

        Args:
            losses: the batch's `TaskLosses`.
            y_pred: `{task: predictions}`.
            total: the logged total loss.
            batch_size: number of samples (weight of `total`).
            weights: the row weights of a training step (see
                `task_weights`), else None; those of a step that `ok`
                marks as skipped are not averaged in.
            ok: the finiteness check of a training step, or None.
            replicas: the data-parallel replicas of the step.
        """
        t = self.trackers
        t.loss.update_state(total, sample_weight=batch_size)
        t.task_loss.update_state(losses.losses, sample_weight=losses.counts)
        if weights is not None:
            task_weights = self.task_weights(weights)
            # A skipped step's weights (NaN from a non-finite Gramian) stay
            # out of the epoch's mean; `skipped_steps` counts the step.
            counted = None
            if ok is not None:
                task_weights = ops.where(ok, task_weights, 0.0)
                counted = ops.broadcast_to(ops.cast(ok, "float32"),
                                           task_weights.shape)
            t.task_weight.update_state(task_weights, sample_weight=counted)
            if t.conflicts is not None:
                balanced = weights
                if weights.shape[0] != self.num_balanced:
                    balanced = ops.sum(ops.reshape(
                        weights, (self.batch_splits, -1)), axis=0)
                t.conflicts.update_state(
                    balanced,
                    getattr(self._step, "gramian", None), ok,
                    replicas.count)
                self._step.gramian = None
            if t.diagnostics is not None:
                state = {k: v.value for k, v in self.state.items()}
                t.diagnostics.update_state(ops.stack([
                    ops.cast(state[k], "float32")
                    for k in self.aggregator.diagnostics
                ]))
        saliency = getattr(self._step, "saliency", None)
        if t.saliency is not None and saliency is not None:
            t.saliency.update_state(
                saliency if ok is None else ops.where(ok, saliency, 0.0),
                sample_weight=None if ok is None else ops.broadcast_to(
                    ops.cast(ok, "float32"), (2,)))
            self._step.saliency = None
        sharpness = getattr(self._step, "sharpness", None)
        if t.sharpness is not None and sharpness is not None:
            counted = None if ok is None else ops.broadcast_to(
                ops.cast(ok, "float32"), sharpness.shape)
            t.sharpness.update_state(
                sharpness if ok is None else ops.where(ok, sharpness, 0.0),
                sample_weight=counted)
            self._step.sharpness = None
        if ok is not None:
            t.skipped.update_state(
                (1.0 - ops.cast(ok, "float32")) / replicas.count)
        for task, weighted, metric in t.task_metrics:
            clean, mask, sample_weight = losses.labelled[task]
            metric_weight = mask
            if not weighted and sample_weight is not None:
                metric_weight = ops.cast(mask > 0.0, "float32")
            metric.update_state(clean, y_pred[task],
                                sample_weight=metric_weight)

    def results(self, training):
        """The logs: `loss`, `<task>_loss`, (training) `<task>_weight`,
        diagnostics and `skipped_steps`, and `<task>_<metric>`.

        In evaluation, a task with no labelled sample since the last reset
        logs NaN for its loss and metrics (0 would read as a perfect score);
        in training, a batch without labels for a task adds loss 0.
        """
        t = self.trackers
        logs = {"loss": t.loss.result()}
        task_losses = t.task_loss.result()
        seen = t.task_loss.count > 0.0
        nan = ops.full((), float("nan"), "float32")

        def honest(task, value):
            if training:
                return value
            index = self.task_names.index(task)
            return ops.where(seen[index], ops.cast(value, "float32"), nan)

        logs.update({
            name: honest(task, value)
            for task, (name, value) in zip(self.task_names,
                                           task_losses.items())
        })
        if training:
            logs.update(t.task_weight.result())
            if t.diagnostics is not None:
                logs.update(t.diagnostics.result())
            if t.sharpness is not None:
                logs.update(t.sharpness.result())
            if t.saliency is not None:
                logs.update(t.saliency.result())
            if self.non_finite != "apply":
                logs["skipped_steps"] = t.skipped.result()
        for task, _, metric in t.task_metrics:
            result = metric.result()
            if isinstance(result, dict):
                logs.update({k: honest(task, v) for k, v in result.items()})
            else:
                logs[metric.name] = honest(task, result)
        return logs


def _pieces(flat, sizes, shapes, leading=()):
    """`flat` (`(*leading, sum(sizes))`) cut along its last axis into
    tensors of `shapes`."""
    if not sizes:
        return []
    pieces = split_sizes(flat, sizes, axis=-1)
    return [ops.reshape(p, leading + tuple(s))
            for p, s in zip(pieces, shapes)]


def _positive(counts):
    """`counts` with 1 where it is 0 (a safe divisor)."""
    return ops.where(counts > 0.0, counts, ops.ones_like(counts))


def _group_key(group, key):
    """State key of group `group` (the first group keeps the plain keys)."""
    return f"group{group}_{key}" if group else key

