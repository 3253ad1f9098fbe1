"""`fit` with rules that read independent batches (MoDo, SDMGrad): each
batch is split into interleaved parts, and every task's gradient on every
part reaches the rule."""

import keras
import numpy as np
import pytest

import keras_mtl
from tests.aggregators import float64_references as ref
from tests.helpers import BACKEND
from tests.helpers import LOSSES
from tests.helpers import make_data
from tests.helpers import mtl_model
from tests.helpers import per_task_gradients
from tests.helpers import to_numpy

TASKS = ("reg", "cls", "bin")
TRUNK = ["trunk_1/kernel", "trunk_1/bias", "features/kernel",
         "features/bias"]
# 32 samples in 3 parts of 11, 11 and 10 (sample i in part i mod 3), or 2.
PARTS_OF_32 = {k: [np.arange(s, 32, k) for s in range(k)] for k in (2, 3)}


def _jacobian(grads):
    return np.stack([np.concatenate([grads[t][p].ravel() for p in TRUNK])
                     for t in TASKS])


def _one_step(aggregator, jit_compile):
    x, y = make_data(32)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(1.0), loss=LOSSES,
                  aggregator=aggregator, jit_compile=jit_compile)
    start = {v.path: to_numpy(v) for v in model.trainable_variables}
    parts = [per_task_gradients(model, x[s], {t: y[t][s] for t in TASKS},
                                TASKS)
             for s in PARTS_OF_32[aggregator.num_batches]]
    whole = per_task_gradients(model, x, y, TASKS)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    moved = {v.path: start[v.path] - to_numpy(v)
             for v in model.trainable_variables}
    return model, parts, whole, moved


@pytest.mark.parametrize("jit_compile", [False, True] if BACKEND != "torch"
                         else [False])
@pytest.mark.parametrize("num_batches", [2, 3])
def test_one_modo_step_matches_plain_keras_on_each_part(num_batches,
                                                         jit_compile):
    agg = keras_mtl.aggregators.MoDo(num_batches=num_batches)
    model, parts, whole, moved = _one_step(agg, jit_compile)
    jacobians = [_jacobian(g) for g in parts]
    weights = ref.modo_weights(jacobians[0] @ jacobians[1].T,
                               np.full(3, 1.0 / 3.0))
    if num_batches == 3:
        direction = weights @ jacobians[2]
    else:
        direction = weights @ (jacobians[0] + jacobians[1]) / 2.0
    got = np.concatenate([moved[p].ravel() for p in TRUNK])
    np.testing.assert_allclose(got, direction, rtol=2e-3, atol=2e-5)
    # Each head takes its own task's gradient on the whole batch.
    for task in TASKS:
        for name in ("kernel", "bias"):
            path = f"head_{task}/{name}"
            np.testing.assert_allclose(moved[path], whole[task][path],
                                       rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(
        to_numpy(model.balancer.state["weights"]), weights, atol=1e-5)


def test_one_sdmgrad_step():
    # A small inner step size: with the default (10) the inner iterates
    # jump between vertices of the simplex, and which one they end on is
    # sensitive to float32 rounding.
    agg = keras_mtl.aggregators.SDMGrad(lr=0.5)
    model, parts, _, moved = _one_step(agg, jit_compile=False)
    jacobians = [_jacobian(g) for g in parts]
    _, applied = ref.sdmgrad_weights(jacobians[0] @ jacobians[1].T,
                                     np.full(3, 1.0 / 3.0), lr=0.5)
    got = np.concatenate([moved[p].ravel() for p in TRUNK])
    np.testing.assert_allclose(got, applied @ jacobians[2], rtol=2e-3,
                               atol=2e-5)


def test_logged_losses_and_weights_are_per_task():
    x, y = make_data(30)
    y["reg"][:7] = np.nan  # missing labels: the parts' shares differ
    logs = {}
    for name, agg in [("mean", "mean"),
                      ("modo", keras_mtl.aggregators.MoDo())]:
        model = mtl_model()
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, aggregator=agg)
        logs[name] = model.fit(x, y, batch_size=30, epochs=1,
                               verbose=0).history
    for task in TASKS:
        # The first step's logged loss is the loss before the update.
        np.testing.assert_allclose(logs["modo"][f"{task}_loss"],
                                   logs["mean"][f"{task}_loss"], rtol=1e-5)
    total = sum(logs["modo"][f"{task}_weight"][0] for task in TASKS)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)


def test_a_batch_smaller_than_the_parts_still_trains():
    x, y = make_data(2)
    model = mtl_model()
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                  aggregator=keras_mtl.aggregators.MoDo())
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))


def test_features_mode_is_refused_before_compile_changes_the_model():
    model = mtl_model()
    with pytest.raises(ValueError, match="gradient_mode='parameters'"):
        model.compile("sgd", loss=LOSSES, aggregator="modo",
                      gradient_mode="features", features="features")
    assert model.balancer is None
