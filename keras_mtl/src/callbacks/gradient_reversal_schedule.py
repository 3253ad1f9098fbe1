import math

import keras

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.gradient_reversal import GradientReversal
from keras_mtl.src.layers.gradient_reversal import check_strength
from keras_mtl.src.utils.layer_internals import sublayers


def dann_strength(progress, gamma=10.0, max_strength=1.0):
    """`max_strength * (2 / (1 + exp(-gamma * progress)) - 1)`."""
    return max_strength * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


@keras_mtl_export("keras_mtl.callbacks.GradientReversalSchedule")
class GradientReversalSchedule(keras.callbacks.Callback):
    """Sets the strength of `GradientReversal` layers as training progresses.

    Before every training batch, with `p` in [0, 1] the fraction of training
    done (`p = step / total_steps`, `step` counting batches from 0 over all
    epochs), every targeted layer's strength becomes `schedule(p)`. The
    default is the DANN schedule (Ganin & Lempitsky, 2015),

    `lambda_p = max_strength * (2 / (1 + exp(-gamma * p)) - 1)`,

    which rises from 0 to almost `max_strength`, damping the noisy
    adversarial gradient early in training. The strength is a variable read
    by the compiled step, so the change takes effect without retracing.

    Args:
        schedule: optional function `progress -> strength` replacing the
            DANN schedule (then `gamma` and `max_strength` are unused). It
            must return a finite number >= 0.
        gamma: steepness of the DANN schedule. Defaults to 10.0.
        max_strength: limit of the DANN schedule. Defaults to 1.0.
        total_steps: number of training batches corresponding to `p = 1`.
            Defaults to `epochs * steps_per_epoch` of the `fit` call; needed
            when `fit` does not know the number of steps per epoch. Later
            steps use `p = 1`.
        layers: optional list of `GradientReversal` layers (or their names)
            to update; defaults to every `GradientReversal` layer in the
            model.

    Example:

    >>> x = keras.Input((3,))
    >>> h = keras.layers.Dense(4)(x)
    >>> y = keras.layers.Dense(1)(keras_mtl.layers.GradientReversal()(h))
    >>> model = keras.Model(x, y)
    >>> model.compile("sgd", "mse")
    >>> schedule = keras_mtl.callbacks.GradientReversalSchedule()
    >>> history = model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=4,
    ...                     epochs=2, callbacks=[schedule], verbose=0)
    >>> strength = model.layers[2].strength  # DANN value at p = 3/4

    Reference:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by
        Backpropagation", ICML 2015.
    """

    def __init__(
        self,
        schedule=None,
        gamma=10.0,
        max_strength=1.0,
        total_steps=None,
        layers=None,
    ):
        super().__init__()
        if schedule is not None and not callable(schedule):
            raise ValueError(
                "`schedule` must be a function progress -> strength. "
                f"Received: schedule={schedule!r}"
            )
        for arg_name, value in (("gamma", gamma), ("max_strength",
                                                   max_strength)):
            check_strength(value, arg_name)
        if total_steps is not None and (
            isinstance(total_steps, bool)
            or not isinstance(total_steps, int)
            or total_steps < 1
        ):
            raise ValueError(
                "`total_steps` must be a positive int or None. Received: "
                f"total_steps={total_steps!r}"
            )
        if layers is not None:
            layers = list(layers)
            for layer in layers:
                if not isinstance(layer, (str, GradientReversal)):
                    raise ValueError(
                        "`layers` must hold GradientReversal layers or their "
                        f"names. Received: layers={layers!r}"
                    )
        self.schedule = schedule
        self.gamma = float(gamma)
        self.max_strength = float(max_strength)
        self.total_steps = total_steps
        self.layers = layers
        self._step = 0
        self._total = None

    def strength_at(self, progress):
        """The strength the schedule gives at `progress` in [0, 1]."""
        progress = min(max(float(progress), 0.0), 1.0)
        if self.schedule is None:
            return dann_strength(progress, self.gamma, self.max_strength)
        return check_strength(self.schedule(progress), "schedule(progress)")

    def _targets(self, model):
        found = [
            layer
            for layer in sublayers(model)
            if isinstance(layer, GradientReversal)
        ]
        if self.layers is None:
            targets = found
        else:
            by_name = {layer.name: layer for layer in found}
            targets = []
            for layer in self.layers:
                if isinstance(layer, str):
                    if layer not in by_name:
                        raise ValueError(
                            "No GradientReversal layer of the model has the "
                            f"name {layer!r}; found {sorted(by_name)}. "
                            f"Received: layers={self.layers!r}"
                        )
                    layer = by_name[layer]
                targets.append(layer)
        if not targets:
            raise ValueError(
                "GradientReversalSchedule found no GradientReversal layer "
                "to update. Received: a model without one"
            )
        return targets

    def on_train_begin(self, logs=None):
        self._step = 0
        self._total = self.total_steps
        if self._total is None:
            epochs = self.params.get("epochs")
            steps = self.params.get("steps")
            if not epochs or not steps:
                raise ValueError(
                    "GradientReversalSchedule needs `total_steps` when fit "
                    "does not know the number of steps per epoch. Received: "
                    f"epochs={epochs!r}, steps={steps!r}"
                )
            self._total = epochs * steps
        self._targets(self.model)  # Fail before the first step.

    def on_train_batch_begin(self, batch, logs=None):
        strength = self.strength_at(self._step / self._total)
        # On JAX, reading `self.model` writes the training state back into
        # the variables, and the next step reads them again, so the
        # assignment below is seen by the compiled step.
        for layer in self._targets(self.model):
            layer.strength = strength
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            layers = self._targets(self.model)
            logs["gradient_reversal_strength"] = layers[0].strength

    def get_config(self):
        layers = self.layers
        if layers is not None:
            layers = [
                layer if isinstance(layer, str) else layer.name
                for layer in layers
            ]
        schedule = self.schedule
        if schedule is not None:
            schedule = keras.saving.serialize_keras_object(schedule)
        return {
            "schedule": schedule,
            "gamma": self.gamma,
            "max_strength": self.max_strength,
            "total_steps": self.total_steps,
            "layers": layers,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("schedule") is not None:
            config["schedule"] = keras.saving.deserialize_keras_object(
                config["schedule"]
            )
        return cls(**config)
