from keras import ops

from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.bilevel import BilevelWeighting
from keras_mtl.src.aggregators.bilevel import softmax_vjp
from keras_mtl.src.aggregators.min_norm_solver import min_norm_weights
from keras_mtl.src.api_export import keras_mtl_export

# Length below which the minimum-norm point of unit vectors counts as 0.
_STATIONARY = 1e-4


@keras_mtl_export("keras_mtl.aggregators.MOML")
class MOML(BilevelWeighting):
    """MOML: multi-objective meta learning of the task weights.

    The weights are `w = softmax(alpha)`. Each step, on the batch's two
    interleaved parts (inner `A`, outer `B`):

    1. per-task inner gradients `G_f` (rows `grad L_t(A; theta)`) and the
       virtual step `theta' = theta - inner_lr w^T G_f`;
    2. per-task outer gradients `G_F` (rows `grad L_t(B; theta')`);
    3. one hypergradient of `alpha` per task, the rows of
       `H = -inner_lr G_F G_f^T J_softmax(alpha)`, each scaled to unit
       length, combined by their minimum-norm convex combination (MGDA,
       solved exactly in-graph; its gap is logged as `moml_gap`), taken
       as 0 when shorter than 1e-4 (the weights are Pareto-stationary);
    4. one Adam step on `alpha`; the model then trains on the whole batch
       with the new weights.

    Every trainable variable takes part in the virtual step, as in LibMTL.
    Cost per step: 2 forward and `2 T` backward passes over half the batch,
    plus the model's step (about 2 and `T + 1` passes over the batch).
    Deterministic. `MultiTaskModel` supplies the two parts (see
    `Aggregator.bilevel`): shuffle the data and use an even batch size.

    State keys: `alpha`, `adam_m`, `adam_v`, `step`, `gap`.

    Args:
        learning_rate: Adam learning rate of `alpha` (LibMTL's `outer_lr`,
            default 1e-3).
        inner_lr: learning rate of the virtual step (LibMTL: 0.1).

    Example:

    >>> agg = keras_mtl.aggregators.MOML()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Ye, Lin, Hu, Li, Zheng & Zhang, "Multi-Objective Meta Learning",
        NeurIPS 2021 (Artificial Intelligence 2024); LibMTL's
        `Trainer.train_bilevel`.
    """

    diagnostics = ("gap",)

    def __init__(self, learning_rate=1e-3, inner_lr=0.1, name=None):
        super().__init__(learning_rate=learning_rate, name=name)
        self.inner_lr = check_positive("inner_lr", inner_lr)

    def initial_state(self, num_tasks, num_params=None):
        return {**super().initial_state(num_tasks), "gap": ops.zeros(())}

    def hypergradient(self, probe, weights):
        num_tasks = probe.num_tasks
        theta = probe.values
        eye = ops.eye(num_tasks, dtype="float32")
        _, inner = probe.gradients(theta, eye, 0)
        _, outer = probe.gradients(
            theta - self.inner_lr * ops.matmul(weights, inner), eye, 1)
        cross = -self.inner_lr * ops.matmul(outer, ops.transpose(inner))
        per_task = softmax_vjp(weights[None], cross)
        norms = ops.sqrt(ops.sum(per_task * per_task, axis=1, keepdims=True))
        per_task = per_task / ops.maximum(norms, 1e-30)
        solution, gap, _ = min_norm_weights(
            ops.matmul(per_task, ops.transpose(per_task)))
        direction = ops.matmul(solution, per_task)
        # The unit rows' minimum-norm point is 0 (Pareto-stationary weights)
        # up to float32 rounding; Adam would turn that rounding into a full
        # step, so it is zeroed.
        length = ops.sqrt(ops.sum(direction * direction))
        direction = ops.where(length > _STATIONARY, direction,
                              ops.zeros_like(direction))
        return direction, {"gap": ops.cast(gap, "float32")}

    def get_config(self):
        return {**super().get_config(), "inner_lr": self.inner_lr}
