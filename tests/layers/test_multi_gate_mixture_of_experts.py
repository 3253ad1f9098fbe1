import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.expert_test_utils import config_round_trip
from tests.layers.expert_test_utils import flat_outputs
from tests.layers.expert_test_utils import relu
from tests.layers.expert_test_utils import round_trip_outputs
from tests.layers.expert_test_utils import softmax
from tests.layers.expert_test_utils import to_numpy

MMoE = keras_mtl.layers.MultiGateMixtureOfExperts


def _x(shape=(5, 6), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _numpy_mmoe(layer, x):
    kernel = to_numpy(layer.experts.kernels[0])  # (E, d, u)
    bias = to_numpy(layer.experts.biases[0])  # (E, u)
    experts = relu(np.einsum("bd,edu->beu", x, kernel) + bias)
    gate_kernel = to_numpy(layer.gate_kernel)  # (T, d, E)
    outputs = []
    for t in range(layer.num_tasks):
        g = softmax(x @ gate_kernel[t])  # (b, E)
        outputs.append(np.einsum("be,beu->bu", g, experts))
    return outputs


def test_matches_numpy_reference():
    x = _x()
    layer = MMoE(num_experts=3, expert_units=4, num_tasks=2,
                 bias_initializer="random_normal")
    outputs = layer(x)
    assert len(outputs) == 2
    for got, want in zip(outputs, _numpy_mmoe(layer, x)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-5)


def test_tokens_and_deep_experts_shapes():
    layer = MMoE(num_experts=2, expert_units=(8, 3), num_tasks=3)
    outputs = layer(_x((2, 4, 5)))
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 3)] * 3
    assert layer.compute_output_shape((None, 4, 5)) == [(None, 4, 3)] * 3
    symbolic = layer(keras.Input((4, 5)))
    assert [tuple(o.shape) for o in symbolic] == [(None, 4, 3)] * 3


def test_expert_utilization_tracks_training_batches():
    x = _x()
    layer = MMoE(num_experts=3, expert_units=4, num_tasks=2)
    layer(x)
    np.testing.assert_array_equal(to_numpy(layer.expert_utilization), 0.0)
    layer(x, training=True)
    gates = softmax(np.einsum("bd,tde->bte", x, to_numpy(layer.gate_kernel)))
    np.testing.assert_allclose(
        to_numpy(layer.expert_utilization), gates.mean(0), atol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(layer.expert_utilization).sum(-1), 1.0, atol=1e-6
    )


def test_dselect_k_gate_option_adds_losses_and_selects():
    x = _x()
    layer = MMoE(num_experts=4, expert_units=2, num_tasks=2,
                 gate="dselect_k", num_nonzeros=1,
                 entropy_regularization=0.5)
    layer(x, training=True)
    assert len(layer.losses) == 2  # one entropy term per task gate
    gates = to_numpy(layer.gate_weights(x))
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-5)
    # Saturated selectors: each task picks exactly one expert.
    for gate in layer.dselect_gates:
        gate.z_bias.assign(np.array([[5.0, -5.0]], "float32"))
        gate.z_kernel.assign(np.zeros_like(to_numpy(gate.z_kernel)))
    gates = to_numpy(layer.gate_weights(x))
    np.testing.assert_allclose(gates, np.tile([0, 0, 1, 0], (5, 2, 1)))


def test_config_and_keras_round_trip(tmp_path):
    layer = MMoE(num_experts=3, expert_units=[4, 2], num_tasks=2,
                 gate="dselect_k", use_gate_bias=True,
                 kernel_regularizer="l2", name="mmoe")
    clone = config_round_trip(layer)
    assert clone.expert_units == (4, 2) and clone.gate == "dselect_k"
    inputs = keras.Input((6,))
    model = keras.Model(inputs, MMoE(3, 4, 2, use_gate_bias=True)(inputs))
    before, after, _ = round_trip_outputs(model, _x(), tmp_path)
    for b, a in zip(flat_outputs(before), flat_outputs(after)):
        np.testing.assert_allclose(b, a, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_experts=0), "num_experts=0"),
        (dict(num_tasks=1.5), "num_tasks=1.5"),
        (dict(expert_units=(4, -1)), "expert_units=(4, -1)"),
        (dict(expert_units="4"), "expert_units='4'"),
        (dict(gate="topk"), "gate='topk'"),
        (dict(num_experts=1, gate="dselect_k"), "num_experts=1"),
        (dict(gate="dselect_k", num_nonzeros=0), "num_nonzeros=0"),
    ],
)
def test_invalid_arguments(kwargs, message):
    arguments = dict(num_experts=2, expert_units=3, num_tasks=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(
            ")", r"\)")):
        MMoE(**arguments)
