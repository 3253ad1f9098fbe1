from keras import ops

from keras_mtl.src.aggregators.aggregator import Aggregator
from keras_mtl.src.aggregators.aggregator import check_num_params
from keras_mtl.src.aggregators.aggregator import jacobian_and_state
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.aggregator import softmax_over_tasks
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.MoCo")
class MoCo(Aggregator):
    """Multi-objective gradient correction (MoCo).

    Tracks a bias-corrected estimate `y_i` of each task gradient and
    updates the task weights `lambda` by a projected-gradient step on the
    MGDA objective, with step sizes `beta_t = beta / t^beta_sigma` and
    `gamma_t = gamma / t^gamma_sigma`:

        y_i    <- y_i - beta_t (y_i - L_i g_i / (||g_i|| + eps))
        lambda <- softmax(lambda - gamma_t (Y Y^T + rho I) lambda)
        d       = Y^T lambda

    Starts from `y = 0`, `lambda = 1/T`; the logged weights are `lambda`.
    The softmax is LibMTL's (and the authors' code's) stand-in for the
    simplex projection of the paper. Cost: full Jacobian, state
    O(T * num_params); parameter gradients only. Deterministic.

    State keys: `tracked`, the `(T, num_params)` estimates `Y`, `weights`
    (`lambda`) and `step`.

    Args:
        beta: step size of the gradient tracking (reference: 0.5; LibMTL's
            NYUv2 runs use 0.99 with `beta_sigma=0`).
        beta_sigma: decay exponent of `beta`.
        gamma: step size of the weights (reference: 0.1).
        gamma_sigma: decay exponent of `gamma`.
        rho: L2 regularisation of the weight update (reference: 0).
        eps: guard on gradient norms.

    Example:

    >>> agg = keras_mtl.aggregators.MoCo()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.5, 2.0])

    Reference:
        Fernando et al., "Mitigating Gradient Bias in Multi-objective
        Learning: A Provably Convergent Approach", ICLR 2023; defaults of
        LibMTL's `MoCo`.
    """

    tracks_gradients = True

    def __init__(self, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5,
                 rho=0.0, eps=1e-8, name=None):
        super().__init__(name=name)
        self.beta = check_positive("beta", beta)
        self.beta_sigma = check_non_negative("beta_sigma", beta_sigma)
        self.gamma = check_positive("gamma", gamma)
        self.gamma_sigma = check_non_negative("gamma_sigma", gamma_sigma)
        self.rho = check_non_negative("rho", rho)
        self.eps = check_positive("eps", eps)

    def initial_state(self, num_tasks, num_params=None):
        num_params = check_num_params("MoCo", num_params)
        return {
            "tracked": ops.zeros((num_tasks, num_params)),
            "weights": ops.full((num_tasks,), 1.0 / num_tasks),
            "step": ops.zeros(()),
        }

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        jacobian, state = jacobian_and_state(self, jacobian, state)
        num_tasks = jacobian.shape[0]
        losses = require_losses("MoCo", losses)
        step = state["step"] + 1.0
        beta = self.beta / ops.power(step, self.beta_sigma)
        gamma = self.gamma / ops.power(step, self.gamma_sigma)
        norms = ops.sqrt(ops.sum(jacobian * jacobian, axis=1))
        scaled = jacobian * (losses / (norms + self.eps))[:, None]
        tracked = state["tracked"] - beta * (state["tracked"] - scaled)
        gramian = ops.matmul(tracked, ops.transpose(tracked))
        gramian = gramian + self.rho * ops.eye(num_tasks)
        weights = softmax_over_tasks(
            state["weights"] - gamma * ops.matmul(gramian, state["weights"])
        )
        direction = ops.matmul(weights, tracked)
        return direction, weights, {
            "tracked": tracked, "weights": weights, "step": step}

    def get_config(self):
        return {
            **super().get_config(),
            "beta": self.beta,
            "beta_sigma": self.beta_sigma,
            "gamma": self.gamma,
            "gamma_sigma": self.gamma_sigma,
            "rho": self.rho,
            "eps": self.eps,
        }
