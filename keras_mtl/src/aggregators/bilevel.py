"""Task weights learnt by a virtual step: the common part of the bilevel
rules (Auto-Lambda, MOML; FORUM shares the logits and their Adam state).

The task weights are `softmax(alpha)` over `T` logits (LibMTL starts them at
`1 / T`). Each training step, `meta_update` computes a hypergradient of
`alpha` from a virtual step of the model (see `keras_mtl/src/models/probe.py`
for what the step supplies) and takes one Adam step on `alpha`; the model is
then trained on the whole batch with `sum_t softmax(alpha)_t L_t`, a
loss-only step. Standalone, the rule weights a Jacobian's rows by its current
`softmax(alpha)`.
"""

from keras import ops

from keras_mtl.src.aggregators.adam_step import adam_step
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_positive


def softmax_vjp(weights, vector):
    """`J_softmax(alpha)^T vector` for `weights = softmax(alpha)` (the
    Jacobian `diag(w) - w w^T` is symmetric), row by row for a matrix."""
    return weights * (
        vector - ops.sum(weights * vector, axis=-1, keepdims=True))


class BilevelWeighting(Weighting):
    """A loss weighting `softmax(alpha)` whose logits learn from a virtual
    step (`meta_update`), with Adam at `learning_rate`.

    State keys: `alpha`, `adam_m`, `adam_v`, `step`.
    """

    requires_jacobian = False
    bilevel = True

    def __init__(self, learning_rate=1e-3, name=None):
        super().__init__(name=name)
        self.learning_rate = check_positive("learning_rate", learning_rate)

    def initial_state(self, num_tasks, num_params=None):
        return {
            "alpha": ops.full((num_tasks,), 1.0 / num_tasks),
            "adam_m": ops.zeros((num_tasks,)),
            "adam_v": ops.zeros((num_tasks,)),
            "step": ops.zeros(()),
        }

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        return softmax_over_tasks(ops.cast(state["alpha"], "float32")), state

    def hypergradient(self, probe, weights):
        """Returns `(gradient, logged)`: the `(T,)` gradient of the outer
        objective with respect to `alpha`, and a dict of state entries to
        keep (a solver's residual)."""
        raise NotImplementedError

    def step_alpha(self, state, gradient):
        """`state` after one Adam step on `alpha` along `gradient`."""
        alpha, m, v, step = adam_step(
            ops.cast(state["alpha"], "float32"), gradient, state["adam_m"],
            state["adam_v"], state["step"], self.learning_rate)
        return {**state, "alpha": alpha, "adam_m": m, "adam_v": v,
                "step": step}

    def meta_update(self, probe, state):
        """One Adam step on `alpha` along `hypergradient`; returns the new
        state."""
        weights = softmax_over_tasks(ops.cast(state["alpha"], "float32"))
        gradient, logged = self.hypergradient(probe, weights)
        return self.step_alpha({**state, **logged}, gradient)

    def get_config(self):
        return {**super().get_config(), "learning_rate": self.learning_rate}
