"""CrossStitch: initialisation, NumPy reference, round trips, errors."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import to_numpy
from tests.layers.gate_checks import assert_config_round_trip
from tests.layers.gate_checks import assert_keras_file_round_trip
from tests.layers.gate_checks import randomize_weights

RNG = np.random.default_rng(0)


def reference(alpha, xs):
    stacked = np.stack(xs)  # (T, batch, ..., C)
    if alpha.ndim == 2:
        return list(np.tensordot(alpha, stacked, axes=1))
    return [
        sum(alpha[i, j] * stacked[j] for j in range(len(xs)))
        for i in range(len(xs))
    ]


def test_initialisation_follows_the_paper():
    layer = keras_mtl.layers.CrossStitch(num_tasks=2)
    layer([keras.Input((3,)), keras.Input((3,))])
    np.testing.assert_allclose(to_numpy(layer.alpha), [[0.9, 0.1],
                                                       [0.1, 0.9]])
    layer = keras_mtl.layers.CrossStitch(4, self_weight=0.7, per_channel=True)
    layer([keras.Input((2, 3))] * 4)
    alpha = to_numpy(layer.alpha)
    assert alpha.shape == (4, 4, 3)
    np.testing.assert_allclose(alpha[:, :, 1], np.where(np.eye(4), 0.7, 0.1),
                               rtol=1e-6)
    np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("shape", [(4, 5), (4, 2, 5)])
def test_matches_numpy_reference(per_channel, shape):
    xs = [RNG.normal(size=shape).astype("float32") for _ in range(3)]
    layer = keras_mtl.layers.CrossStitch(3, per_channel=per_channel)
    layer(xs)
    randomize_weights(layer)
    outputs = layer(xs)
    assert len(outputs) == 3
    for got, want in zip(outputs, reference(to_numpy(layer.alpha), xs)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-6)


def test_identity_mixing_and_symbolic_shapes():
    xs = [RNG.normal(size=(2, 4)).astype("float32") for _ in range(2)]
    outputs = keras_mtl.layers.CrossStitch(2, self_weight=1.0)(xs)
    for got, x in zip(outputs, xs):
        np.testing.assert_array_equal(to_numpy(got), x)
    symbolic = keras_mtl.layers.CrossStitch(2)([keras.Input((6, 4))] * 2)
    assert [tuple(o.shape) for o in symbolic] == [(None, 6, 4)] * 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_tasks": 1}, "num_tasks=1"),
        ({"num_tasks": 2, "self_weight": 1.5}, "self_weight=1.5"),
        ({"num_tasks": 2, "per_channel": "yes"}, "per_channel='yes'"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_mtl.layers.CrossStitch(**kwargs)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="expects a list of 3 tensors"):
        keras_mtl.layers.CrossStitch(3)([keras.Input((4,))] * 2)
    with pytest.raises(ValueError, match="same shape"):
        keras_mtl.layers.CrossStitch(2)([keras.Input((4,)), keras.Input((5,))])


def test_config_and_keras_file_round_trips(tmp_path):
    xs = [RNG.normal(size=(4, 5)).astype("float32") for _ in range(2)]
    layer = keras_mtl.layers.CrossStitch(2, self_weight=0.8, per_channel=True)
    layer(xs)
    randomize_weights(layer)
    assert_config_round_trip(layer, xs)

    x = keras.Input((5,))
    a = keras.layers.Dense(3)(x)
    b = keras.layers.Dense(3)(x)
    mixed = keras_mtl.layers.CrossStitch(2)([a, b])
    model = keras.Model(x, [keras.layers.Dense(1)(m) for m in mixed])
    assert_keras_file_round_trip(model, xs[0], tmp_path)
