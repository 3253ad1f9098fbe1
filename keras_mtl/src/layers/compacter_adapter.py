"""`CompacterAdapter`: a bottleneck adapter with PHM projections."""

import keras
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers import validation
from keras_mtl.src.layers.phm_rule import PHMRule


def phm_kernel(rule, left, right):
    """`sum_i A_i kron (s_i t_i)`: `rule` `(n, n, n)`, `left` `(n, p, r)`,
    `right` `(n, r, q)`; returns the `(n p, n q)` kernel."""
    n, p, q = rule.shape[0], left.shape[1], right.shape[2]
    blocks = ops.matmul(left, right)  # (n, p, q): B_i = s_i t_i
    kernel = ops.einsum("iab,ipq->apbq", rule, blocks)
    return ops.reshape(kernel, (n * p, n * q))


@keras_mtl_export("keras_mtl.layers.CompacterAdapter")
class CompacterAdapter(keras.layers.Layer):
    """Compacter: `delta(x) = W_up f(W_dn x + b_dn) + b_up`, PHM kernels.

    Each projection kernel is `W = sum_{i=1}^n A_i kron (s_i t_i)`
    (Mahabadi et al., 2021): the `n x n` rules `A_i` come from a
    `keras_mtl.layers.PHMRule` shared by all adapters of a task, and the
    factors `s_i` (`d_in / n x r`) and `t_i` (`r x d_out / n`) are this
    adapter's (`r = phm_rank`). Weights per adapter (rank 1):
    `2 (d + m) + m + d`, with `m = d // reduction_factor`; 2,376 for
    `d = 768`, reduction factor 32. The rules start at `N(0, 1e-4)`, so the
    adapter starts near zero (near the identity with `residual=True`).

    Args:
        rule: the shared `PHMRule`. Defaults to `None`: the adapter owns one.
        reduction_factor: bottleneck `m = d // reduction_factor`. Defaults
            to `32`.
        activation: defaults to `"gelu"`.
        phm_rank: rank `r` of the factors. Defaults to `1`.
        residual: add the input to the output. Defaults to `False`.
        factor_initializer: initializer of `s_i`, `t_i`. Defaults to
            `"glorot_normal"` (what `adapters` uses, see its `init_W`).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> rule = keras_mtl.layers.PHMRule(phm_dim=4)
    >>> adapter = keras_mtl.layers.CompacterAdapter(rule, reduction_factor=2)
    >>> y = adapter(np.ones((2, 3, 16), "float32"))
    >>> adapter.count_params()  # 2 (16 + 8) + 8 + 16, plus the 64 rules
    136
    """

    def __init__(self, rule=None, reduction_factor=32, activation="gelu",
                 phm_rank=1, residual=False, factor_initializer="glorot_normal",
                 **kwargs):
        super().__init__(**kwargs)
        if rule is None:
            rule = PHMRule(name="phm_rule")
        if not isinstance(rule, PHMRule):
            raise ValueError(
                f"`rule` must be a `PHMRule` or None. Received: rule={rule!r}")
        self.rule = rule
        self.reduction_factor = validation.check_positive_number(
            "reduction_factor", reduction_factor)
        self.activation = validation.get_activation(activation)
        self.phm_rank = validation.check_positive_int("phm_rank", phm_rank)
        self.residual = validation.check_bool("residual", residual)
        self.factor_initializer = validation.get_initializer(
            "factor_initializer", factor_initializer)

    def build(self, input_shape):
        d = validation.last_dim("inputs", input_shape)
        n, r = self.rule.phm_dim, self.phm_rank
        m = max(1, int(d // self.reduction_factor))
        if d % n or m % n:
            raise ValueError(
                f"Compacter needs the hidden size ({d}) and the bottleneck "
                f"({m}) to be multiples of phm_dim={n}. Received: input "
                f"shape={tuple(input_shape)}, reduction_factor="
                f"{self.reduction_factor}"
            )
        if not self.rule.built:
            self.rule.build(None)

        def weight(shape, name, initializer=None):
            return self.add_weight(
                shape=shape, name=name,
                initializer=initializer or self.factor_initializer)

        self.down_left = weight((n, d // n, r), "down_left")
        self.down_right = weight((n, r, m // n), "down_right")
        self.down_bias = weight((m,), "down_bias", "zeros")
        self.up_left = weight((n, m // n, r), "up_left")
        self.up_right = weight((n, r, d // n), "up_right")
        self.up_bias = weight((d,), "up_bias", "zeros")

    def kernels(self):
        """The `(d, m)` down and `(m, d)` up kernels."""
        rule = ops.convert_to_tensor(self.rule.rule)
        return (phm_kernel(rule, self.down_left, self.down_right),
                phm_kernel(rule, self.up_left, self.up_right))

    def call(self, inputs):
        down, up = self.kernels()
        down = ops.cast(down, inputs.dtype)
        up = ops.cast(up, inputs.dtype)
        hidden = self.activation(ops.matmul(inputs, down)
                                 + ops.cast(self.down_bias, inputs.dtype))
        delta = ops.matmul(hidden, up) + ops.cast(self.up_bias, inputs.dtype)
        return inputs + delta if self.residual else delta

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            # The object itself: inside `.keras` saving's object-sharing
            # scope, every adapter sharing it gets the same rule back.
            "rule": self.rule,
            "reduction_factor": self.reduction_factor,
            "activation": keras.activations.serialize(self.activation),
            "phm_rank": self.phm_rank,
            "residual": self.residual,
            **validation.serialize_objects(self, "factor_initializer"),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("rule"), dict):
            config["rule"] = keras.saving.deserialize_keras_object(
                config["rule"])
        return cls(**config)
