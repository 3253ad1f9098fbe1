from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.dual_cone import project_weights
from keras_mtl.src.aggregators.gramian_utils import normalize_gramian
from keras_mtl.src.aggregators.gramian_utils import regularize_gramian
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.UPGrad")
class UPGrad(Weighting):
    """Unconflicting projection of gradients (Jacobian descent).

    Each task gradient, scaled by `1/T`, is projected onto the dual cone
    `{d : g_j . d >= 0 for all j}` of the task gradients, and the projections
    are summed: `d = sum_i J^T v_i` with
    `v_i = argmin_{v >= e_i / T} v^T G v` (mean scale, as TorchJD). The result
    never conflicts with any task gradient (`g_j . d >= 0`). `G` is the
    trace-normalised Gramian plus `reg_eps * I`, as in TorchJD. The QPs are
    solved on the device by coordinate descent (see `dual_cone.py`); the KKT
    residual of the last solve is logged as `solver_residual`. Cost: Gramian.
    Deterministic.

    Args:
        norm_eps: Gramians with a trace below this are treated as zero.
        reg_eps: ridge added to the normalised Gramian.
        max_sweeps: maximum number of coordinate-descent passes.

    Example:

    >>> agg = keras_mtl.aggregators.UPGrad()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> # [0.2929, 1.9004, 1.9004]

    Reference:
        Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
        2024.
    """

    diagnostics = ("solver_residual",)

    def __init__(self, norm_eps=1e-4, reg_eps=1e-4, max_sweeps=200, name=None):
        super().__init__(name=name)
        self.norm_eps = check_non_negative("norm_eps", norm_eps)
        self.reg_eps = check_non_negative("reg_eps", reg_eps)
        self.max_sweeps = check_count("max_sweeps", max_sweeps)

    def initial_state(self, num_tasks, num_params=None):
        return {"solver_residual": ops.zeros(())}

    def _lower_bounds(self, num_tasks):
        return ops.eye(num_tasks) / num_tasks

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = regularize_gramian(
            normalize_gramian(ops.cast(gramian, "float32"), self.norm_eps),
            self.reg_eps,
        )
        v, residual = project_weights(
            gramian, self._lower_bounds(num_tasks), self.max_sweeps
        )
        return ops.sum(v, axis=0), {"solver_residual": residual}

    def get_config(self):
        return {
            **super().get_config(),
            "norm_eps": self.norm_eps,
            "reg_eps": self.reg_eps,
            "max_sweeps": self.max_sweeps,
        }
