from keras import ops

from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.bilevel import BilevelWeighting
from keras_mtl.src.aggregators.bilevel import softmax_vjp
from keras_mtl.src.aggregators.simplex_qp import simplex_qp
from keras_mtl.src.api_export import keras_mtl_export

# LibMTL's guard: the inner steps stop once the inner loss exceeds this.
_DIVERGED = 1e5
# Added to ||g_q||^2, as in LibMTL.
_EPS = 1e-8


@keras_mtl_export("keras_mtl.aggregators.FORUM")
class FORUM(BilevelWeighting):
    """FORUM: a first-order multi-gradient method for multi-objective
    bilevel learning of the task weights.

    Lower level: the model `omega` minimises `f = sum_t softmax(alpha)_t
    L_t(A)` on the inner half `A` of the batch; upper level: every task's
    loss on the outer half `B`. Each step:

    1. `omega^K`: `inner_steps` virtual SGD steps on `f` (rate `inner_lr`);
       `g_q = [grad_alpha f(omega) - grad_alpha f(omega^K), grad_omega f]`;
    2. `g_t`: task `t`'s gradient on `B`, scaled to unit length (zero for
       `alpha`); `pi_t = phi - <g_q, g_t> / ||g_q||^2`;
    3. the quadratic programme of the paper,
       `min ||sum_t w_t g_t + w_q g_q||^2 - w_q phi ||g_q||^2` over `w` on
       the simplex and `w_q >= max(pi . w, 0)`, solved exactly in-graph
       (its residual is logged as `forum_solver_gap`);
    4. `lambda <- lambda + (epoch + 1)^(-3/4) (w - lambda)`,
       `nu = max(pi . lambda, 0)`; the update is `d = sum_t lambda_t g_t +
       nu g_q`: the shared variables move along its `omega` part and
       `alpha` takes an Adam step along its `alpha` part.

    The Jacobian is part-major (rows `0 .. T-1` on `A`, `T .. 2T-1` on `B`,
    see `Aggregator.batch_splits`); unit scaling uses the shared variables'
    gradients. The task-specific variables take their own task's gradient
    on the whole batch (or `d`'s row weights with
    `weight_task_specific=True`). LibMTL zeroes `lambda` at each call of
    its `train`; here it persists across `fit` calls, like all state. Cost
    per step: `inner_steps + 1` forward and `inner_steps` backward passes
    over half the batch, plus one forward and `2 T` backward passes over
    the batch. Deterministic. Needs `gradient_mode=
    "parameters"`; shuffle the data and use an even batch size.

    State keys: `alpha`, `adam_m`, `adam_v`, `step`, `lambdas`,
    `inner_decrease` (`L(A; omega) - L(A; omega^K)`), `solver_gap`.

    Args:
        phi: `phi > 0` of the constraint (default 0.1).
        inner_lr: learning rate of the virtual steps (default 0.1).
        inner_steps: number of virtual steps (default 5, LibMTL's).
        learning_rate: Adam learning rate of `alpha` (default 1e-3).

    Example:

    >>> agg = keras_mtl.aggregators.FORUM()
    >>> # Two tasks on two halves: rows [t0 A, t1 A, t0 B, t1 B].
    >>> direction = agg([[1.0, 0.0], [0.0, 2.0], [1.2, 0.1], [0.1, 1.8]])

    Reference:
        Ye, Yao, Lin, Li, Zheng & Zhang, "A First-Order Multi-Gradient
        Algorithm for Multi-Objective Bi-Level Optimization", ECAI 2024;
        LibMTL's `Trainer.train_bilevel`.
    """

    requires_jacobian = True
    uses_epoch = True
    batch_splits = 2
    diagnostics = ("solver_gap",)

    def __init__(self, phi=0.1, inner_lr=0.1, inner_steps=5,
                 learning_rate=1e-3, name=None):
        super().__init__(learning_rate=learning_rate, name=name)
        self.phi = check_positive("phi", phi)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_count("inner_steps", inner_steps)

    def initial_state(self, num_tasks, num_params=None):
        zeros = ops.zeros((num_tasks,))
        return {**super().initial_state(num_tasks), "lambdas": zeros,
                "inner_decrease": zeros, "solver_gap": ops.zeros(())}

    def meta_update(self, probe, state):
        """The inner losses' decrease over `inner_steps` virtual steps."""
        weights = softmax_over_tasks(ops.cast(state["alpha"], "float32"))
        inner = weights[None]
        theta = probe.values
        start = None
        diverged = ops.convert_to_tensor(False)
        for _ in range(self.inner_steps):
            losses, gradient = probe.gradients(theta, inner, 0)
            start = losses if start is None else start
            diverged = diverged | (ops.sum(weights * losses) > _DIVERGED)
            theta = ops.where(diverged, theta,
                              theta - self.inner_lr * gradient[0])
        end = probe.losses(theta, 0)
        return {**state, "inner_decrease": start - end}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        g = ops.cast(gramian, "float32")
        inner, cross, outer = (g[:num_tasks, :num_tasks],
                               g[:num_tasks, num_tasks:],
                               g[num_tasks:, num_tasks:])
        weights = softmax_over_tasks(ops.cast(state["alpha"], "float32"))
        # Unit outer gradients g_t, and g_q = [alpha part, omega part].
        inverse = ops.divide_no_nan(
            1.0, ops.sqrt(ops.relu(ops.diagonal(outer))))
        cosines = outer * inverse[:, None] * inverse[None, :]
        alpha_part = softmax_vjp(
            weights, ops.cast(state["inner_decrease"], "float32"))
        qq = (ops.sum(weights * ops.matmul(inner, weights))
              + ops.sum(alpha_part * alpha_part) + _EPS)
        qg = ops.matmul(weights, cross) * inverse  # <g_q, g_t>
        pi = self.phi - qg / qq
        lambdas, gap = _forum_qp(cosines, qg, qq, pi, self.phi)
        rate = ops.power(ops.cast(state.get("epoch", 0.0), "float32") + 1.0,
                         -0.75)
        buffer = state["lambdas"] + rate * (lambdas - state["lambdas"])
        nu = ops.relu(ops.sum(buffer * pi))
        row_weights = ops.concatenate([nu * weights, buffer * inverse])
        return row_weights, self.step_alpha(
            {**state, "lambdas": buffer, "solver_gap": gap},
            nu * alpha_part)

    def get_config(self):
        return {**super().get_config(), "phi": self.phi,
                "inner_lr": self.inner_lr, "inner_steps": self.inner_steps}


def _forum_qp(cosines, qg, qq, pi, phi):
    """FORUM's programme over `(w, w_q)`, reduced to `w` on the simplex.

    For fixed `w` the objective is a convex parabola in `w_q` whose vertex
    lies `phi / 2` below `pi . w`, so `w_q = max(pi . w, 0)`: with
    `u = sum_t w_t g_t`, the objective is `||u||^2` where `pi . w <= 0`, and
    `||u||^2 - <u, g_q>^2 / ||g_q||^2 + phi <u, g_q>` (plus a constant)
    where `pi . w >= 0`. Their minimisers over the simplex, and the
    minimiser on the plane `pi . w = 0` where both agree, are computed
    exactly; the best one feasible for its piece is the solution.
    Returns `(w, residual)`.
    """
    norm = ops.sqrt(qq)
    along = qg / norm  # <g_t, g_q> / ||g_q||
    zero = ops.zeros_like(qg)
    below, gap_below, _ = simplex_qp(2.0 * cosines, zero)
    above, gap_above, _ = simplex_qp(
        2.0 * (cosines - along[:, None] * along[None, :]), phi * norm * along)
    plane, gap_plane, crosses = simplex_qp(2.0 * cosines, zero, plane=pi)

    def objective(w):
        s = ops.relu(ops.sum(pi * w))
        return (ops.sum(w * ops.matmul(cosines, w)) + 2.0 * s * ops.sum(w * qg)
                + s * s * qq - s * phi * qq)

    inf = float("inf")
    values = ops.stack([
        ops.where(ops.sum(pi * below) <= 0.0, objective(below), inf),
        ops.where(ops.sum(pi * above) >= 0.0, objective(above), inf),
        ops.where(crosses, objective(plane), inf),
    ])
    best = ops.argmin(values)
    candidates = ops.stack([below, above, plane])
    gaps = ops.stack([gap_below, gap_above, gap_plane])
    return ops.take(candidates, best, axis=0), ops.take(gaps, best)
