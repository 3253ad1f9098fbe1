from keras import ops

from keras_mtl.src.aggregators.adam_step import adam_step
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.FAMO")
class FAMO(Weighting):
    """Fast adaptive multitask optimisation (FAMO).

    Task logits `xi`, `z = softmax(xi)`. The model descends
    `sum_i z_i log(L_i - b_i + eps) / c` with
    `c = sum_i z_i / (L_i - b_i + eps)` held constant, i.e. task weights
    `w_i = z_i / (c (L_i - b_i + eps))` (a convex combination). After the
    optimizer step the losses are re-evaluated **on the same batch**
    (`MultiTaskModel` does this, in inference mode) and, with
    `delta_i = log(L_i - b_i + eps) - log(L'_i - b_i + eps)`, the logits take
    one Adam step (learning rate `learning_rate`, L2 weight decay `gamma`)
    along `J_softmax(xi)^T delta`. Defaults follow LibMTL and TorchJD
    (`learning_rate=0.025`, `gamma=1e-3`); the official code's class default
    is `gamma=1e-5` and its scripts use 1e-3 or 1e-2. The official code also
    clips the shared gradient to norm 1; use the optimizer's `clipnorm` for
    that. Cost: loss-only plus one extra forward pass. Deterministic.

    State keys: `logits`, `adam_m`, `adam_v`, `step`.

    Args:
        learning_rate: Adam learning rate of the logits.
        gamma: weight decay of the logits.
        min_losses: optional sequence of lower bounds `b_i` (default 0).
        eps: small constant added to the shifted losses.

    Example:

    >>> agg = keras_mtl.aggregators.FAMO()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Liu et al., "FAMO: Fast Adaptive Multitask Optimization",
        NeurIPS 2023.
    """

    requires_jacobian = False
    requires_losses_after_step = True

    def __init__(self, learning_rate=0.025, gamma=1e-3, min_losses=None,
                 eps=1e-8, name=None):
        super().__init__(name=name)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.gamma = check_non_negative("gamma", gamma)
        self.min_losses = None if min_losses is None else [
            float(b) for b in min_losses]
        self.eps = check_positive("eps", eps)

    def initial_state(self, num_tasks, num_params=None):
        return {
            "logits": ops.zeros((num_tasks,)),
            "adam_m": ops.zeros((num_tasks,)),
            "adam_v": ops.zeros((num_tasks,)),
            "step": ops.zeros(()),
        }

    def _shifted(self, losses):
        losses = ops.cast(losses, "float32")
        if self.min_losses is not None:
            losses = losses - ops.convert_to_tensor(self.min_losses, "float32")
        return ops.maximum(losses, 0.0) + self.eps

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        shifted = self._shifted(require_losses("FAMO", losses))
        z = softmax_over_tasks(state["logits"])
        inverse = z / shifted
        return inverse / ops.sum(inverse), state

    def update_after_step(self, losses_before, losses_after, state):
        """One Adam step on the logits from the improvement of each task."""
        delta = ops.log(self._shifted(losses_before)) - ops.log(
            self._shifted(losses_after))
        z = softmax_over_tasks(state["logits"])
        gradient = z * (delta - ops.sum(z * delta))
        gradient = gradient + self.gamma * state["logits"]
        logits, m, v, step = adam_step(
            state["logits"], gradient, state["adam_m"], state["adam_v"],
            state["step"], self.learning_rate,
        )
        return {**state, "logits": logits, "adam_m": m, "adam_v": v,
                "step": step}

    def get_config(self):
        return {
            **super().get_config(),
            "learning_rate": self.learning_rate,
            "gamma": self.gamma,
            "min_losses": self.min_losses,
            "eps": self.eps,
        }
