"""`keras_mtl.analysis.task_affinity` against float64 closed forms."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import to_numpy

TASKS = ("a", "b", "c")


def linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((3,))
    h = keras.layers.Dense(4, name="trunk")(x)
    model = keras_mtl.MultiTaskModel(
        x, {t: keras.layers.Dense(1, name=t)(h) for t in TASKS})
    # b's head starts as a's (and its labels are close to a's, see `data`):
    # the two tasks pull the trunk the same way.
    model.get_layer("b").set_weights(model.get_layer("a").get_weights())
    model.compile(keras.optimizers.SGD(0.05), loss="mse")
    return model


def data(num=16, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, 3)).astype("float32")
    y = {t: rng.normal(size=(num, 1)).astype("float32") for t in TASKS}
    y["b"] = (y["a"] + 0.1 * y["b"]).astype("float32")  # b is close to a
    return x, y


def float64_weights(model):
    def get(name):
        return [np.asarray(to_numpy(v), np.float64)
                for v in model.get_layer(name).weights]

    return get("trunk"), {t: get(t) for t in TASKS}


def losses_and_gradients(trunk, heads, x, y):
    """Each task's MSE and its gradient of the trunk `(W, c)`."""
    kernel, bias = trunk
    h = x @ kernel + bias
    losses, grads = [], []
    for task in TASKS:
        w, b = heads[task]
        residual = h @ w + b - y[task]
        losses.append(np.mean(residual ** 2))
        dh = 2.0 * residual @ w.T / len(x)
        grads.append([x.T @ dh, dh.sum(axis=0)])
    return np.array(losses), grads


def reference(model, x, y, method, lr):
    trunk, heads = float64_weights(model)
    x = x.astype(np.float64)
    y = {t: v.astype(np.float64) for t, v in y.items()}
    losses, grads = losses_and_gradients(trunk, heads, x, y)
    if method == "cosine":
        flat = np.stack([np.concatenate([g.ravel() for g in gs])
                         for gs in grads])
        gram = flat @ flat.T
        norms = np.sqrt(np.diag(gram))
        return gram / np.outer(norms, norms)
    rows = []
    for i in range(len(TASKS)):
        moved = [p - lr * g for p, g in zip(trunk, grads[i])]
        after, _ = losses_and_gradients(moved, heads, x, y)
        rows.append(1.0 - after / losses)
    return np.stack(rows)


@pytest.mark.parametrize("method", ["lookahead", "cosine"])
def test_matches_the_closed_form_averaged_over_batches(method):
    model = linear_model()
    x, y = data()
    before = [to_numpy(v).copy() for v in model.variables]
    got = keras_mtl.analysis.task_affinity(model, (x, y), method=method,
                                           batch_size=8)
    halves = [reference(model, x[s], {t: v[s] for t, v in y.items()},
                        method, 0.05)
              for s in (slice(0, 8), slice(8, 16))]
    np.testing.assert_allclose(got, np.mean(halves, axis=0), rtol=1e-4,
                               atol=1e-6)
    # Nothing changed: weights, optimizer, balancing state.
    for a, v in zip(before, model.variables):
        np.testing.assert_array_equal(a, to_numpy(v))
    # b follows a: the pair helps each other most.
    assert got[0, 1] > got[0, 2] and got[1, 0] > got[2, 0]
    groups, _ = keras_mtl.analysis.group_tasks(got, 2, list(TASKS))
    assert ["a", "b"] in groups


def test_other_inputs_missing_labels_and_learning_rate():
    model = linear_model()
    x, y = data()
    y["c"][:8] = np.nan  # no labels for c in the first batch
    batches = [(x[s], {t: v[s] for t, v in y.items()})
               for s in (slice(0, 8), slice(8, 16))]
    from_generator = keras_mtl.analysis.task_affinity(
        model, iter(batches), learning_rate=0.2)
    second = reference(model, *batches[1], "lookahead", 0.2)
    first = reference(model, batches[0][0],
                      {t: v for t, v in batches[0][1].items()},
                      "lookahead", 0.2)
    # Column c comes from the second batch only; the others average both.
    np.testing.assert_allclose(from_generator[:, 2], second[:, 2],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(from_generator[:2, :2],
                               (first[:2, :2] + second[:2, :2]) / 2,
                               rtol=1e-4, atol=1e-6)
    one = keras_mtl.analysis.task_affinity(model, (x, y), steps=1,
                                           batch_size=8, learning_rate=0.2)
    assert np.isnan(one[:, 2]).all()


def test_bad_arguments():
    model = linear_model()
    x, y = data()
    for kwargs, match in (({"method": "tag"}, "method"),
                          ({"learning_rate": -1.0}, "learning_rate"),
                          ({"batch_size": 0}, "batch_size"),
                          ({"steps": 0}, "steps")):
        with pytest.raises(ValueError, match=match):
            keras_mtl.analysis.task_affinity(model, (x, y), **kwargs)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        keras_mtl.analysis.task_affinity(plain, (x, y))
