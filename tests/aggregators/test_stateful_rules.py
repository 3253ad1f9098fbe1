"""Rules whose state follows the training run: MoCo, DB-MTL, ExcessMTL
(per-parameter state) and GradNorm (trained weights), checked step by step
against NumPy transcriptions of their published update rules."""

import os

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import aggregators
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy


def problems(num_steps=4, num_tasks=3, num_params=7, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(num_steps):
        scales = rng.uniform(0.1, 10.0, size=(num_tasks, 1))
        jacobian = (scales * rng.normal(size=(num_tasks, num_params)))
        losses = rng.uniform(0.2, 3.0, size=(num_tasks,))
        yield jacobian.astype("float32"), losses.astype("float32")


def run(agg, steps):
    state, results = None, []
    for jacobian, losses in steps:
        direction, weights, state = agg.aggregate(jacobian, losses, state)
        results.append((to_numpy(direction), to_numpy(weights)))
    return results


def numpy_db_mtl(steps, beta=0.9, beta_sigma=0.0, eps=1e-8):
    average, out = None, []
    for t, (jacobian, losses) in enumerate(steps, start=1):
        g = jacobian / (losses + eps)[:, None]
        average = np.zeros_like(g) if average is None else average
        b = beta / t**beta_sigma
        average = g + b * (average - g)
        norms = np.linalg.norm(average, axis=1)
        alpha = norms.max() / (norms + eps)
        out.append((alpha @ average, alpha))
    return out


def numpy_moco(steps, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5,
               rho=0.0):
    y, lam, out = None, None, []
    for t, (jacobian, losses) in enumerate(steps, start=1):
        num_tasks = len(losses)
        y = np.zeros_like(jacobian) if y is None else y
        lam = np.full(num_tasks, 1.0 / num_tasks) if lam is None else lam
        g = jacobian / (np.linalg.norm(jacobian, axis=1) + 1e-8)[:, None]
        g = g * losses[:, None]
        y = y - beta / t**beta_sigma * (y - g)
        logits = lam - gamma / t**gamma_sigma * (
            (y @ y.T + rho * np.eye(num_tasks)) @ lam)
        lam = np.exp(logits - logits.max())
        lam = lam / lam.sum()
        out.append((y.T @ lam, lam))
    return out


def numpy_excess_mtl(steps, eta=1e-2):
    weights, total, initial, out = None, None, None, []
    for jacobian, _ in steps:
        num_tasks = len(jacobian)
        weights = np.ones(num_tasks) if weights is None else weights
        total = np.zeros_like(jacobian) if total is None else total
        total = total + jacobian**2
        risk = np.sum(jacobian**2 / np.sqrt(total + 1e-7), axis=1)
        if initial is None:
            initial = risk
        else:
            weights = weights * np.exp(eta * risk / initial)
            weights = weights / weights.sum() * num_tasks
        out.append((weights @ jacobian, weights))
    return out


@pytest.mark.parametrize(
    "agg, reference",
    [
        (aggregators.DBMTL(), numpy_db_mtl),
        (aggregators.DBMTL(beta=0.5, beta_sigma=0.5),
         lambda s: numpy_db_mtl(s, beta=0.5, beta_sigma=0.5)),
        (aggregators.MoCo(), numpy_moco),
        (aggregators.MoCo(beta=0.99, beta_sigma=0.0, rho=0.1),
         lambda s: numpy_moco(s, beta=0.99, beta_sigma=0.0, rho=0.1)),
        (aggregators.ExcessMTL(), numpy_excess_mtl),
        (aggregators.ExcessMTL(robust_step_size=1.0),
         lambda s: numpy_excess_mtl(s, eta=1.0)),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_matches_the_published_update_over_several_steps(agg, reference):
    steps = list(problems())
    for (d, w), (d_ref, w_ref) in zip(run(agg, steps), reference(steps)):
        np.testing.assert_allclose(w, w_ref, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(d, d_ref, rtol=2e-4, atol=1e-5)


def test_db_mtl_rescales_every_task_to_the_largest_norm():
    jacobian = np.array([[1e-3, 0.0], [0.0, 10.0]], "float32")
    _, weights, state = aggregators.DBMTL().aggregate(
        jacobian, np.array([1.0, 1.0], "float32"))
    norms = np.linalg.norm(to_numpy(state["average"]), axis=1)
    np.testing.assert_allclose(
        to_numpy(weights) * norms, norms.max(), rtol=1e-4
    )


def test_per_parameter_rules_need_the_width():
    for cls in (aggregators.DBMTL, aggregators.MoCo, aggregators.ExcessMTL):
        with pytest.raises(ValueError, match="num_params"):
            cls().initial_state(3)
        assert cls.tracks_gradients


def numpy_gradnorm(steps, alpha=1.5, lr=1e-3):
    """GradNorm with L(0) from the first step, one Adam step per step."""
    s = m = v = None
    initial, out = None, []
    for t, (jacobian, losses) in enumerate(steps):
        num_tasks = len(losses)
        if initial is None:
            initial = losses
            s, m, v = (np.zeros(num_tasks) for _ in range(3))
            out.append(np.ones(num_tasks))
            continue
        w = num_tasks * np.exp(s) / np.exp(s).sum()
        norms = np.linalg.norm(jacobian, axis=1)
        g = w * norms
        r = (losses / initial) / np.mean(losses / initial)
        target = g.mean() * r**alpha
        grad_w = np.sign(g - target) * norms
        z = w / num_tasks
        grad_s = num_tasks * z * (grad_w - np.sum(z * grad_w))  # softmax VJP
        m = 0.9 * m + 0.1 * grad_s
        v = 0.999 * v + 0.001 * grad_s**2
        s = s - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        out.append(w)
    return out


def test_gradnorm_matches_its_update_rule():
    steps = list(problems(num_steps=5))
    agg = aggregators.GradNorm(initial_loss="first_step", learning_rate=0.1)
    got = [w for _, w in run(agg, steps)]
    for w, w_ref in zip(got, numpy_gradnorm(steps, lr=0.1)):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)


def test_gradnorm_equalises_the_weighted_gradient_norms():
    # Equal training rates: the target is the mean weighted norm, so the
    # task with the smaller gradient gets the larger weight.
    jacobian = np.array([[1.0, 0.0], [0.0, 4.0]], "float32")
    losses = np.array([1.0, 1.0], "float32")
    agg = aggregators.GradNorm(initial_loss="first_step", learning_rate=0.05)
    state = None
    for _ in range(200):
        _, weights, state = agg.aggregate(jacobian, losses, state)
    weights = to_numpy(weights)
    np.testing.assert_allclose(weights.sum(), 2.0, rtol=1e-5)
    np.testing.assert_allclose(weights[0] * 1.0, weights[1] * 4.0, rtol=0.05)


def test_gradnorm_keeps_equal_weights_during_the_first_epoch():
    agg = aggregators.GradNorm()
    steps = list(problems(num_steps=3))
    state = {**agg.initial_state(3), "epoch": keras.ops.zeros(())}
    for jacobian, losses in steps:
        _, weights, new = agg.aggregate(jacobian, losses, state)
        np.testing.assert_allclose(to_numpy(weights), 1.0)
        state = {**new, "epoch": keras.ops.zeros(())}
    np.testing.assert_allclose(
        to_numpy(state["loss_sum"]) / to_numpy(state["loss_count"]),
        np.mean([step_losses for _, step_losses in steps], axis=0),
        rtol=1e-5)
    # From the second epoch on, `s` moves and the weights stay on T * simplex.
    state = {**state, "epoch": keras.ops.ones(())}
    for _ in range(2):
        _, weights, new = agg.aggregate(*steps[0], state)
        state = {**new, "epoch": keras.ops.ones(())}
    assert not np.allclose(to_numpy(weights), 1.0)
    np.testing.assert_allclose(to_numpy(weights).sum(), 3.0, rtol=1e-5)


# ------------------------------------------------------------ inside a model


def test_per_parameter_state_is_sized_saved_and_restored(tmp_path):
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES, aggregator="moco")
    width = sum(int(np.prod(v.shape)) for v in model.shared_variables)
    assert tuple(model.balancer.state["tracked"].shape) == (3, width)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.abs(to_numpy(model.balancer.state["tracked"])).sum() > 0
    path = os.path.join(tmp_path, "moco.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for key, variable in model.balancer.state.items():
        np.testing.assert_allclose(to_numpy(loaded.balancer.state[key]),
                                   to_numpy(variable))


def test_per_parameter_rules_refuse_feature_gradients():
    model = mtl_model()
    with pytest.raises(ValueError, match="gradient_mode='parameters'"):
        model.compile("sgd", loss=LOSSES, aggregator="db_mtl",
                      gradient_mode="features", features="features")


def test_per_parameter_state_must_match_the_trainable_set():
    x, y = make_data(16)
    model = mtl_model()
    model.compile("sgd", loss=LOSSES, aggregator="excess_mtl")
    model.get_layer("trunk_1").trainable = False
    with pytest.raises(ValueError, match="Compile the model again"):
        model.train_on_batch(x, y)


def test_gradnorm_balances_the_named_layer():
    x, y = make_data(32)
    model = mtl_model()
    agg = aggregators.GradNorm(layer="features", initial_loss="first_step",
                               learning_rate=0.1)
    model.compile(keras.optimizers.SGD(1e-2), loss=LOSSES, aggregator=agg)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    weights = [
        history.history[f"{t}_weight"][-1] for t in ("reg", "cls", "bin")
    ]
    np.testing.assert_allclose(sum(weights), 3.0, rtol=1e-4)
    assert not np.allclose(weights, 1.0, atol=1e-3)
    model = mtl_model()
    model.compile("sgd", loss=LOSSES, aggregator=aggregators.GradNorm(
        layer="head_reg"))
    with pytest.raises(ValueError, match="no shared trainable variables"):
        model.train_on_batch(x, y)
    model = mtl_model()
    model.compile("sgd", loss=LOSSES, aggregator=aggregators.GradNorm(
        layer="features"), gradient_mode="features", features="features")
    with pytest.raises(ValueError, match="gradient_mode='parameters'"):
        model.train_on_batch(x, y)


def test_jacobian_rules_train_a_model_without_shared_variables():
    inputs = keras.Input((4,))
    outputs = {t: keras.layers.Dense(1)(inputs) for t in ("a", "b")}
    model = keras_mtl.MultiTaskModel(inputs, outputs)
    model.compile("sgd", loss={"a": "mse", "b": "mse"}, aggregator="graddrop")
    x = np.ones((8, 4), "float32")
    logs = model.train_on_batch(x, {"a": x[:, :1], "b": x[:, :1]},
                                return_dict=True)
    assert np.isfinite(logs["loss"])
