"""Plots of a multi-task training run: task weights, gradient norms and the
gradient-cosine heat map, from a `ConflictMonitor` or the `History`."""

import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.callbacks.conflict_monitor import ConflictMonitor
from keras_mtl.src.plot.figures import axes
from keras_mtl.src.plot.figures import heatmap


def _series(source, key, suffix, task_names):
    """`(x, values (n, T), task_names, x_label)` from a monitor's records
    (per step) or a History / epoch-logs dict (per epoch)."""
    if isinstance(source, ConflictMonitor):
        return (source.history["step"], source.history[key],
                source.task_names, "training step")
    logs = getattr(source, "history", source)
    if not isinstance(logs, dict):
        raise ValueError(
            "Expected a ConflictMonitor, a keras History or its `history` "
            f"dict. Received: {type(source).__name__}")
    if task_names is None:
        task_names = [k[: -len(suffix)] for k in logs
                      if k.endswith(suffix) and not k.startswith("val_")]
    missing = [t for t in task_names if f"{t}{suffix}" not in logs]
    if not task_names or missing:
        raise ValueError(
            f"The logs have no `<task>{suffix}` entries for "
            f"{missing or 'any task'}; the keys are {sorted(logs)}. "
            f"Received: task_names={task_names!r}")
    values = np.stack([np.asarray(logs[f"{t}{suffix}"], float)
                       for t in task_names], axis=1)
    return np.arange(1, len(values) + 1), values, tuple(task_names), "epoch"


def _lines(source, key, suffix, task_names, ax, y_label, log_scale):
    x, values, names, x_label = _series(source, key, suffix, task_names)
    ax = axes(ax)
    for i, task in enumerate(names):
        ax.plot(x, values[:, i], label=task)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend()
    return ax


@keras_mtl_export("keras_mtl.plot.task_weights")
def task_weights(source, task_names=None, ax=None):
    """Plots each task's weight over training.

    Args:
        source: a `keras_mtl.callbacks.ConflictMonitor` (one point per
            record), or the `History` of `MultiTaskModel.fit` (or its
            `history` dict: one point per epoch, from `<task>_weight`).
        task_names: the tasks to draw from a History; defaults to every
            `<task>_weight` entry.
        ax: a matplotlib `Axes` to draw on; defaults to a new figure.

    Returns:
        The matplotlib `Axes`.

    Example:

    >>> history = {"a_weight": [0.2, 0.4], "b_weight": [0.8, 0.6]}
    >>> ax = keras_mtl.plot.task_weights(history)
    """
    return _lines(source, "task_weights", "_weight", task_names, ax,
                  "task weight", log_scale=False)


@keras_mtl_export("keras_mtl.plot.gradient_norms")
def gradient_norms(source, task_names=None, ax=None):
    """Plots each task's gradient norm over training (log scale).

    Args:
        source: a `ConflictMonitor`, or a History (or its dict) with the
            monitor's `<task>_grad_norm` epoch logs.
        task_names: as for `task_weights`.
        ax: a matplotlib `Axes`; defaults to a new figure.

    Returns:
        The matplotlib `Axes`.

    Example:

    >>> history = {"a_grad_norm": [2.0, 1.0], "b_grad_norm": [0.1, 0.2]}
    >>> ax = keras_mtl.plot.gradient_norms(history)
    """
    return _lines(source, "grad_norms", "_grad_norm", task_names, ax,
                  "gradient norm", log_scale=True)


@keras_mtl_export("keras_mtl.plot.cosine_heatmap")
def cosine_heatmap(source, task_names=None, ax=None, annotate=True):
    """Draws the pairwise cosines of the task gradients as a heat map
    (red: conflicting, blue: aligned).

    Args:
        source: a `ConflictMonitor` (the mean over its records) or a
            `(T, T)` matrix of cosines.
        task_names: the row and column labels; a monitor's by default.
        ax: a matplotlib `Axes`; defaults to a new figure.
        annotate: write each cosine in its cell.

    Returns:
        The matplotlib `Axes`.

    Example:

    >>> ax = keras_mtl.plot.cosine_heatmap(
    ...     [[1.0, -0.3], [-0.3, 1.0]], task_names=["a", "b"])
    """
    if isinstance(source, ConflictMonitor):
        matrix = source.mean_cosines()
        task_names = task_names or source.task_names
    else:
        matrix = np.asarray(source, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            "`source` must be a ConflictMonitor or a square (T, T) matrix. "
            f"Received: an array of shape {matrix.shape}")
    names = list(task_names or range(matrix.shape[0]))
    if len(names) != matrix.shape[0]:
        raise ValueError(
            f"`task_names` must have {matrix.shape[0]} entries. Received: "
            f"task_names={task_names!r}")
    ax = axes(ax)
    heatmap(ax, matrix, names, names, -1.0, 1.0, "RdBu", "cosine",
            annotate)
    ax.set_title("task gradient cosines")
    return ax
