"""`compile(sharpness="task")` (F-MTL): one step against a float64 NumPy
reference, every rule, refusals."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import aggregators
from tests.helpers import BACKEND
from tests.helpers import to_numpy

TASKS = ("a", "b")
L2 = 0.01


def tanh_model(seed, tasks=TASKS, regularized=False):
    """`h = tanh(x W + c)`, one linear head per task."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((3,))
    h = keras.layers.Dense(
        5, activation="tanh", name="trunk",
        kernel_regularizer=keras.regularizers.L2(L2) if regularized
        else None)(x)
    return keras_mtl.MultiTaskModel(
        x, {t: keras.layers.Dense(1, name=t)(h) for t in tasks})


def numpy_weights(model, tasks):
    def get(name):
        return [np.asarray(to_numpy(v), np.float64)
                for v in model.get_layer(name).weights]

    return get("trunk"), {t: get(t) for t in tasks}


def task_gradients(trunk, head, x, y):
    """One task's mean-squared-error loss and its gradients of the trunk
    `(W, c)` and of its head `(w, b)`, in closed form."""
    (kernel, bias), (w, b) = trunk, head
    h = np.tanh(x @ kernel + bias)
    residual = h @ w + b - y
    loss = np.mean(residual ** 2)
    d_out = 2.0 * residual / len(x)
    d_pre = (d_out @ w.T) * (1.0 - h ** 2)
    return loss, [x.T @ d_pre, d_pre.sum(0)], [h.T @ d_out, d_out.sum(0)]


def ascent(params, grads, rho, adaptive):
    """F-MTL's ascent step over one block of variables."""
    scale = [np.abs(p) if adaptive else np.ones_like(p) for p in params]
    norm = np.sqrt(sum(np.sum((s * g) ** 2) for s, g in zip(scale, grads)))
    return [p + rho * s * s * g / (norm + 1e-12)
            for p, s, g in zip(params, scale, grads)]


def reference_step(model, x, y, rule, rho, adaptive, lr, regularized):
    """New trunk and head weights after one SGD step of F-MTL."""
    trunk, heads = numpy_weights(model, TASKS)
    x = x.astype(np.float64)
    flat_shared, flat_heads = [], {}
    for task in TASKS:
        target = y[task].astype(np.float64)
        _, g_trunk, g_head = task_gradients(trunk, heads[task], x, target)
        raised_trunk = ascent(trunk, g_trunk, rho, adaptive)
        raised_head = ascent(heads[task], g_head, rho, adaptive)
        _, s_trunk, s_head = task_gradients(raised_trunk, raised_head, x,
                                            target)
        flat_shared.append(np.concatenate([g.ravel() for g in s_trunk]))
        flat_heads[task] = s_head
    jac = np.stack(flat_shared)
    if rule == "mgda":
        g1, g2 = jac
        alpha = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
        weights = np.array([alpha, 1.0 - alpha])
    else:  # "sum"
        weights = np.ones(2)
    direction = weights @ jac
    kernel_size = trunk[0].size
    d_trunk = [direction[:kernel_size].reshape(trunk[0].shape),
               direction[kernel_size:]]
    if regularized:  # The regulariser's gradient, at the current values.
        d_trunk[0] = d_trunk[0] + 2.0 * L2 * trunk[0]
    new_trunk = [p - lr * d for p, d in zip(trunk, d_trunk)]
    new_heads = {t: [p - lr * g for p, g in zip(heads[t], flat_heads[t])]
                 for t in TASKS}
    return new_trunk, new_heads


@pytest.mark.parametrize("rule, rho, adaptive, regularized", [
    ("mgda", 2.0, True, False),   # F-MTL's defaults, a Gramian rule
    ("sum", 0.05, False, True),   # plain SAM radius, a loss-level rule
])
def test_one_step_matches_a_float64_reference(rule, rho, adaptive,
                                              regularized):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = {t: rng.normal(size=(16, 1)).astype("float32") for t in TASKS}
    model = tanh_model(seed=2, regularized=regularized)
    lr = 0.1
    expected_trunk, expected_heads = reference_step(
        model, x, y, rule, rho, adaptive, lr, regularized)
    model.compile(keras.optimizers.SGD(lr), loss="mse", aggregator=rule,
                  sharpness="task", rho=rho, sharpness_adaptive=adaptive)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False,
                        verbose=0)
    trunk, heads = numpy_weights(model, TASKS)
    for got, want in zip(trunk, expected_trunk):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
    for task in TASKS:
        for got, want in zip(heads[task], expected_heads[task]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
    for task in TASKS:
        assert history.history[f"{task}_sharpness"][0] > 0.0


def test_flat_gradients_differ_from_plain_ones_and_save():
    """The perturbation matters (rho > 0 changes the step), and the
    compile arguments survive `.keras` saving."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = {t: rng.normal(size=(16, 1)).astype("float32") for t in TASKS}
    results = []
    for sharpness in (None, "task"):
        model = tanh_model(seed=1)
        model.compile(keras.optimizers.SGD(0.1), loss="mse",
                      aggregator="upgrad", sharpness=sharpness, rho=0.5)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        results.append(numpy_weights(model, TASKS)[0][0])
    assert np.max(np.abs(results[0] - results[1])) > 1e-4
    config = model.get_compile_config()
    assert (config["sharpness"], config["rho"],
            config["sharpness_adaptive"]) == ("task", 0.5, True)
    clone = tanh_model(seed=1)
    clone.compile_from_config(config)
    assert clone.balancer.sharpness == "task" and clone.balancer.rho == 0.5


# One rule of each kind (loss-level, stateful, Gramian, Jacobian, batch
# parts, learned parameters, bilevel, after-step): compiling each is slow
# on JAX and TensorFlow, so every rule runs on PyTorch only.
KINDS = ("sum", "mgda", "pcgrad", "modo", "uncertainty_weighting",
         "auto_lambda")
RULES = sorted(aggregators.ALL_AGGREGATORS) if BACKEND == "torch" else KINDS


def build_rule(name, num_tasks):
    if name == "constant":
        return aggregators.Constant([1.0] * num_tasks)
    return aggregators.get(name)


@pytest.mark.parametrize("name", RULES)
def test_every_rule_trains_or_is_refused(name):
    """Every rule without learned parameters trains with flat gradients
    (the cross-batch rules on their rows); the others are refused before
    anything changes."""
    tasks = ("a", "b", "c")
    rule = build_rule(name, len(tasks))
    model = tanh_model(seed=0, tasks=tasks)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = {t: rng.normal(size=(16, 1)).astype("float32") for t in tasks}
    if rule.initial_parameters(len(tasks)):
        with pytest.raises(ValueError, match="learns its weights"):
            model.compile("sgd", loss="mse", aggregator=rule,
                          sharpness="task")
        assert model.balancer is None
        return
    model.compile(keras.optimizers.SGD(0.05), loss="mse", aggregator=rule,
                  sharpness="task", rho=0.1)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after = [to_numpy(v) for v in model.trainable_variables]
    assert all(np.isfinite(a).all() for a in after), name
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before)), name
    assert np.isfinite(history.history["a_sharpness"][0]), name


def test_refusals():
    model = tanh_model(seed=0)
    for kwargs, match in (
        ({"sharpness": "sam"}, "sharpness"),
        ({"sharpness": "task", "rho": 0.0}, "rho"),
        ({"sharpness": "task", "rho": float("nan")}, "rho"),
        ({"sharpness": "task", "sharpness_adaptive": 1}, "adaptive"),
        ({"sharpness": "task", "gradient_mode": "features",
          "features": "trunk", "aggregator": "mgda"}, "gradient_mode"),
    ):
        with pytest.raises(ValueError, match=match):
            model.compile("sgd", loss="mse", **kwargs)
        assert model.balancer is None
