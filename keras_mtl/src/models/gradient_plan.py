"""What one balanced training step differentiates."""

import math
import warnings

GRADIENT_MODES = ("parameters", "features", "gramian")


def check_replicas(gradient_mode, count):
    """Refuses `gradient_mode="gramian"` over several replicas (processes
    or `tf.distribute` devices), each with its own part of the batch: the
    global Gramian `(sum_k J_k)(sum_k J_k)^T` needs the replicas' Jacobians,
    which that mode never forms. JAX's `keras.distribution` runs one program
    over the global batch and is not refused."""
    if gradient_mode == "gramian" and count > 1:
        raise ValueError(
            "gradient_mode='gramian' cannot sum the replicas' Gramians into "
            "the Gramian of the global batch. Use gradient_mode='parameters' "
            "with several replicas, or the JAX backend's "
            f"keras.distribution. Received: {count} replicas")


class GradientPlan:
    """What one training step differentiates, fixed when the step is traced.

    Args:
        trainable: the model's `trainable_variables`, in order.
        shared_ids: `id`s of the variables whose per-task gradients are
            aggregated.
        aggregator: the compiled aggregator.
        gradient_mode: `"parameters"`, `"features"` or `"gramian"`.
        features_layer: the layer whose output is split off in
            `"features"` mode (see `feature_split.split_at`).
        features_ids: `id`s of the variables that layer's output depends
            on (every shared variable must be one of them), or `None`.
        layer_variable_ids: `id`s of the variables of the aggregator's
            `gramian_layer`, or `None`.
        num_params: the shared width the aggregator's per-parameter state
            was built for (rules with `tracks_gradients`), or `None`.

    Attributes:
        shared / others: the aggregated variables and every other trainable
            variable; `shared_index` / `others_index` are their positions in
            `trainable`.
        mode: `"losses"` (one backward pass of the weighted loss),
            `"parameters"`, `"features"` or `"gramian"` (the row Gramian
            of the shared variables' task gradients, column by column, then
            one backward pass of the weighted loss).
        features_layer: the split layer in `"features"` mode, else `None`.
        saliency_layer: the features layer whenever `gradient_mode` is
            `"features"` (also for a loss-only rule), else `None`.
        norm_index: positions in `shared` of the `gramian_layer`'s variables.
    """

    def __init__(self, trainable, shared_ids, aggregator,
                 gradient_mode="parameters", features_layer=None,
                 features_ids=None, layer_variable_ids=None,
                 num_params=None):
        self.shared_index = [
            i for i, v in enumerate(trainable) if id(v) in shared_ids
        ]
        self.others_index = [
            i for i, v in enumerate(trainable) if id(v) not in shared_ids
        ]
        self.shared = [trainable[i] for i in self.shared_index]
        self.others = [trainable[i] for i in self.others_index]
        name = type(aggregator).__name__
        if not aggregator.requires_jacobian or not self.shared:
            self.mode = "losses"
        else:
            self.mode = gradient_mode
        if aggregator.requires_jacobian and not self.shared:
            warnings.warn(
                f"No trainable variable is shared between tasks, so {name} "
                "has no gradients to balance: each task's variables are "
                "trained with that task's own loss gradient.",
                stacklevel=2,
            )
        if aggregator.tracks_gradients and self.mode == "parameters":
            width = sum(math.prod(v.shape) for v in self.shared)
            if width != num_params:
                raise ValueError(
                    f"{name} keeps per-parameter state for {num_params} "
                    f"shared parameters, but {width} are now trainable and "
                    "shared. Compile the model again after changing which "
                    f"variables are trainable. Received: {len(self.shared)} "
                    "shared variables"
                )
        self.norm_index = None
        if layer_variable_ids is not None and self.mode != "losses":
            if self.mode not in ("parameters", "gramian"):
                raise ValueError(
                    f"{name}(layer={aggregator.gramian_layer!r}) needs "
                    "gradient_mode='parameters' or 'gramian'. Received: "
                    f"gradient_mode={self.mode!r}"
                )
            self.norm_index = [
                k for k, v in enumerate(self.shared)
                if id(v) in layer_variable_ids
            ]
            if not self.norm_index:
                raise ValueError(
                    f"Layer {aggregator.gramian_layer!r} has no shared "
                    f"trainable variables, so {name} cannot balance its "
                    "gradient norms. Received: "
                    f"layer={aggregator.gramian_layer!r}"
                )
        # The features layer of a saliency regulariser: requested in
        # features mode, whichever way the rule's step runs.
        self.saliency_layer = (features_layer
                               if gradient_mode == "features" else None)
        self.features_layer = None
        if self.mode == "features":
            self.features_layer = features_layer
            outside = [
                v.path for v in self.shared
                if features_ids is not None and id(v) not in features_ids
            ]
            if outside:
                raise ValueError(
                    "gradient_mode='features' needs every shared variable "
                    f"upstream of the output of {features_layer.name!r}; "
                    f"these are not: {outside}"
                )

    def assemble(self, shared_grads, other_grads):
        """Puts gradients back in `trainable_variables` order."""
        grads = [None] * (len(self.shared) + len(self.others))
        for i, g in zip(self.shared_index, shared_grads):
            grads[i] = g
        for i, g in zip(self.others_index, other_grads):
            grads[i] = g
        return grads
