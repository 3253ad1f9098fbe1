from keras import ops

from keras_mtl.src.aggregators.adam_step import adam_step
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_choice
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.gramian_utils import gradient_norms
from keras_mtl.src.api_export import keras_mtl_export

INITIAL_LOSSES = ("epoch", "first_step")


@keras_mtl_export("keras_mtl.aggregators.GradNorm")
class GradNorm(Weighting):
    """Gradient normalisation (GradNorm).

    Task weights `w = T softmax(s)` are trained so that each weighted
    gradient norm `G_i = w_i ||g_i||` approaches the common target
    `mean_j(G_j) r_i^alpha`, where `r_i = (L_i / L_i(0)) / mean_j(L_j /
    L_j(0))` is task `i`'s relative inverse training rate. At each step the
    direction is `sum_i w_i g_i`, then `s` takes one Adam step (learning rate
    `learning_rate`) on `sum_i |G_i - target_i|` with the target held
    constant, as in the paper and LibMTL.

    Norms are taken over all shared parameters (LibMTL), over the shared
    features with `compile(gradient_mode="features")`, or, with `layer`,
    over the parameters of that one layer, e.g. the last shared layer as in
    the paper (`MultiTaskModel` computes that layer's Gramian; outside a
    model the full Jacobian is used). With `initial_loss="epoch"` (LibMTL)
    the weights stay equal during the first epoch of `fit` and `L(0)` is
    that epoch's mean loss; with `"first_step"`, `L(0)` is the first step's
    loss (the paper). The reference code trains `s` with the model's own
    optimizer; here it has its own Adam (the Keras default learning rate)
    so that the rule is self-contained. Cost: Gramian (T backward passes).
    Deterministic.

    State keys: `scales` (`s`), `adam_m`, `adam_v`, `adam_step`,
    `loss_sum`, `loss_count`.

    Args:
        alpha: asymmetry strength (reference: 1.5).
        learning_rate: Adam learning rate of `s`.
        initial_loss: `"epoch"` or `"first_step"`, how `L(0)` is measured.
        layer: optional name of the layer whose gradient norms are balanced.

    Example:

    >>> agg = keras_mtl.aggregators.GradNorm(initial_loss="first_step")
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss
        Balancing in Deep Multitask Networks", ICML 2018.
    """

    uses_epoch = True

    def __init__(self, alpha=1.5, learning_rate=1e-3, initial_loss="epoch",
                 layer=None, name=None):
        super().__init__(name=name)
        self.alpha = check_non_negative("alpha", alpha)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.initial_loss = check_choice(
            "initial_loss", initial_loss, INITIAL_LOSSES
        )
        if layer is not None and not isinstance(layer, str):
            raise ValueError(
                "`layer` must be a layer name or None. "
                f"Received: layer={layer!r}"
            )
        self.layer = layer

    @property
    def gramian_layer(self):
        """The layer whose gradient norms are balanced (`layer`), or None."""
        return self.layer

    def initial_state(self, num_tasks, num_params=None):
        return {
            "scales": ops.zeros((num_tasks,)),
            "adam_m": ops.zeros((num_tasks,)),
            "adam_v": ops.zeros((num_tasks,)),
            "adam_step": ops.zeros(()),
            "loss_sum": ops.zeros((num_tasks,)),
            "loss_count": ops.zeros(()),
        }

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        losses = require_losses("GradNorm", losses)
        gramian = ops.cast(state.get("layer_gramian", gramian), "float32")
        if self.initial_loss == "epoch":
            warming_up = ops.cast(state.get("epoch", 0.0), "float32") < 1.0
        else:
            warming_up = state["loss_count"] < 1.0
        weights = num_tasks * softmax_over_tasks(state["scales"])
        norms = gradient_norms(gramian)
        weighted_norms = weights * norms
        initial = state["loss_sum"] / ops.maximum(state["loss_count"], 1.0)
        ratios = ops.divide_no_nan(losses, initial)
        rates = ops.divide_no_nan(ratios, ops.mean(ratios))
        target = ops.mean(weighted_norms) * ops.power(rates, self.alpha)
        # d/ds sum_i |w_i n_i - target_i| through w = T softmax(s).
        grad_w = ops.sign(weighted_norms - target) * norms
        z = weights / num_tasks
        grad_s = num_tasks * z * (grad_w - ops.sum(z * grad_w))
        scales, m, v, step = adam_step(
            state["scales"], grad_s, state["adam_m"], state["adam_v"],
            state["adam_step"], self.learning_rate,
        )

        def keep(old, new):
            return ops.where(warming_up, old, new)

        new_state = {
            "scales": keep(state["scales"], scales),
            "adam_m": keep(state["adam_m"], m),
            "adam_v": keep(state["adam_v"], v),
            "adam_step": keep(state["adam_step"], step),
            "loss_sum": keep(state["loss_sum"] + losses, state["loss_sum"]),
            "loss_count": keep(state["loss_count"] + 1.0, state["loss_count"]),
        }
        return keep(ops.ones((num_tasks,)), weights), new_state

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
            "initial_loss": self.initial_loss,
            "layer": self.layer,
        }
