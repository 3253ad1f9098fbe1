from keras import ops

from keras_mtl.src.aggregators.aggregator import Weighting
from keras_mtl.src.aggregators.aggregator import require_losses
from keras_mtl.src.aggregators.arg_checks import check_non_negative
from keras_mtl.src.api_export import keras_mtl_export


def _vector(name, values):
    values = None if values is None else [float(v) for v in values]
    if values is not None and not values:
        raise ValueError(f"`{name}` must not be empty. Received: {name}=[]")
    return values


@keras_mtl_export("keras_mtl.aggregators.PBI")
class PBI(Weighting):
    """Penalty-based boundary intersection (PBI) scalarisation of the losses.

    With the unit preference `p = w / ||w||` and `e = L - z*`:
    `d1 = e . p` (progress along the preference ray), `d2 = sqrt(||e - d1
    p||^2 + 1e-12)` (distance from it), and the objective `d1 + theta d2`.
    Its gradient is `sum_i c_i grad L_i` with `c = p + theta (e - d1 p) /
    d2`, the weights returned. Cost: loss-only. Deterministic. As TorchJD's
    `PBI` scalariser.

    Args:
        theta: the penalty on the distance from the preference ray, >= 0
            (the paper uses 5).
        preference: the `(T,)` preference `w`, positive; `None` means equal.
        reference_point: the `(T,)` ideal point `z*`; `None` means 0.

    Example:

    >>> agg = keras_mtl.aggregators.PBI(theta=5.0)
    >>> direction = agg([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [2.0, 0.5])

    Reference:
        Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on
        Decomposition", IEEE Trans. Evolutionary Computation 11(6), 2007.
    """

    requires_jacobian = False

    def __init__(self, theta=5.0, preference=None, reference_point=None,
                 name=None):
        super().__init__(name=name)
        self.theta = check_non_negative("theta", theta)
        self.preference = _vector("preference", preference)
        self.reference_point = _vector("reference_point", reference_point)
        if self.preference is not None and min(self.preference) < 0.0:
            raise ValueError("`preference` must be >= 0. Received: "
                             f"preference={preference}")

    def scalarized(self, losses):
        """The PBI objective of a `(T,)` loss vector."""
        return self._objective(require_losses("PBI", losses))[0]

    def _objective(self, losses):
        num_tasks = losses.shape[0]
        for key in ("preference", "reference_point"):
            value = getattr(self, key)
            if value is not None and len(value) != num_tasks:
                raise ValueError(
                    f"`{key}` has {len(value)} entries for {num_tasks} tasks."
                    f" Received: {key}={value}")
        preference = ops.convert_to_tensor(
            self.preference or [1.0] * num_tasks, "float32")
        preference = preference / ops.sqrt(ops.sum(preference**2))
        excess = losses - ops.convert_to_tensor(
            self.reference_point or [0.0] * num_tasks, "float32")
        along = ops.sum(excess * preference)
        off = excess - along * preference
        distance = ops.sqrt(ops.sum(off**2) + 1e-12)
        weights = preference + self.theta * off / distance
        return along + self.theta * distance, weights

    def compute_weights(self, num_tasks, gramian, losses, state, seed=None):
        return self._objective(require_losses("PBI", losses))[1], state

    def get_config(self):
        return {**super().get_config(), "theta": self.theta,
                "preference": self.preference,
                "reference_point": self.reference_point}
