from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.api_export import keras_mtl_export

RESCALES = (0, 1, 2)


@keras_mtl_export("keras_mtl.aggregators.CAGrad")
class CAGrad(Weighting):
    """Conflict-averse gradient descent (CAGrad).

    With `g_0` the mean gradient and `g_w = sum_i w_i g_i`, solve the dual
    `min_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`, then
    `d = g_0 + (c ||g_0|| / ||g_w||) g_w`, divided by `1 + c^2`
    (`rescale=1`, LibMTL's default), `1 + c` (`rescale=2`) or not at all
    (`rescale=0`, TorchJD). Defaults follow LibMTL and the official
    multi-task code (`c=0.5`); the Nash-MTL and FAMO experiments use
    `c=0.4` and multiply by T. The dual is solved on the device by
    exponentiated-gradient (mirror) descent on the simplex for `max_iters`
    iterations, keeping the best iterate. Mean scale. Cost: Gramian.
    Deterministic.

    State keys: `solver_gap`, the Frank-Wolfe duality gap of the returned
    dual weights, `grad . w - min_i grad_i` (an upper bound on their
    suboptimality, for the trace-normalised Gramian), logged as
    `cagrad_solver_gap`.

    Args:
        c: the conflict-aversion radius, >= 0 (`c = 0` is the mean).
        rescale: 0, 1 or 2, see above.
        max_iters: iterations of the dual solver.

    Example:

    >>> agg = keras_mtl.aggregators.CAGrad(c=0.5, rescale=0)
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> # [0.1835, 1.2041, 1.2041]

    Reference:
        Liu et al., "Conflict-Averse Gradient Descent for Multi-task
        Learning", NeurIPS 2021.
    """

    def __init__(self, c=0.5, rescale=1, max_iters=300, name=None):
        super().__init__(name=name)
        if not float(c) >= 0.0:
            raise ValueError(f"`c` must be >= 0. Received: c={c}")
        if rescale not in RESCALES:
            raise ValueError(
                f"`rescale` must be one of {RESCALES}. Received: rescale={rescale}"
            )
        if int(max_iters) < 1:
            raise ValueError(
                f"`max_iters` must be >= 1. Received: max_iters={max_iters}"
            )
        self.c = float(c)
        self.rescale = rescale
        self.max_iters = int(max_iters)

    diagnostics = ("solver_gap",)

    def initial_state(self, num_tasks, num_params=None):
        return {"solver_gap": ops.zeros(())}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        gramian = ops.cast(gramian, "float32")
        trace = ops.trace(gramian)
        gramian = gramian / ops.where(trace > 0, trace, 1.0)
        mean = ops.full((num_tasks,), 1.0 / num_tasks)
        g0_norm = ops.sqrt(ops.maximum(ops.sum(mean * ops.matmul(gramian, mean)), 0.0))
        radius = self.c * g0_norm
        linear = ops.matmul(gramian, mean)

        def objective(w):
            gw = ops.matmul(gramian, w)
            return ops.sum(w * linear) + radius * ops.sqrt(ops.sum(w * gw) + 1e-12), gw

        def gradient_at(w, gw):
            return linear + radius * gw / ops.sqrt(ops.sum(w * gw) + 1e-12)

        def body(step, carry):
            w, best_w, best_f = carry
            f, gw = objective(w)
            better = f < best_f
            best_w = ops.where(better, w, best_w)
            best_f = ops.where(better, f, best_f)
            gradient = gradient_at(w, gw)
            scale = ops.max(ops.abs(gradient)) + 1e-12
            rate = 2.0 / ops.sqrt(ops.cast(step, "float32") + 1.0)
            logits = ops.log(ops.maximum(w, 1e-30)) - rate * gradient / scale
            return ops.softmax(logits), best_w, best_f

        w, best_w, best_f = ops.fori_loop(
            0,
            self.max_iters,
            body,
            (mean, mean, ops.convert_to_tensor(float("inf"))),
        )
        f, _ = objective(w)
        w = ops.where(f < best_f, w, best_w)
        gradient = gradient_at(w, ops.matmul(gramian, w))
        gap = ops.sum(w * gradient) - ops.min(gradient)
        gw_norm = ops.sqrt(ops.maximum(ops.sum(w * ops.matmul(gramian, w)), 0.0))
        weights = mean + ops.divide_no_nan(radius, gw_norm) * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        return weights, {**state, "solver_gap": gap}

    def get_config(self):
        return {
            **super().get_config(),
            "c": self.c,
            "rescale": self.rescale,
            "max_iters": self.max_iters,
        }
