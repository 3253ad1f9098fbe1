import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.checks import assert_config_round_trip
from tests.layers.checks import assert_keras_round_trip
from tests.layers.checks import to_numpy

ScaLearn = keras_mtl.layers.ScaLearn
ScaLearnScales = keras_mtl.layers.ScaLearnScales


def sources(num_sources=3, shape=(2, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=shape).astype("float32") for _ in range(num_sources)
    ]


def set_random_scales(layer, seed=1):
    omega = layer.omega
    values = np.random.default_rng(seed).normal(size=omega.shape) + 1.0
    omega.assign(values.astype("float32"))
    return values


def numpy_scalearn(outputs, omega, normalization=None):
    if normalization == "mean":
        omega = omega / omega.sum(axis=0, keepdims=True)
    elif normalization == "softmax":
        omega = np.exp(omega) / np.exp(omega).sum(axis=0, keepdims=True)
    return sum(w * a for w, a in zip(omega, outputs))


@pytest.mark.parametrize("mode, width", [("vector", 5), ("scalar", 1)])
@pytest.mark.parametrize("normalization", [None, "mean", "softmax"])
def test_matches_numpy(mode, width, normalization):
    outputs = sources()
    layer = ScaLearn(3, mode=mode, normalization=normalization)
    layer.build([a.shape for a in outputs])
    assert tuple(layer.omega.shape) == (3, width)
    omega = set_random_scales(layer)
    expected = numpy_scalearn(outputs, omega, normalization)
    np.testing.assert_allclose(
        to_numpy(layer(outputs)), expected, rtol=1e-5, atol=1e-5
    )
    # A stacked (..., N, d) tensor gives the same result; `query` is ignored.
    stacked = np.stack(outputs, axis=-2)
    np.testing.assert_allclose(
        to_numpy(layer(stacked, query=outputs[0], training=False)),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )


def test_initialisation_is_normal_around_two_over_n():
    layer = ScaLearn(4, seed=0)
    layer.build([(None, 64)] * 4)
    omega = to_numpy(layer.omega)
    assert abs(omega.mean() - 0.5) < 2e-4
    assert 0.7e-3 < omega.std() < 1.3e-3
    # So, with identical adapters, the output starts at about twice one
    # adapter's output; with scales 1/N it is exactly one adapter's output.
    outputs = sources(num_sources=1, shape=(2, 64)) * 4
    np.testing.assert_allclose(
        to_numpy(layer(outputs)), 2 * outputs[0], rtol=0.01, atol=0.01
    )
    layer.omega.assign(np.full((4, 64), 0.25, "float32"))
    np.testing.assert_allclose(
        to_numpy(layer(outputs)), outputs[0], rtol=1e-6, atol=1e-6
    )


def test_dropout_acts_on_the_scales_only_in_training():
    layer = ScaLearn(4, dropout=0.5, seed=3)
    # Eight identical rows: dropout on activations would treat them
    # differently, dropout on the scales cannot.
    row = np.random.default_rng(0).normal(size=(1, 16)).astype("float32")
    outputs = [np.repeat(row * (i + 1), 8, axis=0) for i in range(4)]
    inference = to_numpy(layer(outputs))
    np.testing.assert_allclose(
        to_numpy(layer(outputs, training=False)), inference
    )
    omega = to_numpy(layer.omega)
    dropped = to_numpy(layer.scaling_coefficients(training=True))
    kept = dropped != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(dropped[kept], omega[kept] / 0.5, rtol=1e-6)
    trained = to_numpy(layer(outputs, training=True))
    np.testing.assert_allclose(trained, np.repeat(trained[:1], 8, axis=0))
    assert not np.allclose(trained, inference)


def test_no_dropout_when_rate_is_zero():
    layer = ScaLearn(3, mode="scalar", dropout=0.0)
    outputs = sources()
    np.testing.assert_array_equal(
        to_numpy(layer(outputs, training=True)), to_numpy(layer(outputs))
    )


def count_params(num_layers, num_sources, dim, mode, shared):
    scales = ScaLearnScales(num_sources, mode=mode) if shared else None
    inputs = keras.Input((num_sources, dim))
    combined = [
        ScaLearn(num_sources, mode=mode, shared_scales=scales)(inputs)
        for _ in range(num_layers)
    ]
    model = keras.Model(inputs, keras.layers.Add()(combined))
    return model.count_params(), len(model.weights)


@pytest.mark.parametrize(
    "mode, shared, expected, num_variables",
    [
        ("vector", False, 73_728, 12),  # ScaLearn
        ("scalar", False, 96, 12),  # ScaLearnUniform
        ("vector", True, 6_144, 1),  # ScaLearn++
        ("scalar", True, 8, 1),  # ScaLearnUniform++
    ],
)
def test_parameter_counts_of_roberta_base(
    mode, shared, expected, num_variables
):
    # Reference: 12 layers, d = 768, N = 8 sources.
    assert count_params(12, 8, 768, mode, shared) == (expected, num_variables)


def test_per_layer_parameter_counts():
    vector, scalar = ScaLearn(5), ScaLearn(5, mode="scalar")
    vector.build((None, 5, 7))
    scalar.build((None, 5, 7))
    assert vector.count_params() == 35 and scalar.count_params() == 5


def test_config_round_trip():
    layer = ScaLearn(
        4,
        mode="scalar",
        dropout=0.1,
        normalization="softmax",
        init_scale=1.0,
        init_stddev=0.01,
        seed=7,
        name="scalearn",
    )
    clone = assert_config_round_trip(layer)
    assert clone.scales.init_scale == 1.0 and clone.seed == 7
    scales = ScaLearnScales(4, mode="scalar", init_scale=1.5, seed=2)
    clone = assert_config_round_trip(scales)
    assert clone.init_scale == 1.5
    shared = ScaLearn(4, mode="scalar", shared_scales=scales)
    clone = assert_config_round_trip(shared)
    assert clone.shared and clone.scales.init_scale == 1.5


def shared_model(mode):
    scales = ScaLearnScales(3, mode=mode)
    hidden = inputs = keras.Input((2, 4))
    for layer_index in range(3):
        adapters = [
            keras.layers.Dense(4, name=f"adapter_{layer_index}_{i}")(hidden)
            for i in range(3)
        ]
        combiner = ScaLearn(
            3, mode=mode, shared_scales=scales, name=f"scalearn_{layer_index}"
        )
        hidden = hidden + combiner(adapters, query=hidden)
    return keras.Model(inputs, hidden), scales


@pytest.mark.parametrize("mode, width", [("vector", 4), ("scalar", 1)])
def test_plus_plus_shares_one_variable_through_keras_saving(
    mode, width, tmp_path
):
    model, scales = shared_model(mode)
    omegas = [w for w in model.weights if "omega" in w.path]
    assert len(omegas) == 1 and tuple(omegas[0].shape) == (3, width)
    scales.omega.assign(
        np.random.default_rng(0).normal(size=(3, width)).astype("float32")
    )
    x = np.random.default_rng(1).normal(size=(2, 2, 4)).astype("float32")
    loaded = assert_keras_round_trip(model, x, tmp_path, atol=1e-5)
    combiners = [loaded.get_layer(f"scalearn_{i}") for i in range(3)]
    assert all(c.scales is combiners[0].scales for c in combiners)
    assert all(c.omega is combiners[0].omega for c in combiners)
    omegas = [w for w in loaded.weights if "omega" in w.path]
    assert len(omegas) == 1
    np.testing.assert_allclose(to_numpy(omegas[0]), to_numpy(scales.omega))


def test_plus_plus_trains_the_shared_variable():
    model, scales = shared_model("vector")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(1).normal(size=(4, 2, 4)).astype("float32")
    before = to_numpy(scales.omega)
    model.fit(x, np.zeros_like(x), epochs=1, batch_size=4, verbose=0)
    assert not np.allclose(to_numpy(scales.omega), before)
    assert len(model.trainable_weights) == 3 * 3 * 2 + 1


def test_functional_model_with_a_list_input():
    inputs = [keras.Input((3, 6)) for _ in range(2)]
    layer = ScaLearn(2)
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, 3, 6)
    assert layer.compute_output_shape([(None, 3, 6)] * 2) == (None, 3, 6)
    assert layer.compute_output_shape((None, 3, 2, 6)) == (None, 3, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_sources": 0}, "num_sources=0"),
        ({"num_sources": 2.0}, "num_sources=2.0"),
        ({"mode": "matrix"}, "mode='matrix'"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"normalization": "l2"}, "normalization='l2'"),
        ({"shared_scales": "scales"}, "shared_scales='scales'"),
        ({"init_scale": "2"}, "init_scale='2'"),
        ({"init_stddev": -1.0}, "init_stddev=-1.0"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"num_sources": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        ScaLearn(**kwargs)


def test_mismatched_shared_scales():
    with pytest.raises(ValueError, match="num_sources=4.*shared_scales="):
        ScaLearn(3, shared_scales=ScaLearnScales(4))
    with pytest.raises(ValueError, match="mode='scalar'.*shared_scales="):
        ScaLearn(3, shared_scales=ScaLearnScales(3, mode="scalar"))
    scales = ScaLearnScales(2)
    ScaLearn(2, shared_scales=scales)(sources(2, shape=(1, 4)))
    with pytest.raises(ValueError, match="d=6"):
        ScaLearn(2, shared_scales=scales)(sources(2, shape=(1, 6)))


def test_wrong_number_or_shape_of_sources():
    with pytest.raises(ValueError, match="Expected 3 adapter outputs"):
        ScaLearn(3)(sources(2))
    with pytest.raises(ValueError, match="same shape"):
        ScaLearn(2)([np.ones((1, 4)), np.ones((1, 5))])
