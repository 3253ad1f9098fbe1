from keras import ops

from keras_mtl.src.aggregators.upgrad import UPGrad
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.DualProj")
class DualProj(UPGrad):
    """Mean gradient projected onto the dual cone of the task gradients.

    `d = J^T v` with `v = argmin_{v >= 1/T} v^T G v`: the closest vector to
    the mean gradient that conflicts with no task (`g_j . d >= 0`), as in
    equation 11 of Gradient Episodic Memory and TorchJD's `DualProj`.
    Normalisation, regularisation and solver as in `UPGrad`. Cost: Gramian.
    Deterministic.

    Args:
        norm_eps: Gramians with a trace below this are treated as zero.
        reg_eps: ridge added to the normalised Gramian.
        max_sweeps: maximum number of coordinate-descent passes.

    Example:

    >>> agg = keras_mtl.aggregators.DualProj()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual
        Learning", NeurIPS 2017.
    """

    def _lower_bounds(self, num_tasks):
        return ops.full((1, num_tasks), 1.0 / num_tasks)
