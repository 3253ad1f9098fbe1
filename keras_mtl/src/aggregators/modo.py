from keras import ops

from keras_mtl.src.aggregators import cross_batch
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.solver_ops import project_onto_simplex
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.MoDo")
class MoDo(Weighting):
    """MoDo: MGDA's weights learnt by stochastic steps on double samples.

    The task weights `lambda` (uniform at first) take one projected step per
    training step on MGDA's objective `1/2 ||J^T lambda||^2 + rho/2
    ||lambda||^2`, its Gramian estimated without bias from two independent
    batches, `A = J_1 J_2^T`:

        lambda <- Proj_simplex(lambda - gamma (J_1 J_2^T lambda + rho lambda))

    and the model steps along `lambda` applied to a third batch's gradients
    (or, with `num_batches=2`, to the mean of both batches' gradients). In
    `MultiTaskModel` the batches are the interleaved parts of each batch
    (see `Aggregator.batch_splits`): shuffle the data and use a batch size
    divisible by `num_batches`. Cost: `num_batches * T` backward passes per
    step, one forward pass. Deterministic.

    Standalone, pass the part-major Jacobian: `num_batches * T` rows, row
    `s * T + t` being task `t`'s gradient on batch `s`.

    State keys: `weights` (`lambda`).

    Args:
        gamma: step size of the weights, > 0 (default 0.1; LibMTL uses
            1e-3).
        rho: the weights' L2 regularisation, >= 0 (default 0.1).
        num_batches: 3 (the paper's algorithm: weights from the first two
            batches, direction from the third) or 2.

    Example:

    >>> agg = keras_mtl.aggregators.MoDo(num_batches=2)
    >>> # Two tasks on two batches: rows [t0 b0, t1 b0, t0 b1, t1 b1].
    >>> direction = agg([[1.0, 0.0], [0.0, 2.0], [1.2, 0.1], [0.1, 1.8]])

    Reference:
        Chen, Fang, Lu, Sun, Zhang & Chen, "Three-Way Trade-Off in
        Multi-Objective Learning: Optimization, Generalization and
        Conflict-Avoidance", NeurIPS 2023 (JMLR 2024), Algorithm 1.
    """

    def __init__(self, gamma=0.1, rho=0.1, num_batches=3, name=None):
        super().__init__(name=name)
        self.gamma = check_positive("gamma", gamma)
        self.rho = check_non_negative("rho", rho)
        self.num_batches = cross_batch.check_num_batches(num_batches)

    @property
    def batch_splits(self):
        return self.num_batches

    def initial_state(self, num_tasks, num_params=None):
        return {"weights": ops.full((num_tasks,), 1.0 / num_tasks)}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        cross = cross_batch.cross_matrix(gramian, num_tasks)
        weights = ops.cast(state["weights"], "float32")
        weights = project_onto_simplex(
            weights - self.gamma * (ops.matmul(cross, weights)
                                    + self.rho * weights))
        return (cross_batch.row_weights(weights, self.num_batches),
                {"weights": weights})

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "rho": self.rho,
                "num_batches": self.num_batches}
