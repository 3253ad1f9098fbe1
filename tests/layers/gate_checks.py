"""Shared checks for the layer tests: round trips and backend gradients."""

import keras
import numpy as np

from tests.helpers import BACKEND
from tests.helpers import to_numpy


def seeded(seed):
    """A seeded Glorot initializer (cheaper than `set_random_seed`, which
    imports TensorFlow on every backend)."""
    return keras.initializers.GlorotUniform(seed=seed)


def as_list(outputs):
    if isinstance(outputs, dict):
        return [to_numpy(outputs[k]) for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [to_numpy(o) for o in outputs]
    return [to_numpy(outputs)]


def assert_outputs_equal(a, b, atol=0.0):
    a, b = as_list(a), as_list(b)
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_allclose(left, right, atol=atol, rtol=0)


def randomize_weights(layer, seed=0, low=-1.0, high=1.0):
    """Gives every weight of a built layer distinct random values."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if w.trainable:
            w.assign(rng.uniform(low, high, size=w.shape).astype("float32"))


def assert_config_round_trip(layer, inputs):
    """A layer rebuilt from its config, with the same weights, gives the
    same outputs, and its config is a fixed point."""
    expected = layer(inputs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone(inputs)
    clone.set_weights(layer.get_weights())
    assert_outputs_equal(clone(inputs), expected)


def assert_keras_file_round_trip(model, inputs, tmp_path):
    """Saving to `.keras` and loading gives the same predictions."""
    path = str(tmp_path / "model.keras")
    expected = model(inputs, training=False)
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert_outputs_equal(loaded(inputs, training=False), expected)
    return loaded


def backend_gradient(fn, x):
    """d sum(fn(x)) / dx with the backend's own automatic differentiation."""
    x = np.asarray(x, "float32")
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda v: jnp.sum(fn(v)))(jnp.asarray(x)))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(fn(v))
        return tape.gradient(total, v).numpy()
    import torch

    v = torch.tensor(x, requires_grad=True)
    torch.sum(fn(v)).backward()
    return v.grad.numpy()
