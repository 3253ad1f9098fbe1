"""TaskGate: NumPy reference, shapes, round trips, errors."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import to_numpy
from tests.layers.gate_checks import assert_config_round_trip
from tests.layers.gate_checks import assert_keras_file_round_trip
from tests.layers.gate_checks import randomize_weights

RNG = np.random.default_rng(0)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def softmax(v):
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference(layer, x, context):
    kernel = to_numpy(layer.kernel)
    bias = to_numpy(layer.bias) if layer.use_bias else None
    outputs = []
    for t in range(layer.num_tasks):
        logits = context @ kernel[t]
        if bias is not None:
            logits = logits + bias[t]
        if layer.activation == "sigmoid":
            gate = (2.0 if layer.scale is None else layer.scale) * sigmoid(
                logits
            )
        else:
            scale = x.shape[-1] if layer.scale is None else layer.scale
            gate = scale * softmax(logits)
        while gate.ndim < x.ndim:
            gate = gate[:, None]
        outputs.append(gate * x)
    return outputs


@pytest.mark.parametrize(
    "kwargs, x_shape, context_shape",
    [
        ({}, (4, 5), None),
        ({"activation": "softmax"}, (4, 5), None),
        ({"scale": 1.0, "use_bias": False}, (4, 5), None),
        ({"activation": "softmax", "scale": 3.0}, (4, 2, 5), None),
        ({}, (4, 5), (4, 3)),
        ({"activation": "softmax"}, (4, 2, 5), (4, 3)),
        ({}, (4, 2, 5), (4, 2, 3)),
    ],
)
def test_matches_numpy_reference(kwargs, x_shape, context_shape):
    layer = keras_mtl.layers.TaskGate(num_tasks=3, **kwargs)
    x = RNG.normal(size=x_shape).astype("float32")
    context = x if context_shape is None else RNG.normal(
        size=context_shape).astype("float32")
    inputs = x if context_shape is None else [x, context]
    layer(inputs)
    randomize_weights(layer)
    outputs = layer(inputs)
    assert isinstance(outputs, list) and len(outputs) == 3
    for got, want in zip(outputs, reference(layer, x, context)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_identity_at_initialisation(activation):
    x = RNG.normal(size=(3, 6)).astype("float32")
    outputs = keras_mtl.layers.TaskGate(2, activation=activation)(x)
    for out in outputs:
        np.testing.assert_allclose(to_numpy(out), x, rtol=1e-6)


def test_symbolic_shapes_and_weights():
    layer = keras_mtl.layers.TaskGate(num_tasks=4)
    outputs = layer([keras.Input((7, 5)), keras.Input((3,))])
    assert [tuple(o.shape) for o in outputs] == [(None, 7, 5)] * 4
    assert tuple(layer.kernel.shape) == (4, 3, 5)
    assert tuple(layer.bias.shape) == (4, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_tasks": 0}, "num_tasks=0"),
        ({"num_tasks": 2.0}, "num_tasks=2.0"),
        ({"num_tasks": 2, "activation": "relu"}, "activation='relu'"),
        ({"num_tasks": 2, "scale": 0.0}, "scale=0.0"),
        ({"num_tasks": 2, "use_bias": 1}, "use_bias=1"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_mtl.layers.TaskGate(**kwargs)


def test_invalid_inputs():
    layer = keras_mtl.layers.TaskGate(2)
    with pytest.raises(ValueError, match="context.shape"):
        layer([keras.Input((2, 3, 5)), keras.Input((2, 3))])
    with pytest.raises(ValueError, match="x.shape"):
        keras_mtl.layers.TaskGate(2)(keras.Input(()))


def test_config_and_keras_file_round_trips(tmp_path):
    x = RNG.normal(size=(4, 5)).astype("float32")
    context = RNG.normal(size=(4, 3)).astype("float32")
    layer = keras_mtl.layers.TaskGate(
        2, activation="softmax", scale=2.5,
        kernel_regularizer=keras.regularizers.L2(0.01),
    )
    layer([x, context])
    randomize_weights(layer)
    assert_config_round_trip(layer, [x, context])

    xi, ci = keras.Input((5,)), keras.Input((3,))
    gated = keras_mtl.layers.TaskGate(2)([xi, ci])
    model = keras.Model([xi, ci], [keras.layers.Dense(1)(g) for g in gated])
    randomize_weights(model.layers[2])
    assert_keras_file_round_trip(model, [x, context], tmp_path)
