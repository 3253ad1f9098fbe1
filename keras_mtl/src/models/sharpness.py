"""Task-based sharpness-aware minimisation (F-MTL).

Phan et al., "Improving Multi-task Learning via Seeking Task-based Flat
Regions" (FS-MTL code, `nyuv2/train.py`): every task's gradient is taken at
its own worst-case point within radius `rho`, then the per-task "flat"
gradients are balanced by the aggregator. For each row `r` (a task, or a
task on one part of the batch for the cross-batch rules):

1. `g_r`, the gradient of the row's loss at the current values `w`, over the
   shared variables and over the task-specific ones;
2. the ascent step `e_r = rho * T^2 g_r / ||T g_r||`, normalised separately
   on the shared and on the task-specific variables, with `T = |w|`
   (adaptive, ASAM; the paper's default) or `T = 1`;
3. `g_r^SAM`, the gradient of the same loss at `w + e_r`.

The shared rows `g_r^SAM` go to the aggregator; each task-specific variable
receives the rows' task-specific parts, summed with the task coefficients
(the task weights with `weight_task_specific`). Cost per step: `1 + R`
forward and `2 R` backward passes of the model (`R = T` rows), the first
forward and `R` backward passes being the step's own (about twice plain
per-task gradients). Non-trainable
updates (batch-norm statistics) of the perturbed passes are discarded, as
FS-MTL freezes them there.
"""

from keras import ops

from keras_mtl.src.aggregators.arg_checks import check_finite

SHARPNESS = (None, "task")

# Added to the norm of the scaled gradient (a zero gradient: no step).
NORM_EPSILON = 1e-12


def check_sharpness(sharpness, rho, adaptive):
    """Validates the `compile` arguments; returns `(sharpness, rho,
    adaptive)` normalised."""
    if sharpness not in SHARPNESS:
        raise ValueError(
            f"`sharpness` must be one of {SHARPNESS}. Received: "
            f"sharpness={sharpness!r}")
    rho = check_finite("rho", rho)
    if not isinstance(adaptive, bool):
        raise ValueError(
            "`sharpness_adaptive` must be True or False. Received: "
            f"sharpness_adaptive={adaptive!r}")
    return sharpness, rho, adaptive


class TaskSharpness:
    """The per-row ascent steps and flat gradients of F-MTL.

    Args:
        rho: the radius of the neighbourhood. Defaults to 2.0 (F-MTL's,
            with `adaptive=True`).
        adaptive: scale the ascent step by `|w|` (ASAM).
    """

    def __init__(self, rho=2.0, adaptive=True):
        self.rho = float(rho)
        self.adaptive = bool(adaptive)

    def ascent_steps(self, values, gradients, num_shared):
        """`(R, P)` ascent steps for the `(R, P)` row `gradients` at the
        `(P,)` `values`; the first `num_shared` entries (shared variables)
        and the rest are normalised separately."""
        scale = ops.abs(values) if self.adaptive else ops.ones_like(values)
        blocks = []
        for part in (slice(0, num_shared), slice(num_shared, None)):
            s, g = scale[part], gradients[:, part]
            if s.shape[0] == 0:
                blocks.append(g)
                continue
            scaled = g * s
            norm = ops.sqrt(ops.sum(scaled * scaled, axis=1, keepdims=True))
            blocks.append(self.rho * s * scaled / (norm + NORM_EPSILON))
        return ops.concatenate(blocks, axis=1)

    def gradients(self, probe, num_rows, num_shared, clean_losses=None,
                  clean=None):
        """`(R, P)` flat gradients: row `r` is the gradient of row loss `r`
        at its own ascent point, over every variable of `probe` (shared
        ones first, `num_shared` entries).

        `clean_losses` `(R,)` and `clean` `(R, P)`, the row losses and
        gradients at the current values, are computed with the probe unless
        given (the engines take them from the step's own forward pass).
        Also returns the `(R,)` sharpness `L_r(w + e_r) - L_r(w)`.
        """
        values = probe.values
        eye = ops.eye(num_rows, dtype="float32")
        if clean is None:
            clean_losses, clean = probe.gradients(values, eye, None)
        steps = self.ascent_steps(values, clean, num_shared)
        rows, raised = [], []
        for r in range(num_rows):
            losses, grads = probe.gradients(values + steps[r], eye[r: r + 1],
                                            None)
            rows.append(grads[0])
            raised.append(losses[r])
        return ops.stack(rows), ops.stack(raised) - ops.cast(
            clean_losses, "float32")
