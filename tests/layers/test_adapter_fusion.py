import keras
import numpy as np
import pytest

import keras_mtl
from tests.layers.checks import assert_config_round_trip
from tests.layers.checks import assert_keras_round_trip
from tests.layers.checks import randomize_weights
from tests.layers.checks import to_numpy

AdapterFusion = keras_mtl.layers.AdapterFusion


def fusion_inputs(num_sources=3, shape=(2, 4, 6), seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=shape).astype("float32")
    outputs = [
        rng.normal(size=shape).astype("float32") for _ in range(num_sources)
    ]
    return outputs, query


def numpy_fusion(layer, outputs, query, temperature=1.0):
    q = query @ to_numpy(layer.query_kernel) + to_numpy(layer.query_bias)
    stacked = np.stack(outputs, axis=-2)
    k = stacked @ to_numpy(layer.key_kernel) + to_numpy(layer.key_bias)
    scores = np.einsum("...d,...nd->...n", q, k)
    if layer.scale_scores:
        scores = scores / np.sqrt(q.shape[-1])
    scores = scores / temperature
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = weights / weights.sum(axis=-1, keepdims=True)
    values = stacked @ to_numpy(layer.value_kernel) if layer.value else stacked
    return np.einsum("...n,...nd->...d", weights, values), weights


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"value": False},
        {"scale_scores": True},
        {"temperature": 3.0, "min_temperature": 0.5},
    ],
)
def test_matches_numpy(kwargs):
    outputs, query = fusion_inputs()
    layer = AdapterFusion(**kwargs)
    layer.build([a.shape for a in outputs])
    randomize_weights(layer, seed=1, scale=0.3)
    expected, expected_weights = numpy_fusion(
        layer, outputs, query, kwargs.get("temperature", 1.0)
    )
    output, weights = layer(
        outputs, query=query, training=False, return_attention_scores=True
    )
    np.testing.assert_allclose(
        to_numpy(output), expected, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(weights), expected_weights, rtol=1e-4, atol=1e-6
    )
    stacked = np.stack(outputs, axis=-2)
    np.testing.assert_allclose(
        to_numpy(layer(stacked, query=query)), expected, rtol=1e-4, atol=1e-5
    )


def test_initialisation():
    outputs, query = fusion_inputs(shape=(2, 64))
    layer = AdapterFusion()
    layer.build([a.shape for a in outputs])
    value = to_numpy(layer.value_kernel)
    np.testing.assert_array_equal(np.diag(value), 1.0)
    off_diagonal = value[~np.eye(64, dtype=bool)]
    np.testing.assert_array_equal(off_diagonal, np.float32(1e-6))
    for kernel in (layer.query_kernel, layer.key_kernel):
        assert 0.015 < to_numpy(kernel).std() < 0.025
    for bias in (layer.query_bias, layer.key_bias):
        np.testing.assert_array_equal(to_numpy(bias), 0.0)
    # V ~ I: the output is the attention-weighted mean of the adapters.
    output, weights = layer(outputs, query=query, return_attention_scores=True)
    expected = np.einsum(
        "bn,bnd->bd", to_numpy(weights), np.stack(outputs, axis=1)
    )
    np.testing.assert_allclose(to_numpy(output), expected, atol=1e-4)


@pytest.mark.parametrize(
    "dim, value, expected",
    [(768, True, 1_771_008), (16, True, 800), (16, False, 544)],
)
def test_parameter_count_is_independent_of_the_sources(dim, value, expected):
    for num_sources in (2, 5):
        layer = AdapterFusion(value=value)
        layer.build([(None, dim)] * num_sources)
        assert layer.count_params() == expected
    assert AdapterFusion.static().value is False


def test_dropout_on_scores_only_in_training():
    outputs, query = fusion_inputs()
    layer = AdapterFusion(dropout=0.5, seed=0)
    layer.build([a.shape for a in outputs])
    randomize_weights(layer, seed=2)
    expected, _ = numpy_fusion(layer, outputs, query)
    np.testing.assert_allclose(
        to_numpy(layer(outputs, query=query)), expected, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(layer(outputs, query=query, training=False)),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )
    trained, weights = layer(
        outputs, query=query, training=True, return_attention_scores=True
    )
    assert not np.allclose(to_numpy(trained), expected, atol=1e-4)
    # Dropout acts before the softmax: the weights remain a distribution.
    np.testing.assert_allclose(to_numpy(weights).sum(-1), 1.0, rtol=1e-5)


def test_temperature_schedule():
    outputs, query = fusion_inputs()
    layer = AdapterFusion(temperature=50.0, temperature_decay=0.05, dropout=0.0)
    layer.build([a.shape for a in outputs])
    randomize_weights(layer, seed=3, scale=2.0)
    assert not layer.temperature_variable.trainable
    assert layer.count_params() == 3 * 36 + 2 * 6 + 1
    assert sum(np.prod(w.shape) for w in layer.trainable_weights) == 120
    # Each training call uses the current temperature, then lowers it.
    for step in range(3):
        temperature = 50.0 - 0.05 * step
        np.testing.assert_allclose(
            to_numpy(layer.current_temperature()), temperature, rtol=1e-6
        )
        expected, _ = numpy_fusion(layer, outputs, query, temperature)
        output = layer(outputs, query=query, training=True)
        np.testing.assert_allclose(
            to_numpy(output), expected, rtol=1e-4, atol=1e-5
        )
    # Inference calls leave it alone.
    layer(outputs, query=query)
    np.testing.assert_allclose(
        to_numpy(layer.current_temperature()), 49.85, rtol=1e-6
    )
    assert not np.allclose(
        numpy_fusion(layer, outputs, query, 50.0)[0],
        numpy_fusion(layer, outputs, query, 49.85)[0],
        rtol=1e-7,
        atol=0,
    )


def test_temperature_floor():
    outputs, query = fusion_inputs()
    layer = AdapterFusion(
        temperature=1.2, temperature_decay=0.1, min_temperature=1.0
    )
    for _ in range(5):
        layer(outputs, query=query, training=True)
    np.testing.assert_allclose(to_numpy(layer.current_temperature()), 1.0)


def fusion_model(**kwargs):
    inputs = keras.Input((3, 4))
    adapters = [
        keras.layers.Dense(4, name=f"adapter_{i}")(inputs) for i in range(2)
    ]
    fusion = AdapterFusion(name="fusion", **kwargs)
    output, scores = fusion(
        adapters, query=inputs, return_attention_scores=True
    )
    return keras.Model(inputs, {"output": output, "scores": scores}), fusion


def test_functional_model_saving_and_annealing_with_fit(tmp_path):
    model, fusion = fusion_model(
        temperature=50.0, temperature_decay=0.05, seed=1
    )
    assert tuple(model.output["scores"].shape) == (None, 3, 2)
    assert fusion.compute_output_shape([(None, 3, 4)] * 2) == (None, 3, 4)
    randomize_weights(fusion, seed=4, scale=0.3)
    x = np.random.default_rng(0).normal(size=(4, 3, 4)).astype("float32")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01), loss={"output": "mse"}
    )
    model.fit(x, {"output": x}, epochs=3, batch_size=4, verbose=0)
    np.testing.assert_allclose(
        to_numpy(fusion.current_temperature()), 49.85, rtol=1e-6
    )
    loaded = assert_keras_round_trip(model, x, tmp_path, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(loaded.get_layer("fusion").current_temperature()),
        49.85,
        rtol=1e-6,
    )


def test_identity_regularizer_in_model_losses():
    model, fusion = fusion_model(regularization=0.5)
    randomize_weights(fusion, seed=5)
    x = np.ones((2, 3, 4), "float32")
    model(x)
    value = to_numpy(fusion.value_kernel)
    expected = 0.5 * np.sum((np.eye(4) - value) ** 2)
    assert len(model.losses) == 1
    np.testing.assert_allclose(to_numpy(model.losses[0]), expected, rtol=1e-5)
    model.compile(optimizer="sgd", loss={"output": "mse"})
    mse_only = np.mean((to_numpy(model(x)["output"]) - x) ** 2)
    loss = model.evaluate(x, {"output": x}, verbose=0, return_dict=True)
    np.testing.assert_allclose(loss["loss"], mse_only + expected, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [{"value": False}, {"regularization": 0}])
def test_no_regularizer(kwargs):
    model, _ = fusion_model(**kwargs)
    model(np.ones((2, 3, 4), "float32"))
    assert len(model.losses) == 0


def test_config_round_trip():
    layer = AdapterFusion(
        value=False,
        dropout=0.2,
        temperature=5.0,
        temperature_decay=0.5,
        min_temperature=2.0,
        regularization=0.1,
        scale_scores=True,
        kernel_initializer="glorot_uniform",
        seed=3,
        name="fusion",
    )
    clone = assert_config_round_trip(layer)
    assert clone.temperature_decay == 0.5 and clone.scale_scores


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"value": 1}, "value=1"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"temperature_decay": -0.05}, "temperature_decay=-0.05"),
        ({"min_temperature": 0}, "min_temperature=0"),
        ({"min_temperature": 2.0}, "min_temperature=2.0"),
        ({"regularization": -1}, "regularization=-1"),
        ({"scale_scores": "no"}, "scale_scores='no'"),
        ({"kernel_initializer": "nope"}, "kernel_initializer='nope'"),
        ({"seed": "1"}, "seed='1'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterFusion(**kwargs)


def test_bad_query():
    outputs, query = fusion_inputs()
    layer = AdapterFusion()
    with pytest.raises(ValueError, match="query=None"):
        layer(outputs)
    with pytest.raises(ValueError, match="query shape"):
        layer(outputs, query=query[..., :5])
