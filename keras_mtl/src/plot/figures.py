"""Matplotlib access for `keras_mtl.plot` (an optional dependency)."""


def axes(ax):
    """`ax`, or the axes of a new figure when `ax` is None."""
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "keras_mtl.plot needs matplotlib: `pip install "
            "keras-mtl[plot]` (or `pip install matplotlib`).") from error
    _, ax = plt.subplots()
    return ax


def heatmap(ax, matrix, row_labels, column_labels, vmin, vmax, cmap,
            colorbar_label, annotate):
    """Draws `matrix` with labelled rows and columns (and its values when
    `annotate`); returns the image."""
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap,
                      aspect="auto")
    ax.set_xticks(range(len(column_labels)), labels=column_labels)
    ax.set_yticks(range(len(row_labels)), labels=row_labels)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label)
    if annotate:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center",
                        va="center", fontsize=8)
    return image
