"""TaskFeatureRefinement: NumPy reference, shapes, round trips, errors."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import to_numpy
from tests.layers.gate_checks import assert_config_round_trip
from tests.layers.gate_checks import assert_keras_file_round_trip
from tests.layers.gate_checks import randomize_weights

RNG = np.random.default_rng(0)


def reference(layer, e):
    w1 = to_numpy(layer.squeeze_kernel)
    w2 = to_numpy(layer.excite_kernel)
    z = e.mean(axis=-1)
    outputs = []
    for t in range(layer.num_tasks):
        h = z @ w1[t]
        if layer.use_bias:
            h = h + to_numpy(layer.squeeze_bias)[t]
        a = np.maximum(h, 0.0) @ w2[t]
        if layer.use_bias:
            a = a + to_numpy(layer.excite_bias)[t]
        a = 1.0 / (1.0 + np.exp(-a))
        outputs.append(a[:, :, None] * e)
    return outputs


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("reduction, hidden", [(3, 2), (2, 3), (10, 1)])
def test_matches_numpy_reference(use_bias, reduction, hidden):
    e = RNG.normal(size=(4, 7, 3)).astype("float32")
    layer = keras_mtl.layers.TaskFeatureRefinement(
        num_tasks=3, reduction=reduction, use_bias=use_bias,
        kernel_initializer="zeros",  # randomised below, with NumPy
    )
    layer(e)
    assert tuple(layer.squeeze_kernel.shape) == (3, 7, hidden)
    assert tuple(layer.excite_kernel.shape) == (3, hidden, 7)
    randomize_weights(layer)
    outputs = layer(e)
    assert len(outputs) == 3
    for got, want in zip(outputs, reference(layer, e)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-6)


def test_tasks_weight_fields_differently_and_shapes():
    e = RNG.normal(size=(2, 6, 4)).astype("float32")
    layer = keras_mtl.layers.TaskFeatureRefinement(
        2, kernel_initializer="zeros")
    layer(e)
    randomize_weights(layer)
    a, b = layer(e)
    ratio_a = to_numpy(a) / e
    ratio_b = to_numpy(b) / e
    # One weight per (sample, field), shared by the field's k entries.
    np.testing.assert_allclose(
        ratio_a, np.broadcast_to(ratio_a[:, :, :1], e.shape), rtol=1e-5
    )
    assert np.all((ratio_a > 0) & (ratio_a < 1))
    assert np.abs(ratio_a - ratio_b).max() > 1e-3
    symbolic = keras_mtl.layers.TaskFeatureRefinement(3)(keras.Input((6, 4)))
    assert [tuple(o.shape) for o in symbolic] == [(None, 6, 4)] * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_tasks": 0}, "num_tasks=0"),
        ({"num_tasks": 2, "reduction": 0}, "reduction=0"),
        ({"num_tasks": 2, "use_bias": None}, "use_bias=None"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_mtl.layers.TaskFeatureRefinement(**kwargs)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="inputs.shape=\\(None, 6\\)"):
        keras_mtl.layers.TaskFeatureRefinement(2)(keras.Input((6,)))


def test_config_and_keras_file_round_trips(tmp_path):
    e = RNG.normal(size=(4, 5, 3)).astype("float32")
    layer = keras_mtl.layers.TaskFeatureRefinement(
        2, reduction=2, kernel_regularizer="l2", kernel_initializer="ones"
    )
    layer(e)
    randomize_weights(layer)
    assert_config_round_trip(layer, e)

    inputs = keras.Input((5, 3))
    refined = keras_mtl.layers.TaskFeatureRefinement(2)(inputs)
    heads = [keras.layers.Dense(1)(keras.layers.Flatten()(r)) for r in refined]
    model = keras.Model(inputs, heads)
    assert_keras_file_round_trip(model, e, tmp_path)
