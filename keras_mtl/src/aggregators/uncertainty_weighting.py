from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.UncertaintyWeighting")
class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting (Kendall et al.).

    One learnable log-variance `s_i` per task, trained with the model by the
    model's optimizer on the objective

        sum_i 1/2 exp(-s_i) L_i + 1/2 s_i,

    so the task weights are `w_i = exp(-s_i) / 2`. Written, like LibMTL and
    TorchJD, in the regression form for every task (the paper uses `1/s^2`
    without the 1/2 for classification losses). `s` starts at
    `initial_log_variance` = 0 (TorchJD, Nash-MTL and FAMO; LibMTL uses
    -0.5). Cost: loss-only. Deterministic.

    Parameters (trainable, saved with the model): `log_variance`, shape (T,).

    Args:
        initial_log_variance: starting value of every `s_i`.

    Example:

    >>> agg = keras_mtl.aggregators.UncertaintyWeighting()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
        Weigh Losses for Scene Geometry and Semantics", CVPR 2018.
    """

    requires_jacobian = False

    def __init__(self, initial_log_variance=0.0, name=None):
        super().__init__(name=name)
        self.initial_log_variance = float(initial_log_variance)

    def initial_parameters(self, num_tasks):
        return {
            "log_variance": ops.full((num_tasks,), self.initial_log_variance)
        }

    def scalarize(self, losses, parameters):
        s = parameters["log_variance"]
        return ops.sum(0.5 * ops.exp(-s) * losses + 0.5 * s)

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        s = self.parameters_from(state, num_tasks)["log_variance"]
        return 0.5 * ops.exp(-s), state

    def get_config(self):
        return {
            **super().get_config(),
            "initial_log_variance": self.initial_log_variance,
        }
