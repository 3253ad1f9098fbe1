from keras import ops

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aggregator import check_num_params
from keras_mtl.src.aggregators.aggregator import jacobian_and_state
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.ExcessMTL")
class ExcessMTL(Aggregator):
    """Robust multi-task learning with excess risks (ExcessMTL).

    Each task's excess risk is estimated by `e_i = g_i^T H_i^-1 g_i`, with
    the AdaGrad-style diagonal `H_i = sqrt(sum_t g_i(t)^2 + 1e-7)`
    accumulated over steps, normalised by its first non-zero value. Task
    weights follow exponentiated-gradient ascent on those estimates,
    `w <- T softmax(log w + eta e)` (LibMTL's `w <- w exp(eta e)`
    renormalised to sum to T, computed in log space so that it cannot
    overflow), and `d = sum_i w_i g_i` with the updated weights (LibMTL
    only records `e_i` at the first step, so the weights start at 1).
    Defaults and the sum-to-T scale follow LibMTL (the authors' code);
    TorchJD sums the weights to 1 and uses `eta=1.0`. Cost: full Jacobian,
    state O(T * num_params); parameter gradients only. Deterministic.

    State keys: `squared_sum`, the `(T, num_params)` accumulators,
    `initial_risk`, `log_weights`.

    Args:
        robust_step_size: `eta`, the step size of the weight update
            (reference: 1e-2).

    Example:

    >>> agg = keras_mtl.aggregators.ExcessMTL()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024.
    """

    tracks_gradients = True

    def __init__(self, robust_step_size=1e-2, name=None):
        super().__init__(name=name)
        self.robust_step_size = check_positive(
            "robust_step_size", robust_step_size
        )

    def initial_state(self, num_tasks, num_params=None):
        num_params = check_num_params("ExcessMTL", num_params)
        return {
            "squared_sum": ops.zeros((num_tasks, num_params)),
            "initial_risk": ops.zeros((num_tasks,)),
            "log_weights": ops.zeros((num_tasks,)),
        }

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        jacobian, state = jacobian_and_state(self, jacobian, state)
        num_tasks = jacobian.shape[0]
        squared = jacobian * jacobian
        squared_sum = state["squared_sum"] + squared
        risk = ops.sum(squared / ops.sqrt(squared_sum + 1e-7), axis=1)
        known = state["initial_risk"] > 0.0
        initial_risk = ops.where(known, state["initial_risk"], risk)
        normalized = ops.where(
            known, ops.divide_no_nan(risk, initial_risk), 0.0
        )
        log_weights = state["log_weights"] + self.robust_step_size * normalized
        weights = num_tasks * softmax_over_tasks(log_weights)
        direction = ops.matmul(weights, jacobian)
        return direction, weights, {
            "squared_sum": squared_sum,
            "initial_risk": initial_risk,
            "log_weights": log_weights,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "robust_step_size": self.robust_step_size,
        }
