import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.checks import assert_config_round_trip
from tests.layers.checks import assert_keras_round_trip
from tests.layers.checks import to_numpy

AverageCombiner = keras_mtl.layers.AverageCombiner


def test_matches_numpy_for_lists_and_stacks():
    rng = np.random.default_rng(0)
    outputs = [rng.normal(size=(2, 3, 4)).astype("float32") for _ in range(3)]
    expected = (outputs[0] + outputs[1] + outputs[2]) / 3
    layer = AverageCombiner()
    np.testing.assert_allclose(to_numpy(layer(outputs)), expected, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(layer(np.stack(outputs, axis=-2), query=outputs[0])),
        expected,
        atol=1e-6,
    )
    assert layer.count_params() == 0


def test_config_round_trip_and_keras_saving(tmp_path):
    assert_config_round_trip(AverageCombiner(name="average"))
    inputs = keras.Input((3, 4))
    adapters = [keras.layers.Dense(4)(inputs) for _ in range(2)]
    outputs = AverageCombiner()(adapters, query=inputs)
    assert tuple(outputs.shape) == (None, 3, 4)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype("float32")
    assert_keras_round_trip(model, x, tmp_path)


def test_sources_of_different_shapes():
    with pytest.raises(ValueError, match="same shape"):
        AverageCombiner().compute_output_shape([(None, 4), (None, 5)])
