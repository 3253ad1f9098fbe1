from keras import ops

from keras_mtl.src.aggregators import cross_batch
from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.arg_checks import check_count
from keras_mtl.src.aggregators.arg_checks import check_fraction
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.arg_checks import check_preference
from keras_mtl.src.aggregators.arg_checks import preference_for
from keras_mtl.src.aggregators.solver_ops import project_onto_simplex
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.SDMGrad")
class SDMGrad(Weighting):
    """SDMGrad: stochastic direction-oriented multi-objective gradient.

    The direction `d = J^T (w + lambda w~) / (1 + lambda)` is pulled
    towards the preference direction `J^T w~` (by default the mean
    gradient). The weights `w` minimise `1/2 ||J^T (w + lambda w~)||^2` over
    the simplex, estimated without bias from two independent batches,
    `A = J_1 J_2^T`, scaled by `s^2` with `s` the mean of
    `sqrt(max(diag A, 0))` (so the step size does not depend on the
    gradients' scale). Each training step runs `num_iterations` projected
    heavy-ball steps from the previous step's `w`:

        v <- momentum v + A/s^2 (w + lambda w~);  w <- Proj_simplex(w - lr v)

    and the model steps along the resulting weights applied to a third
    batch's gradients (or, with `num_batches=2`, to the mean of both
    batches'). In `MultiTaskModel` the batches are the interleaved parts of
    each batch (see `Aggregator.batch_splits`). Cost: `num_batches * T`
    backward passes per step, one forward pass. Deterministic.

    Standalone, pass the part-major Jacobian: `num_batches * T` rows, row
    `s * T + t` being task `t`'s gradient on batch `s`.

    State keys: `weights` (`w`), and `solver_residual`, the size of the
    last inner step relative to `lr` (the inner loop is a fixed number of
    stochastic steps by design, not a solve to convergence).

    Args:
        lr: step size of the inner loop, > 0 (default 10, the authors'
            code; LibMTL uses 5).
        momentum: the inner loop's momentum, in `[0, 1)` (default 0.5).
        num_iterations: inner steps per training step (default 20).
        direction_weight: `lambda` >= 0, the pull towards the preference
            (default 0.3, the paper's experiments).
        preference: the `(T,)` preference weights `w~`, >= 0; `None` means
            uniform.
        num_batches: 3 (the paper's algorithm) or 2.

    Example:

    >>> agg = keras_mtl.aggregators.SDMGrad(num_batches=2)
    >>> direction = agg([[1.0, 0.0], [0.0, 2.0], [1.2, 0.1], [0.1, 1.8]])

    Reference:
        Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple
        and Provable Stochastic Algorithms", NeurIPS 2023.
    """

    diagnostics = ("solver_residual",)

    def __init__(self, lr=10.0, momentum=0.5, num_iterations=20,
                 direction_weight=0.3, preference=None, num_batches=3,
                 name=None):
        super().__init__(name=name)
        self.lr = check_positive("lr", lr)
        self.momentum = check_fraction("momentum", momentum,
                                       include_one=False)
        self.num_iterations = check_count("num_iterations", num_iterations)
        self.direction_weight = check_non_negative("direction_weight",
                                                   direction_weight)
        self.preference = check_preference(preference)
        self.num_batches = cross_batch.check_num_batches(num_batches)

    @property
    def batch_splits(self):
        return self.num_batches

    def initial_state(self, num_tasks, num_params=None):
        return {"weights": ops.full((num_tasks,), 1.0 / num_tasks),
                "solver_residual": ops.zeros(())}

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        preference = preference_for(self.preference, num_tasks)
        if preference is None:
            preference = ops.full((num_tasks,), 1.0 / num_tasks)
        cross = cross_batch.cross_matrix(gramian, num_tasks)
        scale = ops.mean(ops.sqrt(ops.relu(ops.diagonal(cross))))
        cross = cross / (scale**2 + 1e-8)
        pull = self.direction_weight * preference

        def step(_, carry):
            weights, velocity, _ = carry
            velocity = (self.momentum * velocity
                        + ops.matmul(cross, weights + pull))
            new = project_onto_simplex(weights - self.lr * velocity)
            return new, velocity, ops.amax(ops.abs(new - weights))

        weights = ops.cast(state["weights"], "float32")
        weights, _, change = ops.fori_loop(
            0, self.num_iterations, step,
            (weights, ops.zeros_like(weights), ops.zeros(())))
        direction = (weights + pull) / (1.0 + self.direction_weight)
        return (cross_batch.row_weights(direction, self.num_batches),
                {"weights": weights, "solver_residual": change / self.lr})

    def get_config(self):
        return {**super().get_config(), "lr": self.lr,
                "momentum": self.momentum,
                "num_iterations": self.num_iterations,
                "direction_weight": self.direction_weight,
                "preference": self.preference,
                "num_batches": self.num_batches}
