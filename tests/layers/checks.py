"""Checks shared by the layer tests: config round trips, `.keras` saving."""

import keras
import numpy as np


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def randomize_weights(layer, seed=0, scale=0.5):
    """Gives every trainable weight random values (zero inits hide bugs)."""
    rng = np.random.default_rng(seed)
    for variable in layer.trainable_weights:
        variable.assign(
            rng.normal(scale=scale, size=variable.shape).astype("float32")
        )


def assert_config_round_trip(layer):
    """`from_config(get_config())` and Keras (de)serialisation agree."""
    serialize = keras.saving.serialize_keras_object
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert serialize(clone) == serialize(layer)
    restored = keras.saving.deserialize_keras_object(serialize(layer))
    assert type(restored) is type(layer)
    assert serialize(restored) == serialize(layer)
    return clone


def assert_keras_round_trip(model, inputs, tmp_path, atol=1e-6):
    """Saves `model` as `.keras`, reloads it, compares the outputs."""
    expected = model(inputs)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = loaded(inputs)
    for e, a in zip(
        keras.tree.flatten(expected), keras.tree.flatten(actual)
    ):
        np.testing.assert_allclose(to_numpy(a), to_numpy(e), atol=atol)
    return loaded
