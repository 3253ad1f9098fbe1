"""Shared helpers for the expert-layer tests."""

import os

import keras
import numpy as np


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def relu(z):
    return np.maximum(z, 0.0)


def round_trip_outputs(model, x, tmp_path):
    """Saves `model` as `.keras`, reloads it and returns both predictions."""
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    return model.predict(x, verbose=0), loaded.predict(x, verbose=0), loaded


def config_round_trip(layer):
    """Rebuilds `layer` from its config and checks the config is stable."""
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    return clone


def flat_outputs(outputs):
    if isinstance(outputs, dict):
        return [outputs[k] for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]
