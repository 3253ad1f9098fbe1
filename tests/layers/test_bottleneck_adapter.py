import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.checks import assert_config_round_trip
from tests.layers.checks import assert_keras_round_trip
from tests.layers.checks import randomize_weights
from tests.layers.checks import to_numpy

BottleneckAdapter = keras_mtl.layers.BottleneckAdapter


def numpy_delta(layer, x, activation):
    down, down_bias, up, up_bias = [to_numpy(w) for w in layer.weights]
    return activation(x @ down + down_bias) @ up + up_bias


def relu(x):
    return np.maximum(x, 0.0)


def swish(x):
    return x / (1.0 + np.exp(-x))


@pytest.mark.parametrize("residual", [True, False])
def test_identity_or_zero_at_initialisation(residual):
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    layer = BottleneckAdapter(reduction_factor=4, residual=residual)
    expected = x if residual else np.zeros_like(x)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-7)
    # The down-projection is random (N(0, 0.02)), only `up` starts at zero.
    assert np.abs(to_numpy(layer.down_kernel)).max() > 0
    np.testing.assert_array_equal(to_numpy(layer.up_kernel), 0.0)


@pytest.mark.parametrize(
    "factory, activation",
    [(BottleneckAdapter.pfeiffer, relu), (BottleneckAdapter.houlsby, swish)],
)
@pytest.mark.parametrize("residual", [True, False])
def test_matches_numpy(factory, activation, residual):
    x = np.random.default_rng(1).normal(size=(2, 3, 32)).astype("float32")
    layer = factory(residual=residual)
    layer.build(x.shape)
    randomize_weights(layer, seed=2)
    delta = numpy_delta(layer, x, activation)
    expected = x + delta if residual else delta
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)


def test_configurations():
    pfeiffer = BottleneckAdapter.pfeiffer()
    houlsby = BottleneckAdapter.houlsby(hidden_units=3)
    assert pfeiffer.reduction_factor == 16
    assert pfeiffer.get_config()["activation"] == "relu"
    assert houlsby.get_config()["activation"] in ("swish", "silu")
    assert houlsby.hidden_units == 3


@pytest.mark.parametrize(
    "kwargs, dim, hidden",
    [
        ({}, 768, 48),
        ({"reduction_factor": 4}, 10, 2),
        ({"reduction_factor": 64}, 8, 1),
        ({"hidden_units": 5}, 8, 5),
    ],
)
def test_bottleneck_width_and_parameter_count(kwargs, dim, hidden):
    layer = BottleneckAdapter(**kwargs)
    layer.build((None, dim))
    assert tuple(layer.down_kernel.shape) == (dim, hidden)
    assert layer.count_params() == 2 * dim * hidden + hidden + dim


def test_pfeiffer_parameter_count_for_a_base_model():
    # Reference: 74,544 per layer for d = 768 with reduction factor 16.
    layer = BottleneckAdapter.pfeiffer()
    layer.build((None, 768))
    assert layer.count_params() == 74_544


def test_config_round_trip():
    layer = BottleneckAdapter(
        reduction_factor=2.5,
        activation="tanh",
        residual=False,
        hidden_units=3,
        down_initializer="glorot_uniform",
        up_initializer=keras.initializers.RandomNormal(stddev=0.1),
        name="adapter",
    )
    clone = assert_config_round_trip(layer)
    assert clone.residual is False and clone.hidden_units == 3


def test_functional_model_and_keras_saving(tmp_path):
    inputs = keras.Input((3, 8))
    layer = BottleneckAdapter(reduction_factor=4, activation="swish")
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, 3, 8)
    assert layer.compute_output_shape((None, 3, 8)) == (None, 3, 8)
    model = keras.Model(inputs, outputs)
    randomize_weights(layer)
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    assert not np.allclose(to_numpy(model(x)), x)
    assert_keras_round_trip(model, x, tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reduction_factor": 0}, "reduction_factor=0"),
        ({"reduction_factor": "16"}, "reduction_factor='16'"),
        ({"hidden_units": 0}, "hidden_units=0"),
        ({"hidden_units": 2.5}, "hidden_units=2.5"),
        ({"activation": "nope"}, "activation='nope'"),
        ({"residual": "yes"}, "residual='yes'"),
        ({"down_initializer": "nope"}, "down_initializer='nope'"),
        ({"up_initializer": 3}, "up_initializer=3"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        BottleneckAdapter(**kwargs)


def test_unknown_last_dimension():
    with pytest.raises(ValueError, match="last dimension"):
        BottleneckAdapter().build((None, None))
