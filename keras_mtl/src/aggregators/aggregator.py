"""Base classes of the gradient-balancing rules.

An aggregator turns the per-task gradients of the shared parameters (the
Jacobian, one row per task) into one update direction. All maths is written
with `keras.ops`, so the same code runs on TensorFlow, JAX and PyTorch and
traces under `jit`. Aggregators are immutable: whatever changes from step to
step is an explicit `state` dict of tensors that goes in and comes out, which
`MultiTaskModel` stores in non-trainable variables (so JAX's stateless step
works and `.keras` checkpoints save it).
"""

from keras import ops


def _check_jacobian(jacobian):
    if len(jacobian.shape) != 2:
        raise ValueError(
            "The Jacobian must have shape (num_tasks, num_params). "
            f"Received: jacobian.shape={tuple(jacobian.shape)}"
        )


def _num_tasks(jacobian, splits):
    """The number of tasks of a Jacobian with `splits` rows per task."""
    rows = jacobian.shape[0]
    if rows % splits:
        raise ValueError(
            f"This rule reads {splits} independent batches: the Jacobian needs "
            f"{splits} rows per task (part-major). Received: "
            f"jacobian.shape={tuple(jacobian.shape)}")
    return rows // splits


def _check_losses(losses, num_tasks):
    if losses is not None and tuple(losses.shape) != (num_tasks,):
        raise ValueError(
            f"`losses` must have shape ({num_tasks},), one value per Jacobian "
            f"row. Received: losses.shape={tuple(losses.shape)}"
        )


class Aggregator:
    """Combines per-task gradients into one update direction.

    Subclasses implement `aggregate`. Class attributes say what the model has
    to compute for them:

    - `requires_jacobian`: `False` for rules whose result depends only on the
      task losses; `MultiTaskModel` then runs a single backward pass of the
      weighted sum of losses instead of computing per-task gradients.

    Call an aggregator on a `(num_tasks, num_params)` Jacobian to get the
    `(num_params,)` direction; use `aggregate` to also get the task weights
    and to thread state explicitly.

    `diagnostics` names the state keys (scalars) that `MultiTaskModel` logs
    as `<aggregator name>_<key>`, e.g. a solver's convergence gap.

    Rules with learnable parameters (uncertainty weighting, IMTL-L) return
    them from `initial_parameters`; `MultiTaskModel` keeps them as trainable
    variables and trains them with the model by differentiating
    `scalarize(losses, parameters)`. Rules with `uses_epoch = True` read the
    current epoch of `fit` from `state["epoch"]` (0 when used on its own).
    The state passed in may hold these read-only entries; only the keys of
    `initial_state` are kept from the returned state.

    Rules that balance the gradients of one layer (GradNorm's `layer`) name
    it in `gramian_layer`; the model then also passes that layer's Gramian
    as `state["layer_gramian"]`.

    Rules with `requires_losses_after_step = True` (FAMO) get the task losses
    re-evaluated on the same batch after the optimizer step, through
    `update_after_step(losses_before, losses_after, state)`.

    Rules with `tracks_gradients = True` (MoCo, DB-MTL, ExcessMTL) keep
    per-parameter state, O(T * num_params): `initial_state` needs
    `num_params`, the Jacobian's width, which must stay the same from step to
    step (they work on parameter gradients, not on feature gradients).

    Rules with `batch_splits = k > 1` (MoDo, SDMGrad) need the task gradients
    of `k` independent batches. `MultiTaskModel` splits every batch into `k`
    interleaved parts (sample `i` in part `i mod k`) and differentiates each
    task's loss on each part: the Jacobian has `k * T` rows, part-major (row
    `s * T + t` is task `t` on part `s`), and the rule returns `k * T` row
    weights. That costs `k * T` backward passes per step instead of `T`
    (still one forward pass).

    Rules with `bilevel = True` (Auto-Lambda, MOML) learn their state from a
    virtual step of the model: before each step `MultiTaskModel` calls
    `meta_update(probe, state)` with a `Probe` (`models/probe.py`) that
    evaluates, and differentiates, the task losses of the batch's two
    interleaved parts at any values of the trainable variables; the step
    itself then reads the new state.
    """

    requires_jacobian = True
    gramian_layer = None
    uses_epoch = False
    requires_losses_after_step = False
    tracks_gradients = False
    batch_splits = 1
    bilevel = False
    diagnostics = ()

    def __init__(self, name=None):
        self.name = name or _snake_case(type(self).__name__)

    def initial_state(self, num_tasks, num_params=None):
        """Returns the state before the first step: a dict of tensors.

        `num_params` (the Jacobian's width) is only read by rules with
        `tracks_gradients = True`.
        """
        del num_tasks, num_params
        return {}

    def initial_parameters(self, num_tasks):
        """Returns the trainable parameters' initial values: a dict."""
        del num_tasks
        return {}

    def scalarize(self, losses, parameters):
        """The objective whose gradient trains the model and the parameters.

        Only used by rules with parameters; `losses` is the `(T,)` vector.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no learnable parameters."
        )

    def update_after_step(self, losses_before, losses_after, state):
        """Returns the new state once the step's effect on the losses is
        known; only called when `requires_losses_after_step` is True."""
        del losses_before, losses_after
        return state

    def check_tasks(self, num_tasks):
        """Raises a `ValueError` if the rule's arguments do not fit
        `num_tasks` tasks (a task index out of range, a weight per task);
        `compile` calls it before it changes the model."""
        del num_tasks

    def meta_update(self, probe, state):
        """Returns the new state learnt from a virtual step (see
        `models/probe.py`); only called when `bilevel` is True."""
        del probe
        return state

    def parameters_from(self, state, num_tasks):
        """The parameters found in `state`, or their initial values."""
        initial = self.initial_parameters(num_tasks)
        return {key: state.get(key, value) for key, value in initial.items()}

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        """Combines the rows of `jacobian`.

        Args:
            jacobian: tensor of shape `(num_tasks, num_params)`, one task
                gradient per row.
            losses: optional tensor of shape `(num_tasks,)`, the task losses.
            state: the dict returned by `initial_state` or by the previous
                call; `None` means the initial state.
            seed: a `keras.random.SeedGenerator` or an integer, used only by
                randomised rules.

        Returns:
            A tuple `(direction, weights, new_state)`: the `(num_params,)`
            direction, the `(num_tasks,)` weights such that, for rules that
            are a weighted sum of the rows, `direction = weights @ jacobian`,
            and the new state dict.
        """
        raise NotImplementedError

    def __call__(self, jacobian, losses=None):
        jacobian = ops.convert_to_tensor(jacobian)
        _check_jacobian(jacobian)
        direction, _, _ = self.aggregate(jacobian, losses)
        return direction

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items() if k != "name"
        )
        return f"{type(self).__name__}({args})"


class Weighting(Aggregator):
    """An aggregator whose direction is a weighted sum of the task gradients.

    Subclasses implement
    `compute_weights(num_tasks, gramian, losses, state, seed)`,
    which sees the task gradients only through their Gramian
    `G = J J^T` (`None` when `requires_jacobian` is `False`). The direction is
    then `weights @ J`. Because only the `(num_tasks, num_tasks)` Gramian is
    needed, `MultiTaskModel` never concatenates the shared gradients for these
    rules: it sums the Gramians of the variables and weights each variable's
    Jacobian separately.
    """

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        """Returns `(weights, new_state)`; see the class docstring."""
        raise NotImplementedError

    def aggregate(self, jacobian, losses=None, state=None, seed=None):
        jacobian = ops.convert_to_tensor(jacobian)
        _check_jacobian(jacobian)
        num_tasks = _num_tasks(jacobian, self.batch_splits)
        if losses is not None:
            losses = ops.convert_to_tensor(losses, dtype=jacobian.dtype)
        _check_losses(losses, num_tasks)
        initial = self.initial_state(num_tasks, jacobian.shape[1])
        own_keys = set(initial)
        if state is None:
            state = initial
        gramian = None
        if self.requires_jacobian:
            gramian = ops.matmul(jacobian, ops.transpose(jacobian))
        weights, state = self.compute_weights(
            num_tasks, gramian, losses, state, seed
        )
        weights = ops.cast(weights, jacobian.dtype)
        state = {k: v for k, v in state.items() if k in own_keys}
        return ops.matmul(weights, jacobian), weights, state


def check_num_params(name, num_params):
    """Returns `num_params` as an int, for rules with per-parameter state.

    0 is accepted: a model with no shared parameters has an empty Jacobian.
    """
    if num_params is None or int(num_params) < 0:
        raise ValueError(
            f"{name} keeps per-parameter state and needs `num_params`, the "
            f"Jacobian's width. Received: num_params={num_params!r}"
        )
    return int(num_params)


def jacobian_and_state(aggregator, jacobian, state):
    """The float32 Jacobian and `state`, or the initial state if it is None.

    The common start of `aggregate` for rules that use the Jacobian itself
    rather than its Gramian.
    """
    jacobian = ops.cast(ops.convert_to_tensor(jacobian), "float32")
    if state is None:
        state = aggregator.initial_state(*jacobian.shape)
    return jacobian, state


def _snake_case(name):
    out = []
    for i, char in enumerate(name):
        if char.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(char.lower())
    return "".join(out)


def softmax_over_tasks(logits):
    """`softmax` over the last axis; for one task simply 1 (Keras warns on a
    softmax over an axis of size 1, which is legitimate here)."""
    if logits.shape[-1] == 1:
        return ops.ones_like(logits)
    return ops.softmax(logits)


def seed_from(seed):
    """Normalises a `seed` argument for `keras.random` functions.

    `None` becomes the fixed integer seed 0, so a standalone call is
    reproducible; pass a `keras.random.SeedGenerator` (as `MultiTaskModel`
    does) to draw fresh randomness at every call.
    """
    return 0 if seed is None else seed


def require_losses(name, losses):
    """Returns `losses` as float32, or raises if a loss-based rule got none."""
    if losses is None:
        raise ValueError(
            f"{name} weights the tasks by their losses; pass `losses`. "
            "Received: losses=None"
        )
    return ops.cast(losses, "float32")
