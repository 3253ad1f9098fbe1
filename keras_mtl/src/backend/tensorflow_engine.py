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

import keras
import tensorflow as tf

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


def train_step(model, data):
    _reduce_across_replicas()
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    plan = model._gradient_plan()
    shared, others = _values(plan.shared), _values(plan.others)
    features_mode = plan.mode == "features"
    with tf.GradientTape(persistent=plan.mode != "losses") as tape:
        if features_mode:
            z = plan.trunk(x, training=True)
            y_pred = plan.heads(model._heads_inputs(x, z), training=True)
        else:
            y_pred = model(x, training=True)
        # The gradient of one scalar task loss flows through its own head
        # only; a row of the stacked vector would also carry zeros through
        # every other head.
        rows, counts, labelled = model._task_losses(y, y_pred, sw, stack=False)
        losses = tf.stack(rows)
        reg = model._sum_losses(model.losses)
        if plan.mode == "losses":
            weights = model._loss_weights(losses)
            if plan.parametrized:
                objective = model._parametrized_objective(losses)
            else:
                objective = tf.reduce_sum(weights * losses)
            if reg is not None:
                objective = objective + reg

    if plan.mode == "losses":
        grads = tape.gradient(objective, shared + others, unconnected_gradients=ZERO)
        g_shared, g_others = grads[: len(shared)], grads[len(shared):]
    else:
        target = z if features_mode else shared
        if model.vectorize:
            jacobians = tape.jacobian(losses, target, unconnected_gradients=ZERO)
        else:
            per_task = [
                tape.gradient(r, target, unconnected_gradients=ZERO)
                for r in rows
            ]
            jacobians = tf.nest.map_structure(
                lambda *r: tf.stack(r), *per_task
            )
        if features_mode:
            (dz,), weights = model._combine([jacobians], losses)
            targets, cotangents = [z], [dz]
            if reg is not None:
                targets, cotangents = [z, reg], [dz, tf.ones_like(reg)]
            g_shared = tape.gradient(
                targets, shared, output_gradients=cotangents,
                unconnected_gradients=ZERO,
            )
        else:
            g_shared, weights = model._combine(jacobians, losses)
            if reg is not None:
                g_reg = tape.gradient(reg, shared, unconnected_gradients=ZERO)
                g_shared = [a + b for a, b in zip(g_shared, g_reg)]
        coefficients = model._task_coefficients(weights)
        targets, cotangents = [losses], [coefficients]
        if reg is not None:
            targets, cotangents = [losses, reg], [coefficients, tf.ones_like(reg)]
        g_others = tape.gradient(
            targets, others, output_gradients=cotangents,
            unconnected_gradients=ZERO,
        ) if others else []
        del tape
    model.optimizer.apply(plan.assemble(g_shared, g_others), model.trainable_variables)
    model._after_step(x, y, sw, losses)
    total = model._total_loss(losses, reg)
    return model._update_metrics(
        losses, counts, labelled, y_pred, total, x, weights
    )


def test_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    return model._evaluate_batch(x, y, sw)


def jit(fn):
    """Compiles `fn` with XLA (used to check that aggregators trace)."""
    return tf.function(fn, jit_compile=True)
