import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.expert_test_utils import config_round_trip
from tests.layers.expert_test_utils import round_trip_outputs
from tests.layers.expert_test_utils import softmax
from tests.layers.expert_test_utils import to_numpy

DSelectKGate = keras_mtl.layers.DSelectKGate


def _smooth_step(t, gamma):
    out = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return np.where(t <= -gamma / 2, 0.0, np.where(t >= gamma / 2, 1.0, out))


def _numpy_gate(z, w, num_experts, gamma):
    """z: (b, k, m), w: (b, k) -> weights (b, n) and selectors (b, k, n)."""
    m = z.shape[-1]
    s = _smooth_step(z, gamma)
    r = np.ones(z.shape[:2] + (num_experts,))
    for j in range(num_experts):
        for bit in range(m):
            is_one = (j >> (m - 1 - bit)) & 1
            factor = s[..., bit] if is_one else 1 - s[..., bit]
            r[..., j] *= factor
    alpha = softmax(w)
    return (alpha[..., None] * r).sum(-2), r


@pytest.mark.parametrize("num_experts", [4, 5])
def test_example_conditioned_matches_numpy(num_experts):
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    gate = DSelectKGate(num_experts, num_nonzeros=2, gamma=2.0,
                        entropy_regularization=0.1,
                        z_initializer="random_normal",
                        w_initializer="random_normal")
    got = to_numpy(gate(x, training=True))
    z = np.einsum("bd,dkm->bkm", x, to_numpy(gate.z_kernel)) + to_numpy(
        gate.z_bias)
    w = x @ to_numpy(gate.w_kernel) + to_numpy(gate.w_bias)
    want, r = _numpy_gate(z, w, num_experts, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    entropy = 0.1 * np.mean(-(r * np.log(r + 1e-6)).sum((-2, -1)))
    expected_losses = [entropy]
    if num_experts == 5:
        expected_losses.append(np.mean((1 / r.sum(-1)).sum(-1)))
    else:
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        [to_numpy(v) for v in gate.losses], expected_losses, rtol=1e-4)


def test_static_gate_selects_at_most_k_experts_when_saturated():
    gate = DSelectKGate(8, num_nonzeros=2, example_conditioned=False)
    x = np.zeros((3, 2), "float32")
    gate.build(x.shape)
    # Selector 0 -> code 101 (expert 5), selector 1 -> code 010 (expert 2).
    gate.z_logits.assign(np.array([[1, -1, 1], [-1, 1, -1]], "float32"))
    gate.w_logits.assign(np.array([0.0, np.log(3.0)], "float32"))
    weights = to_numpy(gate(x))
    expected = np.zeros(8)
    expected[5], expected[2] = 0.25, 0.75
    np.testing.assert_allclose(weights, np.tile(expected, (3, 1)), atol=1e-6)
    assert gate.compute_output_shape((None, 2)) == (None, 8)
    assert not gate.losses  # regularisation only in training


def test_config_and_keras_round_trip(tmp_path):
    gate = DSelectKGate(6, 3, gamma=0.5, entropy_regularization=1e-3)
    clone = config_round_trip(gate)
    assert (clone.num_experts, clone.num_nonzeros, clone.gamma) == (6, 3, 0.5)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, DSelectKGate(6, 3)(inputs))
    x = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    before, after, _ = round_trip_outputs(model, x, tmp_path)
    np.testing.assert_allclose(before, after, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_experts=1), "num_experts=1"),
        (dict(num_nonzeros=0), "num_nonzeros=0"),
        (dict(gamma=0.0), "gamma=0.0"),
        (dict(entropy_regularization=-1.0), "entropy_regularization=-1.0"),
    ],
)
def test_invalid_arguments(kwargs, message):
    arguments = dict(num_experts=4, num_nonzeros=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DSelectKGate(**arguments)
