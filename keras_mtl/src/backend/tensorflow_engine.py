"""Per-task gradient engine for TensorFlow.

One persistent `tf.GradientTape` records the forward pass; the per-task
gradients of the shared variables are `T` calls of `tape.gradient` (or one
`tape.jacobian` with `vectorize=True`), and every other gradient is one more
`tape.gradient` with `output_gradients` set to the task coefficients. In
Gramian mode a second tape differentiates each row's `tape.gradient` call
with respect to its one-hot `output_gradients`: one column of the Gramian
per row (see `_gramian_gradients`).

Distribution: under `tf.distribute.MirroredStrategy` the step runs once per
replica on its shard of the global batch. The task losses take the global
batch's masked means (see `Balancer.task_losses`); the per-task gradients
(the `T x P` Jacobian in parameters mode, the features Jacobian gathered over
the replicas in features mode) and every other gradient are all-reduced
*before* the aggregation, so each replica aggregates the same global
Jacobian. Keras' optimizer sums the gradients over the replicas once more in
`apply`, so each replica passes `1 / num_replicas` of the global gradient.
"""

import contextlib

import keras
import tensorflow as tf

from keras_mtl.src.models.feature_split import split_at
from keras_mtl.src.models.gradient_plan import check_replicas
from keras_mtl.src.models.probe import Probe
from keras_mtl.src.models.probe import half_of

ZERO = tf.UnconnectedGradients.ZERO

KERAS_MWMS_ISSUE = "https://github.com/keras-team/keras/issues/20585"
KERAS_ACCUMULATION_ISSUE = "https://github.com/keras-team/keras/issues/20582"


class _Replicas:
    """The replicas of the current `tf.distribute` replica context."""

    def __init__(self):
        self.context = tf.distribute.get_replica_context()
        self.count = (self.context.num_replicas_in_sync
                      if self.context is not None else 1)

    def sum(self, values):
        return self.context.all_reduce(tf.distribute.ReduceOp.SUM, values)

    def gather(self, value):
        """`value` of every replica, concatenated along axis 1 (the batch
        axis of a `(T, batch, ...)` Jacobian), and this replica's slice of
        such a tensor."""
        size = tf.shape(value)[1:2]
        sizes = self.context.all_gather(size, axis=0)
        index = self.context.replica_id_in_sync_group
        start = tf.reduce_sum(sizes[:index])
        gathered = self.context.all_gather(value, axis=1)

        def local(full):
            return full[start: start + size[0]]

        return gathered, local


def check_distribution(model, training=True):
    """Refuses a `tf.distribute` strategy the step (or with `training=False`
    the evaluation) cannot run exactly."""
    strategy = model.distribute_strategy
    name = type(strategy).__name__
    if isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                             tf.distribute.experimental.
                             MultiWorkerMirroredStrategy)):
        raise ValueError(
            "MultiTaskModel cannot train under MultiWorkerMirroredStrategy "
            "on Keras 3: Keras' own `fit` fails there (keras-team/keras "
            f"issue 20585, {KERAS_MWMS_ISSUE}). Use MirroredStrategy for "
            "several devices of one host, or, across processes and hosts, "
            "the JAX backend (keras.distribution) or the PyTorch backend "
            "(torchrun with keras_mtl.distribute). Received: strategy="
            f"{name}"
        )
    refused = (tf.distribute.ParameterServerStrategy,
               tf.distribute.experimental.ParameterServerStrategy,
               tf.distribute.TPUStrategy,
               tf.distribute.experimental.TPUStrategy,
               tf.distribute.experimental.CentralStorageStrategy)
    if isinstance(strategy, refused):
        raise ValueError(
            "MultiTaskModel trains under tf.distribute.MirroredStrategy "
            "and OneDeviceStrategy (or no strategy): its step all-reduces "
            "the per-task gradients between the replicas before it "
            "aggregates them, which this strategy does not run. Received: "
            f"strategy={name}"
        )
    replicas = strategy.num_replicas_in_sync
    if training:
        check_replicas(model.balancer.gradient_mode, replicas)
    steps = getattr(model.optimizer, "gradient_accumulation_steps", None)
    inner = getattr(model.optimizer, "inner_optimizer", None)
    steps = steps or getattr(inner, "gradient_accumulation_steps", None)
    if replicas > 1 and steps:
        raise ValueError(
            "Gradient accumulation does not run under a tf.distribute "
            "strategy with several replicas in Keras 3 itself (keras-team/"
            f"keras issue 20582, {KERAS_ACCUMULATION_ISSUE}). Use a larger "
            "global batch, or the JAX backend. Received: "
            f"gradient_accumulation_steps={steps}, num_replicas={replicas}"
        )


def _values(variables):
    return [v.value for v in variables]


def _weighted_loss_gradients(model, plan, x, y, sw, replicas, scale):
    """One backward pass of the weighted loss (loss-only rules)."""
    balancer = model.balancer
    shared, others = _values(plan.shared), _values(plan.others)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        losses = balancer.task_losses(y, y_pred, sw,
                                      model.regularization_loss(),
                                      replicas, scale)
        weights = balancer.loss_weights(losses.losses)
        objective = balancer.objective(losses.losses, weights, replicas,
                                       scale)
        if losses.reg is not None:
            objective = objective + losses.reg
    grads = tape.gradient(objective, shared + others,
                          unconnected_gradients=ZERO)
    grads = balancer.unscale(grads, replicas, scale)
    return grads[: len(shared)], grads[len(shared):], losses, y_pred, weights


def _other_gradients(balancer, tape, losses, weights, others, replicas,
                     scale):
    """The non-shared variables' gradients: the row losses weighted by the
    task coefficients, plus the regularisation loss."""
    if not others:
        return []
    targets = [losses.row_losses]
    cotangents = [balancer.coefficients(weights, losses)]
    if losses.reg is not None:
        targets.append(losses.reg)
        cotangents.append(tf.ones_like(losses.reg))
    return balancer.unscale(tape.gradient(
        targets, others, output_gradients=cotangents,
        unconnected_gradients=ZERO), replicas, scale)


def _task_gradients(model, plan, x, y, sw, replicas, scale):
    """Per-task gradients of the shared variables (or of the features),
    reduced over the replicas and aggregated; each task's gradient runs
    through its own head only."""
    balancer = model.balancer
    shared, others = _values(plan.shared), _values(plan.others)
    features_mode = plan.mode == "features"
    tape = tf.GradientTape(persistent=True)

    def detach(z):
        detached = tf.stop_gradient(z)
        tape.watch(detached)
        return detached

    with tape:
        if features_mode:
            with split_at(plan.features_layer, detach) as split:
                y_pred = model(x, training=True)
            z = split.features
        else:
            y_pred = model(x, training=True)
        losses = balancer.task_losses(y, y_pred, sw,
                                      model.regularization_loss(),
                                      replicas, scale)
    reg = losses.reg
    target = split.detached if features_mode else shared
    if balancer.vectorize:
        jacobians = tape.jacobian(losses.row_losses, target,
                                  unconnected_gradients=ZERO)
    else:
        rows = [tape.gradient(r, target, unconnected_gradients=ZERO)
                for r in losses.rows]
        jacobians = tf.nest.map_structure(lambda *r: tf.stack(r), *rows)
    if features_mode:
        # Per-sample rows: gathered over the replicas, not summed.
        (jacobian,) = balancer.unscale([jacobians], scale=scale)
        local = None
        if replicas.count > 1:
            jacobian, local = replicas.gather(jacobian)
        (dz,), weights = balancer.combine([jacobian], losses.losses)
        dz = tf.cast(dz if local is None else local(dz), z.dtype)
        if scale is not None:
            dz = dz * tf.cast(scale, dz.dtype)
        targets, cotangents = [z], [dz]
        if reg is not None:
            targets, cotangents = [z, reg], [dz, tf.ones_like(reg)]
        g_shared = balancer.unscale(
            tape.gradient(targets, shared, output_gradients=cotangents,
                          unconnected_gradients=ZERO),
            replicas, scale)
    else:
        jacobians = balancer.unscale(jacobians, replicas, scale)
        g_shared, weights = balancer.combine(
            jacobians, losses.losses, plan.norm_index)
        if reg is not None:
            g_reg = balancer.unscale(
                tape.gradient(reg, shared, unconnected_gradients=ZERO),
                replicas, scale)
            g_shared = [a + b for a, b in zip(g_shared, g_reg)]
    g_others = _other_gradients(balancer, tape, losses, weights, others,
                                replicas, scale)
    return g_shared, g_others, losses, y_pred, weights


def _gramian_gradients(model, plan, x, y, sw, replicas, scale):
    """`gradient_mode="gramian"`: the rows' Gramian one column at a time,
    `J g_r` with `g_r = J^T e_r`, as the derivative of the backward pass
    with respect to its output gradient (a second tape over the first
    tape's `gradient` call), so one row gradient exists at a time; then
    one backward pass of the weighted loss."""
    balancer = model.balancer
    shared, others = _values(plan.shared), _values(plan.others)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=True)
        losses = balancer.task_losses(y, y_pred, sw,
                                      model.regularization_loss(),
                                      replicas, scale)
    rows, reg = losses.row_losses, losses.reg

    def column(pick):
        with tf.GradientTape() as outer:
            outer.watch(pick)
            # Dense (an embedding's gradient comes as IndexedSlices).
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(
                rows, shared, output_gradients=pick,
                unconnected_gradients=ZERO)]
        tangents = balancer.unscale(
            [tf.stop_gradient(g) for g in grads], scale=scale)
        found = outer.gradient(
            grads, pick,
            output_gradients=[tf.cast(t, g.dtype)
                              for t, g in zip(tangents, grads)],
            unconnected_gradients=ZERO)
        if plan.norm_index is None:
            return found, tf.zeros((0,), "float32")
        return found, tf.concat([tf.reshape(tf.cast(tangents[k], "float32"),
                                            [-1]) for k in plan.norm_index], 0)

    # A loop of one iteration at a time, not unrolled: the graph then holds
    # one row gradient at a time (unrolled, XLA kept several: 2.0x plain
    # training's memory at T = 8).
    columns, layer_rows = tf.map_fn(
        column, tf.eye(len(losses.rows), dtype=rows.dtype),
        fn_output_signature=(rows.dtype, tf.float32), parallel_iterations=1)
    columns = tf.unstack(columns)
    layer_rows = None if plan.norm_index is None else tf.unstack(layer_rows)
    weights = balancer.gramian_weights(columns, losses.losses, scale,
                                       layer_rows)
    targets, cotangents = [rows], [tf.cast(weights, rows.dtype)]
    if reg is not None:
        targets, cotangents = targets + [reg], cotangents + [tf.ones_like(reg)]

    def evidence():
        found = columns + [weights]
        if reg is not None:
            found += tape.gradient(reg, shared, unconnected_gradients=ZERO)
        return found

    def weighted_backward():
        # Dense, as parameter mode's directions are: the optimizer treats an
        # embedding's IndexedSlices as a sparse update (Adam's moments of the
        # rows not in the batch then do not decay).
        g_shared = tape.gradient(targets, shared, output_gradients=cotangents,
                                 unconnected_gradients=ZERO)
        return balancer.unscale([tf.convert_to_tensor(g) for g in g_shared],
                                replicas, scale)

    g_others = _other_gradients(balancer, tape, losses, weights, others,
                                replicas, scale)
    return (_Deferred(weighted_backward, evidence), g_others, losses, y_pred,
            weights)


class _Deferred:
    """Gramian mode's shared gradients, not computed yet.

    `run()` is the weighted backward pass, `evidence()` the tensors the
    finiteness check reads in its place. Called inside the conditional that
    skips a non-finite step (see `_apply`), its gradients can be applied as
    they are produced, layer by layer, instead of all existing before the
    conditional starts: about one gradient's worth less memory (1.33x ->
    1.02x plain training's peak at T = 8 in `benchmarks/gramian_memory.py`).
    The finiteness check then reads the evidence: the Gramian (a
    non-finite element of any task gradient makes its diagonal entry
    non-finite), the task weights and the regulariser's gradient, with the
    losses and the other variables' gradients. The weighted sum of finite
    gradients is finite too, unless it overflows float32.
    """

    def __init__(self, run, evidence):
        self.run = run
        self.evidence = evidence


def _saliency_gradients(model, plan, x, y, sw, replicas):
    """The gradients of the saliency regulariser (`Balancer.
    saliency_regularizer`) of every trainable variable: the saliencies
    `dL_t / dz` of a second forward pass, taken inside an outer tape that
    differentiates them again. Each replica regularises its own shard of
    the batch; the replicas' gradients are averaged."""
    balancer = model.balancer
    variables = _values(model.trainable_variables)
    num_tasks = len(balancer.task_names)
    offsets = []
    inner = tf.GradientTape(persistent=True)

    def shift(z):
        offsets.append(tf.zeros_like(z))
        inner.watch(offsets[0])
        return z + offsets[0]

    with tf.GradientTape() as outer:
        with inner:
            with split_at(plan.saliency_layer, shift):
                y_pred = model(x, training=True)
            losses = balancer.task_losses(y, y_pred, sw, parts=1).losses
            rows = [losses[t] for t in range(num_tasks)]
        saliency = tf.stack([inner.gradient(rows[t], offsets[0],
                                            unconnected_gradients=ZERO)
                             for t in range(num_tasks)])
        total, tsr, csa = balancer.saliency_regularizer(saliency)
    balancer.record_saliency_terms(tsr, csa)
    grads = outer.gradient(total, variables, unconnected_gradients=ZERO)
    if replicas.count > 1:
        grads = balancer.unscale([g / replicas.count for g in grads],
                                 replicas)
    return grads


def _apply(optimizer, gradients, variables, ok, replicas, scaled):
    """The optimizer step of the gradients `gradients()` returns; skipped
    where the finiteness flag `ok` is False.

    Without a strategy, `gradients()` runs inside the `tf.cond` (a deferred
    backward pass then runs there too, see `_Deferred`). A
    `LossScaleOptimizer` (`scaled`) decides itself: it received NaN
    gradients where `ok` is False, skips the step and lowers its scale.
    Under a strategy (even of one replica), `apply` calls `merge_call`,
    which may not run inside a `tf.cond` of a replica context: the
    condition is then taken in the cross-replica context, as Keras'
    `LossScaleOptimizer` does (`ok` is the same on every replica).
    """
    if ok is None or scaled:
        optimizer.apply(gradients(), variables)
        return
    if not tf.distribute.has_strategy():
        def apply():
            # The optimizer's all-reduce wants every gradient in the
            # branch's graph, computed there or not.
            optimizer.apply([tf.identity(g) for g in gradients()], variables)
            return tf.constant(True)

        tf.cond(ok, apply, lambda: tf.constant(False))
        return
    grads = gradients()

    def cross_replica(distribution, grads, ok):
        first = distribution.experimental_local_results(ok)[0]

        def apply():
            distribution.extended.call_for_each_replica(
                optimizer.apply, args=(grads, variables))
            return tf.constant(True)

        tf.cond(first, apply, lambda: tf.constant(False))

    replicas.context.merge_call(cross_replica, args=(grads, ok))


def _probe(model, plan, x, y, sw, replicas, scale, parts=1):
    """The `Probe` of a bilevel rule (or of task-based sharpness, with the
    rule's `parts`): forward (and backward) passes at other values of the
    trainable variables, read through a `StatelessScope`."""
    balancer = model.balancer
    variables = plan.shared + plan.others

    def evaluate(values, cotangents, half):
        x_h, y_h, sw_h = half_of((x, y, sw), half)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(values)
            with keras.StatelessScope(
                    state_mapping=list(zip(variables, values))):
                rows = balancer.task_losses(
                    y_h, model(x_h, training=True), sw_h, None, replicas,
                    scale, parts=parts).row_losses
        if cotangents is None:
            return tf.stop_gradient(rows), None
        per_row = [tape.gradient(rows, values, output_gradients=cotangents[i],
                                 unconnected_gradients=ZERO)
                   for i in range(cotangents.shape[0])]
        grads = [tf.stack(g) for g in zip(*per_row)]
        return (tf.stop_gradient(rows),
                balancer.unscale(grads, replicas, scale))

    return Probe(len(balancer.task_names), variables, evaluate,
                 model.optimizer.learning_rate)


def _flat_gradients(model, plan, x, y, sw, replicas, scale):
    """Task-based sharpness (`Balancer.flat_gradients`): the logged
    forward pass gives the row gradients at the current values (and the
    regulariser's), then the probe the ones at the ascent points."""
    balancer = model.balancer
    variables = _values(plan.shared + plan.others)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=True)
        losses = balancer.task_losses(y, y_pred, sw,
                                      model.regularization_loss(),
                                      replicas, scale)
    rows = [tape.gradient(r, variables, unconnected_gradients=ZERO)
            for r in losses.rows]
    clean = balancer.unscale([tf.stack(g) for g in zip(*rows)], replicas,
                             scale)
    probe = _probe(model, plan, x, y, sw, replicas, scale,
                   parts=balancer.batch_splits)
    g_shared, g_others, weights = balancer.flat_gradients(
        probe, losses, len(plan.shared), plan.norm_index, clean)
    if losses.reg is not None:
        g_reg = balancer.unscale(
            tape.gradient(losses.reg, variables,
                          unconnected_gradients=ZERO), replicas, scale)
        g_shared = [a + b for a, b in zip(g_shared, g_reg)]
        g_others = [a + b for a, b in zip(g_others, g_reg[len(g_shared):])]
    return g_shared, g_others, losses, y_pred, weights


def batch_probe(model, x, y, sw):
    """A whole-batch `Probe` of the model's current variables (for the
    analysis tools; no variable changes)."""
    plan = model.gradient_plan()
    return _probe(model, plan, x, y, sw, _Replicas(), None), plan


def _checked_gradients(model, plan, x, y, sw, replicas, scale, g_shared,
                       g_others, losses):
    """The finiteness flag of the step (`Balancer.check_finite`) and a
    function returning all its gradients, in `plan`'s order. A deferred
    backward pass (`_Deferred`) stays deferred where the step is skipped
    by a `tf.cond` of ours; everywhere else it runs now."""
    balancer = model.balancer
    deferred = isinstance(g_shared, _Deferred)
    if deferred and balancer.non_finite != "apply" and scale is None and (
            balancer.saliency_regularizer is None
            and not tf.distribute.has_strategy()):
        ok = balancer.check_finite(losses.losses,
                                   g_shared.evidence() + g_others)
        return ok, lambda: plan.assemble(g_shared.run(), g_others)
    if deferred:
        g_shared = g_shared.run()
    grads = plan.assemble(g_shared, g_others)
    if balancer.saliency_regularizer is not None:
        grads = [g + r for g, r in zip(grads, _saliency_gradients(
            model, plan, x, y, sw, replicas))]
    return balancer.check_finite(losses.losses, grads), lambda: grads


def train_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    balancer, optimizer = model.balancer, model.optimizer
    plan = model.gradient_plan()
    replicas = _Replicas()
    scale = balancer.loss_scale(optimizer)
    if balancer.bilevel:
        balancer.meta_update(_probe(model, plan, x, y, sw, replicas, scale))
    gradients = (_flat_gradients if balancer.sharpness is not None
                 else _weighted_loss_gradients if plan.mode == "losses"
                 else _gramian_gradients if plan.mode == "gramian"
                 else _task_gradients)
    g_shared, g_others, losses, y_pred, weights = gradients(
        model, plan, x, y, sw, replicas, scale)
    ok, grads = _checked_gradients(model, plan, x, y, sw, replicas, scale,
                                   g_shared, g_others, losses)
    conditional = ok is not None or optimizer.gradient_accumulation_steps
    before = tf.identity(optimizer.iterations) if conditional else None
    # Keras' optimizer sums the gradients over the replicas again.
    _apply(optimizer, lambda: balancer.optimizer_gradients(
        grads(), ok, scale, replicas.count), model.trainable_variables, ok,
        replicas, scale is not None)
    applied = optimizer.iterations > before if conditional else None

    balancer.commit(applied)
    if balancer.needs_losses_after_step:
        after = balancer.task_losses(y, model(x, training=False), sw,
                                     replicas=replicas)
        balancer.after_step(losses.losses, after.losses, applied)
    total = tf.reduce_sum(losses.losses)
    if losses.reg is not None:
        total = total + losses.reg
    balancer.update_metrics(losses, y_pred, total, tf.shape(
        tf.nest.flatten(x)[0])[0], weights, ok, replicas)
    return balancer.results(training=True)


def test_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    return model.compute_test_logs(x, y, sw, _Replicas())


def output_dependencies(model, outputs):
    """For each tensor of `outputs()` (a forward pass of `model`), the ids
    of the trainable variables with a connected gradient."""
    variables = model.trainable_variables
    values = [v.value for v in variables]
    with tf.GradientTape(persistent=True) as tape:
        sums = [tf.reduce_sum(tf.cast(t, "float32")) for t in outputs()]
    result = [
        {id(v) for v, g in zip(variables, tape.gradient(total, values))
         if g is not None}
        for total in sums
    ]
    del tape
    return result


@contextlib.contextmanager
def restore_on_failure(model):
    """TensorFlow keeps the variables' values in place: nothing to do."""
    yield


def synchronize_replicas(model):
    """Nothing to do: a strategy keeps its replicas' variables mirrored."""


def jit(fn):
    """Compiles `fn` with XLA (used to check that aggregators trace)."""
    return tf.function(fn, jit_compile=True)
