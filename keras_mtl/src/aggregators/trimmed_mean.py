from keras import ops

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aggregator import jacobian_and_state
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.TrimmedMean")
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean of the task gradients.

    For every parameter, the `trim_number` largest and `trim_number`
    smallest of the `T` task gradients' entries are dropped and the rest
    averaged. Robust to up to `trim_number` outlying gradients per
    coordinate. Not a weighted sum of the rows (each coordinate keeps
    different tasks), so `weights` are the mean weights `1 / T` for
    logging only. Needs `T >= 2 trim_number + 1`. Cost: Jacobian (one
    sort over tasks per parameter). Deterministic. As TorchJD's
    `TrimmedMean`.

    Args:
        trim_number: how many values are dropped at each end, >= 0.

    Example:

    >>> agg = keras_mtl.aggregators.TrimmedMean(trim_number=1)
    >>> direction = agg([[1.0, 9.0], [2.0, 2.0], [3.0, 3.0], [-5.0, 2.5]])
    >>> # [1.5, 2.75]

    Reference:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
        Statistical Rates", ICML 2018.
    """

    def __init__(self, trim_number=1, name=None):
        super().__init__(name=name)
        self.trim_number = check_count("trim_number", trim_number, minimum=0)

    def check_tasks(self, num_tasks):
        if num_tasks < 2 * self.trim_number + 1:
            raise ValueError(
                f"TrimmedMean(trim_number={self.trim_number}) needs at least "
                f"{2 * self.trim_number + 1} tasks. "
                f"Received: num_tasks={num_tasks}")

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        jacobian, _ = jacobian_and_state(self, jacobian, {})
        num_tasks = jacobian.shape[0]
        self.check_tasks(num_tasks)
        kept = ops.sort(jacobian, axis=0)[
            self.trim_number: num_tasks - self.trim_number]
        weights = ops.full((num_tasks,), 1.0 / num_tasks)
        return ops.mean(kept, axis=0), weights, {}

    def get_config(self):
        return {**super().get_config(), "trim_number": self.trim_number}
