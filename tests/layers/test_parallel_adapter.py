import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.checks import assert_config_round_trip
from tests.layers.checks import assert_keras_round_trip
from tests.layers.checks import randomize_weights
from tests.layers.checks import to_numpy

ParallelAdapter = keras_mtl.layers.ParallelAdapter


def test_zero_at_initialisation_with_kaiming_uniform_down_projection():
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype("float32")
    layer = ParallelAdapter()
    np.testing.assert_array_equal(to_numpy(layer(x)), 0.0)
    down = to_numpy(layer.down_kernel)
    assert down.shape == (16, 8)
    assert np.abs(down).max() <= 1.0 / np.sqrt(16)
    assert np.abs(down).max() > 0.5 / np.sqrt(16)


@pytest.mark.parametrize("scaling", [4.0, -0.5])
def test_matches_numpy(scaling):
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype("float32")
    layer = ParallelAdapter(scaling=scaling, activation="tanh")
    layer.build(x.shape)
    randomize_weights(layer, seed=3)
    down, down_bias, up, up_bias = [to_numpy(w) for w in layer.weights]
    expected = scaling * (np.tanh(x @ down + down_bias) @ up + up_bias)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)


def test_parameter_count():
    layer = ParallelAdapter(reduction_factor=2)
    layer.build((None, 8))
    assert layer.count_params() == 2 * 8 * 4 + 4 + 8


def test_config_round_trip_and_keras_saving(tmp_path):
    layer = ParallelAdapter(scaling=2, hidden_units=3, name="parallel")
    clone = assert_config_round_trip(layer)
    assert clone.scaling == 2.0 and clone.hidden_units == 3
    inputs = keras.Input((8,))
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, 8)
    model = keras.Model(inputs, outputs)
    randomize_weights(layer)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    assert np.abs(to_numpy(model(x))).max() > 0
    assert_keras_round_trip(model, x, tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scaling": "4"}, "scaling='4'"),
        ({"scaling": True}, "scaling=True"),
        ({"reduction_factor": -2}, "reduction_factor=-2"),
        ({"activation": "nope"}, "activation='nope'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParallelAdapter(**kwargs)
