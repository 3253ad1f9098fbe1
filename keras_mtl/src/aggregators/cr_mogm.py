from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.api_export import keras_mtl_export

_INNER = "inner_"


@keras_mtl_export("keras_mtl.aggregators.CRMOGM")
class CRMOGM(Weighting):
    """CR-MOGM: an exponential moving average of another rule's weights.

    `lambda_k = alpha lambda_(k-1) + (1 - alpha) lambda_hat_k`, where
    `lambda_hat_k` are the weights the wrapped rule computes at step `k`
    and `lambda_0 = lambda_hat_1` (the first step uses the rule's weights as
    they are). The direction is `lambda_k @ J`. Smoothing the weights makes
    the stochastic multi-objective gradient consistent (the paper's
    Corollary 1 lets `alpha` rise as the learning rate decays). Works with
    any rule that is a weighted sum of the task gradients and has no
    trainable parameters; its state is kept under `inner_<key>`. As
    TorchJD's `CRMOGMWeighting`.

    State keys: `weights` (the averaged weights), `started`, and the
    wrapped rule's keys prefixed by `inner_`.

    Args:
        weighting: the wrapped rule: a `Weighting` instance, a name or a
            config dict (default `"mgda"`).
        alpha: the averaging factor in `[0, 1]` (default 0.9).

    Example:

    >>> agg = keras_mtl.aggregators.CRMOGM("mgda", alpha=0.9)
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Zhou et al., "On the Convergence of Stochastic Multi-Objective
        Gradient Manipulation and Beyond", NeurIPS 2022.
    """

    def __init__(self, weighting="mgda", alpha=0.9, name=None):
        super().__init__(name=name)
        from keras_mtl.src.aggregators.registry import get

        inner = get(weighting)
        if (not isinstance(inner, Weighting) or inner.initial_parameters(2)
                or inner.requires_losses_after_step or inner.tracks_gradients
                or inner.gramian_layer is not None or inner.uses_epoch):
            raise ValueError(
                "CRMOGM wraps a rule that is a weighted sum of the task "
                "gradients, with no trainable parameters and no per-step "
                f"hooks. Received: weighting={weighting!r}")
        self.weighting = inner
        self.alpha = check_fraction("alpha", alpha)
        self.requires_jacobian = inner.requires_jacobian
        self.diagnostics = tuple(_INNER + k for k in inner.diagnostics)

    def initial_state(self, num_tasks, num_params=None):
        inner = self.weighting.initial_state(num_tasks, num_params)
        return {"weights": ops.zeros((num_tasks,)), "started": ops.zeros(()),
                **{_INNER + k: v for k, v in inner.items()}}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        inner = {k[len(_INNER):]: v for k, v in state.items()
                 if k.startswith(_INNER)}
        fresh, inner = self.weighting.compute_weights(
            num_tasks, gramian, losses, inner, seed)
        fresh = ops.cast(fresh, "float32")
        previous = ops.where(state["started"] > 0.0, state["weights"], fresh)
        weights = self.alpha * previous + (1.0 - self.alpha) * fresh
        return weights, {
            "weights": weights, "started": ops.ones(()),
            **{_INNER + k: v for k, v in inner.items()}}

    def get_config(self):
        from keras_mtl.src.aggregators.registry import serialize

        return {**super().get_config(),
                "weighting": serialize(self.weighting), "alpha": self.alpha}
