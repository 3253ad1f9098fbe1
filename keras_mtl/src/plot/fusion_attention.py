"""Heat map of AdapterFusion's attention over its adapters."""

import keras
import numpy as np

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.plot.figures import axes
from keras_mtl.src.plot.figures import heatmap


@keras_mtl_export("keras_mtl.plot.fusion_attention")
def fusion_attention(scores, adapter_names=None, tokens=None, ax=None,
                     annotate=False):
    """Draws which adapter each token attends to in an `AdapterFusion`.

    Args:
        scores: the attention weights that `AdapterFusion(...,
            return_attention_scores=True)` returns: `(tokens, N)`, or
            `(batch, tokens, N)` (averaged over the batch), or `(N,)` for
            one vector.
        adapter_names: the `N` column labels. Defaults to `0..N-1`.
        tokens: the row labels (e.g. the input tokens). Defaults to the
            positions.
        ax: a matplotlib `Axes`; defaults to a new figure.
        annotate: write each weight in its cell.

    Returns:
        The matplotlib `Axes`.

    Example:

    >>> scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    >>> ax = keras_mtl.plot.fusion_attention(
    ...     scores, adapter_names=["sst2", "mnli", "qqp"],
    ...     tokens=["good", "film"])
    """
    matrix = np.asarray(keras.ops.convert_to_numpy(scores), dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    elif matrix.ndim == 3:
        matrix = matrix.mean(axis=0)
    if matrix.ndim != 2:
        raise ValueError(
            "`scores` must be (N,), (tokens, N) or (batch, tokens, N). "
            f"Received: an array of shape {np.shape(scores)}")
    rows, columns = matrix.shape
    adapter_names = list(range(columns) if adapter_names is None
                         else adapter_names)
    tokens = list(range(rows) if tokens is None else tokens)
    if len(adapter_names) != columns or len(tokens) != rows:
        raise ValueError(
            f"`adapter_names` must have {columns} entries and `tokens` "
            f"{rows}. Received: adapter_names={adapter_names!r}, "
            f"tokens={tokens!r}")
    ax = axes(ax)
    heatmap(ax, matrix, tokens, adapter_names, 0.0, 1.0, "viridis",
            "attention", annotate)
    ax.set_xlabel("adapter")
    ax.set_title("AdapterFusion attention")
    return ax
