from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.DynamicWeightAverage")
class DynamicWeightAverage(Weighting):
    """Dynamic weight average (DWA).

    `w_k(t) = T softmax_k(r(t - 1) / temperature)` with the loss ratio
    `r_k(t - 1) = Lbar_k(t - 1) / Lbar_k(t - 2)` of average losses over the
    two previous periods, and `w = 1` until two periods are complete. A
    period is an epoch of `MultiTaskModel.fit` (as in the paper and LibMTL),
    or, with `iteration_window=n`, a block of `n` training steps (Nash-MTL
    uses a sliding window of 25 steps; blocks keep the state O(T)). Sum
    scale (weights sum to T). Cost: loss-only. Deterministic.

    State keys: `period`, `completed`, `period_sum`, `period_count`,
    `previous`, `before_previous`, `step`.

    Args:
        temperature: softmax temperature (reference: 2.0).
        iteration_window: `None` for epochs, or a period length in steps.

    Example:

    >>> agg = keras_mtl.aggregators.DynamicWeightAverage(iteration_window=25)
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Liu, Johns & Davison, "End-to-End Multi-Task Learning with
        Attention", CVPR 2019.
    """

    requires_jacobian = False
    uses_epoch = True

    def __init__(self, temperature=2.0, iteration_window=None, name=None):
        super().__init__(name=name)
        self.temperature = check_positive("temperature", temperature)
        if iteration_window is not None and int(iteration_window) < 1:
            raise ValueError(
                "`iteration_window` must be None or >= 1. "
                f"Received: iteration_window={iteration_window}"
            )
        self.iteration_window = (
            None if iteration_window is None else int(iteration_window)
        )

    def initial_state(self, num_tasks, num_params=None):
        return {
            "period": ops.zeros(()),
            "completed": ops.zeros(()),
            "period_sum": ops.zeros((num_tasks,)),
            "period_count": ops.zeros(()),
            "previous": ops.ones((num_tasks,)),
            "before_previous": ops.ones((num_tasks,)),
            "step": ops.zeros(()),
        }

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        losses = require_losses("DynamicWeightAverage", losses)
        if self.iteration_window is None:
            period = ops.cast(state.get("epoch", ops.zeros(())), "float32")
        else:
            period = ops.floor(state["step"] / self.iteration_window)
        new_period = ops.logical_and(
            period != state["period"], state["period_count"] > 0
        )
        average = state["period_sum"] / ops.maximum(state["period_count"], 1.0)
        before_previous = ops.where(
            new_period, state["previous"], state["before_previous"]
        )
        previous = ops.where(new_period, average, state["previous"])
        completed = state["completed"] + ops.cast(new_period, "float32")
        ratio = ops.divide_no_nan(previous, before_previous)
        balanced = num_tasks * softmax_over_tasks(ratio / self.temperature)
        weights = ops.where(completed >= 2.0, balanced, ops.ones((num_tasks,)))
        new_state = {
            "period": period,
            "completed": completed,
            "period_sum": ops.where(new_period, 0.0, state["period_sum"])
            + ops.stop_gradient(losses),
            "period_count": ops.where(new_period, 0.0, state["period_count"])
            + 1.0,
            "previous": previous,
            "before_previous": before_previous,
            "step": state["step"] + 1.0,
        }
        return weights, new_state

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "iteration_window": self.iteration_window,
        }
