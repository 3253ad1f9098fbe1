"""Per-task gradient engine for PyTorch.

The forward pass builds one autograd graph; the per-task gradients of the
shared variables are `T` calls of `torch.autograd.grad(..., retain_graph=True)`
(or one batched call with `is_grads_batched=True` when `vectorize=True`), and
every other gradient is one more call with the task coefficients as
`grad_outputs`. `.grad` fields are never touched.

Distribution: `_reduce_across_replicas` is the reduction point. With an
initialised `torch.distributed` process group of several ranks the per-task
Jacobian must be all-reduced before the nonlinear aggregation; that path is
not implemented yet, so the step refuses to run there.
"""

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
    losses, counts, labelled = model._task_losses(y, y_pred, sw)
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
    else:
        target = [z] if features_mode else shared
        if model.vectorize:
            eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
            jacobians = _grad(
                losses, target, grad_outputs=eye, retain_graph=True,
                batched=True,
            )
        else:
            per_task = [
                _grad(losses[t], target, retain_graph=True)
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


def test_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    with torch.no_grad():
        return model._evaluate_batch(x, y, sw)


def jit(fn):
    """Returns `fn` unchanged: keras_mtl runs PyTorch eagerly."""
    return fn
