"""Per-task gradient engine for JAX.

The step is stateless, as Keras' JAX trainer requires: `train_step(state,
data)` receives the variable values and returns new ones. One forward pass is
recorded with `jax.vjp`; its pullback is then applied once per task (a loop
of backward passes, or `jax.vmap` over the one-hot cotangents with
`vectorize=True`). Aggregator state and metrics are updated inside a
`keras.StatelessScope`, which maps every model variable to its value in the
incoming state and records the assignments.

Distribution: under `keras.distribution` (DataParallel, ModelParallel) the
step is compiled as one SPMD program over the global batch, so the task
losses, and hence the per-task gradients, are those of the global batch: the
reduction across devices happens inside the backward pass, before the
(nonlinear) aggregation, with no extra code.
"""

import jax
import jax.numpy as jnp
import keras


def _forward_scope(model, trainable, non_trainable):
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    return keras.StatelessScope(state_mapping=mapping, collect_losses=True)


def _new_values(scope, variables):
    out = []
    for v in variables:
        value = scope.get_current_value(v)
        out.append(v.value if value is None else value)
    return out


def _replace(values, index, new):
    values = list(values)
    for i, value in zip(index, new):
        values[i] = value
    return values


def _cotangent(outputs, **values):
    """Cotangent dict for `outputs`: the given entries, zeros elsewhere."""
    return {
        key: values[key] if key in values else jnp.zeros_like(value)
        for key, value in outputs.items()
    }


def _pullbacks(pullback, outputs, num_tasks, vectorize, part):
    """Rows `pullback(e_t on the losses)[part]` per task, stacked per leaf."""
    eye = jnp.eye(num_tasks, dtype="float32")

    def row(e):
        return pullback(_cotangent(outputs, losses=e))[part]

    if vectorize:
        return jax.vmap(row)(eye)
    rows = [row(eye[t]) for t in range(num_tasks)]
    return jax.tree_util.tree_map(lambda *r: jnp.stack(r), *rows)


def _parameter_gradients(model, plan, tv, ntv, x, y, sw):
    ntv_vars = model.non_trainable_variables

    def forward(shared, others):
        values = _replace(_replace(tv, plan.shared_index, shared),
                          plan.others_index, others)
        with _forward_scope(model, values, ntv) as scope:
            y_pred = model(x, training=True)
            losses, counts, labelled = model._task_losses(y, y_pred, sw)
            reg = model._sum_losses(model.losses)
            outputs = {"losses": losses}
            if reg is not None:
                outputs["reg"] = reg
            if plan.parametrized:
                outputs["objective"] = model._parametrized_objective(losses)
        aux = (y_pred, counts, labelled, reg, _new_values(scope, ntv_vars))
        return outputs, aux

    shared = [tv[i] for i in plan.shared_index]
    others = [tv[i] for i in plan.others_index]
    outputs, pullback, aux = jax.vjp(forward, shared, others, has_aux=True)
    losses = outputs["losses"]
    y_pred, counts, labelled, reg, new_ntv = aux
    for variable, value in zip(ntv_vars, new_ntv):
        variable.assign(value)
    one = {"reg": jnp.ones(())} if reg is not None else {}

    if plan.mode == "losses":
        weights = model._loss_weights(losses)
        if plan.parametrized:
            cotangent = _cotangent(outputs, objective=jnp.ones(()), **one)
        else:
            cotangent = _cotangent(outputs, losses=weights, **one)
        g_shared, g_others = pullback(cotangent)
    else:
        jacobians = _pullbacks(
            pullback, outputs, len(model.task_names), model.vectorize, 0
        )
        g_shared, weights = model._combine(jacobians, losses)
        coefficients = model._task_coefficients(weights)
        _, g_others = pullback(
            _cotangent(outputs, losses=coefficients, **one)
        )
        if reg is not None:
            # Regularisation is not a task: its gradient is added as is.
            g_reg, _ = pullback(_cotangent(outputs, **one))
            g_shared = [a + b for a, b in zip(g_shared, g_reg)]
    grads = plan.assemble(g_shared, g_others)
    return grads, (losses, counts, labelled, y_pred, reg, weights)


def _feature_gradients(model, plan, tv, ntv, x, y, sw):
    ntv_vars = model.non_trainable_variables
    trunk, heads = plan.trunk, plan.heads
    shared = [tv[i] for i in plan.shared_index]
    others = [tv[i] for i in plan.others_index]

    def trunk_forward(shared):
        values = _replace(tv, plan.shared_index, shared)
        with _forward_scope(model, values, ntv) as scope:
            z = trunk(x, training=True)
            reg = model._sum_losses(trunk.losses)
        outputs = (z,) if reg is None else (z, reg)
        return outputs, (reg, _new_values(scope, ntv_vars))

    z_out, trunk_pullback, (trunk_reg, ntv_mid) = jax.vjp(
        trunk_forward, shared, has_aux=True
    )
    z = z_out[0]

    def heads_forward(z, others):
        values = _replace(tv, plan.others_index, others)
        with _forward_scope(model, values, ntv_mid) as scope:
            y_pred = heads(model._heads_inputs(x, z), training=True)
            losses, counts, labelled = model._task_losses(y, y_pred, sw)
            reg = model._sum_losses(heads.losses)
        outputs = {"losses": losses}
        if reg is not None:
            outputs["reg"] = reg
        aux = (y_pred, counts, labelled, reg, _new_values(scope, ntv_vars))
        return outputs, aux

    outputs, heads_pullback, aux = jax.vjp(
        heads_forward, z, others, has_aux=True
    )
    losses = outputs["losses"]
    y_pred, counts, labelled, heads_reg, new_ntv = aux
    for variable, value in zip(ntv_vars, new_ntv):
        variable.assign(value)

    jacobian = _pullbacks(
        heads_pullback, outputs, len(model.task_names), model.vectorize, 0
    )
    (dz,), weights = model._combine([jacobian], losses)
    coefficients = model._task_coefficients(weights)
    one = {"reg": jnp.ones(())} if heads_reg is not None else {}
    _, g_others = heads_pullback(
        _cotangent(outputs, losses=coefficients, **one)
    )
    trunk_cotangent = (dz,) if trunk_reg is None else (
        dz, jnp.ones_like(trunk_reg))
    (g_shared,) = trunk_pullback(trunk_cotangent)
    reg = heads_reg if trunk_reg is None else (
        trunk_reg if heads_reg is None else trunk_reg + heads_reg)
    grads = plan.assemble(g_shared, g_others)
    return grads, (losses, counts, labelled, y_pred, reg, weights)


def train_step(model, state, data):
    tv, ntv, ov, mv = state
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    plan = model._gradient_plan()
    mapping = list(zip(model.trainable_variables, tv))
    mapping += list(zip(model.non_trainable_variables, ntv))
    mapping += list(zip(model.metrics_variables, mv))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        if plan.mode == "features":
            grads, out = _feature_gradients(model, plan, tv, ntv, x, y, sw)
        else:
            grads, out = _parameter_gradients(model, plan, tv, ntv, x, y, sw)
        losses, counts, labelled, y_pred, reg, weights = out
        total = model._total_loss(losses, reg)
        logs = model._update_metrics(
            losses, counts, labelled, y_pred, total, x, weights
        )
    ntv = _new_values(scope, model.non_trainable_variables)
    mv = _new_values(scope, model.metrics_variables)
    tv, ov = model.optimizer.stateless_apply(ov, grads, tv)
    if model.aggregator.requires_losses_after_step:
        mapping = list(zip(model.trainable_variables, tv))
        mapping += list(zip(model.non_trainable_variables, ntv))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            model._after_step(x, y, sw, losses)
        ntv = _new_values(scope, model.non_trainable_variables)
    return logs, (tv, ntv, ov, mv)


def test_step(model, state, data):
    tv, ntv, mv = state
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    mapping = list(zip(model.trainable_variables, tv))
    mapping += list(zip(model.non_trainable_variables, ntv))
    mapping += list(zip(model.metrics_variables, mv))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as s:
        logs = model._evaluate_batch(x, y, sw)
    ntv = _new_values(s, model.non_trainable_variables)
    mv = _new_values(s, model.metrics_variables)
    return logs, (tv, ntv, mv)


def jit(fn):
    """Compiles `fn` with XLA (used to check that aggregators trace)."""
    return jax.jit(fn)
