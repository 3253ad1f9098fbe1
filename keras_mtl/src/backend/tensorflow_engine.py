"""Per-task gradient engine for TensorFlow.

One persistent `tf.GradientTape` records the forward pass; the per-task
gradients of the shared variables are `T` calls of `tape.gradient` (or one
`tape.jacobian` with `vectorize=True`), and every other gradient is one more
`tape.gradient` with `output_gradients` set to the task coefficients.

Distribution: the reduction point is `_reduce_across_replicas`. Under a
`tf.distribute` strategy with several replicas the per-task Jacobian must be
all-reduced *before* the nonlinear aggregation; that path is not implemented
yet, so the step refuses to run there instead of silently aggregating per
replica.
"""

import contextlib

import keras
import tensorflow as tf

from keras_mtl.src.models.feature_split import split_at

ZERO = tf.UnconnectedGradients.ZERO


def _reduce_across_replicas():
    if tf.distribute.has_strategy() and (
        tf.distribute.get_strategy().num_replicas_in_sync > 1
    ):
        raise NotImplementedError(
            "MultiTaskModel does not support tf.distribute strategies with "
            "several replicas yet: per-task gradients would be aggregated per "
            "replica. Use the JAX backend with keras.distribution. "
            "Received: num_replicas_in_sync="
            f"{tf.distribute.get_strategy().num_replicas_in_sync}"
        )


def _values(variables):
    return [v.value for v in variables]


def _weighted_loss_gradients(model, plan, x, y, sw):
    """One backward pass of the weighted loss (loss-only rules)."""
    balancer = model.balancer
    shared, others = _values(plan.shared), _values(plan.others)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        losses = balancer.task_losses(y, y_pred, sw)
        reg = model.regularization_loss()
        weights = balancer.loss_weights(losses.losses)
        objective = balancer.objective(losses.losses, weights)
        if reg is not None:
            objective = objective + reg
    grads = tape.gradient(objective, shared + others,
                          unconnected_gradients=ZERO)
    return grads[: len(shared)], grads[len(shared):], (losses, y_pred, reg,
                                                        weights)


def _task_gradients(model, plan, x, y, sw):
    """Per-task gradients of the shared variables (or of the features),
    aggregated; each task's gradient runs through its own head only."""
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
        losses = balancer.task_losses(y, y_pred, sw)
        reg = model.regularization_loss()
    target = split.detached if features_mode else shared
    if balancer.vectorize:
        jacobians = tape.jacobian(losses.losses, target,
                                  unconnected_gradients=ZERO)
    else:
        rows = [tape.gradient(r, target, unconnected_gradients=ZERO)
                for r in losses.rows]
        jacobians = tf.nest.map_structure(lambda *r: tf.stack(r), *rows)
    if features_mode:
        (dz,), weights = balancer.combine([jacobians], losses.losses)
        targets, cotangents = [z], [dz]
        if reg is not None:
            targets, cotangents = [z, reg], [dz, tf.ones_like(reg)]
        g_shared = tape.gradient(targets, shared, output_gradients=cotangents,
                                 unconnected_gradients=ZERO)
    else:
        g_shared, weights = balancer.combine(
            jacobians, losses.losses, plan.norm_index)
        if reg is not None:
            g_reg = tape.gradient(reg, shared, unconnected_gradients=ZERO)
            g_shared = [a + b for a, b in zip(g_shared, g_reg)]
    targets, cotangents = [losses.losses], [balancer.coefficients(weights)]
    if reg is not None:
        targets, cotangents = targets + [reg], cotangents + [tf.ones_like(reg)]
    g_others = tape.gradient(
        targets, others, output_gradients=cotangents,
        unconnected_gradients=ZERO,
    ) if others else []
    return g_shared, g_others, (losses, y_pred, reg, weights)


def _apply(optimizer, grads, variables, ok):
    """The optimizer step; skipped where the finiteness flag `ok` is False."""
    if ok is None:
        optimizer.apply(grads, variables)
        return

    def apply():
        optimizer.apply(grads, variables)
        return tf.constant(True)

    tf.cond(ok, apply, lambda: tf.constant(False))


def train_step(model, data):
    _reduce_across_replicas()
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    balancer, optimizer = model.balancer, model.optimizer
    plan = model.gradient_plan()
    gradients = (_weighted_loss_gradients if plan.mode == "losses"
                 else _task_gradients)
    g_shared, g_others, (losses, y_pred, reg, weights) = gradients(
        model, plan, x, y, sw)
    grads = plan.assemble(g_shared, g_others)
    ok = balancer.check_finite(losses.losses, grads)

    conditional = ok is not None or optimizer.gradient_accumulation_steps
    before = tf.identity(optimizer.iterations) if conditional else None
    _apply(optimizer, grads, model.trainable_variables, ok)
    applied = optimizer.iterations > before if conditional else None

    balancer.commit(applied)
    if balancer.needs_losses_after_step:
        after = balancer.task_losses(y, model(x, training=False), sw)
        balancer.after_step(losses.losses, after.losses, applied)
    total = tf.reduce_sum(losses.losses)
    if reg is not None:
        total = total + reg
    balancer.update_metrics(losses, y_pred, total, tf.shape(
        tf.nest.flatten(x)[0])[0], weights, ok)
    return balancer.results(training=True)


def test_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    return model.compute_test_logs(x, y, sw)


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


def jit(fn):
    """Compiles `fn` with XLA (used to check that aggregators trace)."""
    return tf.function(fn, jit_compile=True)
