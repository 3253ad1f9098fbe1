from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.Krum")
class Krum(Weighting):
    """Krum: the mean of the task gradients closest to their neighbours.

    With `f = n_byzantine`, each gradient's score is the sum of its squared
    distances to its `T - f - 2` nearest other gradients (distances from the
    Gramian, `||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij`, clipped at 0 where
    rounding makes it negative); the `n_selected` gradients with the lowest
    scores get weight `1 / n_selected`, the others 0 (Multi-Krum for
    `n_selected > 1`). A robust aggregator: up to `f` arbitrary gradients
    cannot pull the direction far. Needs `T >= f + 3` and
    `T >= n_selected`. Cost: Gramian. Deterministic. As TorchJD's `Krum`.

    Args:
        n_byzantine: `f`, the number of gradients that may be arbitrary.
        n_selected: how many of the best-scored gradients are averaged.

    Example:

    >>> agg = keras_mtl.aggregators.Krum(n_byzantine=1, n_selected=2)
    >>> direction = agg([[1.0, 0.0], [1.1, 0.1], [0.9, 0.0], [-9.0, 5.0]])
    >>> # [0.95, 0.0]: rows 1 and 3 score best; the outlier is left out.

    Reference:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine
        Tolerant Gradient Descent", NeurIPS 2017.
    """

    def __init__(self, n_byzantine=0, n_selected=1, name=None):
        super().__init__(name=name)
        self.n_byzantine = check_count("n_byzantine", n_byzantine, minimum=0)
        self.n_selected = check_count("n_selected", n_selected)

    def check_tasks(self, num_tasks):
        if num_tasks < self.n_byzantine + 3 or num_tasks < self.n_selected:
            raise ValueError(
                f"Krum(n_byzantine={self.n_byzantine}, n_selected="
                f"{self.n_selected}) needs at least "
                f"{max(self.n_byzantine + 3, self.n_selected)} tasks. "
                f"Received: num_tasks={num_tasks}")

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        self.check_tasks(num_tasks)
        gramian = ops.cast(gramian, "float32")
        diag = ops.diagonal(gramian)
        distances = ops.relu(diag[:, None] + diag[None, :] - 2.0 * gramian)
        # Each row's own distance (0) sorts first; skip it.
        nearest = ops.sort(distances, axis=1)[:, 1:num_tasks
                                               - self.n_byzantine - 1]
        scores = ops.sum(nearest, axis=1)
        order = ops.argsort(scores)[: self.n_selected]
        chosen = ops.sum(ops.one_hot(order, num_tasks), axis=0)
        return chosen / self.n_selected, state

    def get_config(self):
        return {**super().get_config(), "n_byzantine": self.n_byzantine,
                "n_selected": self.n_selected}
