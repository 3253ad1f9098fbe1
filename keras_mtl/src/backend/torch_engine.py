"""Per-task gradient engine for PyTorch.

The forward pass builds one autograd graph. In parameters mode each task
loss is differentiated once, `torch.autograd.grad(L_t, shared + others,
retain_graph=True)`: through its own head only, into one row of a `(T, P)`
Jacobian, and the non-shared gradients are combined with the task
coefficients afterwards. With `vectorize=True`, and in features mode, the
per-task gradients come from one batched call (`is_grads_batched=True`) or a
loop over the features tensor, and the other gradients from one more call
with the task coefficients as `grad_outputs`. In Gramian mode each row
gradient is taken with `create_graph=True` and differentiated once more
with respect to its one-hot `grad_outputs`, which gives one column of the
Gramian (see `_gramian_step`). `.grad` fields are never touched.

Distribution: with an initialised `torch.distributed` process group of
several ranks (see `keras_mtl.distribute`), each rank runs the step on its
shard of the global batch. The task losses take the global batch's masked
means (see `Balancer.task_losses`), and the per-task gradients (the `T x P`
Jacobian, or the features Jacobian gathered over the ranks), the other
gradients and the metric updates are all-reduced before the aggregation:
every rank aggregates the same global Jacobian and applies the same update.
DistributedDataParallel is not used: it reduces `.grad` fields, which the
per-task `autograd.grad` calls do not fill.
"""

import contextlib
import functools
import operator
import types

import keras
import numpy as np
import torch
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel

from keras_mtl.src.backend import processes
from keras_mtl.src.models.feature_split import split_at
from keras_mtl.src.models.gradient_plan import check_replicas
from keras_mtl.src.models.probe import Probe
from keras_mtl.src.models.probe import half_of


class _Replicas:
    """The ranks of the default `torch.distributed` process group."""

    def __init__(self):
        self.count = processes.process_count()

    def sum(self, values):
        """All-reduces `values`, one call per dtype."""
        out = list(values)
        by_dtype = {}
        for i, value in enumerate(values):
            by_dtype.setdefault(value.dtype, []).append(i)
        for index in by_dtype.values():
            flat = torch.cat([values[i].reshape(-1) for i in index])
            torch.distributed.all_reduce(flat)
            pieces = torch.split(flat, [values[i].numel() for i in index])
            for i, piece in zip(index, pieces):
                out[i] = piece.view(values[i].shape)
        return out

    def gather(self, value):
        """`value` of every rank, concatenated along axis 1 (the batch axis
        of a `(T, batch, ...)` Jacobian), and this rank's slice of such a
        tensor."""
        dist = torch.distributed
        size = value.shape[1]
        mine = torch.tensor([size], device=value.device)
        sizes = [torch.zeros_like(mine) for _ in range(self.count)]
        dist.all_gather(sizes, mine)
        sizes = [int(n) for n in sizes]
        padding = [0, 0] * (value.dim() - 2) + [0, max(sizes) - size]
        padded = torch.nn.functional.pad(value, padding)
        parts = [torch.empty_like(padded) for _ in range(self.count)]
        dist.all_gather(parts, padded.contiguous())
        full = torch.cat([p[:, :n] for p, n in zip(parts, sizes)], dim=1)
        start = sum(sizes[: dist.get_rank()])
        return full, lambda t: t[start: start + size]


@contextlib.contextmanager
def _summed_updates(metrics, replicas):
    """Sums the metric updates made inside the block over the ranks (every
    Keras metric state is additive)."""
    if replicas.count == 1:
        yield
        return
    variables = [v for m in metrics for v in m.variables]
    before = [torch.clone(v.value) for v in variables]
    yield
    deltas = replicas.sum([v.value - b for v, b in zip(variables, before)])
    for variable, start, delta in zip(variables, before, deltas):
        variable.assign(start + delta)


def check_distribution(model, training=True):
    """Refuses training in `gradient_mode="gramian"` with several ranks, or
    compiled: `torch.compile` (aot_autograd) has no double backward."""
    if not training:
        return
    mode = model.balancer.gradient_mode
    check_replicas(mode, processes.process_count())
    if mode == "gramian" and model.jit_compile:
        raise ValueError(
            "gradient_mode='gramian' differentiates each task's backward "
            "pass once more, which torch.compile does not support (no "
            "double backward in aot_autograd). Compile with "
            "jit_compile=False, PyTorch's default. Received: "
            "jit_compile=True")


def synchronize_replicas(model):
    """Before training: every rank starts from rank 0's variables (model,
    optimizer, balancer), as DistributedDataParallel would broadcast them."""
    if processes.process_count() == 1:
        return
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    with torch.no_grad():
        for variable in variables:
            torch.distributed.broadcast(variable.value.data, src=0)


def _grad(outputs, inputs, grad_outputs=None, retain_graph=False,
          batched=False, create_graph=False):
    if not inputs:
        return []
    grads = torch.autograd.grad(
        outputs,
        inputs,
        grad_outputs=grad_outputs,
        retain_graph=retain_graph,
        create_graph=create_graph,
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


def _task_gradients(model, plan, losses, split, shared, others, replicas,
                    scale):
    """Features mode (`split` holds the features and their detached copy),
    or one batched call for all tasks (`vectorize`)."""
    balancer = model.balancer
    num_rows = len(losses.rows)
    features_mode = plan.mode == "features"
    target = [split.detached] if features_mode else shared
    reg = losses.reg
    if balancer.vectorize:
        eye = torch.eye(num_rows, dtype=losses.row_losses.dtype,
                        device=losses.row_losses.device)
        jacobians = _grad(losses.row_losses, target, grad_outputs=eye,
                          retain_graph=True, batched=True)
    else:
        per_task = [_grad(row, target, retain_graph=True)
                    for row in losses.rows]
        jacobians = [torch.stack(rows) for rows in zip(*per_task)]
    with torch.no_grad():
        local = None
        if features_mode:
            # Per-sample rows: gathered over the ranks, not summed.
            jacobians = balancer.unscale(jacobians, scale=scale)
            if replicas.count > 1:
                jacobians[0], local = replicas.gather(jacobians[0])
        else:
            jacobians = balancer.unscale(jacobians, replicas, scale)
        directions, weights = balancer.combine(
            jacobians, losses.losses,
            None if features_mode else plan.norm_index)
    outputs = [losses.row_losses]
    cotangents = [balancer.coefficients(weights, losses)]
    if reg is not None:
        outputs.append(reg)
        cotangents.append(torch.ones_like(reg))
    g_others = balancer.unscale(
        _grad(outputs, others, cotangents, retain_graph=True),
        replicas, scale)
    if features_mode:
        dz = directions[0] if local is None else local(directions[0])
        dz = dz.to(split.features.dtype)
        if scale is not None:
            dz = dz * scale.to(dz.dtype)
        g_shared = balancer.unscale(
            _grad([split.features] + outputs[1:], shared,
                  [dz] + cotangents[1:]),
            replicas, scale)
    else:
        g_shared = directions
        if reg is not None:
            g_reg = balancer.unscale(_grad(reg, shared), replicas, scale)
            g_shared = [a + b for a, b in zip(g_shared, g_reg)]
    return g_shared, g_others, weights


def _saliency_gradients(model, plan, x, y, sw, replicas):
    """The gradients of the saliency regulariser (`Balancer.
    saliency_regularizer`) of every trainable variable: the saliencies
    `dL_t / dz` of a second forward pass, taken with `create_graph` and
    differentiated again. Each rank regularises its own shard of the
    batch; the ranks' gradients are averaged."""
    balancer = model.balancer
    variables = [v.value for v in model.trainable_variables]
    offsets = []

    def shift(z):
        offsets.append(torch.zeros_like(z, requires_grad=True))
        return z + offsets[0]

    with split_at(plan.saliency_layer, shift):
        y_pred = model(x, training=True)
    losses = balancer.task_losses(y, y_pred, sw, parts=1).losses
    saliency = torch.stack([
        torch.autograd.grad(losses[t], offsets[0], retain_graph=True,
                            create_graph=True)[0]
        for t in range(len(balancer.task_names))])
    total, tsr, csa = balancer.saliency_regularizer(saliency)
    balancer.record_saliency_terms(tsr.detach(), csa.detach())
    grads = _grad(total, variables)
    if replicas.count > 1:
        grads = balancer.unscale([g / replicas.count for g in grads],
                                 replicas)
    return [g.detach() for g in grads]


def _probe(model, plan, x, y, sw, replicas, scale, parts=1):
    """The `Probe` of a bilevel rule (or of task-based sharpness, with the
    rule's `parts`): forward (and backward) passes at other values of the
    trainable variables, read through a `StatelessScope`."""
    balancer = model.balancer
    variables = plan.shared + plan.others

    def evaluate(values, cotangents, half):
        differentiate = cotangents is not None
        if differentiate:
            values = [v.detach().requires_grad_(True) for v in values]
        x_h, y_h, sw_h = half_of((x, y, sw), half)
        with torch.set_grad_enabled(differentiate), keras.StatelessScope(
                state_mapping=list(zip(variables, values))):
            rows = balancer.task_losses(
                y_h, model(x_h, training=True), sw_h, None, replicas, scale,
                parts=parts).row_losses
        if not differentiate:
            return rows, None
        count = cotangents.shape[0]
        per_row = [_grad(rows, values, [cotangents[i]],
                         retain_graph=i < count - 1) for i in range(count)]
        grads = [torch.stack(g) for g in zip(*per_row)]
        with torch.no_grad():
            return rows.detach(), balancer.unscale(grads, replicas, scale)

    return Probe(len(balancer.task_names), variables, evaluate,
                 model.optimizer.learning_rate)


def batch_probe(model, x, y, sw):
    """A whole-batch `Probe` of the model's current variables (for the
    analysis tools; no variable changes)."""
    plan = model.gradient_plan()
    return _probe(model, plan, x, y, sw, _Replicas(), None), plan


def train_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    balancer, optimizer = model.balancer, model.optimizer
    plan = model.gradient_plan()
    replicas = _Replicas()
    scale = balancer.loss_scale(optimizer)
    if balancer.bilevel:
        with torch.no_grad():
            balancer.meta_update(
                _probe(model, plan, x, y, sw, replicas, scale))
    shared = [v.value for v in plan.shared]
    others = [v.value for v in plan.others]
    split = None
    if plan.mode == "features":
        with split_at(plan.features_layer, _detach) as split:
            y_pred = model(x, training=True)
    elif plan.mode == "gramian":
        with _twice_differentiable():
            y_pred = model(x, training=True)
    else:
        y_pred = model(x, training=True)
    losses = balancer.task_losses(y, y_pred, sw, model.regularization_loss(),
                                  replicas, scale)

    if balancer.sharpness is not None:
        g_shared, g_others, weights = _flat_gradients(
            model, plan, x, y, sw, losses, shared + others, replicas, scale)
    elif plan.mode == "losses":
        weights = balancer.loss_weights(losses.losses)
        objective = balancer.objective(losses.losses, weights, replicas,
                                       scale)
        if losses.reg is not None:
            objective = objective + losses.reg
        grads = balancer.unscale(_grad(objective, shared + others),
                                 replicas, scale)
        g_shared, g_others = grads[: len(shared)], grads[len(shared):]
    elif plan.mode == "gramian":
        g_shared, g_others, weights = _gramian_step(
            balancer, losses, shared, others, plan.norm_index, scale)
    elif not (plan.mode == "features" or balancer.vectorize):
        g_shared, g_others, weights = _per_task_step(
            balancer, losses, shared, others, plan.norm_index, replicas,
            scale)
    else:
        g_shared, g_others, weights = _task_gradients(
            model, plan, losses, split, shared, others, replicas, scale)
    grads = plan.assemble(g_shared, g_others)
    if balancer.saliency_regularizer is not None:
        grads = [g + r for g, r in zip(grads, _saliency_gradients(
            model, plan, x, y, sw, replicas))]
    with torch.no_grad():
        ok = balancer.check_finite(losses.losses, grads)
        scaled = scale is not None
        conditional = ok is not None or optimizer.gradient_accumulation_steps
        before = torch.clone(_tensor(optimizer.iterations)) if conditional \
            else None
        if ok is None or scaled or bool(ok):
            optimizer.apply(balancer.optimizer_gradients(grads, ok, scale),
                            model.trainable_variables)
        applied = (_tensor(optimizer.iterations) > before) if conditional \
            else None
        balancer.commit(applied)
        losses = losses.stop_gradient()
        if balancer.needs_losses_after_step:
            after = balancer.task_losses(y, model(x, training=False), sw,
                                         replicas=replicas)
            balancer.after_step(losses.losses, after.losses, applied)
        total = torch.sum(losses.losses)
        if losses.reg is not None:
            total = total + losses.reg
        with _summed_updates(balancer.metrics, replicas):
            balancer.update_metrics(
                losses, {k: v.detach() for k, v in y_pred.items()}, total,
                _batch_size(x), weights, ok, replicas)
        return balancer.results(training=True)


def _flat_gradients(model, plan, x, y, sw, losses, variables, replicas,
                    scale):
    """Task-based sharpness (`Balancer.flat_gradients`) after the logged
    forward pass, which gives the row gradients at the current values (and
    the regulariser's); the probe gives the ones at the ascent points."""
    balancer = model.balancer
    count = len(losses.rows)
    rows = [_grad(r, variables, retain_graph=True) for r in losses.rows]
    g_reg = None
    if losses.reg is not None:
        g_reg = balancer.unscale(_grad(losses.reg, variables), replicas,
                                 scale)
    with torch.no_grad():
        clean = balancer.unscale(
            [torch.stack(g) for g in zip(*rows)] if count else [],
            replicas, scale)
        probe = _probe(model, plan, x, y, sw, replicas, scale,
                       parts=balancer.batch_splits)
        g_shared, g_others, weights = balancer.flat_gradients(
            probe, losses, len(plan.shared), plan.norm_index, clean)
        if g_reg is not None:
            g_all = [a + b for a, b in zip(g_shared + g_others, g_reg)]
            g_shared, g_others = (g_all[: len(g_shared)],
                                  g_all[len(g_shared):])
    return g_shared, g_others, weights


def _tensor(value):
    return keras.ops.convert_to_tensor(value)


def _batch_size(x):
    return next(t for t in keras.tree.flatten(x) if t is not None).shape[0]


def _twice_differentiable():
    """The forward pass of `gradient_mode="gramian"`, whose backward pass
    is differentiated again: attention runs as plain operations
    (PyTorch's fused attention kernels have no second derivative)."""
    return sdpa_kernel([SDPBackend.MATH])


def _gramian_step(balancer, losses, shared, others, norm_index, scale):
    """`gradient_mode="gramian"`: the rows' Gramian one column at a time,
    `J g_r` with `g_r = J^T e_r` taken with `create_graph`, as the
    derivative of that backward pass with respect to its output gradient
    `e_r`, so one row gradient exists at a time; then one backward pass of
    the weighted loss. One rank only (see `check_distribution`)."""
    rows, reg = losses.row_losses, losses.reg
    num_rows = rows.shape[0]
    eye = torch.eye(num_rows, dtype=rows.dtype, device=rows.device)
    columns, layer_rows = [], []
    for r in range(num_rows):
        pick = eye[r].clone().requires_grad_(True)
        grads = _grad(rows, shared, pick, retain_graph=True, create_graph=True)
        with torch.no_grad():
            tangents = balancer.unscale(grads, scale=scale)
        linked = [(g, t.to(g.dtype)) for g, t in zip(grads, tangents)
                  if g.requires_grad]
        column = torch.autograd.grad(
            [g for g, _ in linked], pick, [t for _, t in linked],
            allow_unused=True)[0] if linked else None
        columns.append(torch.zeros_like(pick) if column is None
                       else column.detach())
        if norm_index is not None:
            layer_rows.append(torch.cat(
                [tangents[k].detach().reshape(-1) for k in norm_index]))
        del grads, tangents, linked
    with torch.no_grad():
        weights = balancer.gramian_weights(columns, losses.losses, scale,
                                           layer_rows or None)
    outputs, cotangents = [rows], [weights.to(rows.dtype)]
    if reg is not None:
        outputs.append(reg)
        cotangents.append(torch.ones_like(reg))
    g_shared = balancer.unscale(
        _grad(outputs, shared, cotangents, retain_graph=True), scale=scale)
    cotangents[0] = balancer.coefficients(weights, losses)
    g_others = balancer.unscale(_grad(outputs, others, cotangents),
                                scale=scale)
    return g_shared, g_others, weights


def _per_task_step(balancer, losses, shared, others, norm_index, replicas,
                   scale):
    """Parameters mode, one `autograd.grad` call per task.

    Each call differentiates one task loss with respect to the shared and the
    other variables, and writes the shared part straight into one row of a
    `(T, P)` float32 Jacobian (a single copy; the aggregator reads that
    matrix and per-variable views of it). With several ranks, the Jacobian,
    the heads' per-task gradients and the regulariser's are all-reduced in
    one call.
    The other variables' gradients of every task are kept, then summed with
    the task coefficients once the aggregator's weights are known, so no
    further pass over the heads is needed. Regularisation adds one more call.
    """
    task_losses, reg = losses.rows, losses.reg
    num_rows = len(task_losses)
    sizes = [v.numel() for v in shared]
    flat = torch.empty(
        (num_rows, sum(sizes)), dtype=torch.float32,
        device=losses.losses.device
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
    g_reg = _grad(reg, shared + others) if reg is not None else []
    with torch.no_grad():
        # One all-reduce for everything: Jacobian, head and regulariser
        # gradients.
        heads = [g for grads in task_others for g in grads]
        reduced = balancer.unscale([flat] + heads + g_reg, replicas, scale)
        flat = reduced[0]
        heads = reduced[1: 1 + len(heads)]
        g_reg = reduced[1 + len(heads):]
        task_others = [heads[t * len(others): (t + 1) * len(others)]
                       for t in range(num_rows)]
        jacobians = [
            piece.view(num_rows, *v.shape)
            for piece, v in zip(torch.split(flat, sizes, dim=1), shared)
        ]
        directions, weights = balancer.combine(
            jacobians, losses.losses, norm_index, flat=flat)
        coefficients = balancer.coefficients(weights, losses)
        scale_heads = not balancer.unit_coefficients
        g_others = []
        for k, v in enumerate(others):
            terms = [
                coefficients[t] * grads[k] if scale_heads else grads[k]
                for t, grads in enumerate(task_others)
                if grads[k] is not None
            ]
            g_others.append(
                functools.reduce(operator.add, terms) if terms
                else torch.zeros_like(v))
    g_shared = [d.to(v.dtype) for d, v in zip(directions, shared)]
    if reg is not None:
        g_shared = [a + b for a, b in zip(g_shared, g_reg)]
        g_others = [a + b for a, b in zip(g_others, g_reg[len(shared):])]
    return g_shared, g_others, weights


def test_step(model, data):
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    replicas = _Replicas()
    with torch.no_grad(), _summed_updates(model.balancer.metrics, replicas):
        model.compute_test_logs(x, y, sw, replicas)
    return model.balancer.results(training=False)


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
    """Compiles `fn` with `torch.compile` into one graph (an error where it
    breaks), for fixed input shapes; NumPy arguments become tensors first
    (Dynamo would trace NumPy itself)."""
    compiled = _compile_own_copy(fn, fullgraph=True)

    def run(*args):
        return compiled(*keras.tree.map_structure(_from_numpy, args))

    return run


def _from_numpy(value):
    return _tensor(value) if isinstance(value, np.ndarray) else value


def step_jit_compile(jit_compile):
    """The `jit_compile` Keras builds the training step with: never `True`.

    Keras would wrap the whole step in `torch.compile`, which cannot trace
    the per-task `autograd.grad` calls (a graph break at each) nor Gramian
    mode's double backward. `jit_compile=True` compiles the rule instead
    (`rule_compiler`); the forward and backward passes run eagerly, as they
    do in TorchJD and LibMTL. The config keeps `jit_compile` as given.
    """
    return False if jit_compile is True else jit_compile


def rule_compiler(jit_compile):
    """With `jit_compile=True`, the function `Balancer.compile_rules` takes:
    `torch.compile` for fixed shapes, with PyTorch's loops and conditionals
    for the solvers (`traceable_ops`), so each step runs the rule as one
    compiled graph, without recompiling. A custom rule that does not trace
    whole runs in pieces. Otherwise `None`."""
    if jit_compile is not True:
        return None
    return _compile_own_copy


def _compile_own_copy(fn, fullgraph=False):
    """`torch.compile` for fixed shapes of a function or a bound method,
    through a copy of its code.

    Dynamo keeps compiled graphs per code object, at most
    `torch._dynamo.config.recompile_limit` (8) of them: every balancer (every
    model compiled in the process) would add one to its shared method's,
    and the ninth model would run eagerly. A copy per compiled function
    keeps each one's graphs apart, as `jax.jit` does.
    """
    function = getattr(fn, "__func__", fn)
    copy = types.FunctionType(
        function.__code__.replace(), function.__globals__, function.__name__,
        function.__defaults__, function.__closure__)
    if hasattr(fn, "__self__"):
        copy = types.MethodType(copy, fn.__self__)
    return torch.compile(copy, fullgraph=fullgraph, dynamic=False)
