"""Per-task gradient engine for JAX.

The step is stateless, as Keras' JAX trainer requires: `train_step(state,
data)` receives the variable values and returns new ones. One forward pass is
linearised with `jax.linearize`, and its transpose gives each task's
gradient (a loop of backward passes, each through its own task's part of the
graph only, or `jax.vmap` over one-hot task weights with `vectorize=True`).
Aggregator state and metrics are updated inside a `keras.StatelessScope`,
which maps every model variable to its value in the incoming state and
records the assignments.

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


def _linearize(forward, *primals):
    """`jax.vjp` that can pull back a chosen combination of the outputs.

    Returns `(outputs, pull, aux)`. `pull(select)` is the vector-Jacobian
    product of the scalar `select(outputs)` (a linear combination of some of
    the outputs), as the transpose of the linearised forward pass. Outputs
    that `select` leaves out are symbolic zeros, so their part of the graph
    is skipped: the gradient of one task loss does not run the backward pass
    of the other tasks' heads, as a one-hot cotangent on a stacked loss
    vector would.
    """
    outputs, jvp, aux = jax.linearize(forward, *primals, has_aux=True)

    def pull(select):
        return jax.linear_transpose(lambda *t: select(jvp(*t)), *primals)(
            jnp.ones((), "float32")
        )

    return outputs, pull, aux


def _weighted(coefficients, reg=False):
    """`select` for `sum_t c_t L_t` (+ the regularisation loss)."""

    def select(outputs):
        total = jnp.stack(outputs["losses"]) @ coefficients
        return total + outputs["reg"] if reg else total

    return select


def _per_task(pull, num_tasks, vectorize, part):
    """Rows `d L_t / d primal[part]` per task, stacked per leaf."""
    if vectorize:
        eye = jnp.eye(num_tasks, dtype="float32")
        return jax.vmap(lambda e: pull(_weighted(e))[part])(eye)
    rows = [
        pull(lambda outputs, t=t: outputs["losses"][t])[part]
        for t in range(num_tasks)
    ]
    return jax.tree_util.tree_map(lambda *r: jnp.stack(r), *rows)


def _parameter_gradients(model, plan, tv, ntv, x, y, sw):
    ntv_vars = model.non_trainable_variables

    def forward(shared, others):
        values = _replace(_replace(tv, plan.shared_index, shared),
                          plan.others_index, others)
        with _forward_scope(model, values, ntv) as scope:
            y_pred = model(x, training=True)
            losses, counts, labelled = model._task_losses(
                y, y_pred, sw, stack=False
            )
            reg = model._sum_losses(model.losses)
            outputs = {"losses": tuple(losses)}
            if reg is not None:
                outputs["reg"] = reg
            if plan.parametrized:
                outputs["objective"] = model._parametrized_objective(
                    jnp.stack(losses)
                )
        aux = (y_pred, counts, labelled, reg, _new_values(scope, ntv_vars))
        return outputs, aux

    shared = [tv[i] for i in plan.shared_index]
    others = [tv[i] for i in plan.others_index]
    outputs, pull, aux = _linearize(forward, shared, others)
    losses = jnp.stack(outputs["losses"])
    y_pred, counts, labelled, reg, new_ntv = aux
    for variable, value in zip(ntv_vars, new_ntv):
        variable.assign(value)
    has_reg = reg is not None

    if plan.mode == "losses":
        weights = model._loss_weights(losses)
        if plan.parametrized:
            select = (lambda o: o["objective"] + o["reg"]) if has_reg else (
                lambda o: o["objective"])
        else:
            select = _weighted(weights, has_reg)
        g_shared, g_others = pull(select)
    else:
        jacobians = _per_task(pull, len(model.task_names), model.vectorize, 0)
        g_shared, weights = model._combine(jacobians, losses)
        coefficients = model._task_coefficients(weights)
        _, g_others = pull(_weighted(coefficients, has_reg))
        if has_reg:
            # Regularisation is not a task: its gradient is added as is.
            g_reg, _ = pull(lambda o: o["reg"])
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
            losses, counts, labelled = model._task_losses(
                y, y_pred, sw, stack=False
            )
            reg = model._sum_losses(heads.losses)
        outputs = {"losses": tuple(losses)}
        if reg is not None:
            outputs["reg"] = reg
        aux = (y_pred, counts, labelled, reg, _new_values(scope, ntv_vars))
        return outputs, aux

    outputs, heads_pull, aux = _linearize(heads_forward, z, others)
    losses = jnp.stack(outputs["losses"])
    y_pred, counts, labelled, heads_reg, new_ntv = aux
    for variable, value in zip(ntv_vars, new_ntv):
        variable.assign(value)

    jacobian = _per_task(heads_pull, len(model.task_names), model.vectorize, 0)
    (dz,), weights = model._combine([jacobian], losses)
    coefficients = model._task_coefficients(weights)
    _, g_others = heads_pull(_weighted(coefficients, heads_reg is not None))
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
