from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.backend import traceable_ops


@keras_mtl_export("keras_mtl.aggregators.PCD")
class PCD(Weighting):
    """Priority-constrained descent: follow the primary task, never hurt the
    others by more than a margin.

    With each gradient normalised by a running estimate of its norm,
    `g~_i = g_i / sqrt(v_i + eps)` (`v_i` the bias-corrected moving average
    of `||g_i||^2`, decay `beta`), solve

        min_d 1/2 ||d - g~_p||^2   s.t.   g~_j . d >= tau ||g~_j||^2, j != p

    for the primary task `p`, and rescale `d` to `||g_p||`. The dual is a
    box-constrained QP over the multipliers `mu_j >= 0` with
    `d = g~_p + sum_j mu_j g~_j`, solved in-graph by exact cyclic coordinate
    descent (TorchJD solves the primal with a dual active-set method in
    float64 on the CPU). When the constraints cannot all hold (the dual
    does not converge within `max_sweeps`), the primary gradient is used
    as it is; a zero primary gradient gives 0. Cost: Gramian.
    Deterministic.

    State keys: `second_moments` (the moving averages `v`), `step`, and
    `solver_residual` (the dual's KKT violation, relative).

    Args:
        tau: the margin, >= 0 (default 0.02).
        beta: decay of the moving averages of the squared norms, in
            `[0, 1)` (default 0.999).
        eps: added to the squared norms before the square root.
        primary: index of the primary task in the task order.
        max_sweeps: maximum number of coordinate-descent sweeps (the loop
            stops earlier once no multiplier moves; nearly dependent
            gradients need several hundred).

    Example:

    >>> agg = keras_mtl.aggregators.PCD(tau=0.02)
    >>> direction = agg([[1.0, 0.0], [-3.0, 0.0]])  # [-1.0, 0.0]

    Reference:
        "Priority-constrained descent" (TMLR 2026), as implemented by
        TorchJD 0.18's `PCD`.
    """

    diagnostics = ("solver_residual",)

    def __init__(self, tau=0.02, beta=0.999, eps=1e-8, primary=0,
                 max_sweeps=500, name=None):
        super().__init__(name=name)
        self.tau = check_non_negative("tau", tau)
        self.beta = check_fraction("beta", beta, include_one=False)
        self.eps = check_positive("eps", eps)
        self.primary = check_count("primary", primary, minimum=0)
        self.max_sweeps = check_count("max_sweeps", max_sweeps)

    def initial_state(self, num_tasks, num_params=None):
        return {"second_moments": ops.zeros((num_tasks,)),
                "step": ops.zeros(()), "solver_residual": ops.zeros(())}

    def check_tasks(self, num_tasks):
        if self.primary >= num_tasks:
            raise ValueError(
                f"PCD(primary={self.primary}) needs more than {self.primary} "
                f"tasks. Received: num_tasks={num_tasks}")

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        self.check_tasks(num_tasks)
        gramian = ops.cast(gramian, "float32")
        squared = ops.relu(ops.diagonal(gramian))
        step = state["step"] + 1.0
        moments = (self.beta * state["second_moments"]
                   + (1.0 - self.beta) * squared)
        corrected = moments / (1.0 - self.beta**step)
        scale = 1.0 / ops.sqrt(corrected + self.eps)
        normalized = gramian * scale[:, None] * scale[None, :]
        primary = ops.cast(ops.arange(num_tasks) == self.primary, "float32")
        multipliers, residual = _dual(normalized, primary, self.tau,
                                      self.max_sweeps)
        feasible = residual < 1e-3
        coefficients = ops.where(feasible, primary + multipliers, primary)
        norm = ops.sqrt(ops.relu(ops.sum(
            coefficients * ops.matmul(normalized, coefficients))))
        primary_norm = ops.sqrt(ops.sum(squared * primary))
        weights = coefficients * scale * ops.divide_no_nan(primary_norm, norm)
        return weights, {"second_moments": moments, "step": step,
                         "solver_residual": residual}

    def get_config(self):
        return {**super().get_config(), "tau": self.tau, "beta": self.beta,
                "eps": self.eps, "primary": self.primary,
                "max_sweeps": self.max_sweeps}


def _dual(gramian, primary, tau, max_sweeps, tolerance=1e-7):
    """`min_{mu >= 0, mu_p = 0} 1/2 (e_p + mu)^T G (e_p + mu) - tau sum_j
    mu_j G_jj` by cyclic coordinate descent; returns `(mu, residual)`."""
    num_tasks = gramian.shape[0]
    diag = ops.diagonal(gramian)
    free = (1.0 - primary) * ops.cast(diag > 0.0, "float32")
    safe = ops.where(diag > 0.0, diag, 1.0)
    eye = ops.eye(num_tasks)

    # A new tensor, not a view of `gramian`: a compiled loop may not read
    # two aliased tensors.
    offset = tau * diag

    def gradient(mu):
        return ops.matmul(gramian, primary + mu) - offset

    def sweep(mu):
        for j in range(num_tasks):
            target = ops.relu(mu[j] - gradient(mu)[j] / safe[j]) * free[j]
            mu = mu + (target - mu[j]) * eye[j]
        return mu

    def cond(step, mu, change):
        return (step < max_sweeps) & (change > tolerance)

    def body(step, mu, change):
        new_mu = sweep(mu)
        return step + 1, new_mu, ops.amax(abs(new_mu - mu))

    _, mu, _ = traceable_ops.while_loop(
        cond, body,
        (ops.convert_to_tensor(0, "int32"), ops.zeros((num_tasks,)),
         ops.convert_to_tensor(float("inf"))))
    violation = abs(ops.minimum(mu, gradient(mu))) * free
    scale = ops.maximum(ops.amax(diag), 1e-30)
    return mu, ops.amax(violation) / scale
