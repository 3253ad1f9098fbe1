from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.STCH")
class STCH(Weighting):
    """Smooth Tchebycheff scalarisation (STCH), with LibMTL's warm-up.

    During the first `warmup_epochs` epochs the model minimises
    `sum_i log L_i`; the average losses of the last warm-up epoch become the
    nadir point `z`. Afterwards it minimises

        T mu logsumexp_i(log(L_i / z_i) / mu),

    a smooth maximum of the log-improvements, whose gradient weights are
    `w_i = T softmax_i(log(L_i / z_i) / mu) / L_i`. With
    `warmup_epochs=0`, `z = 1`. Tasks whose loss is 0 get weight 0. Losses
    must be > 0. Cost: loss-only. Deterministic.

    State keys: `nadir_sum`, `nadir_count`, `nadir`.

    Args:
        mu: smoothing parameter, > 0 (reference: 1.0).
        warmup_epochs: number of warm-up epochs (reference: 4).

    Example:

    >>> agg = keras_mtl.aggregators.STCH(warmup_epochs=0)
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
        Optimization", ICML 2024.
    """

    requires_jacobian = False
    uses_epoch = True

    def __init__(self, mu=1.0, warmup_epochs=4, name=None):
        super().__init__(name=name)
        self.mu = check_positive("mu", mu)
        self.warmup_epochs = check_count(
            "warmup_epochs", warmup_epochs, minimum=0
        )

    def initial_state(self, num_tasks, num_params=None):
        return {
            "nadir_sum": ops.zeros((num_tasks,)),
            "nadir_count": ops.zeros(()),
            "nadir": ops.ones((num_tasks,)),
        }

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        losses = ops.stop_gradient(require_losses("STCH", losses))
        epoch = ops.cast(state.get("epoch", ops.zeros(())), "float32")
        present = losses > 0.0
        safe = ops.where(present, losses, 1.0)
        warming = epoch < self.warmup_epochs
        collecting = epoch == self.warmup_epochs - 1
        nadir_sum = state["nadir_sum"] + ops.where(collecting, losses, 0.0)
        nadir_count = state["nadir_count"] + ops.where(collecting, 1.0, 0.0)
        finished = ops.logical_and(
            ops.logical_not(warming), state["nadir_count"] > 0
        )
        nadir = ops.where(
            finished,
            ops.divide_no_nan(state["nadir_sum"], state["nadir_count"]),
            state["nadir"],
        )
        nadir = ops.where(nadir > 0, nadir, 1.0)
        improvement = ops.where(present, ops.log(safe / nadir), -1e9)
        smooth = num_tasks * softmax_over_tasks(improvement / self.mu) / safe
        weights = ops.where(warming, 1.0 / safe, smooth)
        new_state = {
            "nadir_sum": ops.where(finished, 0.0, nadir_sum),
            "nadir_count": ops.where(finished, 0.0, nadir_count),
            "nadir": nadir,
        }
        return ops.where(present, weights, 0.0), new_state

    def get_config(self):
        return {
            **super().get_config(),
            "mu": self.mu,
            "warmup_epochs": self.warmup_epochs,
        }
