from keras import ops

from keras_mtl.src.aggregators.arg_checks import check_positive
from keras_mtl.src.aggregators.bilevel import BilevelWeighting
from keras_mtl.src.aggregators.bilevel import softmax_vjp
from keras_mtl.src.api_export import keras_mtl_export


@keras_mtl_export("keras_mtl.aggregators.AutoLambda")
class AutoLambda(BilevelWeighting):
    """Auto-Lambda: task weights meta-learnt from a one-step look-ahead.

    The weights are `w = softmax(alpha)`. Each step, on the batch's two
    interleaved parts (inner `A`, outer `B`):

    1. virtual step `theta' = theta - eta grad sum_t w_t L_t(A; theta)`,
       with `eta` the optimizer's current learning rate (or `inner_lr`);
    2. `v = grad sum_{t in primary} L_t(B; theta')`;
    3. the hypergradient `-eta J_softmax^T (L(A; theta + eps v) -
       L(A; theta - eps v)) / (2 eps)`, `eps = 0.01 / ||v||` (a central
       difference for the Hessian-vector product, as DARTS and the paper);
    4. one Adam step on `alpha`; the model then trains on the whole batch
       with the new weights.

    Every trainable variable takes part in the virtual step (shared and
    task-specific), as in LibMTL; the batch-normalisation statistics of the
    virtual passes are discarded. Cost per step: 4 forward and 2 backward
    passes over half the batch, plus the model's step (about 3 and 2 passes
    over the batch; plain training: 1 and 1). Deterministic.
    `MultiTaskModel` supplies the two parts (see `Aggregator.bilevel`):
    shuffle the data and use an even batch size.

    State keys: `alpha`, `adam_m`, `adam_v`, `step`.

    Args:
        learning_rate: Adam learning rate of `alpha` (LibMTL's `outer_lr`,
            default 1e-3).
        inner_lr: learning rate of the virtual step; None (default) uses
            the optimizer's current learning rate, as LibMTL does.
        primary: indices of the tasks whose outer loss is minimised (the
            paper's auxiliary-learning setting); None (default) for all.

    Example:

    >>> agg = keras_mtl.aggregators.AutoLambda()
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

    Reference:
        Liu, Davison & Johns, "Auto-Lambda: Disentangling Dynamic Task
        Relationships", TMLR 2022; LibMTL's `Trainer.train_bilevel`.
    """

    def __init__(self, learning_rate=1e-3, inner_lr=None, primary=None,
                 name=None):
        super().__init__(learning_rate=learning_rate, name=name)
        self.inner_lr = None if inner_lr is None else check_positive(
            "inner_lr", inner_lr)
        if primary is not None:
            primary = sorted({int(t) for t in primary})
            if not primary or primary[0] < 0:
                raise ValueError(
                    "`primary` must be a non-empty list of task indices "
                    f">= 0. Received: primary={primary!r}")
        self.primary = primary

    def check_tasks(self, num_tasks):
        if self.primary is not None and self.primary[-1] >= num_tasks:
            raise ValueError(
                f"`primary` names task {self.primary[-1]}, but there are "
                f"{num_tasks} tasks. Received: primary={self.primary!r}")

    def initial_state(self, num_tasks, num_params=None):
        self.check_tasks(num_tasks)
        return super().initial_state(num_tasks, num_params)

    def _outer_weights(self, num_tasks):
        if self.primary is None:
            return ops.ones((1, num_tasks))
        mask = [1.0 if t in self.primary else 0.0 for t in range(num_tasks)]
        return ops.convert_to_tensor([mask], "float32")

    def hypergradient(self, probe, weights):
        num_tasks = probe.num_tasks
        theta = probe.values
        eta = probe.learning_rate if self.inner_lr is None else self.inner_lr
        _, inner = probe.gradients(theta, weights[None], 0)
        _, outer = probe.gradients(theta - eta * inner[0],
                                   self._outer_weights(num_tasks), 1)
        v = outer[0]
        norm = ops.sqrt(ops.sum(v * v))
        # A zero outer gradient gives a zero hypergradient (v = 0).
        eps = 0.01 / ops.maximum(norm, 1e-30)
        plus = probe.losses(theta + eps * v, 0)
        minus = probe.losses(theta - eps * v, 0)
        return -eta * softmax_vjp(weights, (plus - minus) / (2.0 * eps)), {}

    def get_config(self):
        return {**super().get_config(), "inner_lr": self.inner_lr,
                "primary": self.primary}
