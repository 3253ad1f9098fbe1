from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.aggregator import seed_from
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_preference
from keras_mtl.src.aggregators.arg_checks import preference_for
from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend import traceable_ops


@keras_mtl_export("keras_mtl.aggregators.COSMOS")
class COSMOS(Weighting):
    """COSMOS scalarisation: preference-weighted losses with a cosine term.

    The objective is `sum_i r_i L_i - lambda cos(r, L)`: the weighted sum
    of the losses, minus a penalty that pulls the loss vector towards the
    preference ray `r`. Its gradient is `sum_i c_i grad L_i` with
    `c = r - lambda (r / (||r|| ||L||) - (r . L) L / (||r|| ||L||^3))`, the
    weights returned. `r` is the given `preference`, or, when it is `None`,
    drawn from a flat Dirichlet distribution at every step (the paper's
    training; conditioning the network on `r` is left to the model). Cost:
    loss-only. Randomised when `preference` is `None`, seeded through
    `seed`. As TorchJD's `COSMOS` scalariser.

    Args:
        cosine_weight: `lambda` >= 0 (the paper tunes it between 0.01 and 8;
            1.0 by default).
        preference: the `(T,)` preference `r`, >= 0, or `None` to sample.

    Example:

    >>> agg = keras_mtl.aggregators.COSMOS(preference=[0.5, 0.5])
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [2.0, 0.5])

    Reference:
        Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
        Multi-Objective Learning", ICDM 2021.
    """

    requires_jacobian = False

    def __init__(self, cosine_weight=1.0, preference=None, name=None):
        super().__init__(name=name)
        self.cosine_weight = check_non_negative("cosine_weight", cosine_weight)
        self.preference = check_preference(preference)

    def _preference(self, num_tasks, seed):
        if self.preference is None:
            # Flat Dirichlet: normalised exponential draws (XLA compiles
            # uniform draws on every backend, not gamma ones).
            uniform = traceable_ops.uniform((num_tasks,), seed=seed_from(seed))
            draws = -ops.log1p(-uniform)
            return draws / ops.sum(draws)
        return preference_for(self.preference, num_tasks)

    def scalarized(self, losses, seed=None):
        """The COSMOS objective of a `(T,)` loss vector."""
        losses = require_losses("COSMOS", losses)
        r = self._preference(losses.shape[0], seed)
        return ops.sum(r * losses) - self.cosine_weight * ops.divide_no_nan(
            ops.sum(r * losses),
            ops.sqrt(ops.sum(r * r)) * ops.sqrt(ops.sum(losses * losses)))

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        losses = require_losses("COSMOS", losses)
        r = self._preference(num_tasks, seed)
        r_norm = ops.sqrt(ops.sum(r * r))
        l_norm = ops.sqrt(ops.sum(losses * losses))
        cosine_gradient = ops.divide_no_nan(r, r_norm * l_norm) - (
            ops.divide_no_nan(ops.sum(r * losses) * losses,
                              r_norm * l_norm**3))
        return r - self.cosine_weight * cosine_gradient, state

    def get_config(self):
        return {**super().get_config(), "cosine_weight": self.cosine_weight,
                "preference": self.preference}
