"""Per-task gradient engine for JAX.

The step is stateless, as Keras' JAX trainer requires: `train_step(state,
data)` receives the variable values and returns new ones. One forward pass is
linearised with `jax.linearize`, and its transpose gives each task's
gradient (a loop of backward passes, each through its own task's part of the
graph only, or `jax.vmap` over one-hot task weights with `vectorize=True`).
In Gramian mode the backward pass's transpose (the forward-mode product),
applied to each row gradient, gives one column of the Gramian (see
`_gramian_gradients`).
Aggregator state and metrics are updated inside a `keras.StatelessScope`,
which maps every model variable to its value in the incoming state and
records the assignments.

Distribution: under `keras.distribution` (DataParallel, ModelParallel) the
step is compiled as one SPMD program over the global batch, so the task
losses, and hence the per-task gradients, are those of the global batch: the
reduction across devices happens inside the backward pass, before the
(nonlinear) aggregation, with no extra code.
"""

import contextlib

import jax
import jax.numpy as jnp
import keras

from keras_mtl.src.models.feature_split import split_at
from keras_mtl.src.models.probe import Probe
from keras_mtl.src.models.probe import half_of


def _scope(model, trainable, non_trainable, metrics=None, losses=False):
    """A `StatelessScope` mapping the model's variables to state values."""
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    if metrics is not None:
        mapping += list(zip(model.metrics_variables, metrics))
    return keras.StatelessScope(state_mapping=mapping, collect_losses=losses)


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


def _backward(forward, *primals):
    """`_linearize` by `jax.vjp`, for Gramian mode: `pull(select)` pulls
    back the cotangent `grad(select)` of the outputs, zeros where `select`
    leaves an output out (so every row's pull runs through every head).
    `push(tangents)` is the transposed backward pass, the Jacobian-vector
    product of the first primal. With these, Gramian mode kept about one
    gradient's worth less than with `jax.linearize` (1.40x against 1.53x
    plain training's memory on a 108 M-parameter transformer); parameter
    mode, which keeps `T` gradients anyway, gained nothing from it.
    Returns `(outputs, pull, push, aux)`."""
    outputs, vjp, aux = jax.vjp(forward, *primals, has_aux=True)

    def pull(select):
        return vjp(jax.grad(select)(outputs))

    transposed = jax.linear_transpose(lambda ct: vjp(ct)[0], outputs)

    def push(tangents):
        return transposed(tangents)[0]

    return outputs, pull, push, aux


def _weighted(coefficients, reg=False, key="losses"):
    """`select` for `sum_t c_t L_t` over the row losses, or the task losses
    (`key="tasks"`), plus the regularisation loss."""

    def select(outputs):
        total = jnp.stack(outputs[key]) @ coefficients
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


def _gramian_gradients(model, plan, tv, ntv, x, y, sw, scale):
    """`gradient_mode="gramian"`: the rows' Gramian one column at a time,
    `J g_r` with `g_r = J^T e_r`: the backward pass (`jax.vjp`, as plain
    training keeps it) and its transpose, the forward-mode product. The
    columns are a `lax.scan`, which XLA runs in turn, so one row gradient
    exists at a time (an unrolled loop let XLA keep them all: 3.4x plain
    training's memory at T = 8). Then one backward pass of the weighted
    loss."""
    balancer = model.balancer
    forward = _step_forward(model, plan, tv, ntv, x, y, sw, scale)
    shared = [tv[i] for i in plan.shared_index]
    others = [tv[i] for i in plan.others_index]
    _, pull, push, (y_pred, losses, reg, new_ntv) = _backward(
        forward, shared, others)
    for variable, value in zip(model.non_trainable_variables, new_ntv):
        variable.assign(value)

    def column(carry, pick):
        grads = balancer.unscale(pull(_weighted(pick))[0], scale=scale)
        tangents = [g.astype(v.dtype) for g, v in zip(grads, shared)]
        found = jnp.stack(push(tangents)["losses"])
        if plan.norm_index is None:
            return carry, (found, jnp.zeros((0,), "float32"))
        return carry, (found, jnp.concatenate(
            [jnp.ravel(grads[k]).astype("float32") for k in plan.norm_index]))

    eye = jnp.eye(len(losses.rows), dtype="float32")
    _, (columns, layer_rows) = jax.lax.scan(column, None, eye)
    weights = balancer.gramian_weights(
        list(columns), losses.losses, scale,
        None if plan.norm_index is None else list(layer_rows))
    has_reg = reg is not None
    g_shared, _ = pull(_weighted(weights, has_reg))
    _, g_others = pull(_weighted(balancer.coefficients(weights, losses),
                                 has_reg))
    grads = plan.assemble(*(balancer.unscale(g, scale=scale)
                            for g in (g_shared, g_others)))
    return grads, _Step(losses, y_pred, reg, weights)


class _Step:
    """What the gradient part of a step hands on to its end."""

    def __init__(self, losses, y_pred, reg, weights):
        self.losses, self.y_pred = losses, y_pred
        self.reg, self.weights = reg, weights


def _step_forward(model, plan, tv, ntv, x, y, sw, scale):
    """The step's forward pass as a function of the shared and the other
    trainable values: outputs `{"losses": rows, "reg", ...}` and aux
    `(y_pred, losses, reg, new non-trainable values)`."""
    balancer = model.balancer
    ntv_vars = model.non_trainable_variables

    def forward(shared, others):
        values = _replace(_replace(tv, plan.shared_index, shared),
                          plan.others_index, others)
        with _scope(model, values, ntv, losses=True) as scope:
            y_pred = model(x, training=True)
            losses = balancer.task_losses(
                y, y_pred, sw, model.regularization_loss(), scale=scale)
            reg = losses.reg
            outputs = {"losses": tuple(losses.rows)}
            if reg is not None:
                outputs["reg"] = reg
            if plan.mode == "losses":
                # Only here: another output over every head would make
                # each task's row pull run through all of them.
                outputs["tasks"] = balancer.balanced_losses(losses.losses)
            if plan.mode == "losses" and balancer.parameters:
                outputs["objective"] = balancer.objective(
                    losses.losses, None, scale=scale)
        aux = (y_pred, losses, reg, _new_values(scope, ntv_vars))
        return outputs, aux

    return forward


def _parameter_gradients(model, plan, tv, ntv, x, y, sw, scale):
    balancer = model.balancer
    ntv_vars = model.non_trainable_variables
    forward = _step_forward(model, plan, tv, ntv, x, y, sw, scale)

    shared = [tv[i] for i in plan.shared_index]
    others = [tv[i] for i in plan.others_index]
    _, pull, (y_pred, losses, reg, new_ntv) = _linearize(
        forward, shared, others)
    for variable, value in zip(ntv_vars, new_ntv):
        variable.assign(value)
    has_reg = reg is not None

    if plan.mode == "losses":
        weights = balancer.loss_weights(losses.losses)
        if balancer.parameters:
            select = (lambda o: o["objective"] + o["reg"]) if has_reg else (
                lambda o: o["objective"])
        else:
            select = _weighted(weights, has_reg, key="tasks")
        g_shared, g_others = (balancer.unscale(g, scale=scale)
                              for g in pull(select))
    else:
        jacobians = balancer.unscale(
            _per_task(pull, len(losses.rows), balancer.vectorize, 0),
            scale=scale)
        g_shared, weights = balancer.combine(
            jacobians, losses.losses, plan.norm_index)
        coefficients = balancer.coefficients(weights, losses)
        _, g_others = pull(_weighted(coefficients, has_reg))
        g_others = balancer.unscale(g_others, scale=scale)
        if has_reg:
            # Regularisation is not a task: its gradient is added as is.
            g_reg, _ = pull(lambda o: o["reg"])
            g_shared = [a + b for a, b in zip(
                g_shared, balancer.unscale(g_reg, scale=scale))]
    grads = plan.assemble(g_shared, g_others)
    return grads, _Step(losses, y_pred, reg, weights)


def _feature_gradients(model, plan, tv, ntv, x, y, sw, scale):
    """Features mode: the forward pass is split at the features `z` (see
    `split_at`): the heads read `stop_gradient(z) + offset`, so the task
    losses' gradients with respect to the zero `offset` are their gradients
    with respect to `z`, and the trunk is reached only through `z`, by the
    aggregated direction."""
    balancer = model.balancer
    ntv_vars = model.non_trainable_variables

    def forward(shared, others, offset):
        values = _replace(_replace(tv, plan.shared_index, shared),
                          plan.others_index, others)
        detach = (lambda z: z) if offset is None else (
            lambda z: jax.lax.stop_gradient(z) + offset)
        with _scope(model, values, ntv, losses=True) as scope:
            with split_at(plan.features_layer, detach) as split:
                y_pred = model(x, training=True)
            losses = balancer.task_losses(
                y, y_pred, sw, model.regularization_loss(), scale=scale)
            reg = losses.reg
        outputs = {"losses": tuple(losses.rows), "features": split.features}
        if reg is not None:
            outputs["reg"] = reg
        return outputs, (y_pred, losses, reg, _new_values(scope, ntv_vars))

    shared = [tv[i] for i in plan.shared_index]
    others = [tv[i] for i in plan.others_index]
    features = jax.eval_shape(
        lambda: forward(shared, others, None)[0]["features"])
    offset = jnp.zeros(features.shape, features.dtype)
    _, pull, aux = _linearize(forward, shared, others, offset)
    y_pred, losses, reg, new_ntv = aux
    for variable, value in zip(ntv_vars, new_ntv):
        variable.assign(value)

    (jacobian,) = balancer.unscale(
        [_per_task(pull, len(losses.rows), balancer.vectorize, 2)],
        scale=scale)
    (dz,), weights = balancer.combine([jacobian], losses.losses)
    dz = dz.astype(features.dtype)
    if scale is not None:
        dz = dz * scale.astype(dz.dtype)
    weighted = _weighted(balancer.coefficients(weights, losses),
                         reg is not None)
    g_shared, g_others, _ = (balancer.unscale(g, scale=scale) for g in pull(
        lambda o: weighted(o) + jnp.sum(o["features"] * dz)))
    grads = plan.assemble(g_shared, g_others)
    return grads, _Step(losses, y_pred, reg, weights)


def _saliency_gradients(model, plan, tv, ntv, x, y, sw):
    """The gradients of the saliency regulariser (`Balancer.
    saliency_regularizer`) of every trainable variable: the saliencies
    `dL_t / dz` come from a vector-Jacobian product of a second forward
    pass, and are differentiated again."""
    balancer = model.balancer
    num_tasks = len(balancer.task_names)
    layer = plan.saliency_layer

    def task_losses(values, offset):
        with _scope(model, values, ntv):
            with split_at(layer, lambda z: z if offset is None
                          else z + offset.astype(z.dtype)) as split:
                y_pred = model(x, training=True)
            losses = balancer.task_losses(y, y_pred, sw, parts=1).losses
        return losses, split.features

    features = jax.eval_shape(lambda: task_losses(tv, None)[1])

    def objective(values):
        offset = jnp.zeros(features.shape, "float32")
        _, vjp = jax.vjp(lambda o: task_losses(values, o)[0], offset)
        saliency = jax.vmap(lambda e: vjp(e)[0])(
            jnp.eye(num_tasks, dtype="float32"))
        total, tsr, csa = balancer.saliency_regularizer(saliency)
        return total, (tsr, csa)

    grads, terms = jax.grad(objective, has_aux=True)(list(tv))
    balancer.record_saliency_terms(*terms)
    return grads


def _probe(model, plan, tv, ntv, x, y, sw, scale, learning_rate, parts=1):
    """The `Probe` of a bilevel rule (or of task-based sharpness, with the
    rule's `parts`): the forward pass as a function of the trainable
    values, differentiated with `jax.vjp`."""
    balancer = model.balancer
    index = plan.shared_index + plan.others_index

    def evaluate(values, cotangents, half):
        x_h, y_h, sw_h = half_of((x, y, sw), half)

        def rows_at(values):
            with _scope(model, _replace(tv, index, values), ntv):
                return balancer.task_losses(
                    y_h, model(x_h, training=True), sw_h, None, scale=scale,
                    parts=parts).row_losses

        if cotangents is None:
            return rows_at(values), None
        rows, vjp = jax.vjp(rows_at, values)
        grads = jax.vmap(lambda c: vjp(c)[0])(cotangents)
        return rows, balancer.unscale(grads, scale=scale)

    return Probe(len(balancer.task_names), plan.shared + plan.others,
                 evaluate, learning_rate)


def batch_probe(model, x, y, sw):
    """A whole-batch `Probe` of the model's current variables (for the
    analysis tools; no variable changes)."""
    plan = model.gradient_plan()
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    return _probe(model, plan, tv, ntv, x, y, sw, None, None), plan


def _flat_gradients(model, plan, tv, ntv, x, y, sw, scale):
    """Task-based sharpness (`Balancer.flat_gradients`): the logged
    forward pass gives the row gradients at the current values (and the
    regulariser's), then the probe the ones at the ascent points."""
    balancer = model.balancer
    ntv_vars = model.non_trainable_variables
    shared = [tv[i] for i in plan.shared_index]
    others = [tv[i] for i in plan.others_index]
    _, pull, (y_pred, losses, _, new_ntv) = _linearize(
        _step_forward(model, plan, tv, ntv, x, y, sw, scale), shared, others)
    for variable, value in zip(ntv_vars, new_ntv):
        variable.assign(value)
    rows = [pull(lambda o, r=r: o["losses"][r])
            for r in range(len(losses.rows))]
    clean = jax.tree_util.tree_map(lambda *r: jnp.stack(r), *rows)
    probe = _probe(model, plan, tv, ntv, x, y, sw, scale, None,
                   parts=balancer.batch_splits)
    g_shared, g_others, weights = balancer.flat_gradients(
        probe, losses, len(shared), plan.norm_index,
        balancer.unscale(list(clean[0]) + list(clean[1]), scale=scale))
    if losses.reg is not None:
        g_reg = balancer.unscale(
            [g for part in pull(lambda o: o["reg"]) for g in part],
            scale=scale)
        g_shared = [a + b for a, b in zip(g_shared, g_reg)]
        g_others = [a + b for a, b in zip(g_others, g_reg[len(shared):])]
    grads = plan.assemble(g_shared, g_others)
    return grads, _Step(losses, y_pred, losses.reg, weights)


def _learning_rate(optimizer, ov):
    """The optimizer's current learning rate in the state `ov`."""
    mapping = list(zip(optimizer.variables, ov))
    with keras.StatelessScope(state_mapping=mapping):
        return jnp.asarray(
            keras.ops.convert_to_tensor(optimizer.learning_rate))


def _iterations(optimizer, ov):
    """The optimizer's (applied) step count in the state `ov`."""
    mapping = list(zip(optimizer.variables, ov))
    with keras.StatelessScope(state_mapping=mapping):
        return jnp.asarray(keras.ops.convert_to_tensor(optimizer.iterations))


def _loss_scale(balancer, optimizer, ov):
    """The loss scale in the state `ov` (see `Balancer.loss_scale`)."""
    mapping = list(zip(optimizer.variables, ov))
    with keras.StatelessScope(state_mapping=mapping):
        return balancer.loss_scale(optimizer)


def _apply(optimizer, ov, grads, tv, ok):
    """The optimizer step; with a finiteness flag `ok`, skipped (values
    unchanged) where it is False."""
    if ok is None:
        return optimizer.stateless_apply(ov, grads, tv)
    return jax.lax.cond(
        ok,
        lambda: tuple(optimizer.stateless_apply(ov, grads, tv)),
        lambda: (list(tv), list(ov)),
    )


def train_step(model, state, data):
    tv, ntv, ov, mv = state
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    balancer, optimizer = model.balancer, model.optimizer
    plan = model.gradient_plan()
    scale = _loss_scale(balancer, optimizer, ov)
    with _scope(model, tv, ntv, mv) as scope:
        if balancer.bilevel:
            balancer.meta_update(_probe(
                model, plan, tv, ntv, x, y, sw, scale,
                _learning_rate(optimizer, ov)))
        gradients = (_flat_gradients if balancer.sharpness is not None
                     else _feature_gradients if plan.mode == "features"
                     else _gramian_gradients if plan.mode == "gramian"
                     else _parameter_gradients)
        grads, step = gradients(model, plan, tv, ntv, x, y, sw, scale)
        if balancer.saliency_regularizer is not None:
            grads = [g + r for g, r in zip(grads, _saliency_gradients(
                model, plan, tv, ntv, x, y, sw))]
        ok = balancer.check_finite(step.losses.losses, grads)
    ntv = _new_values(scope, model.non_trainable_variables)

    conditional = ok is not None or optimizer.gradient_accumulation_steps
    before = _iterations(optimizer, ov) if conditional else None
    grads = balancer.optimizer_gradients(grads, ok, scale)
    # A LossScaleOptimizer skips a non-finite step itself.
    tv, ov = _apply(optimizer, ov, grads, tv,
                    None if scale is not None else ok)
    applied = _iterations(optimizer, ov) > before if conditional else None

    with _scope(model, tv, ntv, mv) as scope:
        balancer.commit(applied)
        if balancer.needs_losses_after_step:
            after = balancer.task_losses(y, model(x, training=False), sw)
            balancer.after_step(step.losses.losses, after.losses, applied)
        total = jnp.sum(step.losses.losses)
        if step.reg is not None:
            total = total + step.reg
        balancer.update_metrics(step.losses, step.y_pred, total,
                                x_batch_size(x), step.weights, ok)
        logs = balancer.results(training=True)
    ntv = _new_values(scope, model.non_trainable_variables)
    mv = _new_values(scope, model.metrics_variables)
    return logs, (tv, ntv, ov, mv)


def x_batch_size(x):
    first = next(t for t in jax.tree_util.tree_leaves(x) if t is not None)
    return first.shape[0]


def test_step(model, state, data):
    tv, ntv, mv = state
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    with _scope(model, tv, ntv, mv, losses=True) as scope:
        logs = model.compute_test_logs(x, y, sw)
    ntv = _new_values(scope, model.non_trainable_variables)
    mv = _new_values(scope, model.metrics_variables)
    return logs, (tv, ntv, mv)


def output_dependencies(model, outputs):
    """For each tensor of `outputs()` (a forward pass of `model`), the ids
    of the trainable variables it depends on, read from the traced program
    (a conservative data-flow walk of the jaxpr)."""
    variables = model.trainable_variables

    def run(values):
        with keras.StatelessScope(
                state_mapping=list(zip(variables, values))):
            return outputs()

    jaxpr = jax.make_jaxpr(run)([v.value for v in variables]).jaxpr
    depends = {var: {i} for i, var in enumerate(jaxpr.invars)}
    for eqn in jaxpr.eqns:
        found = set()
        for var in eqn.invars:
            if not hasattr(var, "val"):  # Literals carry no dependency.
                found |= depends.get(var, set())
        for var in eqn.outvars:
            depends[var] = found
    return [
        {id(variables[i])
         for i in (() if hasattr(var, "val") else depends.get(var, ()))}
        for var in jaxpr.outvars
    ]


@contextlib.contextmanager
def restore_on_failure(model):
    """Gives the model back its variables when `fit`, `evaluate` or a batch
    call fails inside a traced step.

    Keras' JAX trainer detaches the variables' values for the duration of
    an epoch; when the first step fails to trace there is no state to write
    back, and the model would be left without weights. The values before
    the call are kept (JAX arrays are immutable, and a step that failed to
    trace donated nothing) and written back into every detached variable.
    """
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    variables += list(model.metrics_variables)
    saved = [v.value for v in variables]
    try:
        yield
    except BaseException:
        for variable, value in zip(variables, saved):
            # `_value is None`: detached by the trainer and not synced back.
            if getattr(variable, "_value", True) is None:
                variable.assign(value)
        raise


def check_distribution(model, training=True):
    """Nothing to refuse: `keras.distribution` runs one SPMD program."""


def synchronize_replicas(model):
    """Nothing to do: under `keras.distribution` the step is one SPMD
    program over the global batch, and Keras places the variables."""


def jit(fn):
    """Compiles `fn` with XLA (used to check that aggregators trace)."""
    return jax.jit(fn)
