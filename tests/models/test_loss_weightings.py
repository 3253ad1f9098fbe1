"""Loss-only rules with learnable parameters or epoch state, in the model."""

import os

import keras
import numpy as np
import pytest

from keras_mtl import aggregators
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy

TASKS = ("reg", "cls", "bin")


@pytest.mark.parametrize(
    "name, key, expected_step",
    [
        # d/ds [exp(-s) L / 2 + s / 2] = (1 - exp(-s) L) / 2 at s = 0.
        (
            "uncertainty_weighting",
            "log_variance",
            lambda losses: 0.5 * (1 - losses),
        ),
        # d/ds [exp(s) L - s] = L - 1 at s = 0.
        ("imtl_l", "scale", lambda losses: losses - 1.0),
    ],
)
def test_learnable_parameters_are_trained_with_the_model(
    name, key, expected_step
):
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, aggregator=name)
    losses = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    before = np.array([losses[f"{t}_loss"] for t in TASKS])
    parameter = model.balancer.parameters[key]
    assert parameter.trainable
    assert any(v is parameter for v in model.trainable_variables)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(
        to_numpy(parameter), -0.1 * expected_step(before), rtol=1e-4, atol=1e-6)


def test_uncertainty_weighting_scales_the_model_gradient():
    x, y = make_data(32)
    results = []
    for aggregator in (
        "uncertainty_weighting",
        aggregators.Constant([0.5] * 3),
    ):
        model = mtl_model(seed=4)
        model.compile(
            keras.optimizers.SGD(0.1), loss=LOSSES, aggregator=aggregator
        )
        model.train_on_batch(x, y)
        results.append(
            {v.path: to_numpy(v) for v in model.trainable_variables}
        )
    # At s = 0 the weights are exp(0) / 2 = 0.5 for every task.
    for path, value in results[1].items():
        np.testing.assert_allclose(
            results[0][path], value, rtol=1e-5, atol=1e-6
        )


def test_parameters_are_saved(tmp_path):
    x, y = make_data(32)
    model = mtl_model()
    model.compile("adam", loss=LOSSES, aggregator="uncertainty_weighting")
    model.fit(x, y, epochs=2, verbose=0)
    path = os.path.join(tmp_path, "uw.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded.balancer.parameters["log_variance"]),
        to_numpy(model.balancer.parameters["log_variance"]))


def test_parameters_need_a_loss_only_rule():
    class Bad(aggregators.PCGrad):
        def initial_parameters(self, num_tasks):
            return {"p": keras.ops.zeros((num_tasks,))}

    with pytest.raises(ValueError, match="loss-only"):
        mtl_model().compile("sgd", loss=LOSSES, aggregator=Bad())


def test_dwa_window_weights_follow_the_loss_ratio():
    agg = aggregators.DynamicWeightAverage(temperature=2.0, iteration_window=2)
    state = agg.initial_state(2)
    history = [[1.0, 1.0], [1.0, 1.0], [2.0, 1.0], [2.0, 1.0], [1.0, 1.0]]
    weights = []
    for losses in history:
        w, state = agg.compute_weights(
            2, None, np.array(losses, "float32"), state
        )
        weights.append(to_numpy(w))
    np.testing.assert_allclose(weights[:4], 1.0)
    # Periods: [1, 1] then [2, 1]: ratios (2, 1) -> 2 softmax((2, 1) / 2).
    expected = 2 * np.exp([1.0, 0.5]) / np.exp([1.0, 0.5]).sum()
    np.testing.assert_allclose(weights[4], expected, rtol=1e-5)


def test_dwa_counts_epochs_of_fit():
    x, y = make_data(32)
    model = mtl_model()
    model.compile("sgd", loss=LOSSES, aggregator="dwa")
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    weights = np.array([history.history[f"{t}_weight"] for t in TASKS])
    np.testing.assert_allclose(weights[:, :2], 1.0)
    assert not np.allclose(weights[:, 2], 1.0)
    np.testing.assert_allclose(weights[:, 2].sum(), 3.0, rtol=1e-5)
    assert float(to_numpy(model.balancer.epoch)) == 2.0


def test_stch_warms_up_then_uses_the_nadir():
    agg = aggregators.STCH(mu=1.0, warmup_epochs=1)
    state = {**agg.initial_state(2), "epoch": keras.ops.zeros(())}
    losses = np.array([2.0, 4.0], "float32")
    w, new = agg.compute_weights(2, None, losses, state)
    np.testing.assert_allclose(to_numpy(w), 1.0 / losses, rtol=1e-6)
    state = {**new, "epoch": keras.ops.ones(())}
    later = np.array([1.0, 4.0], "float32")
    w, new = agg.compute_weights(2, None, later, state)
    np.testing.assert_allclose(to_numpy(new["nadir"]), [2.0, 4.0])
    f = np.log(later / np.array([2.0, 4.0]))
    expected = 2 * np.exp(f) / np.exp(f).sum() / later
    np.testing.assert_allclose(to_numpy(w), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["gls", "scale_invariant"])
def test_log_scalarisations_are_scale_invariant(name):
    agg = aggregators.get(name)
    jacobian = np.array([[1.0, 2.0], [3.0, -1.0]], "float32")
    losses = np.array([0.5, 2.0], "float32")
    a = to_numpy(agg.aggregate(jacobian, losses)[0])
    # Multiplying task 0's loss and gradient by 10 leaves the update alone.
    scaled = jacobian * np.array([[10.0], [1.0]], "float32")
    scaled_losses = losses * np.array([10.0, 1.0], "float32")
    b = to_numpy(agg.aggregate(scaled, scaled_losses)[0])
    if name == "scale_invariant":
        np.testing.assert_allclose(a, b, rtol=1e-5)
    else:
        # GLS: the geometric mean scales by 10^(1/T); directions are parallel.
        np.testing.assert_allclose(b, a * 10 ** 0.5, rtol=1e-5)


def test_famo_learns_its_logits_from_the_step_effect():
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(0.05), loss=LOSSES, aggregator="famo")
    before = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    logs = model.train_on_batch(x, y, return_dict=True)
    after = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    # Weights of the step: z = 1/3 each, w_i proportional to 1 / L_i.
    l0 = np.array([before[f"{t}_loss"] for t in TASKS])
    w = (1 / l0) / (1 / l0).sum()
    np.testing.assert_allclose(
        [logs[f"{t}_weight"] for t in TASKS], w, rtol=1e-4
    )
    # One Adam step on the logits along J_softmax^T delta (+ decay, 0 here).
    l1 = np.array([after[f"{t}_loss"] for t in TASKS])
    delta = np.log(l0 + 1e-8) - np.log(l1 + 1e-8)
    z = np.full(3, 1 / 3)
    gradient = z * (delta - (z * delta).sum())
    expected = -0.025 * gradient / (np.abs(gradient) + 1e-8)
    np.testing.assert_allclose(
        to_numpy(model.balancer.state["logits"]), expected,
        rtol=1e-3, atol=1e-6)
    assert float(to_numpy(model.balancer.state["step"])) == 1.0
