"""`compile(task_groups=...)`: groups of tasks balanced as one, against a
float64 closed form of one step."""

import json

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
    return keras_mtl.MultiTaskModel(
        x, {t: keras.layers.Dense(1, name=t)(h) for t in TASKS})


def data(num=16, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, 3)).astype("float32")
    y = {t: rng.normal(size=(num, 1)).astype("float32") for t in TASKS}
    return x, y


def weights_of(model, name):
    return [np.asarray(to_numpy(v), np.float64)
            for v in model.get_layer(name).weights]


def reference_step(model, x, y, lr):
    """MGDA over the two groups {a, b} and {c}: each group's gradient is
    the sum of its tasks'; heads take their own task's gradient."""
    kernel, bias = weights_of(model, "trunk")
    x = x.astype(np.float64)
    h = x @ kernel + bias
    trunk_grads, new_heads = {}, {}
    for task in TASKS:
        w, b = weights_of(model, task)
        d_out = 2.0 * (h @ w + b - y[task].astype(np.float64)) / len(x)
        dh = d_out @ w.T
        trunk_grads[task] = np.concatenate([(x.T @ dh).ravel(),
                                            dh.sum(axis=0)])
        new_heads[task] = [w - lr * (h.T @ d_out),
                           b - lr * d_out.sum(axis=0)]
    g1 = trunk_grads["a"] + trunk_grads["b"]
    g2 = trunk_grads["c"]
    alpha = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
    direction = alpha * g1 + (1.0 - alpha) * g2
    new_trunk = [kernel - lr * direction[:12].reshape(3, 4),
                 bias - lr * direction[12:]]
    return new_trunk, new_heads, alpha


def test_one_step_balances_the_groups():
    x, y = data()
    model = linear_model()
    trunk, heads, alpha = reference_step(model, x, y, lr=0.1)
    model.compile(keras.optimizers.SGD(0.1), loss="mse", aggregator="mgda",
                  task_groups={"ab": ["a", "b"], "c": ["c"]})
    monitor = keras_mtl.callbacks.ConflictMonitor()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        callbacks=[monitor])
    for got, want in zip(weights_of(model, "trunk"), trunk):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for task in TASKS:
        for got, want in zip(weights_of(model, task), heads[task]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Each task logs its group's weight; the monitor sees the groups.
    logs = history.history
    np.testing.assert_allclose(
        [logs["a_weight"][0], logs["b_weight"][0], logs["c_weight"][0]],
        [alpha, alpha, 1.0 - alpha], atol=1e-4)
    assert monitor.task_names == ("ab", "c")
    assert monitor.history["cosines"].shape == (1, 2, 2)
    config = json.loads(json.dumps(model.get_compile_config()))
    clone = linear_model()
    clone.compile_from_config(config)
    assert clone.balancer.groups == [[0, 1], [2]]


def test_rules_with_state_and_parameters_see_the_groups():
    x, y = data()
    model = linear_model()
    model.compile("sgd", loss="mse", aggregator="uncertainty_weighting",
                  task_groups=[["c"], ["a", "b"]])
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert [tuple(v.shape) for v in model.balancer.parameters.values()] == \
        [(2,)]
    assert history.history["a_weight"] == history.history["b_weight"]
    model.compile("sgd", loss="mse", aggregator="famo",
                  task_groups=[["c"], ["a", "b"]])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # FAMO's state is sized by the groups.
    assert {tuple(v.shape) for v in model.balancer.state.values()} & {(2,)}
    assert not {tuple(v.shape) for v in model.balancer.state.values()} & {
        (3,)}


def test_bad_groups_are_refused_before_anything_changes():
    model = linear_model()
    for groups, match in (([["a", "b"]], "missing"),
                          ([["a", "b"], ["c", "a"]], "repeated"),
                          ([["a", "b", "c", "d"]], "unknown"),
                          ([["a", "b"], []], "non-empty"),
                          ("abc", "non-empty")):
        with pytest.raises(ValueError, match=match):
            model.compile("sgd", loss="mse", task_groups=groups)
        assert model.balancer is None
    for rule in ("auto_lambda", "modo"):
        with pytest.raises(ValueError, match="task_groups"):
            model.compile("sgd", loss="mse", aggregator=rule,
                          task_groups=[["a", "b"], ["c"]])
    model.compile("sgd", loss="mse", task_groups=[["a", "b"], ["c"]])
    with pytest.raises(ValueError, match="task_groups"):
        keras_mtl.analysis.task_affinity(model, data())


def test_rules_that_need_more_tasks_are_refused_at_compile():
    # Two groups of three tasks: too few rows for Krum and the trimmed mean.
    model = linear_model()
    for rule, match in (("krum", "needs at least 3 tasks"),
                        ("trimmed_mean", "needs at least 3 tasks")):
        with pytest.raises(ValueError, match=match):
            model.compile("sgd", loss="mse", aggregator=rule,
                          task_groups=[["a", "b"], ["c"]])
        assert model.balancer is None
    model.compile("sgd", loss="mse", aggregator="krum")  # three tasks: fine
