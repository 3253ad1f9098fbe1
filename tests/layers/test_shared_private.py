"""`SharedPrivate` (ASP-MTL) against a NumPy reference, in a model."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import layers


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def make(**kwargs):
    keras.utils.set_random_seed(0)
    return layers.SharedPrivate(
        keras.layers.Dense(4, name="shared"),
        {"a": keras.layers.Dense(3, name="private_a"),
         "b": keras.layers.Dense(3, name="private_b")}, **kwargs)


def dense(layer, x):
    return x @ numpy(layer.kernel) + numpy(layer.bias)


def test_features_and_losses_match_the_formulas():
    layer = make(adversarial_weight=0.5, orthogonality_weight=0.1)
    x = np.random.default_rng(1).normal(size=(6, 5)).astype("float32")
    ids = np.array([0, 1, 1, 0, 1, 1])
    out = layer(x, task_ids=ids)
    s = dense(layer.shared, x)
    h = {t: dense(layer.private[t], x) for t in "ab"}
    for task in "ab":
        np.testing.assert_allclose(numpy(out[task]),
                                   np.concatenate([s, h[task]], 1), atol=1e-5)
    diff = sum(np.sum(((s * m[:, None]).T @ (h[t] * m[:, None])) ** 2)
               for t, m in (("a", ids == 0), ("b", ids == 1)))
    logits = dense(layer.discriminator, s)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    adversarial = -np.mean(log_p[np.arange(6), ids])
    orthogonality, adv = [numpy(v) for v in layer.losses]
    np.testing.assert_allclose(orthogonality, 0.1 * diff, rtol=1e-4)
    np.testing.assert_allclose(adv, 0.5 * adversarial, rtol=1e-4)
    # Without task ids every example counts for every task; no adversary.
    layer(x)
    (orthogonality,) = [numpy(v) for v in layer.losses]
    want = sum(np.sum((s.T @ h[t]) ** 2) for t in "ab")
    np.testing.assert_allclose(orthogonality, 0.1 * want, rtol=1e-4)


def test_one_step_descends_for_the_discriminator_ascends_for_shared():
    """One SGD step on the adversarial loss alone, against the analytic
    gradients: the discriminator moves down its gradient, the shared
    encoder up it (gradient reversal)."""
    layer = make(adversarial_weight=1.0, orthogonality_weight=0.0)
    x = np.random.default_rng(2).normal(size=(8, 5)).astype("float32")
    ids = np.arange(8) % 2
    inputs = keras.Input((5,))
    task_ids = keras.Input((), dtype="int32")
    model = keras.Model([inputs, task_ids],
                        layer(inputs, task_ids=task_ids)["a"])
    model.compile(keras.optimizers.SGD(0.1), loss=lambda y, p: 0.0 * p)
    ws, bs = numpy(layer.shared.kernel), numpy(layer.shared.bias)
    wd, bd = (numpy(layer.discriminator.kernel),
              numpy(layer.discriminator.bias))
    shared = x @ ws + bs
    logits = shared @ wd + bd
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(2)[ids]) / len(x)  # d mean CE / d logits
    g_shared = g @ wd.T
    model.fit([x, ids], np.zeros((8, 7)), epochs=1, batch_size=8, verbose=0)
    np.testing.assert_allclose(numpy(layer.discriminator.kernel),
                               wd - 0.1 * shared.T @ g, atol=1e-5)
    np.testing.assert_allclose(numpy(layer.discriminator.bias),
                               bd - 0.1 * g.sum(0), atol=1e-5)
    np.testing.assert_allclose(numpy(layer.shared.kernel),
                               ws + 0.1 * x.T @ g_shared, atol=1e-5)
    np.testing.assert_allclose(numpy(layer.shared.bias),
                               bs + 0.1 * g_shared.sum(0), atol=1e-5)


def test_in_a_multi_task_model_with_interleaved_task_ids():
    rng = np.random.default_rng(3)
    data = {t: ({"x": rng.normal(size=(40, 5)).astype("float32")},
                rng.normal(size=(40, 1)).astype("float32")) for t in "ab"}
    stream = keras_mtl.data.interleave(data, batch_size=10, seed=4,
                                       task_id_key="task")
    x, _ = stream[0]
    assert set(x) == {"x", "task"} and x["task"].dtype == np.int32
    inputs = {"x": keras.Input((5,), name="x"),
              "task": keras.Input((), dtype="int32", name="task")}
    features = make()(inputs["x"], task_ids=inputs["task"])
    model = keras_mtl.MultiTaskModel(inputs, {
        t: keras.layers.Dense(1, name=t)(features[t]) for t in "ab"})
    model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"})
    history = model.fit(stream, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    with pytest.raises(ValueError, match="dict inputs"):
        keras_mtl.data.interleave(
            {"a": (np.ones((4, 2)), np.ones((4, 1)))},
            task_id_key="task")[0]


def test_keras_file_round_trip_and_errors(tmp_path):
    layer = make()
    inputs = keras.Input((5,))
    outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(5).normal(size=(3, 5)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for task in "ab":
        np.testing.assert_allclose(numpy(loaded(x)[task]),
                                   numpy(model(x)[task]), atol=1e-6)
    with pytest.raises(ValueError, match="`shared`"):
        layers.SharedPrivate("dense", {"a": keras.layers.Dense(2)})
    with pytest.raises(ValueError, match="`private`"):
        layers.SharedPrivate(keras.layers.Dense(2), {})
    with pytest.raises(ValueError, match="`adversarial_weight`"):
        layers.SharedPrivate(keras.layers.Dense(2),
                             {"a": keras.layers.Dense(2)},
                             adversarial_weight=-1)
