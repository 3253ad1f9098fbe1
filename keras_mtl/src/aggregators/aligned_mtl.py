from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_choice
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.aggregators.gramian_utils import zero_if_non_finite
from keras_mtl.src.aggregators.jacobi_eigh import accurate_eigh
from keras_mtl.src.api_export import keras_mtl_export

SCALE_MODES = ("min", "median", "rmse")


@keras_mtl_export("keras_mtl.aggregators.AlignedMTL")
class AlignedMTL(Weighting):
    """Aligned-MTL: align the principal components of the task gradients.

    Eigendecompose the Gramian `G = V diag(lambda) V^T` (rank `r`), then
    `B = sigma V diag(lambda)^(-1/2) V^T` and weights `w = B p` for the
    preference vector `p` (mean weights `1/T`, as TorchJD). The aligned
    gradient system then has condition number 1. `sigma` is the square root
    of the smallest (`"min"`, default of the official code), median
    (`"median"`) or mean (`"rmse"`) non-zero eigenvalue. The Gramian is
    eigendecomposed by `eigh` when its condition number is below 1e3, and
    otherwise by Jacobi's method (`jacobi_eigh`), which keeps every
    eigenvalue to float32's relative precision when the gradients' norms
    span many orders of magnitude (`eigh` loses the small ones; the
    reference code's removed `torch.symeig` crashes on current PyTorch).
    An eigenvalue counts as zero when it is below `rtol` times the squared
    norms of the gradients its eigenvector combines (a scale-free rank
    test). Cost: Gramian. Deterministic.

    State keys: `solver_residual`, the largest relative off-diagonal entry
    left by the Jacobi sweeps.

    Args:
        scale_mode: `"min"`, `"median"` or `"rmse"`.
        rtol: relative threshold under which eigenvalues count as zero
            (see above).

    Example:

    >>> agg = keras_mtl.aggregators.AlignedMTL()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Senushkin et al., "Independent Component Alignment for Multi-Task
        Learning", CVPR 2023.
    """

    diagnostics = ("solver_residual",)

    def initial_state(self, num_tasks, num_params=None):
        return {"solver_residual": ops.zeros(())}

    def __init__(self, scale_mode="min", rtol=1e-6, name=None):
        super().__init__(name=name)
        self.scale_mode = check_choice("scale_mode", scale_mode, SCALE_MODES)
        self.rtol = check_fraction("rtol", rtol, include_one=False)

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        finite, gramian = zero_if_non_finite(ops.cast(gramian, "float32"))
        eigenvalues, vectors, residual = accurate_eigh(gramian)
        # Scale-free rank test: each eigenvalue against the squared norms of
        # the gradients its eigenvector combines.
        local = ops.matmul(ops.diagonal(gramian), vectors * vectors)
        keep = eigenvalues > ops.maximum(self.rtol * local, 1e-30)
        keep_f = ops.cast(keep, "float32")
        rank = ops.sum(keep_f)
        safe = ops.where(keep, eigenvalues, 1.0)
        if self.scale_mode == "min":
            scale = ops.amin(ops.where(keep, eigenvalues, float("inf")))
        elif self.scale_mode == "rmse":
            scale = ops.divide_no_nan(ops.sum(eigenvalues * keep_f), rank)
        else:
            # eigh sorts ascending; the kept eigenvalues are the last `rank`.
            first = num_tasks - rank
            lo = ops.cast(first + ops.floor((rank - 1) / 2), "int32")
            hi = ops.cast(first + ops.ceil((rank - 1) / 2), "int32")
            # Clipped: with rank 0 (all gradients zero) `hi` would be T.
            lo = ops.clip(lo, 0, num_tasks - 1)
            hi = ops.clip(hi, 0, num_tasks - 1)
            scale = 0.5 * (
                ops.take(eigenvalues, lo) + ops.take(eigenvalues, hi))
        scale = ops.where(rank > 0, scale, 0.0)
        inverse_root = ops.where(keep, 1.0 / ops.sqrt(safe), 0.0)
        balance = (vectors * inverse_root[None, :]) @ ops.transpose(vectors)
        preference = ops.full((num_tasks,), 1.0 / num_tasks)
        weights = ops.sqrt(ops.maximum(scale, 0.0)) * ops.matmul(
            balance, preference)
        weights = ops.where(finite, weights, float("nan"))
        return weights, {"solver_residual": residual}

    def get_config(self):
        return {
            **super().get_config(),
            "scale_mode": self.scale_mode,
            "rtol": self.rtol,
        }
