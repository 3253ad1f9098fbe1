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

import functools
import operator

import keras
import torch


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


def _grad(outputs, inputs, grad_outputs=None, retain_graph=False, batched=False):
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
        torch.zeros(shape(t), dtype=t.dtype, device=t.device) if g is None else g
        for g, t in zip(grads, inputs)
    ]


def train_step(model, data):
    _reduce_across_replicas()
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    plan = model._gradient_plan()
    num_tasks = len(model.task_names)
    shared = [v.value for v in plan.shared]
    others = [v.value for v in plan.others]
    features_mode = plan.mode == "features"
    if features_mode:
        z = plan.trunk(x, training=True)
        y_pred = plan.heads(model._heads_inputs(x, z), training=True)
    else:
        y_pred = model(x, training=True)
    task_losses, counts, labelled = model._task_losses(y, y_pred, sw, stack=False)
    losses = torch.stack(task_losses)
    reg = model._sum_losses(model.losses)

    if plan.mode == "losses":
        weights = model._loss_weights(losses)
        if plan.parametrized:
            objective = model._parametrized_objective(losses)
        else:
            objective = torch.sum(weights * losses)
        if reg is not None:
            objective = objective + reg
        grads = _grad(objective, shared + others)
        g_shared, g_others = grads[: len(shared)], grads[len(shared):]
    elif not (features_mode or model.vectorize):
        g_shared, g_others, weights = _per_task_step(
            model, task_losses, losses, reg, shared, others
        )
    else:  # Features mode, or one batched call for all tasks.
        target = [z] if features_mode else shared
        if model.vectorize:
            eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
            jacobians = _grad(
                losses, target, grad_outputs=eye, retain_graph=True,
                batched=True,
            )
        else:
            per_task = [
                _grad(task_losses[t], target, retain_graph=True)
                for t in range(num_tasks)
            ]
            jacobians = [torch.stack(rows) for rows in zip(*per_task)]
        with torch.no_grad():
            directions, weights = model._combine(jacobians, losses)
        coefficients = model._task_coefficients(weights)
        outputs, cotangents = [losses], [coefficients]
        if reg is not None:
            outputs.append(reg)
            cotangents.append(torch.ones_like(reg))
        g_others = _grad(outputs, others, cotangents, retain_graph=True)
        if features_mode:
            z_outputs = [z] + outputs[1:]
            z_cotangents = [directions[0]] + cotangents[1:]
            g_shared = _grad(z_outputs, shared, z_cotangents)
        else:
            g_shared = directions
            if reg is not None:
                g_reg = _grad(reg, shared)
                g_shared = [a + b for a, b in zip(g_shared, g_reg)]
    with torch.no_grad():
        model.optimizer.apply(
            plan.assemble(g_shared, g_others), model.trainable_variables
        )
        model._after_step(x, y, sw, losses.detach())
        total = model._total_loss(losses.detach(), None if reg is None else reg.detach())
        return model._update_metrics(
            losses.detach(), counts, labelled,
            {k: v.detach() for k, v in y_pred.items()}, total, x, weights,
        )


def _per_task_step(model, task_losses, losses, reg, shared, others):
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
                torch.zeros(n, device=flat.device) if g is None else g.reshape(-1)
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
        directions, weights = model._combine(jacobians, losses, flat=flat)
        coefficients = model._task_coefficients(weights)
        scale = model.weight_task_specific  # Otherwise every coefficient is 1.
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
        return model._evaluate_batch(x, y, sw)


def jit(fn):
    """Returns `fn` unchanged: keras_mtl runs PyTorch eagerly."""
    return fn
