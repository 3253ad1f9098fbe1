"""TaskConditioning (FiLM by task id): NumPy reference, round trips, errors."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import to_numpy
from tests.layers.gate_checks import assert_config_round_trip
from tests.layers.gate_checks import assert_keras_file_round_trip
from tests.layers.gate_checks import randomize_weights

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "features_shape, ids_shape",
    [((5, 4), (5,)), ((5, 4), (5, 1)), ((5, 3, 4), (5,))],
)
def test_matches_numpy_reference(features_shape, ids_shape):
    x = RNG.normal(size=features_shape).astype("float32")
    ids = RNG.integers(0, 3, size=ids_shape).astype("int32")
    layer = keras_mtl.layers.TaskConditioning(num_tasks=3)
    np.testing.assert_allclose(to_numpy(layer([x, ids])), x)  # identity
    randomize_weights(layer)
    gamma, beta = to_numpy(layer.gamma), to_numpy(layer.beta)
    flat = ids.reshape(-1)
    g, b = gamma[flat], beta[flat]
    while g.ndim < x.ndim:
        g, b = g[:, None], b[:, None]
    np.testing.assert_allclose(
        to_numpy(layer([x, ids])), g * x + b, rtol=1e-6, atol=1e-6
    )


def test_symbolic_shape_and_weights():
    layer = keras_mtl.layers.TaskConditioning(4)
    out = layer([keras.Input((2, 6)), keras.Input((1,), dtype="int32")])
    assert tuple(out.shape) == (None, 2, 6)
    assert tuple(layer.gamma.shape) == (4, 6)
    assert tuple(layer.beta.shape) == (4, 6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_tasks": 0}, "num_tasks=0"),
        ({"num_tasks": "2"}, "num_tasks='2'"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_mtl.layers.TaskConditioning(**kwargs)


def test_invalid_inputs():
    layer = keras_mtl.layers.TaskConditioning(2)
    with pytest.raises(ValueError, match="task_ids.shape"):
        layer([keras.Input((4,)), keras.Input((2,), dtype="int32")])
    with pytest.raises(ValueError, match="list \\[features, task_ids\\]"):
        layer(keras.Input((4,)))


def test_config_and_keras_file_round_trips(tmp_path):
    x = RNG.normal(size=(4, 3)).astype("float32")
    ids = np.array([0, 1, 1, 0], "int32")
    layer = keras_mtl.layers.TaskConditioning(
        2, gamma_regularizer="l2", beta_initializer="ones"
    )
    layer([x, ids])
    randomize_weights(layer)
    assert_config_round_trip(layer, [x, ids])

    xi = keras.Input((3,))
    ti = keras.Input((), dtype="int32")
    film = keras_mtl.layers.TaskConditioning(2)
    model = keras.Model([xi, ti], keras.layers.Dense(1)(film([xi, ti])))
    randomize_weights(film)
    assert_keras_file_round_trip(model, [x, ids], tmp_path)
