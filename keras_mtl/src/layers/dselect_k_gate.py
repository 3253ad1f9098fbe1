import math

import keras
import numpy as np
from keras import ops

from keras_mtl.src.api_export import keras_mtl_export
from keras_mtl.src.layers.validation import check_positive_int
from keras_mtl.src.layers.validation import serialize_objects

# Keeps log() finite in the entropy regulariser (value of the reference code).
EPSILON = 1e-6


def smooth_step(t, gamma):
    """Cubic smooth step: 0 below -gamma/2, 1 above gamma/2, in between
    `-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2`."""
    cubic = -2.0 * t**3 / gamma**3 + 3.0 * t / (2.0 * gamma) + 0.5
    return ops.where(
        t <= -gamma / 2.0, 0.0, ops.where(t >= gamma / 2.0, 1.0, cubic)
    )


@keras_mtl_export("keras_mtl.layers.DSelectKGate")
class DSelectKGate(keras.layers.Layer):
    """Differentiable sparse gate selecting at most `num_nonzeros` experts.

    With `n = num_experts` experts encoded by `m = ceil(log2 n)` bits, the
    gate holds `k = num_nonzeros` "single-expert selectors" `z^(i)` in
    `R^m` and selector logits `w` in `R^k`. With the smooth step
    `S(t) = 0` for `t <= -gamma/2`, `1` for `t >= gamma/2` and
    `-2t^3/gamma^3 + 3t/(2 gamma) + 1/2` otherwise, selector `i` puts weight
    `r_ij = prod_l [S(z^(i)_l) if bit l of j is 1 else 1 - S(z^(i)_l)]` on
    expert `j` (bit 0 is the most significant), and the gate returns
    `q = sum_i softmax(w)_i r^(i)`. Once the smooth steps saturate, each
    selector picks exactly one expert, so `q` has at most `k` non-zeros,
    and training reaches that state with ordinary gradients.

    With `example_conditioned=True` (per-example gating, the MMoE use), `z`
    and `w` are affine functions of the routing input; otherwise they are
    trainable variables and the gate is the same for every example (the
    input only fixes the output's leading shape).

    In training the gate adds through `add_loss`: `entropy_regularization`
    times the entropy `-sum r log(r + 1e-6)` of the selectors (encourages
    them to converge), and, when `n` is not a power of two, the term
    `sum_i 1 / sum_j r_ij` that keeps selectors away from the unused binary
    codes. Both are summed over selectors and averaged over examples (the
    reference code sums over the batch as well). With `n` a power of two the
    weights sum to one; otherwise they sum to one once that term is at its
    minimum.

    Args:
        num_experts: number of experts `n` (at least 2).
        num_nonzeros: number of selectors `k` (at least 1), an upper bound on
            the number of experts with a non-zero weight.
        gamma: width of the smooth step's cubic region. Defaults to `1.0`.
        entropy_regularization: weight of the entropy term. Defaults to `0.0`
            (the reference code's schedule returns the constant `1e-6`).
        example_conditioned: if `True` (default), the gate depends on the
            input; if `False`, it is a learned constant.
        z_initializer: initializer of the selector parameters; defaults to
            `RandomUniform(-gamma / 100, gamma / 100)` as in the reference.
        w_initializer: initializer of the selector-weight parameters;
            defaults to `RandomUniform(-0.05, 0.05)`.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: routing input of shape `(..., features)`.
        training: whether to add the regularisation losses.

    Output shape:
        `(..., num_experts)`, the expert weights.

    Example:

    >>> gate = keras_mtl.layers.DSelectKGate(num_experts=4, num_nonzeros=2)
    >>> weights = gate(np.ones((3, 5), "float32"))
    >>> tuple(weights.shape)
    (3, 4)

    Reference:
        Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture of
        Experts with Applications to Multi-Task Learning", NeurIPS 2021.
    """

    def __init__(
        self,
        num_experts,
        num_nonzeros,
        gamma=1.0,
        entropy_regularization=0.0,
        example_conditioned=True,
        z_initializer=None,
        w_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts, minimum=2)
        check_positive_int("num_nonzeros", num_nonzeros)
        if not isinstance(gamma, (int, float)) or gamma <= 0:
            raise ValueError(
                f"`gamma` must be a positive number. Received: gamma={gamma!r}"
            )
        if (
            not isinstance(entropy_regularization, (int, float))
            or entropy_regularization < 0
        ):
            raise ValueError(
                "`entropy_regularization` must be a number >= 0. Received: "
                f"entropy_regularization={entropy_regularization!r}"
            )
        self.num_experts = num_experts
        self.num_nonzeros = num_nonzeros
        self.gamma = float(gamma)
        self.entropy_regularization = float(entropy_regularization)
        self.example_conditioned = bool(example_conditioned)
        self.z_initializer = keras.initializers.get(
            z_initializer
            or keras.initializers.RandomUniform(-gamma / 100, gamma / 100)
        )
        self.w_initializer = keras.initializers.get(
            w_initializer or keras.initializers.RandomUniform(-0.05, 0.05)
        )
        self.num_bits = math.ceil(math.log2(num_experts))
        self.power_of_two = num_experts == 2**self.num_bits
        # codes[j, l] = bit l of j, most significant first.
        self._codes = np.array(
            [
                [int(b) for b in np.binary_repr(j, width=self.num_bits)]
                for j in range(num_experts)
            ],
            dtype="float32",
        )

    def build(self, input_shape):
        k, m = self.num_nonzeros, self.num_bits
        if self.example_conditioned:
            d = input_shape[-1]
            self.z_kernel = self.add_weight(
                name="z_kernel", shape=(d, k, m), initializer=self.z_initializer
            )
            self.z_bias = self.add_weight(
                name="z_bias", shape=(k, m), initializer=self.z_initializer
            )
            self.w_kernel = self.add_weight(
                name="w_kernel", shape=(d, k), initializer=self.w_initializer
            )
            self.w_bias = self.add_weight(
                name="w_bias", shape=(k,), initializer=self.w_initializer
            )
        else:
            self.z_logits = self.add_weight(
                name="z_logits", shape=(k, m), initializer=self.z_initializer
            )
            self.w_logits = self.add_weight(
                name="w_logits", shape=(k,), initializer=self.w_initializer
            )

    def _selectors(self, tokens):
        """Returns `(r, alpha)`: the selector outputs `r^(i)`, shape
        `(N, num_nonzeros, num_experts)` (or without `N` when not
        example-conditioned), and `softmax(w)`, shape `(N, num_nonzeros)`."""
        if self.example_conditioned:
            x = ops.cast(tokens, self.compute_dtype)
            z = ops.einsum("nd,dkm->nkm", x, self.z_kernel) + self.z_bias
            w = ops.matmul(x, self.w_kernel) + self.w_bias
        else:
            z, w = ops.convert_to_tensor(self.z_logits), self.w_logits
        s = smooth_step(z, self.gamma)[..., None, :]  # (N, k, 1, m)
        codes = ops.convert_to_tensor(self._codes, dtype=s.dtype)
        factors = codes * s + (1.0 - codes) * (1.0 - s)  # (N, k, n, m)
        if self.num_nonzeros == 1:  # softmax over one selector is 1
            alpha = ops.ones_like(w)
        else:
            alpha = ops.softmax(w, axis=-1)
        return ops.prod(factors, axis=-1), alpha

    def call(self, inputs, training=None):
        lead = tuple(ops.shape(inputs)[:-1])
        tokens = ops.reshape(inputs, (-1, ops.shape(inputs)[-1]))
        r, alpha = self._selectors(tokens)
        weights = ops.sum(alpha[..., None] * r, axis=-2)
        if training:
            self._add_regularization(r)
        if self.example_conditioned:
            return ops.reshape(weights, lead + (self.num_experts,))
        return ops.broadcast_to(weights, lead + (self.num_experts,))

    def _add_regularization(self, r):
        if self.entropy_regularization > 0:
            entropy = -ops.sum(r * ops.log(r + EPSILON), axis=(-2, -1))
            self.add_loss(self.entropy_regularization * ops.mean(entropy))
        if not self.power_of_two:
            reachable = ops.sum(1.0 / ops.sum(r, axis=-1), axis=-1)
            self.add_loss(ops.mean(reachable))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_experts,)

    def get_config(self):
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "num_nonzeros": self.num_nonzeros,
            "gamma": self.gamma,
            "entropy_regularization": self.entropy_regularization,
            "example_conditioned": self.example_conditioned,
            **serialize_objects(self, "z_initializer", "w_initializer"),
        }
