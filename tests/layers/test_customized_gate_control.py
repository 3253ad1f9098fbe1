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

CGC = keras_mtl.layers.CustomizedGateControl
PLE = keras_mtl.layers.ProgressiveLayeredExtraction


def numpy_cgc(layer, inputs):
    """Independent NumPy CGC with the layer's weights, written per expert."""
    T = layer.num_tasks
    if not isinstance(inputs, list):
        inputs = [inputs] * (T + 1)
    w = lambda v: to_numpy(v)  # noqa: E731
    spec_k, spec_b = w(layer.specific_experts.kernels[0]), w(
        layer.specific_experts.biases[0])  # (T, m_k, d, u), (T, m_k, u)
    sh_k, sh_b = w(layer.shared_experts.kernels[0]), w(
        layer.shared_experts.biases[0])  # (m_s, d, u)
    shared = [relu(inputs[-1] @ sh_k[i] + sh_b[i]) for i in range(len(sh_k))]
    specific = [
        [relu(inputs[t] @ spec_k[t, i] + spec_b[t, i])
         for i in range(spec_k.shape[1])]
        for t in range(T)
    ]
    outputs = []
    for t in range(T):
        gate = softmax(inputs[t] @ w(layer.gate_kernel)[t])
        experts = specific[t] + shared
        outputs.append(sum(gate[:, [i]] * e for i, e in enumerate(experts)))
    if layer.shared_gate:
        gate = softmax(inputs[-1] @ w(layer.shared_gate_kernel))
        experts = [e for task in specific for e in task] + shared
        outputs.append(sum(gate[:, [i]] * e for i, e in enumerate(experts)))
    return outputs


def _x(shape=(5, 6), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("shared_gate", [False, True])
def test_cgc_matches_numpy_reference(shared_gate):
    x = _x()
    layer = CGC(num_tasks=2, num_specific_experts=2, num_shared_experts=3,
                expert_units=4, shared_gate=shared_gate,
                bias_initializer="random_normal")
    outputs = layer(x)
    assert len(outputs) == 2 + shared_gate
    for got, want in zip(outputs, numpy_cgc(layer, x)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-5)


def test_cgc_list_inputs_and_utilization():
    inputs = [_x(seed=s) for s in range(3)]
    layer = CGC(2, 1, 2, 3, shared_gate=True)
    outputs = layer(inputs, training=True)
    for got, want in zip(outputs, numpy_cgc(layer, inputs)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-5)
    util = to_numpy(layer.expert_utilization)
    assert util.shape == (2, 3)
    np.testing.assert_allclose(util.sum(-1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="num_tasks \\+ 1 = 3"):
        layer(inputs[:2])


def test_ple_matches_stacked_numpy_cgc():
    x = _x()
    layer = PLE(num_tasks=2, num_levels=2, num_specific_experts=2,
                num_shared_experts=1, expert_units=(5, 3))
    outputs = layer(x)
    assert [tuple(o.shape) for o in outputs] == [(5, 3)] * 2
    h = x
    for level in layer.levels:
        # numpy_cgc handles single-layer experts; chain the 2 layers here.
        h = _numpy_two_layer_cgc(level, h)
    for got, want in zip(outputs, h):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-4, atol=1e-5)


def _numpy_two_layer_cgc(layer, inputs):
    T = layer.num_tasks
    if not isinstance(inputs, list):
        inputs = [inputs] * (T + 1)
    w = to_numpy
    spec = layer.specific_experts
    sh = layer.shared_experts

    def mlp(x, stack, index):
        for kernel, bias in zip(stack.kernels, stack.biases):
            x = relu(x @ w(kernel)[index] + w(bias)[index])
        return x

    shared = [mlp(inputs[-1], sh, i) for i in range(sh.num_experts)]
    specific = [[mlp(inputs[t], spec, (t, i)) for i in range(spec.num_experts)]
                for t in range(T)]
    outputs = []
    for t in range(T):
        gate = softmax(inputs[t] @ w(layer.gate_kernel)[t])
        experts = specific[t] + shared
        outputs.append(sum(gate[:, [i]] * e for i, e in enumerate(experts)))
    if layer.shared_gate:
        gate = softmax(inputs[-1] @ w(layer.shared_gate_kernel))
        experts = [e for task in specific for e in task] + shared
        outputs.append(sum(gate[:, [i]] * e for i, e in enumerate(experts)))
    return outputs


def test_shapes_on_token_inputs():
    layer = PLE(num_tasks=3, num_levels=2, expert_units=4, use_gate_bias=True)
    outputs = layer(keras.Input((7, 5)))
    assert [tuple(o.shape) for o in outputs] == [(None, 7, 4)] * 3
    assert layer.compute_output_shape((None, 7, 5)) == [(None, 7, 4)] * 3
    cgc = CGC(2, 1, 1, 4, shared_gate=True, use_gate_bias=True)
    outputs = cgc(_x((2, 3, 5)))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 4)] * 3


def test_config_and_keras_round_trip(tmp_path):
    clone = config_round_trip(PLE(2, num_levels=3, expert_units=[4, 2]))
    assert clone.num_levels == 3 and clone.expert_units == (4, 2)
    clone = config_round_trip(CGC(2, 1, 2, 3, shared_gate=True))
    assert clone.shared_gate
    inputs = keras.Input((6,))
    outputs = PLE(2, num_levels=2, num_specific_experts=2, expert_units=3,
                  use_gate_bias=True, bias_initializer="random_normal")(inputs)
    model = keras.Model(inputs, outputs)
    before, after, _ = round_trip_outputs(model, _x(), tmp_path)
    for b, a in zip(flat_outputs(before), flat_outputs(after)):
        np.testing.assert_allclose(b, a, rtol=1e-6)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (CGC, dict(num_tasks=0), "num_tasks=0"),
        (CGC, dict(num_specific_experts=-1), "num_specific_experts=-1"),
        (CGC, dict(num_shared_experts=None), "num_shared_experts=None"),
        (CGC, dict(expert_units=0), "expert_units=0"),
        (PLE, dict(num_levels=0), "num_levels=0"),
        (PLE, dict(num_tasks=True), "num_tasks=True"),
    ],
)
def test_invalid_arguments(cls, kwargs, message):
    arguments = dict(num_tasks=2, num_specific_experts=1, num_shared_experts=1,
                     expert_units=3)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        cls(**arguments)
