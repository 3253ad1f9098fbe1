from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.IMTLL")
class IMTLL(Weighting):
    """Impartial multi-task learning, loss part (IMTL-L).

    One learnable scale `s_i` per task, trained with the model on the
    objective `sum_i exp(s_i) L_i - s_i`, whose optimum makes every scaled
    loss `exp(s_i) L_i` equal to 1. Task weights `w_i = exp(s_i)`; `s` starts
    at 0 (TorchJD's `IMTLL`; the objective is twice uncertainty weighting at
    `-s`). Cost: loss-only. Deterministic.

    Parameters (trainable, saved with the model): `scale`, shape (T,).

    Example:

    >>> agg = keras_mtl.aggregators.IMTLL()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """

    requires_jacobian = False

    def initial_parameters(self, num_tasks):
        return {"scale": ops.zeros((num_tasks,))}

    def scalarize(self, losses, parameters):
        s = parameters["scale"]
        return ops.sum(ops.exp(s) * losses - s)

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        s = self.parameters_from(state, num_tasks)["scale"]
        return ops.exp(s), state
