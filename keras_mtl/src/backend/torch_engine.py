"""Per-task gradient engine for PyTorch.

The forward pass builds one autograd graph. In parameters mode each task
loss is differentiated once, `torch.autograd.grad(L_t, shared + others,
retain_graph=True)`: through its own head only, into one row of a `(T, P)`
Jacobian, and the non-shared gradients are combined with the task
coefficients afterwards. With `vectorize=True`, and in features mode, the
per-task gradients come from one batched call (`is_grads_batched=True`) or a
loop over the features tensor, and the other gradients from one more call
with the task coefficients as `grad_outputs`. `.grad` fields are never
touched.

Distribution: `_reduce_across_replicas` is the reduction point. With an
initialised `torch.distributed` process group of several ranks the per-task
Jacobian must be all-reduced before the nonlinear aggregation; that path is
not implemented yet, so the step refuses to run there.
"""

import contextlib
import functools
import operator

import keras
import torch

from keras_mtl.src.models.feature_split import split_at


def _reduce_across_replicas():
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        raise NotImplementedError(
            "MultiTaskModel does not support multi-process torch training "
            "yet: per-task gradients would be aggregated per process. "
            f"Received: world_size={torch.distributed.get_world_size()}"
        )


def _grad(outputs, inputs, grad_outputs=None, retain_graph=False,
          batched=False):
    if not inputs:
        return []
    grads = torch.autograd.grad(
        outputs,
        inputs,
        grad_outputs=grad_outputs,
        retain_graph=retain_graph,
        allow_unused=True,
        is_grads_batched=batched,
    )
    shape = (lambda t: (outputs.shape[0], *t.shape)) if batched else (
        lambda t: t.shape)
    return [
        torch.zeros(shape(t), dtype=t.dtype, device=t.device)
        if g is None else g
        for g, t in zip(grads, inputs)
    ]


def _detach(z):
    """The features as a new autograd leaf, for `split_at`."""
    return z.detach().requires_grad_(True)


def _task_gradients(model, plan, losses, reg, split, shared, others):
    """Features mode (`split` holds the features and their detached copy),
    or one batched call for all tasks (`vectorize`)."""
    balancer = model.balancer
    num_tasks = len(balancer.task_names)
    features_mode = plan.mode == "features"
    target = [split.detached] if features_mode else shared
    if balancer.vectorize:
        eye = torch.eye(num_tasks, dtype=losses.losses.dtype,
                        device=losses.losses.device)
        jacobians = _grad(losses.losses, target, grad_outputs=eye,
                          retain_graph=True, batched=True)
    else:
        per_task = [_grad(row, target, retain_graph=True)
                    for row in losses.rows]
        jacobians = [torch.stack(rows) for rows in zip(*per_task)]
    with torch.no_grad():
        directions, weights = balancer.combine(
            jacobians, losses.losses,
            None if features_mode else plan.norm_index)
    outputs, cotangents = [losses.losses], [balancer.coefficients(weights)]
    if reg is not None:
        outputs.append(reg)
        cotangents.append(torch.ones_like(reg))
    g_others = _grad(outputs, others, cotangents, retain_graph=True)
    if features_mode:
        g_shared = _grad([split.features] + outputs[1:], shared,
                         [directions[0]] + cotangents[1:])
    else:
        g_shared = directions
        if reg is not None:
            g_reg = _grad(reg, shared)
            g_shared = [a + b for a, b in zip(g_shared, g_reg)]
    return g_shared, g_others, weights


def train_step(model, data):
    _reduce_across_replicas()
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    balancer, optimizer = model.balancer, model.optimizer
    plan = model.gradient_plan()
    shared = [v.value for v in plan.shared]
    others = [v.value for v in plan.others]
    split = None
    if plan.mode == "features":
        with split_at(plan.features_layer, _detach) as split:
            y_pred = model(x, training=True)
    else:
        y_pred = model(x, training=True)
    losses = balancer.task_losses(y, y_pred, sw)
    reg = model.regularization_loss()

    if plan.mode == "losses":
        weights = balancer.loss_weights(losses.losses)
        objective = balancer.objective(losses.losses, weights)
        if reg is not None:
            objective = objective + reg
        grads = _grad(objective, shared + others)
        g_shared, g_others = grads[: len(shared)], grads[len(shared):]
    elif not (plan.mode == "features" or balancer.vectorize):
        g_shared, g_others, weights = _per_task_step(
            balancer, losses.rows, losses.losses, reg, shared, others,
            plan.norm_index)
    else:
        g_shared, g_others, weights = _task_gradients(
            model, plan, losses, reg, split, shared, others)
    with torch.no_grad():
        grads = plan.assemble(g_shared, g_others)
        ok = balancer.check_finite(losses.losses, grads)
        conditional = ok is not None or optimizer.gradient_accumulation_steps
        before = torch.clone(_tensor(optimizer.iterations)) if conditional \
            else None
        if ok is None or bool(ok):
            optimizer.apply(grads, model.trainable_variables)
        applied = (_tensor(optimizer.iterations) > before) if conditional \
            else None
        balancer.commit(applied)
        losses = losses.stop_gradient()
        if balancer.needs_losses_after_step:
            after = balancer.task_losses(y, model(x, training=False), sw)
            balancer.after_step(losses.losses, after.losses, applied)
        total = torch.sum(losses.losses)
        if reg is not None:
            total = total + reg.detach()
        balancer.update_metrics(
            losses, {k: v.detach() for k, v in y_pred.items()}, total,
            _batch_size(x), weights, ok)
        return balancer.results(training=True)


def _tensor(value):
    return keras.ops.convert_to_tensor(value)


def _batch_size(x):
    return next(t for t in keras.tree.flatten(x) if t is not None).shape[0]


def _per_task_step(balancer, task_losses, losses, reg, shared, others,
                   norm_index):
    """Parameters mode, one `autograd.grad` call per task.

    Each call differentiates one task loss with respect to the shared and the
    other variables, and writes the shared part straight into one row of a
    `(T, P)` float32 Jacobian (a single copy; the aggregator reads that matrix
    and per-variable views of it). The other variables' gradients of every
    task are kept, then summed with the task coefficients once the
    aggregator's weights are known, so no further pass over the heads is
    needed. Regularisation adds one more call.
    """
    num_tasks = len(task_losses)
    sizes = [v.numel() for v in shared]
    flat = torch.empty(
        (num_tasks, sum(sizes)), dtype=torch.float32, device=losses.device
    )
    task_others = []
    for t, loss in enumerate(task_losses):
        grads = torch.autograd.grad(
            loss, shared + others, retain_graph=True, allow_unused=True
        )
        torch.cat(
            [
                torch.zeros(n, device=flat.device) if g is None
                else g.reshape(-1)
                for g, n in zip(grads, sizes)
            ],
            out=flat[t],
        )
        task_others.append(grads[len(shared):])
    jacobians = [
        piece.view(num_tasks, *v.shape)
        for piece, v in zip(torch.split(flat, sizes, dim=1), shared)
    ]
    with torch.no_grad():
        directions, weights = balancer.combine(
            jacobians, losses, norm_index, flat=flat)
        coefficients = balancer.coefficients(weights)
        # Otherwise every coefficient is 1.
        scale = balancer.weight_task_specific
        g_others = []
        for k, v in enumerate(others):
            terms = [
                coefficients[t] * grads[k] if scale else grads[k]
                for t, grads in enumerate(task_others)
                if grads[k] is not None
            ]
            g_others.append(
                functools.reduce(operator.add, terms) if terms
                else torch.zeros_like(v))
    g_shared = [d.to(v.dtype) for d, v in zip(directions, shared)]
    if reg is not None:
        g_reg = _grad(reg, shared + others)
        g_shared = [a + b for a, b in zip(g_shared, g_reg)]
        g_others = [a + b for a, b in zip(g_others, g_reg[len(shared):])]
    return g_shared, g_others, weights


def test_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    with torch.no_grad():
        return model.compute_test_logs(x, y, sw)


def output_dependencies(model, outputs):
    """For each tensor of `outputs()` (a forward pass of `model`), the ids
    of the trainable variables `autograd` reaches from it."""
    variables = model.trainable_variables
    values = [v.value for v in variables]
    result = []
    for tensor in outputs():
        total = torch.sum(tensor.float())
        grads = torch.autograd.grad(
            total, values, retain_graph=True, allow_unused=True
        ) if total.requires_grad else [None] * len(values)
        result.append({id(v) for v, g in zip(variables, grads)
                       if g is not None})
    return result


@contextlib.contextmanager
def restore_on_failure(model):
    """PyTorch keeps the variables' values in place: nothing to do."""
    yield


def jit(fn):
    """Returns `fn` unchanged: keras_mtl runs PyTorch eagerly."""
    return fn
