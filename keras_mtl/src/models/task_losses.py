"""Per-task losses with missing-label masking, and per-task metrics.

Masking rule: a sample has no label for a task when any entry of its label is
NaN, or when its sample weight for that task is 0 or NaN. Such samples are
left out of that task's loss and metrics. Each task's loss is the weighted
mean over its labelled samples, `sum(w * l) / sum(w)` (Keras'
`"mean_with_sample_weight"` reduction); a task with no labelled sample in
the batch has loss 0 and gradient 0.
"""

import keras
from keras import ops


def resolve_loss(identifier, task):
    """Returns a function `(y_true, y_pred) -> unreduced per-sample losses`."""
    if isinstance(identifier, keras.losses.Loss):
        return identifier.call
    try:
        fn = keras.losses.get(identifier)
    except (ValueError, TypeError):
        fn = None
    if fn is None or not callable(fn):
        raise ValueError(
            f"Could not interpret the loss of task {task!r}. "
            f"Received: loss={identifier!r}"
        )
    if isinstance(fn, keras.losses.Loss):
        return fn.call
    return fn


def label_layout(identifier):
    """How a loss's labels relate to the predictions: `"sparse"` (class
    ids), `"stacked"` (one prediction-shaped label per source on axis 1,
    losses with `stacked_labels = True` such as
    `keras_mtl.losses.MultiTeacherDistillation`) or `"dense"` (same
    shape)."""
    if getattr(identifier, "stacked_labels", False):
        return "stacked"
    name = identifier if isinstance(identifier, str) else ""
    if not name:
        name = getattr(identifier, "name", None) or getattr(
            identifier, "__name__", ""
        )
    return "sparse" if "sparse" in str(name).lower() else "dense"


def _shape_text(shape):
    return str(tuple(shape))


def check_shapes(task, y_true, y_pred, layout):
    """Raises a `ValueError` unless labels of `y_true`'s shape fit
    predictions of `y_pred`'s shape (unknown dimensions are `None`).

    Accepted: the same shape; one axis fewer when the prediction's last axis
    is 1 (`(n,)` labels for a `(n, 1)` output); for sparse losses, class ids
    of shape `(n,)` or `(n, 1)` for `(n, classes)` predictions; for stacked
    labels, `(n, k) + trailing` for `(n,) + trailing` predictions.
    """
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    received = (f"Received: y_true.shape={_shape_text(true_shape)}, "
                f"y_pred.shape={_shape_text(pred_shape)}")
    if not true_shape or not pred_shape:
        raise ValueError(
            f"Task {task!r}: labels and predictions need a batch axis. "
            + received
        )
    if None not in (true_shape[0], pred_shape[0]) and (
            true_shape[0] != pred_shape[0]):
        raise ValueError(
            f"Task {task!r}: labels and predictions have different batch "
            "sizes. " + received
        )
    if layout == "sparse":
        expected = [pred_shape[:-1], pred_shape[:-1] + (1,)]
    elif layout == "stacked":
        expected = [pred_shape[:1] + (true_shape[1] if len(true_shape) > 1
                                      else None,) + pred_shape[1:]]
    else:
        expected = [pred_shape]
        if pred_shape[-1] == 1:
            expected.append(pred_shape[:-1])
    for shape in expected:
        if len(shape) == len(true_shape) and all(
            a is None or b is None or a == b
            for a, b in zip(true_shape[1:], shape[1:])
        ):
            return
    kind = {"sparse": "class ids for a sparse loss",
            "stacked": "stacked labels"}.get(layout, "labels")
    raise ValueError(
        f"Task {task!r}: the {kind} do not fit the predictions' shape. "
        + received
    )


def check_labels(task, y_true, sample_weight, y_pred, layout):
    """Checks one task's labels and sample weights before a step.

    Args:
        y_true, sample_weight: arrays or specs with `.shape` and `.dtype`
            (`sample_weight` may be None).
        y_pred: the task output (anything with `.shape`).
        layout: the loss's `label_layout`.
    """
    if not hasattr(y_true, "shape") or not hasattr(y_true, "dtype"):
        raise ValueError(
            f"Task {task!r}: labels must be an array or tensor. "
            f"Received: {type(y_true).__name__}"
        )
    dtype = str(getattr(y_true.dtype, "name", y_true.dtype))
    if not any(k in dtype for k in ("float", "int", "bool")):
        raise ValueError(
            f"Task {task!r}: labels must be numeric. "
            f"Received: dtype={dtype}"
        )
    check_shapes(task, y_true, y_pred, layout)
    if sample_weight is None:
        return
    if not hasattr(sample_weight, "shape"):
        raise ValueError(
            f"Task {task!r}: sample weights must be an array or tensor. "
            f"Received: {type(sample_weight).__name__}"
        )
    shape, label_shape = tuple(sample_weight.shape), tuple(y_true.shape)
    batch_ok = (not shape or shape[0] is None or label_shape[0] is None
                or shape[0] == label_shape[0])
    if not shape or len(shape) > max(len(label_shape), 2) or not batch_ok:
        raise ValueError(
            f"Task {task!r}: sample weights must have shape (batch,) or "
            f"(batch, 1) for labels of shape {_shape_text(label_shape)}. "
            f"Received: sample_weight.shape={_shape_text(shape)}"
        )


def _to_rank(values, rank, reduce):
    """Reduces trailing axes (with `reduce`) or appends axes to reach `rank`."""
    while len(values.shape) > rank:
        values = reduce(values, axis=-1)
    while len(values.shape) < rank:
        values = ops.expand_dims(values, -1)
    return values


def masked_task_loss(task, loss_fn, layout, y_true, y_pred, sample_weight,
                     parts=1):
    """Returns `(total, count, clean_labels, weights)` for one task.

    `total` is the weighted sum of the per-sample losses of the labelled
    samples and `count` their total weight (the task's masked mean is
    `total / count`; a data-parallel step divides by the count of the whole
    global batch), `clean_labels` the labels with NaN replaced by 0, and
    `weights` the per-sample weights with 0 where a label is missing (for the
    metrics). With `parts > 1`, `total` and `count` are `(parts,)` vectors,
    one entry per part of the batch (see `part_indicator`).
    """
    y_true = ops.convert_to_tensor(y_true)
    check_shapes(task, y_true, y_pred, layout)
    if "float" in str(y_true.dtype):
        y_true = ops.cast(y_true, y_pred.dtype)
        missing = ops.isnan(y_true)
        clean = ops.where(missing, ops.zeros_like(y_true), y_true)
    else:
        missing = ops.zeros(ops.shape(y_true), "bool")
        clean = y_true
    per_sample = ops.cast(loss_fn(clean, y_pred), "float32")
    if len(per_sample.shape) == 0:
        raise ValueError(
            f"The loss of task {task!r} returned a scalar; it must return one "
            "value per sample. Received: loss output shape ()"
        )
    rank = len(per_sample.shape)
    present = ops.logical_not(_to_rank(missing, rank, ops.any))
    weights = ops.cast(present, "float32")
    if sample_weight is not None:
        sample_weight = ops.cast(
            ops.convert_to_tensor(sample_weight), "float32")
        sample_weight = ops.where(ops.isnan(sample_weight),
                                  ops.zeros_like(sample_weight), sample_weight)
        weights = weights * _to_rank(sample_weight, rank, ops.mean)
    weights = ops.broadcast_to(weights, ops.shape(per_sample))
    count = ops.sum(weights)
    # `where` before the product keeps NaN/inf of unlabelled samples out of
    # the sum and out of its gradient. Its constants are tensors made on the
    # device: a Python scalar would be a host-to-device copy on a GPU.
    zeros = ops.zeros_like(per_sample)
    terms = ops.where(weights > 0.0, per_sample, zeros) * weights
    if parts == 1:
        return ops.sum(terms), count, clean, weights
    indicator = part_indicator(ops.shape(per_sample)[0], parts)
    axes = tuple(range(1, rank))
    if axes:
        terms, weights_per_sample = ops.sum(terms, axes), ops.sum(weights,
                                                                  axes)
    else:
        weights_per_sample = weights
    return (ops.matmul(terms, indicator),
            ops.matmul(weights_per_sample, indicator), clean, weights)


def part_indicator(batch_size, parts):
    """`(batch_size, parts)` float32 indicator of the part each sample
    belongs to: sample `i` is in part `i mod parts`. Parts differ in size by
    at most one sample (a batch smaller than `parts` leaves some empty).
    Interleaving keeps the parts of a data-parallel step those of one device
    when each replica's batch holds a multiple of `parts` samples."""
    part = ops.arange(batch_size, dtype="int32") % parts
    return ops.cast(part[:, None] == ops.arange(parts, dtype="int32")[None],
                    "float32")


ACCURACY_NAMES = ("accuracy", "acc")


def resolve_metric(identifier, task, loss_identifier, prefix=""):
    """Builds a new metric object named `<prefix><task>_<name>`."""
    if isinstance(identifier, str) and identifier in ACCURACY_NAMES:
        loss_name = str(
            loss_identifier
            if isinstance(loss_identifier, str)
            else getattr(loss_identifier, "name", "")
            or getattr(loss_identifier, "__name__", "")
        ).lower()
        if "binary" in loss_name:
            cls = keras.metrics.BinaryAccuracy
        elif "sparse" in loss_name:
            cls = keras.metrics.SparseCategoricalAccuracy
        elif "categorical" in loss_name:
            cls = keras.metrics.CategoricalAccuracy
        else:
            raise ValueError(
                f"Cannot infer which accuracy to use for task {task!r} from "
                f"its loss; pass a metric object such as "
                f"keras.metrics.BinaryAccuracy(). Received: "
                f"metrics={identifier!r}"
            )
        return cls(name=f"{prefix}{task}_{identifier}")
    if isinstance(identifier, keras.metrics.Metric):
        config = identifier.get_config()
        config["name"] = f"{prefix}{task}_{identifier.name}"
        return type(identifier).from_config(config)
    try:
        metric = keras.metrics.get(identifier)
    except (ValueError, TypeError):
        metric = None
    if metric is None:
        raise ValueError(
            f"Could not interpret a metric of task {task!r}. "
            f"Received: metrics={identifier!r}"
        )
    name = identifier if isinstance(identifier, str) else None
    if isinstance(metric, keras.metrics.Metric):
        if name is not None:  # Keep the user's spelling, as Keras does.
            config = metric.get_config()
            config["name"] = f"{prefix}{task}_{name}"
            return type(metric).from_config(config)
        return resolve_metric(metric, task, loss_identifier, prefix)
    name = name or metric.__name__
    return keras.metrics.MeanMetricWrapper(
        metric, name=f"{prefix}{task}_{name}"
    )
