"""Gradient accumulation and `steps_per_execution` with per-task balancing.

Semantics: with `optimizer(gradient_accumulation_steps=k)`, Keras
accumulates what `apply` receives, which is the **aggregated** direction of
each micro-batch: the update is the mean of the `k` micro-batch aggregates
(not the aggregate of the accumulated Jacobian, which would keep `T x P`
extra floats and need a conditional apply that TensorFlow strategies refuse).
The aggregator's state is committed only on the micro-batch that applies the
update.
"""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.helpers import BACKEND
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import to_numpy


def weights(model):
    return [to_numpy(v).astype("float64") for v in model.trainable_variables]


def batches(x, y, size):
    return [(x[i: i + size], {t: v[i: i + size] for t, v in y.items()})
            for i in range(0, len(x), size)]


@pytest.mark.parametrize("aggregator", ["mgda", "upgrad", "pcgrad_in_order"])
def test_accumulated_update_is_the_mean_of_micro_batch_aggregates(
        aggregator):
    if aggregator == "pcgrad_in_order":
        aggregator = keras_mtl.aggregators.PCGrad(shuffle=False)
    x, y = make_data(16)
    parts = batches(x, y, 8)
    model = mtl_model(seed=1)
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                  aggregator=aggregator)
    start = weights(model)
    state = {k: to_numpy(v) for k, v in model.balancer.state.items()}
    steps = []
    for xb, yb in parts:
        for v, w in zip(model.trainable_variables, start):
            v.assign(w)
        for k, v in model.balancer.state.items():
            v.assign(state[k])
        model.train_on_batch(xb, yb)
        steps.append([a - b for a, b in zip(weights(model), start)])
    accumulated = mtl_model(seed=1)
    accumulated.compile(
        keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
        loss=LOSSES, aggregator=aggregator)
    accumulated.train_on_batch(*parts[0])
    for a, b in zip(weights(accumulated), start):
        np.testing.assert_array_equal(a, b)  # No update yet.
    accumulated.train_on_batch(*parts[1])
    for got, first, second, w in zip(weights(accumulated), *steps, start):
        np.testing.assert_allclose(got - w, (first + second) / 2,
                                   rtol=1e-5, atol=1e-7)


def test_stateful_rule_commits_once_per_update():
    x, y = make_data(16)
    parts = batches(x, y, 8)
    model = mtl_model(seed=1)
    model.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
                  loss=LOSSES, aggregator="gradvac")
    model.train_on_batch(*parts[0])  # Builds the state.
    model.train_on_batch(*parts[1])
    after_update = to_numpy(model.balancer.state["targets"])
    model.train_on_batch(*parts[0])  # A micro-batch: state unchanged.
    np.testing.assert_array_equal(
        after_update, to_numpy(model.balancer.state["targets"]))
    model.train_on_batch(*parts[1])  # The update: state moves.
    assert not np.array_equal(
        after_update, to_numpy(model.balancer.state["targets"]))


@pytest.mark.parametrize("aggregator", ["gradvac", "famo"])
def test_steps_per_execution_trains_the_same_model(aggregator):
    if BACKEND == "torch":
        pytest.skip("Keras' PyTorch trainer requires steps_per_execution=1.")
    x, y = make_data(64)
    results = []
    for steps in (1, 4):
        model = mtl_model(seed=1)
        model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES,
                      aggregator=aggregator, steps_per_execution=steps)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False,
                            verbose=0)
        results.append((weights(model), history.history))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key, values in results[0][1].items():
        np.testing.assert_allclose(values, results[1][1][key], rtol=1e-5,
                                   atol=1e-6, err_msg=key)
