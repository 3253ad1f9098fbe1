from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.fair_weights_solver import fair_weights
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.FairGrad")
class FairGrad(Weighting):
    """FairGrad: alpha-fair task weights.

    Solves `G w = w^(-1/alpha)` elementwise with `w > 0` and returns
    `d = sum_i w_i g_i`: the update that maximises the alpha-fair utility
    of the tasks' first-order improvements. `alpha -> 0` tends to equal
    weights, `alpha = 1` is proportional fairness (the Nash-MTL condition)
    and larger `alpha` favours the worst task. Solved on the device by damped
    Newton steps (`fair_weights_solver.py`), logged as `solver_residual`.
    Zero gradients get weight 0. Each solve starts from the previous step's
    weights (state key `weights`), which are close when the gradients change
    little. Cost: Gramian. Deterministic.

    Args:
        alpha: fairness parameter, > 0 (LibMTL default 1.0).
        max_iters: maximum number of Newton iterations.

    Example:

    >>> agg = keras_mtl.aggregators.FairGrad(alpha=2.0)
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Ban & Ji, "Fair Resource Allocation in Multi-Task Learning",
        ICML 2024.
    """

    diagnostics = ("solver_residual",)

    def __init__(self, alpha=1.0, max_iters=30, name=None):
        super().__init__(name=name)
        self.alpha = check_positive("alpha", alpha)
        self.max_iters = check_count("max_iters", max_iters)

    def initial_state(self, num_tasks, num_params=None):
        return {"weights": ops.zeros((num_tasks,)),
                "solver_residual": ops.zeros(())}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        weights, error = fair_weights(gramian, self.alpha, self.max_iters,
                                      initial=state["weights"])
        return weights, {"weights": weights, "solver_residual": error}

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "max_iters": self.max_iters,
        }
